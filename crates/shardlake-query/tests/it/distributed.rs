//! Queries on a cluster: two workers (`serve_worker`, the server of
//! `shardlake worker`) on loopback sockets and a coordinator engine over the
//! fixture lake. Answers equal the local engine's, statistics too, the scope
//! holds on the workers, a worker demands the secret, and a dead worker
//! fails the query with a retryable error instead of a partial answer.

use std::net::SocketAddr;

use arrow::array::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use shardlake_query::distributed::{ClusterConfig, WorkerSetup, serve_worker};
use shardlake_query::{CrossShardQuery, ErrorKind, QueryConfig, Scope};

use crate::fixture::Fixture;

pub const SECRET: &str = "cluster-secret-0123456789";

/// A worker serving on a loopback port, on a runtime of its own so that
/// killing it ends every connection it holds at once, as a dead process
/// would.
pub struct TestWorker {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestWorker {
    pub async fn start(fixture: &Fixture, secret: Option<&str>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let warehouse = fixture.lake.warehouse();
        let setup = WorkerSetup {
            store_url: warehouse.store_url(),
            store: warehouse.store(),
            secret: secret.map(str::to_owned),
            memory_limit: 512 * 1024 * 1024,
            name: addr.to_string(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            serve_worker(listener, setup, std::future::pending())
                .await
                .expect("worker serves");
        });
        Self {
            addr,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> url::Url {
        format!("http://{}", self.addr).parse().expect("url")
    }

    /// Stops it at once: its tasks and connections are gone.
    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A coordinator over `fixture` whose every file-reading query runs on
/// `workers`.
pub async fn coordinator(
    fixture: &Fixture,
    workers: &[&TestWorker],
    secret: &str,
) -> CrossShardQuery {
    CrossShardQuery::open(
        &fixture.lake,
        QueryConfig {
            target_partitions: 2,
            cache: shardlake_query::CacheConfig {
                enabled: false,
                ..Default::default()
            },
            cluster: ClusterConfig {
                workers: workers.iter().map(|w| w.url()).collect(),
                min_scan_bytes: 0,
                secret: Some(secret.to_owned()),
            },
            ..QueryConfig::default()
        },
    )
    .await
    .expect("coordinator")
}

fn sorted(batches: &[RecordBatch]) -> Vec<String> {
    let text = pretty_format_batches(batches).expect("format").to_string();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

const QUERIES: &[&str] = &[
    "SELECT namespace, count(*) AS n, count(DISTINCT entity_id) AS entities FROM events GROUP BY namespace",
    "SELECT event_type, sum(version) AS v FROM events WHERE shard_id IN (1, 3) GROUP BY event_type",
    "SELECT partition_key, max(seq) AS s FROM events WHERE namespace = 'tenant-002' GROUP BY partition_key",
    "SELECT e.namespace, count(*) FROM events e JOIN (SELECT DISTINCT partition_key FROM events WHERE event_type = 'created') k \
     ON e.partition_key = k.partition_key GROUP BY e.namespace",
    "SELECT namespace, shard_id, seq FROM events WHERE json_get_str(payload, 'status') IS NOT NULL ORDER BY namespace, shard_id, seq LIMIT 50",
    "SELECT date_trunc('hour', ts) AS h, count(*) FROM events GROUP BY 1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_answers_and_statistics_equal_the_local_run() {
    let fixture = Fixture::build(4).await;
    let (a, b) = (
        TestWorker::start(&fixture, Some(SECRET)).await,
        TestWorker::start(&fixture, Some(SECRET)).await,
    );
    let cluster = coordinator(&fixture, &[&a, &b], SECRET).await;
    let local = fixture
        .engine(QueryConfig {
            target_partitions: 2,
            cache: shardlake_query::CacheConfig {
                enabled: false,
                ..Default::default()
            },
            ..QueryConfig::default()
        })
        .await;
    let mut spread = 0;
    for sql in QUERIES {
        let here = local.sql(*sql).await.expect("local");
        let there = cluster.sql(*sql).await.expect("distributed");
        assert_eq!(sorted(&there.batches), sorted(&here.batches), "{sql}");
        let (h, t) = (&here.stats, &there.stats);
        assert_eq!(h.workers, 0, "{sql}");
        if t.workers > 0 {
            spread += 1;
            assert!(t.tasks >= t.workers, "{sql}: {t:?}");
        }
        assert_eq!(t.files_total, h.files_total, "{sql}");
        assert_eq!(
            t.worker_bytes_scanned.values().sum::<u64>(),
            if t.workers > 0 { t.bytes_scanned } else { 0 },
            "{sql}: {t:?}"
        );
        if sql.contains("LIMIT") {
            // A top-k stops reading once its dynamic filter rules the rest
            // out, and how soon depends on which rows arrive first (here
            // and there alike): how much was read legitimately differs.
            assert!(
                t.files_scanned >= 1 && t.files_scanned <= t.files_total && t.bytes_scanned > 0,
                "{sql}: {t:?}"
            );
            continue;
        }
        // What was read is the same, wherever it was read.
        assert_eq!(t.files_scanned, h.files_scanned, "{sql}");
        assert_eq!(t.partitions_scanned, h.partitions_scanned, "{sql}");
        assert_eq!(t.shards_queried, h.shards_queried, "{sql}");
        assert_eq!(t.bytes_scanned, h.bytes_scanned, "{sql}: {t:?} vs {h:?}");
        assert_eq!(t.rows_scanned, h.rows_scanned, "{sql}");
    }
    assert!(
        spread >= 4,
        "most of the queries ran on the workers ({spread})"
    );
    // EXPLAIN shows the stages.
    let plan = cluster
        .sql("EXPLAIN SELECT namespace, count(DISTINCT entity_id) FROM events GROUP BY namespace")
        .await
        .expect("explain");
    let text = pretty_format_batches(&plan.batches)
        .expect("format")
        .to_string();
    assert!(
        text.contains("DistributedExec") && text.contains("Network"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scope_holds_on_the_workers_and_the_secret_is_demanded() {
    let fixture = Fixture::build(4).await;
    let (a, b) = (
        TestWorker::start(&fixture, Some(SECRET)).await,
        TestWorker::start(&fixture, Some(SECRET)).await,
    );
    let cluster = coordinator(&fixture, &[&a, &b], SECRET).await;
    // Reads data (a count per namespace alone is answered from metadata).
    let scoped = cluster
        .sql("SELECT namespace, count(*), count(DISTINCT entity_id) FROM events GROUP BY namespace")
        .with_scope(Scope::namespaces(["tenant-001"]))
        .await
        .expect("scoped");
    assert!(scoped.stats.workers > 0, "{:?}", scoped.stats);
    let lines = sorted(&scoped.batches);
    let expected = fixture.in_namespace("tenant-001").len().to_string();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("tenant-001") && lines[0].contains(&expected),
        "{lines:?}"
    );
    // Rows of other namespaces are filtered on the worker even when the SQL
    // does not name a namespace at all.
    let rows = cluster
        .sql("SELECT DISTINCT namespace FROM events WHERE version >= 0")
        .with_scope(Scope::namespaces(["tenant-003"]))
        .await
        .expect("scoped scan");
    assert_eq!(sorted(&rows.batches).len(), 1);
    assert!(sorted(&rows.batches)[0].contains("tenant-003"));

    // A coordinator without the right secret is refused by the workers.
    let wrong = coordinator(&fixture, &[&a, &b], "not-the-cluster-secret").await;
    let refused = wrong
        .sql("SELECT namespace, count(DISTINCT entity_id) FROM events GROUP BY namespace")
        .await
        .expect_err("refused");
    assert_eq!(refused.kind(), ErrorKind::WorkerUnavailable, "{refused}");
    assert!(refused.to_string().contains("secret"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_fails_the_query_with_a_retryable_error() {
    let fixture = Fixture::build(4).await;
    let (a, b) = (
        TestWorker::start(&fixture, Some(SECRET)).await,
        TestWorker::start(&fixture, Some(SECRET)).await,
    );
    let cluster = coordinator(&fixture, &[&a, &b], SECRET).await;
    let sql = "SELECT namespace, count(DISTINCT entity_id) FROM events GROUP BY namespace";
    cluster.sql(sql).await.expect("both alive");
    b.kill();
    let error = cluster.sql(sql).await.expect_err("a worker is gone");
    assert_eq!(error.kind(), ErrorKind::WorkerUnavailable, "{error}");
    assert!(error.kind().is_retryable());
    drop(a);
}
