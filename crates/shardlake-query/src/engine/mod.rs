//! `CrossShardQuery`: one DataFusion engine over the lake, with per-query
//! snapshot pinning, scope, timeouts, memory bounds, scan statistics and the
//! result cache.
//!
//! This module holds the engine handle: its settings, how it is built, how a
//! query pins its snapshot and gets a session of its own, and its counters.
//! What happens to a query lives in the children: `guard` decides which
//! SQL may run, `dialect` holds the Postgres dialect's parser and session
//! template, `query` prepares, plans and runs a query (through the result
//! cache), and `stream` runs one as a stream of record batches.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use serde::Serialize;
use shardlake_lake::Lake;
use shardlake_lake::executor::CpuRuntime;
use shardlake_lake::pins::OpenPin;

use crate::cache::{CacheConfig, CacheMetrics, ResultCache};
use crate::context::QueryContext;
use crate::error::{Error, ErrorKind, Result};
use crate::optimizer::{AnswerFromStatistics, ReadInFileOrder};
use crate::provider::{EventsTable, THINGS_SQL, ThingsTable};
use crate::recorder::ScanRecorder;
use crate::scope::Scope;
use crate::snapshot::{LakeSnapshots, SnapshotFiles};

mod dialect;
mod guard;
mod query;
mod stream;

pub use dialect::{POSTGRES_VERSION, SqlDialect};
pub use query::{Description, PreparedQuery, QueryResult, SqlQuery};
pub use stream::QueryStream;

/// Engine settings. Also the server's `[query]` section (`freshness` is
/// `freshness_ms` there); the memory limit and the timeout are the server's
/// `[limits]`, the cache its `[cache]` section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Partitions (parallel streams) per query; defaults to the core count.
    pub target_partitions: usize,
    /// Bytes of memory all running queries may use together; operators that
    /// can spill (sorts, aggregations, joins) spill to disk beyond it, the
    /// rest fail with `resources_exhausted`.
    #[serde(skip)]
    pub memory_limit: usize,
    /// Timeout of a query that does not set its own (`None`: no limit).
    #[serde(skip)]
    pub default_timeout: Option<Duration>,
    /// Result cache.
    #[serde(skip)]
    pub cache: CacheConfig,
    /// Parsed manifests kept in memory.
    pub manifest_cache_entries: u64,
    /// How old the current snapshot a query pins may be: within it, the
    /// last look at the catalog is reused (this process's own commits are
    /// seen at once regardless). Zero looks at the catalog for every query.
    #[serde(
        rename = "freshness_ms",
        with = "shardlake_core::serde_duration::millis"
    )]
    pub freshness: Duration,
    /// Bytes of memory the maintained state of `things` may hold (the
    /// latest event of every entity, per namespace, folded commit by
    /// commit; least recently used namespaces are dropped beyond it). Zero
    /// derives `things` from the events on every query.
    pub things_state_bytes: u64,
    /// Worker threads of the runtime queries plan and run on, apart from
    /// the caller's (a server's HTTP runtime keeps answering while queries
    /// use every core). Zero runs queries as tasks of the caller's runtime.
    pub cpu_threads: usize,
    /// The workers that run large queries' scans (the server's
    /// `[distributed]`); none runs everything here.
    #[serde(skip)]
    pub cluster: crate::distributed::ClusterConfig,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            target_partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            memory_limit: 1024 * 1024 * 1024,
            default_timeout: Some(Duration::from_secs(60)),
            cache: CacheConfig::default(),
            manifest_cache_entries: 100_000,
            freshness: Duration::ZERO,
            things_state_bytes: 256 * 1024 * 1024,
            cpu_threads: 0,
            cluster: crate::distributed::ClusterConfig::default(),
        }
    }
}

/// Optimized plans kept for reuse (a plan of a typical query is a few KB).
const PLANS_KEPT: u64 = 1_000;

