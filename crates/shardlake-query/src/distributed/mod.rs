//! Queries on a cluster of workers, on datafusion-distributed
//! (docs/adr/0006-distributed-engine.md).
//!
//! The engine that plans a query (the *coordinator*: `serve`, `query`) does
//! everything it does for a local query: pins the snapshot, applies the
//! caller's scope, prunes files, optimizes. Then, when the plan pays for it
//! ([`DistributeWhenItPays`]), datafusion-distributed's rule cuts the
//! physical plan into stages and the coordinator sends them to the
//! configured workers (`shardlake worker`, [`serve_worker`]), which read the
//! files the plan names and stream Arrow batches back; the coordinator runs
//! the last stage. A worker never sees the catalog: the file list and the
//! scope's row predicate are in the plan it gets.
//!
//! - **Security**: a worker runs any plan it is sent and can read any object
//!   in the store, so every call between coordinator and workers (and
//!   between workers) carries the cluster secret ([`SECRET_HEADER`]) and a
//!   worker refuses calls without it ([`worker`]).
//! - **Statistics**: what the scans of a stage read is recorded on the worker
//!   as metrics of its scan node ([`scan_metrics`]), comes back with the
//!   task's last batch and is added to the query's recorder here
//!   ([`absorb`]), so `bytes_scanned`, `files_scanned`, `shards_queried`,
//!   `rows_scanned` mean what they mean for a local run; `workers` and
//!   `tasks` say how far it spread.
//! - **Faults**: channels time out connecting and probe idle connections, a
//!   worker's failure fails the query with a retryable error
//!   (`worker_unavailable`), and dropping the query's stream cancels the
//!   tasks on every worker (datafusion-distributed does that).

mod scan_metrics;
mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::Result as DfResult;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::placeholder_row::PlaceholderRowExec;
use datafusion_distributed::{
    BoxCloneSyncChannel, ChannelResolver, DistributedExec, DistributedExt,
    DistributedMetricsFormat, DistributedPhysicalOptimizerRule, NetworkBoundaryExt, WorkerResolver,
    WorkerServiceClient, create_worker_client, rewrite_distributed_plan_with_metrics,
};
use tonic::transport::{Channel, Endpoint};
use tower::ServiceExt;
use url::Url;

use crate::error::{Error, ErrorKind};
use crate::recorder::ScanRecorder;

pub use worker::{WorkerSetup, serve_worker};

/// The gRPC metadata (HTTP/2 header) that carries the cluster secret on
/// every call to a worker.
pub const SECRET_HEADER: &str = "x-shardlake-cluster-secret";

/// How long connecting to a worker may take before the query fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections to workers are probed this often (HTTP/2 pings), and a
/// worker that does not answer a probe within [`KEEPALIVE_TIMEOUT`] is
/// taken for dead: a worker that hangs or vanishes mid-query fails the
/// query instead of holding it until its timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the workers are and how to reach them: the server's
/// `[distributed]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The workers' URLs (`http://host:port`); none runs every query here.
    pub workers: Vec<Url>,
    /// A query runs on the workers only when its scans will read at least
    /// this many bytes (the sum of the sizes of the files left after
    /// pruning); 0 distributes every query that reads files.
    pub min_scan_bytes: u64,
    /// The cluster secret sent to the workers.
    pub secret: Option<String>,
}

/// `state` made a coordinator of `cluster`: plans that pay for it run on
/// its workers.
pub(crate) fn coordinator(state: SessionState, cluster: &ClusterConfig) -> DfResult<SessionState> {
    let mut rules = state.physical_optimizers().to_vec();
    // Last: it cuts the plan every other rule has finished.
    rules.push(Arc::new(DistributeWhenItPays {
        min_scan_bytes: cluster.min_scan_bytes,
    }));
    Ok(SessionStateBuilder::new_from_existing(state)
        .with_physical_optimizer_rules(rules)
        .with_distributed_worker_resolver(Workers(cluster.workers.clone()))
        .with_distributed_channel_resolver(SecretChannels::new(cluster.secret.as_deref())?)
        .build())
}

/// The configured workers.
struct Workers(Vec<Url>);

impl WorkerResolver for Workers {
    fn get_urls(&self) -> Result<Vec<Url>, DataFusionError> {
        if self.0.is_empty() {
            // An empty list at execution time would make the planner pick
            // from nothing.
            return Err(DataFusionError::Configuration(
                "[distributed] workers is empty".into(),
            ));
        }
        Ok(self.0.clone())
    }
}

/// gRPC clients to workers: one lazily connected channel per worker, with
/// timeouts and keep-alive probes, adding the secret to every request.
#[derive(Clone)]
struct SecretChannels {
    secret: Option<http::HeaderValue>,
    channels: moka::sync::Cache<Url, Channel>,
}

