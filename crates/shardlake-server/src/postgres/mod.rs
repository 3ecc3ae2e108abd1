//! The Postgres wire protocol: psql, BI tools and every Postgres driver
//! talk to the same engine as `/v1/query`, in the same process, with the
//! same tokens, scope, limits, result cache and statistics.
//!
//! Built on pgwire (the protocol) and arrow-pg (Arrow values as Postgres
//! values), with shardlake's own handlers: datafusion-postgres shares one
//! `SessionContext` between connections, while every shardlake query pins
//! its snapshot and carries its caller's scope.
//!
//! - [`auth`]: startup, the token as password.
//! - [`handler`]: simple and extended protocol, streaming, portals.
//! - [`session`]: `SET`, `SHOW`, transaction control, refusals.
//! - [`cursor`]: `DECLARE`, `FETCH`, `CLOSE`.
//! - [`types`]: result columns and parameters.
//! - [`encode`]: record batches as rows, column by column.
//! - [`cancel`]: cancel requests.
//! - [`errors`]: SQLSTATEs, with shardlake's error code in the detail.

mod auth;
mod cancel;
mod cursor;
mod encode;
mod errors;
mod handler;
mod session;
mod types;

use std::net::SocketAddr;
use std::sync::Arc;

use pgwire::api::PgWireServerHandlers;
use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::CancelHandler;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::auth::Caller;
use crate::state::AppState;

/// What the server says it is (`server_version`): the Postgres release
/// whose protocol and catalog clients should expect
/// (`shardlake_query::POSTGRES_VERSION`, which `version()` says; a test
/// keeps the two equal), and shardlake's.
pub(crate) const SERVER_VERSION: &str = concat!("16.6 (shardlake ", env!("CARGO_PKG_VERSION"), ")");

/// A connection's own state, kept in its session extensions from the
/// moment it authenticated.
#[derive(Debug)]
pub(crate) struct Session {
    /// Who is connected: the token's scope and permissions.
    caller: Arc<Caller>,
    /// Where a cancel request for this connection lands.
    cancel: cancel::Registration,
    /// Its open SQL cursors (`DECLARE`).
    cursors: cursor::Cursors,
}

/// The handlers pgwire asks for on each connection.
struct Handlers {
    queries: Arc<handler::Queries>,
    startup: Arc<auth::TokenStartup>,
    cancel: Arc<cancel::CancelByKey>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::clone(&self.cancel)
    }
}

/// The bound Postgres listener.
pub(crate) struct PgListener {
    listener: TcpListener,
}

impl PgListener {
    /// Binds `addr`.
    pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
        })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `stop` turns true, each served on its own
    /// task; at most `[postgres] max_connections` at once (more are closed
    /// at once, and counted). Stopping ends the open connections.
    pub(crate) async fn serve(self, state: AppState, mut stop: watch::Receiver<bool>) {
        let cancels = Arc::new(cancel::Cancels::default());
        let handlers = Arc::new(Handlers {
            queries: Arc::new(handler::Queries::new(state.clone())),
            startup: Arc::new(auth::TokenStartup::new(
                state.auth().clone(),
                Arc::clone(&cancels),
            )),
            cancel: Arc::new(cancel::CancelByKey(cancels)),
        });
        let slots = Arc::new(Semaphore::new(
            state.config().postgres.max_connections.max(1),
        ));
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = self.listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting a Postgres connection failed");
                            continue;
                        }
                    };
                    let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                        state.metrics().pg_refused.inc();
                        tracing::warn!(%peer, "refusing a Postgres connection: [postgres] max_connections reached");
                        continue;
                    };
                    let _ = socket.set_nodelay(true);
                    let handlers = Arc::clone(&handlers);
                    let state = state.clone();
                    connections.spawn(async move {
                        let _permit = permit;
                        state.metrics().pg_connections.inc();
                        state.metrics().pg_connections_total.inc();
                        if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                            tracing::debug!(%peer, error = %e, "postgres connection ended with an error");
                        }
                        state.metrics().pg_connections.dec();
                    });
                }
            }
        }
        connections.shutdown().await;
    }
}