/// Engine-wide counters.
#[derive(Debug, Clone, Serialize)]
pub struct EngineMetrics {
    /// Result cache counters.
    pub cache: CacheMetrics,
    /// Bytes currently reserved in the memory pool.
    pub memory_reserved: usize,
    /// The memory pool's limit.
    pub memory_limit: usize,
    /// Bytes the maintained state of `things` holds (estimated), within
    /// `things_state_bytes`.
    pub things_state_bytes: u64,
    /// Namespaces whose `things` state is kept.
    pub things_state_namespaces: u64,
}

struct Inner {
    config: QueryConfig,
    snapshots: Arc<LakeSnapshots>,
    base: SessionState,
    /// The Postgres dialect's session template ([`dialect`]), made when a
    /// query first asks for it.
    postgres: OnceLock<SessionState>,
    cache: ResultCache,
    /// Per dialect ([`SqlDialect::memo`]): SQL text as sent to its
    /// normalized form (the cache key's query), so a repeated query is not
    /// parsed again to find its cache entry. One memo per dialect, so no
    /// text of one is ever taken for the other's.
    normalized: [moka::sync::Cache<String, Arc<str>>; 2],
    /// Per dialect: SQL text as sent to its optimized logical plan, for
    /// plans that may be reused (`SqlQuery::optimized_plan`): a repeated
    /// query is neither parsed nor optimized again.
    plans: [moka::sync::Cache<String, LogicalPlan>; 2],
    /// Where queries run (`None`: on the caller's runtime).
    cpu: Option<CpuRuntime>,
    /// The `things` table, for the size of its state.
    things: Arc<ThingsTable>,
    /// The `events` table (for the Postgres dialect's template).
    events: Arc<EventsTable>,
}

/// Global SQL over all shards' events. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct CrossShardQuery {
    inner: Arc<Inner>,
}