impl SecretChannels {
    fn new(secret: Option<&str>) -> DfResult<Self> {
        let secret = secret
            .map(|s| {
                let mut value = http::HeaderValue::from_str(s).map_err(|_| {
                    DataFusionError::Configuration(
                        "the cluster secret must be printable ASCII".into(),
                    )
                })?;
                value.set_sensitive(true);
                Ok::<_, DataFusionError>(value)
            })
            .transpose()?;
        Ok(Self {
            secret,
            channels: moka::sync::Cache::builder()
                .max_capacity(4096)
                .time_to_idle(Duration::from_secs(300))
                .build(),
        })
    }

    fn channel(&self, url: &Url) -> DfResult<Channel> {
        self.channels
            .try_get_with_by_ref(url, || {
                Endpoint::from_shared(url.to_string())
                    .map(|endpoint| {
                        endpoint
                            .connect_timeout(CONNECT_TIMEOUT)
                            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                            .keep_alive_while_idle(true)
                            .tcp_nodelay(true)
                            .connect_lazy()
                    })
                    .map_err(|e| {
                        DataFusionError::Configuration(format!(
                            "worker URL `{url}` is not usable: {e}"
                        ))
                    })
            })
            .map_err(|e| DataFusionError::Configuration(e.to_string()))
    }
}

#[async_trait::async_trait]
impl ChannelResolver for SecretChannels {
    async fn get_worker_client_for_url(
        &self,
        url: &Url,
    ) -> Result<WorkerServiceClient<BoxCloneSyncChannel>, DataFusionError> {
        let channel = self.channel(url)?;
        let secret = self.secret.clone();
        let authenticated =
            channel.map_request(move |mut request: http::Request<tonic::body::Body>| {
                if let Some(secret) = &secret {
                    request
                        .headers_mut()
                        .insert(http::HeaderName::from_static(SECRET_HEADER), secret.clone());
                }
                request
            });
        Ok(create_worker_client(BoxCloneSyncChannel::new(
            authenticated,
        )))
    }
}

/// datafusion-distributed's rule, applied only to plans that pay for the
/// network and that workers can run: every leaf a scan of files (or of
/// nothing), at least `min_scan_bytes` to read. Plans answered while
/// planning (`PrecomputedExec`: statistics, the maintained `things`) and
/// plans over in-process tables (`information_schema`, `pg_catalog`) stay
/// here.
#[derive(Debug)]
struct DistributeWhenItPays {
    min_scan_bytes: u64,
}

impl PhysicalOptimizerRule for DistributeWhenItPays {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match scan_bytes(&plan) {
            Some(bytes) if bytes > 0 && bytes >= self.min_scan_bytes => {
                DistributedPhysicalOptimizerRule.optimize(plan, config)
            }
            _ => Ok(plan),
        }
    }

    fn name(&self) -> &str {
        "shardlake_distribute"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The bytes of the files `plan` scans, or `None` when a worker could not
/// run part of it (a leaf that is not a file or memory scan, or a plan
/// already distributed: `things` planned inside a scan).
fn scan_bytes(plan: &Arc<dyn ExecutionPlan>) -> Option<u64> {
    let any = plan.as_any();
    if any.is::<DistributedExec>() {
        return None;
    }
    if let Some(source) = any.downcast_ref::<DataSourceExec>() {
        let source = source.data_source().as_any();
        if let Some(files) = source.downcast_ref::<FileScanConfig>() {
            // A scan whose files were chained in key order for a sort
            // (`ReadInFileOrder`) promises an order that splitting its file
            // groups over tasks would break: such plans stay here.
            if !files.output_ordering.is_empty() {
                return None;
            }
            return Some(
                files
                    .file_groups
                    .iter()
                    .flat_map(|g| g.iter())
                    .map(|f| f.object_meta.size)
                    .sum(),
            );
        }
        return source.is::<MemorySourceConfig>().then_some(0);
    }
    let children = plan.children();
    if children.is_empty() {
        return (any.is::<EmptyExec>() || any.is::<PlaceholderRowExec>()).then_some(0);
    }
    children
        .into_iter()
        .map(scan_bytes)
        .try_fold(0u64, |sum, bytes| Some(sum + bytes?))
}

/// What a distributed run adds to a query's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClusterRun {
    /// Workers that ran at least one scan task.
    pub workers: usize,
    /// Tasks the workers ran (every stage's).
    pub tasks: usize,
    /// Bytes each worker's scans fetched, by worker.
    pub bytes_by_worker: BTreeMap<String, u64>,
}

/// After a query's stream ended: `plan` with every distributed part's
/// metrics brought back from its workers (what statistics read from plan
/// metrics), the workers' scan findings added to `recorder`, and how far it
/// spread. A plan that did not run distributed comes back as it is.
pub(crate) fn absorb(
    plan: &Arc<dyn ExecutionPlan>,
    recorder: &ScanRecorder,
) -> (Arc<dyn ExecutionPlan>, ClusterRun) {
    let mut run = ClusterRun::default();
    let rewritten = Arc::clone(plan).transform_down(|node| {
        if !node.as_any().is::<DistributedExec>() {
            return Ok(Transformed::no(node));
        }
        match rewrite_distributed_plan_with_metrics(
            Arc::clone(&node),
            DistributedMetricsFormat::PerTask,
        ) {
            Ok(with_metrics) => {
                run.tasks += tasks(&with_metrics);
                scan_metrics::absorb(&with_metrics, recorder, &mut run.bytes_by_worker);
                Ok(Transformed::new(
                    with_metrics,
                    true,
                    datafusion::common::tree_node::TreeNodeRecursion::Jump,
                ))
            }
            Err(e) => {
                // A stream dropped before its end (a LIMIT met early)
                // leaves the unfinished tasks' metrics behind: the
                // statistics then count what came back.
                tracing::debug!(error = %e, "a distributed plan's metrics are incomplete");
                Ok(Transformed::no(node))
            }
        }
    });
    run.workers = run.bytes_by_worker.len();
    match rewritten {
        Ok(t) => (t.data, run),
        Err(_) => (Arc::clone(plan), run),
    }
}

