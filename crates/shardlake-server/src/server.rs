//! Binding, the loopback rule, serving and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;

use shardlake_lake::Lake;
use shardlake_query::CrossShardQuery;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::config::ServerConfig;
use crate::postgres::PgListener;
use crate::routes::app;
use crate::state::AppState;

/// Why the server could not start or stop cleanly.
#[derive(Debug)]
pub enum ServerError {
    /// The configuration is unusable (the message says why).
    Config(String),
    /// Opening or closing the lake or the engine failed.
    Lake(shardlake_core::Error),
    /// The listen address cannot be bound (in use, not local, no permission).
    Bind(SocketAddr, std::io::Error),
    /// Serving the socket failed.
    Io(std::io::Error),
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(m) => write!(f, "configuration: {m}"),
            Self::Lake(e) => write!(f, "{}", e.message()),
            Self::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            Self::Io(e) => write!(f, "socket: {e}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(_) => None,
            Self::Lake(e) => Some(e),
            Self::Bind(_, e) | Self::Io(e) => Some(e),
        }
    }
}

impl From<shardlake_core::Error> for ServerError {
    fn from(e: shardlake_core::Error) -> Self {
        Self::Lake(e)
    }
}

impl From<std::io::Error> for ServerError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// A bound server, not yet serving.
pub struct Server {
    state: AppState,
    listener: TcpListener,
    /// The Postgres wire protocol listener, when `[postgres] listen` is set.
    postgres: Option<(PgListener, SocketAddr)>,
}

impl Server {
    /// Checks `config`, opens the lake, the engine and the emitter, and
    /// binds the socket. Without tokens only a loopback address is allowed:
    /// an unauthenticated server must not be reachable from the network.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        config.check().map_err(ServerError::Config)?;
        let auth =
            Authenticator::new(&config.tokens).map_err(|e| ServerError::Config(e.to_string()))?;
        if !auth.is_enabled() && !config.listen.ip().is_loopback() {
            return Err(ServerError::Config(format!(
                "no tokens are configured, so authentication is off and the server may only \
                 listen on a loopback address, not {}; add [[tokens]] to shardlake.toml or \
                 listen on 127.0.0.1",
                config.listen
            )));
        }
        let (lake, created) = Lake::open_or_create_in(
            &config.warehouse,
            &config.storage,
            config.catalog.url.as_deref(),
            config.format,
        )
        .await?;
        if created {
            // Normal on a first start (an empty volume), a typo otherwise:
            // said once, where an operator looks.
            tracing::warn!(
                warehouse = %lake.warehouse().data_dir().display(),
                format = %lake.format(),
                "created a new lake"
            );
        }
        if let Some(pg) = config.postgres.listen
            && !auth.is_enabled()
            && !pg.ip().is_loopback()
        {
            return Err(ServerError::Config(format!(
                "no tokens are configured, so authentication is off and the Postgres listener \
                 may only listen on a loopback address, not {pg}; add [[tokens]] to \
                 shardlake.toml or listen on 127.0.0.1"
            )));
        }
        let engine = CrossShardQuery::open(&lake, config.query_config()).await?;
        // Commits (sorting, encoding) run where queries run, off the
        // runtime that answers requests.
        let emitter = lake
            .emitter_on(config.emitter.clone(), engine.cpu_runtime())
            .await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| ServerError::Bind(config.listen, e))?;
        let addr = listener.local_addr()?;
        let postgres = match config.postgres.listen {
            Some(pg) => {
                let pg_listener = PgListener::bind(pg)
                    .await
                    .map_err(|e| ServerError::Bind(pg, e))?;
                let bound = pg_listener.local_addr()?;
                tracing::info!(addr = %bound, "listening for the Postgres wire protocol");
                Some((pg_listener, bound))
            }
            None => None,
        };
        if auth.is_enabled() {
            tracing::info!(%addr, tokens = config.tokens.len(), "listening");
        } else {
            tracing::warn!(
                %addr,
                "no tokens configured: authentication is off, listening on loopback only"
            );
        }
        Ok(Self {
            state: AppState::new(config, lake, engine, emitter, auth),
            listener,
            postgres,
        })
    }

    /// The bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// The bound address of the Postgres listener, if it listens.
    pub fn postgres_addr(&self) -> Option<SocketAddr> {
        self.postgres.as_ref().map(|(_, addr)| *addr)
    }

    /// Whether requests must carry a token.
    pub fn requires_tokens(&self) -> bool {
        self.state.auth().is_enabled()
    }

    /// The shared state (for embedding and tests).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets
    /// in-flight requests finish, and commits whatever the emitter still
    /// holds before returning.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let state = self.state.clone();
        let draining = self.state.clone();
        let maintainer = crate::maintenance::spawn(&self.state);
        let (flusher_tx, flusher_rx) = tokio::sync::oneshot::channel();
        let (stop_pg, pg_stopped) = tokio::sync::watch::channel(false);
        let postgres = self
            .postgres
            .map(|(pg, _)| tokio::spawn(pg.serve(self.state.clone(), pg_stopped)));
        axum::serve(self.listener, app(self.state))
            .with_graceful_shutdown(async move {
                shutdown.await;
                // Postgres sessions are read-only: ending them loses nothing.
                let _ = stop_pg.send(true);
                draining.start_draining();
                tracing::info!("shutting down: finishing in-flight requests");
                // In-flight ingest requests wait for their commit: commit
                // promptly instead of at the next flush interval.
                let _ = flusher_tx.send(tokio::spawn(async move {
                    loop {
                        if let Err(e) = draining.emitter().flush().await {
                            tracing::warn!(error = %e, "flush during shutdown failed");
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }));
            })
            .await?;
        if let Some(postgres) = postgres {
            let _ = postgres.await;
        }
        if let Ok(flusher) = flusher_rx.await {
            flusher.abort();
        }
        if let Some(maintainer) = maintainer {
            // A maintenance action in flight has either not committed yet
            // or has: stopping it loses nothing but its work, and the
            // lease it held runs out.
            maintainer.abort();
        }
        state.emitter().close().await?;
        tracing::info!("emitter flushed and closed; bye");
        Ok(())
    }
}
