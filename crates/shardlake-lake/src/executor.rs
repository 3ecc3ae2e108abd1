//! Where CPU work runs: a Tokio runtime of its own, apart from the one that
//! serves requests.
//!
//! Query planning and execution, and a commit's sorting and Parquet
//! encoding, are CPU work that does not yield often enough (constant
//! folding of `repeat('x', 2000000000)` never yields at all; encoding a row
//! group takes tens of milliseconds). On the runtime that also answers
//! HTTP, they would keep cache hits, health checks, ingest acks, the
//! reading of request bodies and timeouts waiting for a worker. The pattern
//! is InfluxDB 3's `DedicatedExecutor`: the engine spawns each query's work,
//! and the emitter its committer, on a multi-threaded runtime of their own,
//! and the caller awaits the handle on its runtime, where timers keep
//! firing. A timeout then answers on time even when the work cannot be
//! interrupted: the task is aborted at its next await point and its result
//! dropped when it finishes.

use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::task::AbortOnDropHandle;

use crate::error::{Error, ErrorKind, Result};

/// A runtime for CPU work, shut down when its last clone drops. Cheap to
/// clone: the query engine and the emitter of one process share one.
#[derive(Clone)]
pub struct CpuRuntime {
    inner: Arc<Owned>,
}

struct Owned {
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
    /// Starts a runtime of `threads` workers named `shardlake-cpu`.
    pub fn start(threads: usize) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("shardlake-cpu")
            .enable_all()
            .build()
            .map_err(|e| {
                Error::new(ErrorKind::Unexpected, "cannot start the CPU runtime").with_source(e)
            })?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("shardlake-cpu-owner".into())
            .spawn(move || {
                // Parks until the engine is gone, then stops the workers
                // without waiting for tasks still running (their results
                // have nobody left to go to).
                let _ = runtime.block_on(stopped);
                runtime.shutdown_background();
            })
            .map_err(|e| {
                Error::new(ErrorKind::Unexpected, "cannot start the CPU runtime").with_source(e)
            })?;
        Ok(Self {
            inner: Arc::new(Owned {
                handle,
                _stop: stop,
            }),
        })
    }

    /// The runtime's handle (to spawn long-lived tasks on it).
    pub fn handle(&self) -> &Handle {
        &self.inner.handle
    }
}

/// Starts `work` on `runtime` (or, without one, as a task of the caller's
/// runtime); dropping the handle aborts it.
pub fn spawn<T: Send + 'static>(
    runtime: Option<&CpuRuntime>,
    work: impl Future<Output = T> + Send + 'static,
) -> AbortOnDropHandle<T> {
    AbortOnDropHandle::new(match runtime {
        Some(runtime) => runtime.inner.handle.spawn(work),
        None => tokio::spawn(work),
    })
}

/// Runs `work` on `runtime` (or, without one, as a task of the caller's
/// runtime) and waits for it. Dropping the returned future aborts the
/// task, so a caller's timeout or disconnect stops the work at its next
/// await point.
pub async fn run<T: Send + 'static, E: From<Error> + Send + 'static>(
    runtime: Option<&CpuRuntime>,
    work: impl Future<Output = std::result::Result<T, E>> + Send + 'static,
) -> std::result::Result<T, E> {
    spawn(runtime, work).await.map_err(|e| {
        E::from(if e.is_panic() {
            tracing::error!(error = %e, "a task on the CPU runtime panicked");
            Error::new(ErrorKind::Unexpected, "the work failed unexpectedly")
        } else {
            Error::new(ErrorKind::Unexpected, "the work was cancelled")
        })
    })?
}
