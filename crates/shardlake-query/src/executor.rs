//! Where queries run: a Tokio runtime of their own, apart from the one that
//! serves requests.
//!
//! Planning and execution are CPU work that does not yield often enough
//! (constant folding of `repeat('x', 2000000000)` never yields at all). On
//! the runtime that also answers HTTP, a few heavy queries would keep cache
//! hits, health checks, ingest acks and timeouts waiting for a worker. The
//! pattern is InfluxDB 3's `DedicatedExecutor`: the engine spawns each
//! query's work on its own multi-threaded runtime, and the caller awaits the
//! handle on its runtime, where timers keep firing. A timeout then answers
//! on time even when the work cannot be interrupted: the task is aborted at
//! its next await point and its result dropped when it finishes.

use tokio::runtime::Handle;
use tokio_util::task::AbortOnDropHandle;

use crate::error::{Error, ErrorKind, Result};

/// A runtime for query work, with `threads` workers, shut down when it
/// drops.
pub(crate) struct CpuRuntime {
    handle: Handle,
    /// Dropping it lets the runtime's thread shut the runtime down (a
    /// runtime must not be dropped inside another one's async context).
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for CpuRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuRuntime").finish_non_exhaustive()
    }
}

impl CpuRuntime {
    /// Starts a runtime of `threads` workers named `shardlake-query-N`.
    pub(crate) fn start(threads: usize) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("shardlake-query")
            .enable_all()
            .build()
            .map_err(|e| {
                Error::new(ErrorKind::Unexpected, "cannot start the query runtime").with_source(e)
            })?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("shardlake-query-owner".into())
            .spawn(move || {
                // Parks until the engine is gone, then stops the workers
                // without waiting for tasks still running (their results
                // have nobody left to go to).
                let _ = runtime.block_on(stopped);
                runtime.shutdown_background();
            })
            .map_err(|e| {
                Error::new(ErrorKind::Unexpected, "cannot start the query runtime").with_source(e)
            })?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }
}

/// Starts `work` on `runtime` (or, without one, as a task of the caller's
/// runtime); dropping the handle aborts it.
pub(crate) fn spawn<T: Send + 'static>(
    runtime: Option<&CpuRuntime>,
    work: impl Future<Output = T> + Send + 'static,
) -> AbortOnDropHandle<T> {
    AbortOnDropHandle::new(match runtime {
        Some(runtime) => runtime.handle.spawn(work),
        None => tokio::spawn(work),
    })
}

/// Runs `work` on `runtime` (or, without one, as a task of the caller's
/// runtime) and waits for it. Dropping the returned future aborts the
/// task, so a caller's timeout or disconnect stops the work at its next
/// await point.
pub(crate) async fn run<T: Send + 'static>(
    runtime: Option<&CpuRuntime>,
    work: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    spawn(runtime, work).await.map_err(|e| {
        if e.is_panic() {
            tracing::error!(error = %e, "a query panicked");
            Error::new(ErrorKind::Unexpected, "the query failed unexpectedly")
        } else {
            Error::new(ErrorKind::Unexpected, "the query was cancelled")
        }
    })?
}