impl CrossShardQuery {
    /// An engine over `lake`.
    pub async fn open(lake: &Lake, config: QueryConfig) -> Result<Self> {
        let warehouse = lake.warehouse();
        let snapshots = Arc::new(LakeSnapshots::new(
            lake.table().clone(),
            config.manifest_cache_entries,
            config.freshness,
        ));
        let cpu = match config.cpu_threads {
            0 => None,
            n => Some(CpuRuntime::start(n)?),
        };
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(config.memory_limit)))
            .build_arc()?;
        runtime.register_object_store(&warehouse.store_url(), warehouse.store());
        let store_url = ObjectStoreUrl::parse(warehouse.store_url().as_str())?;
        let session = SessionConfig::new()
            .with_target_partitions(config.target_partitions.max(1))
            .with_information_schema(true);
        // Keep an existing order (a merge, order-keeping repartitions)
        // rather than re-sort for parallelism. Scans have an order only
        // when ReadInFileOrder gave them one, because a sort wanted it: a
        // window over each entity's events in order ran 15-25% faster
        // (docs/benchmarks.md, q15).
        let mut session = session;
        session.options_mut().optimizer.prefer_existing_sort = true;
        let mut state = with_our_rules(
            SessionStateBuilder::new()
                .with_config(session)
                .with_runtime_env(runtime)
                .with_default_features()
                .build(),
        );
        if !config.cluster.workers.is_empty() {
            state = crate::distributed::coordinator(state, &config.cluster)?;
        }
        let mut ctx = SessionContext::new_with_state(state);
        crate::udf::register_functions(&mut ctx)?;
        let events = Arc::new(EventsTable::new(Arc::clone(&snapshots), store_url));
        ctx.register_table("events", Arc::clone(&events) as _)?;
        let view = ctx.sql(THINGS_SQL).await?.into_unoptimized_plan();
        let things = Arc::new(ThingsTable::new(
            Arc::clone(&events),
            view,
            config.things_state_bytes,
        ));
        ctx.register_table("things", Arc::clone(&things) as _)?;
        Ok(Self {
            inner: Arc::new(Inner {
                cache: ResultCache::new(config.cache.clone()),
                normalized: std::array::from_fn(|_| {
                    moka::sync::Cache::new(config.cache.max_entries.max(1_000))
                }),
                plans: std::array::from_fn(|_| moka::sync::Cache::new(PLANS_KEPT)),
                config,
                snapshots,
                base: ctx.state(),
                postgres: OnceLock::new(),
                cpu,
                things,
                events,
            }),
        })
    }

    /// Empties the result cache.
    pub async fn clear_cache(&self) {
        self.inner.cache.clear().await;
    }

    /// The runtime queries run on, if they have one of their own: the
    /// emitter and maintenance of the same process run there too.
    pub fn cpu_runtime(&self) -> Option<CpuRuntime> {
        self.inner.cpu.clone()
    }

    /// Cache and memory counters.
    pub async fn metrics(&self) -> EngineMetrics {
        let (things_state_bytes, things_state_namespaces) = self.inner.things.state_size();
        EngineMetrics {
            cache: self.inner.cache.metrics().await,
            memory_reserved: self.inner.base.runtime_env().memory_pool.reserved(),
            memory_limit: self.inner.config.memory_limit,
            things_state_bytes,
            things_state_namespaces,
        }
    }

    /// The live files of the current snapshot, as the catalog says now
    /// (whatever the freshness bound: a migration's catch-up relies on it).
    pub async fn current_snapshot(&self) -> Result<Arc<SnapshotFiles>> {
        self.inner.snapshots.pin_latest().await
    }

    /// The snapshot that was current at `at` (time travel): the newest
    /// retained one committed at or before it.
    pub async fn snapshot_as_of(&self, at: chrono::DateTime<chrono::Utc>) -> Result<i64> {
        self.inner
            .snapshots
            .snapshot_as_of(at.timestamp_millis())
            .await
    }

    /// The session template of `dialect`.
    fn template(&self, dialect: SqlDialect) -> Result<&SessionState> {
        match dialect {
            SqlDialect::DataFusion => Ok(&self.inner.base),
            SqlDialect::Postgres => {
                if let Some(made) = self.inner.postgres.get() {
                    return Ok(made);
                }
                let made = dialect::postgres_template(
                    &self.inner.base,
                    &[
                        ("events", Arc::clone(&self.inner.events) as _),
                        ("things", Arc::clone(&self.inner.things) as _),
                    ],
                )?;
                // Two first queries at once both make one; either will do.
                Ok(self.inner.postgres.get_or_init(|| made))
            }
        }
    }

    /// A session for one query: the template of its dialect plus the
    /// query's context (one copy of the template per query: planning and
    /// execution use it by reference).
    fn session(
        &self,
        dialect: SqlDialect,
        snapshot: &Arc<SnapshotFiles>,
        scope: &Scope,
    ) -> Result<(SessionState, Arc<ScanRecorder>)> {
        let recorder = Arc::new(ScanRecorder::default());
        let mut state = self.template(dialect)?.clone();
        state.config_mut().set_extension(Arc::new(QueryContext {
            snapshot: Arc::clone(snapshot),
            recorder: Arc::clone(&recorder),
            scope: scope.clone(),
        }));
        // The query's start: `now()` and friends are this time.
        let options = Arc::clone(state.config().options());
        state.execution_props_mut().mark_start_execution(options);
        Ok((state, recorder))
    }
}

/// `state` with shardlake's own physical optimizer rules
/// ([`crate::optimizer`]). Grouped aggregates answered from file
/// statistics are placed right after DataFusion's own
/// answers from statistics (`aggregate_statistics`, ungrouped ones). The
/// rules after it then never see the scan it removed (each of them copied
/// its hundreds of files: q4 planned in ~1 ms on 672 files when the rule
/// ran last), nor plan a repartition and merge of its few rows; the
/// sanity check at the end still covers what it made.
fn with_our_rules(state: SessionState) -> SessionState {
    let mut rules = state.physical_optimizers().to_vec();
    let at = rules
        .iter()
        .position(|r| r.name() == "aggregate_statistics")
        .map_or(rules.len(), |i| i + 1);
    rules.insert(at, Arc::new(AnswerFromStatistics::default()));
    // Before EnforceDistribution and EnforceSorting, which plan the merge
    // of the file chains it declares ordered.
    rules.insert(at + 1, Arc::new(ReadInFileOrder));
    SessionStateBuilder::new_from_existing(state)
        .with_physical_optimizer_rules(rules)
        .build()
}

