//! What every handler shares: the lake, the engine, the emitter, the
//! tokens, the query slots and the metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::FromRef;
use shardlake_lake::{Lake, PipelineEmitter};
use shardlake_query::CrossShardQuery;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Authenticator;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::maintenance::MaintenanceState;
use crate::metrics::ServerMetrics;

/// Shared state of one server. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServerConfig,
    lake: Lake,
    engine: CrossShardQuery,
    emitter: PipelineEmitter,
    auth: Authenticator,
    query_slots: Arc<Semaphore>,
    metrics: ServerMetrics,
    draining: AtomicBool,
    /// Held by the one migration this server runs at a time.
    migration_slot: Arc<tokio::sync::Mutex<()>>,
    /// What the background maintenance did.
    maintenance: MaintenanceState,
}

impl AppState {
    /// State over an opened lake, engine and emitter.
    pub fn new(
        config: ServerConfig,
        lake: Lake,
        engine: CrossShardQuery,
        emitter: PipelineEmitter,
        auth: Authenticator,
    ) -> Self {
        let slots = config.limits.max_concurrent_queries.max(1);
        Self {
            inner: Arc::new(Inner {
                config,
                lake,
                engine,
                emitter,
                auth,
                query_slots: Arc::new(Semaphore::new(slots)),
                metrics: ServerMetrics::new(),
                draining: AtomicBool::new(false),
                migration_slot: Arc::default(),
                maintenance: MaintenanceState::default(),
            }),
        }
    }

    /// The configuration in effect.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The lake.
    pub fn lake(&self) -> &Lake {
        &self.inner.lake
    }

    /// The query engine.
    pub fn engine(&self) -> &CrossShardQuery {
        &self.inner.engine
    }

    /// The emitter all ingestion goes through.
    pub fn emitter(&self) -> &PipelineEmitter {
        &self.inner.emitter
    }

    /// The tokens.
    pub fn auth(&self) -> &Authenticator {
        &self.inner.auth
    }

    /// The metrics.
    pub fn metrics(&self) -> &ServerMetrics {
        &self.inner.metrics
    }

    /// What the background maintenance did.
    pub fn maintenance(&self) -> &MaintenanceState {
        &self.inner.maintenance
    }

    /// A slot to run one query in: waits up to `limits.queue_wait_ms` for
    /// one to free up, then refuses with 429. The slot is held until the
    /// response (or its stream) is finished.
    pub async fn query_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        let slots = Arc::clone(&self.inner.query_slots);
        match tokio::time::timeout(self.config().limits.queue_wait(), slots.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ApiError::internal("query slots closed")),
            Err(_) => {
                self.metrics().overloaded.inc();
                Err(ApiError::overloaded(
                    "too_many_queries",
                    format!(
                        "{} queries are already running; retry shortly",
                        self.config().limits.max_concurrent_queries
                    ),
                    1,
                ))
            }
        }
    }

    /// Queries running now.
    pub fn queries_running(&self) -> usize {
        self.config().limits.max_concurrent_queries.max(1)
            - self.inner.query_slots.available_permits()
    }

    /// The slot of the migration this server runs, if none runs now.
    pub fn migration_slot(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        Arc::clone(&self.inner.migration_slot).try_lock_owned().ok()
    }

    /// Marks the server as shutting down (`/readyz` answers 503 from now on).
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the server is shutting down.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }
}

/// The token table, for the [`crate::auth::Authenticated`] extractor.
impl FromRef<AppState> for Authenticator {
    fn from_ref(state: &AppState) -> Self {
        state.auth().clone()
    }
}