/// Tasks of every stage below `plan`'s network boundaries.
fn tasks(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let mut total = 0;
    let mut stack = vec![Arc::clone(plan)];
    while let Some(node) = stack.pop() {
        if let Some(boundary) = node.as_network_boundary() {
            total += boundary.input_stage().tasks.len();
        }
        stack.extend(node.children().into_iter().cloned());
    }
    total
}

/// An error from running a query as ours: a worker that failed or could
/// not be reached (a transport error, or datafusion-distributed's words for
/// one) is `worker_unavailable`, retryable; the rest as every DataFusion
/// error. A worker's own DataFusion error (a bad cast on its rows) comes
/// back as that error and keeps its kind.
pub(crate) fn classify(e: DataFusionError) -> Error {
    let root = e.find_root();
    let from_worker = match root {
        DataFusionError::External(inner) => {
            inner.is::<tonic::Status>() || relayed_transport_failure(&inner.to_string())
        }
        other => {
            let message = other.message();
            message.contains("Distributed DataFusion worker")
                || message.contains("Error sending plan to worker")
        }
    };
    let refused = match root {
        DataFusionError::External(inner) => inner
            .downcast_ref::<tonic::Status>()
            .is_some_and(|s| s.code() == tonic::Code::Unauthenticated),
        other => other.message().contains("Unauthenticated"),
    };
    if refused {
        return Error::new(
            ErrorKind::WorkerUnavailable,
            "a worker refused this coordinator's cluster secret: set the same \
             `distributed.secret` (SHARDLAKE_DISTRIBUTED__SECRET) on coordinators and workers",
        );
    }
    if from_worker {
        return Error::new(
            ErrorKind::WorkerUnavailable,
            format!(
                "a worker running part of this query failed or could not be reached; \
                 nothing was answered, retry the query: {}",
                root.message()
            ),
        );
    }
    Error::from(e)
}

/// Whether `message` is a transport failure one worker met reaching
/// another (a shuffle from a worker that died or hangs) and relayed to the
/// coordinator: datafusion-distributed sends errors between processes as
/// text (its `DistributedDataFusionGenericError`, private), so the
/// `tonic::Status` is gone and only its words are left: tonic's
/// description of `Unavailable`, or a transport error.
fn relayed_transport_failure(message: &str) -> bool {
    message.contains("The service is currently unavailable")
        || message.contains("tonic::transport::Error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_plan::union::UnionExec;
    use std::sync::Arc;

    #[test]
    fn a_transport_failure_relayed_by_another_worker_is_worker_unavailable() {
        // What a worker sends when its shuffle from a hung worker timed out.
        let relayed = DataFusionError::External(Box::new(std::io::Error::other(
            "code: 'The service is currently unavailable', message: \"http2 error\", \
             source: tonic::transport::Error(Transport, hyper::Error(Http2, KeepAliveTimedOut))",
        )));
        assert_eq!(classify(relayed).kind(), ErrorKind::WorkerUnavailable);
        let direct = DataFusionError::External(Box::new(tonic::Status::unavailable("gone")));
        assert_eq!(classify(direct).kind(), ErrorKind::WorkerUnavailable);
        let other = DataFusionError::External(Box::new(std::io::Error::other("disk full")));
        assert_ne!(classify(other).kind(), ErrorKind::WorkerUnavailable);
    }

    #[test]
    fn only_plans_of_scans_are_distributed() {
        let schema = Arc::new(arrow::datatypes::Schema::empty());
        let empty: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(Arc::clone(&schema)));
        assert_eq!(scan_bytes(&empty), Some(0));
        let precomputed: Arc<dyn ExecutionPlan> =
            Arc::new(crate::precomputed::PrecomputedExec::new(
                "FileStatisticsExec",
                String::new(),
                Arc::clone(&schema),
                vec![],
            ));
        assert_eq!(scan_bytes(&precomputed), None);
        let union = UnionExec::try_new(vec![Arc::clone(&empty), precomputed]).expect("union");
        assert_eq!(
            scan_bytes(&union),
            None,
            "one leaf that must stay here keeps all"
        );
        let distributed: Arc<dyn ExecutionPlan> = Arc::new(DistributedExec::new(empty));
        assert_eq!(scan_bytes(&distributed), None);
    }
}