impl CrossShardQuery {
    /// Pins snapshot `snapshot_id`, else the one current at `as_of_ms`,
    /// else the current one, and holds it until the pin drops.
    ///
    /// The current snapshot is the one last seen within the freshness
    /// bound, or with `latest` what the catalog says now.
    async fn pin(
        &self,
        snapshot_id: Option<i64>,
        as_of_ms: Option<i64>,
        latest: bool,
    ) -> Result<(Arc<SnapshotFiles>, Option<OpenPin>)> {
        let snapshots = &self.inner.snapshots;
        let id = match (snapshot_id, as_of_ms) {
            (Some(id), _) => Some(id),
            (None, Some(at)) => Some(snapshots.snapshot_as_of(at).await?),
            (None, None) => None,
        };
        match id {
            Some(id) => {
                let hold = snapshots.hold(id);
                Ok((snapshots.pin_at(id).await?, Some(hold)))
            }
            None => {
                let files = match latest {
                    true => snapshots.pin_latest().await?,
                    false => snapshots.pin().await?,
                };
                let hold = files.snapshot_id.map(|id| snapshots.hold(id));
                Ok((files, hold))
            }
        }
    }

    /// The live data files of snapshot `snapshot_id` (else the one current
    /// at `as_of`, else the current one) in `scope`'s namespaces: exactly
    /// what an outside reader (DuckDB, pyarrow) must read to get the
    /// engine's answer. Listing a table's directory instead also finds the
    /// files compaction replaced, which are kept for time travel until
    /// expiry and cleanup remove them, and counts their rows twice.
    pub async fn live_files(
        &self,
        snapshot_id: Option<i64>,
        as_of: Option<chrono::DateTime<chrono::Utc>>,
        scope: &Scope,
    ) -> Result<SnapshotFiles> {
        let (files, _hold) = self
            .pin(snapshot_id, as_of.map(|t| t.timestamp_millis()), false)
            .await?;
        Ok(SnapshotFiles {
            snapshot_id: files.snapshot_id,
            files: files
                .files
                .iter()
                .filter(|f| scope.allows(&f.namespace))
                .cloned()
                .collect(),
            namespaces: files
                .namespaces
                .iter()
                .filter(|n| scope.allows(n))
                .cloned()
                .collect(),
        })
    }
}

/// The most a result may hold. A query whose result grows past it fails
/// with [`ErrorKind::ResultTooLarge`] as soon as it does, instead of
/// buffering the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultLimit {
    /// Rows.
    pub max_rows: u64,
    /// Bytes of Arrow memory.
    pub max_bytes: u64,
}

impl ResultLimit {
    /// No limit.
    pub const NONE: Self = Self {
        max_rows: u64::MAX,
        max_bytes: u64::MAX,
    };

    /// The error of a result with more than `max_rows` rows.
    pub fn too_many_rows(&self) -> Error {
        Error::new(
            ErrorKind::ResultTooLarge,
            format!(
                "the result has more than {} rows; add a LIMIT or aggregate further",
                self.max_rows
            ),
        )
    }

    /// Adds `batch` to `rows` and `bytes`, failing once either is over the limit.
    fn account(&self, rows: &mut u64, bytes: &mut u64, batch: &RecordBatch) -> Result<()> {
        *rows += batch.num_rows() as u64;
        *bytes += batch.get_array_memory_size() as u64;
        if *rows > self.max_rows {
            return Err(self.too_many_rows());
        }
        if *bytes > self.max_bytes {
            return Err(Error::new(
                ErrorKind::ResultTooLarge,
                format!(
                    "the result is larger than {} bytes; select fewer columns or rows",
                    self.max_bytes
                ),
            ));
        }
        Ok(())
    }
}
