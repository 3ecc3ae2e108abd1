//! A worker: runs the stages coordinators send it (`shardlake worker`).
//!
//! It holds no lake state: the object store to read data files from, the
//! functions plans may name, a memory pool, and the cluster secret it
//! demands on every call (plan submission, task execution, pulls by other
//! workers), checked before datafusion-distributed sees the call.

use std::future::Future;
use std::sync::Arc;

use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion_distributed::{DistributedExt, Worker, WorkerQueryContext};
use object_store::ObjectStore;
use sha2::{Digest, Sha256};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use url::Url;

use super::SECRET_HEADER;
use crate::error::{Error, ErrorKind, Result};

/// What a worker needs.
#[derive(Debug, Clone)]
pub struct WorkerSetup {
    /// The URL of the object store the lake's files are in (`file:///`,
    /// `s3://bucket/`), as the coordinators' plans name it.
    pub store_url: Url,
    /// That store.
    pub store: Arc<dyn ObjectStore>,
    /// The cluster secret callers must send; `None` accepts any caller
    /// (loopback only: the CLI refuses to start otherwise).
    pub secret: Option<String>,
    /// Bytes of memory the tasks running here may use together.
    pub memory_limit: usize,
    /// How this worker names itself in the statistics it sends back (its
    /// address).
    pub name: String,
}

/// Serves `listener` as a worker until `shutdown` resolves.
pub async fn serve_worker(
    listener: tokio::net::TcpListener,
    setup: WorkerSetup,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(setup.memory_limit)))
        .build_arc()?;
    runtime.register_object_store(&setup.store_url, Arc::clone(&setup.store));
    // Workers pull stage outputs from each other: those calls carry the
    // secret too.
    let channels = super::SecretChannels::new(setup.secret.as_deref())?;
    let mut worker = Worker::from_session_builder(move |ctx: WorkerQueryContext| {
        let channels = channels.clone();
        async move {
            let mut state = ctx
                .builder
                .with_distributed_channel_resolver(channels)
                .build();
            crate::udf::register_functions(&mut state)?;
            Ok(state)
        }
    })
    .with_runtime_env(Arc::clone(&runtime));
    let name = setup.name.clone();
    worker
        .add_on_plan_hook(move |plan| super::scan_metrics::record_on_worker(plan, &runtime, &name));
    let service = InterceptedService::new(
        worker.into_worker_server(),
        SecretCheck::new(setup.secret.as_deref()),
    );
    Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Storage,
                format!("the worker's server failed: {e}"),
            )
        })
}

/// Refuses calls that do not carry the cluster secret. Compares digests, so
/// the time taken says nothing about the secret.
#[derive(Clone)]
struct SecretCheck {
    digest: Option<[u8; 32]>,
}

impl SecretCheck {
    fn new(secret: Option<&str>) -> Self {
        Self {
            digest: secret.map(|s| Sha256::digest(s.as_bytes()).into()),
        }
    }

    fn allows(&self, presented: Option<&[u8]>) -> bool {
        match (&self.digest, presented) {
            (None, _) => true,
            (Some(want), Some(given)) => {
                let given: [u8; 32] = Sha256::digest(given).into();
                // Not short-circuiting: every byte is compared.
                want.iter()
                    .zip(given.iter())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
            }
            (Some(_), None) => false,
        }
    }
}

impl tonic::service::Interceptor for SecretCheck {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let presented = request.metadata().get(SECRET_HEADER).map(|v| v.as_bytes());
        if self.allows(presented) {
            Ok(request)
        } else {
            Err(tonic::Status::unauthenticated(
                "this worker takes plans only from callers with the cluster secret",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_required_when_set() {
        let open = SecretCheck::new(None);
        assert!(open.allows(None) && open.allows(Some(b"anything")));
        let closed = SecretCheck::new(Some("s3cret-s3cret-s3cret"));
        assert!(closed.allows(Some(b"s3cret-s3cret-s3cret")));
        assert!(!closed.allows(Some(b"s3cret-s3cret-s3cre")));
        assert!(!closed.allows(Some(b"")));
        assert!(!closed.allows(None));
    }
}
