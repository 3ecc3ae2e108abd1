//! `CrossShardQuery`: one DataFusion engine over the lake, with per-query
//! snapshot pinning, scope, timeouts, memory bounds, scan statistics and the
//! result cache.

use std::future::IntoFuture;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::config::Dialect;
use datafusion::execution::SessionState;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use serde::Serialize;
use shardlake_lake::Lake;
use shardlake_lake::executor::{self, CpuRuntime};
use shardlake_lake::pins::OpenPin;
use tokio_util::task::AbortOnDropHandle;

use crate::cache::{CacheConfig, CacheKey, CacheMetrics, CachedResult, Lookup, ResultCache};
use crate::context::QueryContext;
use crate::error::{Error, ErrorKind, Result};
use crate::provider::{EventsTable, THINGS_SQL};
use crate::recorder::ScanRecorder;
use crate::scope::Scope;
use crate::snapshot::{LakeSnapshots, SnapshotFiles};
use crate::stats::ScanStats;
use crate::typed::{self, AggregateQuery, EventsQuery, ReplayQuery, ThingsQuery};

/// The longest SQL text whose normalized form is memoized.
const MEMOIZED_SQL_BYTES: usize = 16 * 1024;

/// Engine settings.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryConfig {
    /// Partitions (parallel streams) per query; defaults to the core count.
    pub target_partitions: usize,
    /// Bytes of memory all running queries may use together; operators that
    /// can spill (sorts, aggregations, joins) spill to disk beyond it, the
    /// rest fail with `resources_exhausted`.
    pub memory_limit: usize,
    /// Timeout of a query that does not set its own (`None`: no limit).
    pub default_timeout: Option<Duration>,
    /// Result cache.
    pub cache: CacheConfig,
    /// Parsed manifests kept in memory.
    pub manifest_cache_entries: u64,
    /// How old the current snapshot a query pins may be: within it, the
    /// last look at the catalog is reused (this process's own commits are
    /// seen at once regardless). Zero looks at the catalog for every query.
    pub freshness: Duration,
    /// Worker threads of the runtime queries plan and run on, apart from
    /// the caller's (a server's HTTP runtime keeps answering while queries
    /// use every core). Zero runs queries as tasks of the caller's runtime.
    pub cpu_threads: usize,
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
            cpu_threads: 0,
        }
    }
}

/// A query's answer: schema, rows and what it took.
#[derive(Debug, Clone)]
pub struct QueryResult {
    /// Result schema.
    pub schema: SchemaRef,
    /// Result rows.
    pub batches: Vec<RecordBatch>,
    /// Scan statistics.
    pub stats: ScanStats,
    /// Rendered JSON columns and rows, shared with the cache entry.
    pub(crate) json: Arc<std::sync::OnceLock<bytes::Bytes>>,
}

impl QueryResult {
    /// `cached`'s rows with `stats`, sharing its rendered JSON.
    fn from_cached(cached: &CachedResult, stats: ScanStats) -> Self {
        Self {
            schema: Arc::clone(&cached.schema),
            batches: cached.batches.clone(),
            stats,
            json: Arc::clone(&cached.json),
        }
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Engine-wide counters.
#[derive(Debug, Clone, Serialize)]
pub struct EngineMetrics {
    /// Result cache counters.
    pub cache: CacheMetrics,
    /// Bytes currently reserved in the memory pool.
    pub memory_reserved: usize,
    /// The memory pool's limit.
    pub memory_limit: usize,
}

struct Inner {
    config: QueryConfig,
    snapshots: Arc<LakeSnapshots>,
    base: SessionState,
    cache: ResultCache,
    /// SQL text as sent to its normalized form (the cache key's query), so
    /// a repeated query is not parsed again to find its cache entry.
    normalized: moka::sync::Cache<String, Arc<str>>,
    /// Where queries run (`None`: on the caller's runtime).
    cpu: Option<CpuRuntime>,
}

/// Global SQL over all shards' events. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct CrossShardQuery {
    inner: Arc<Inner>,
}

/// What a request asks for.
#[derive(Debug, Clone)]
enum Request {
    Sql(String),
    Things(ThingsQuery),
    Events(EventsQuery),
    Aggregate(AggregateQuery),
    Replay(ReplayQuery),
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
        let mut ctx = SessionContext::new_with_config_rt(session, runtime);
        datafusion_functions_json::register_all(&mut ctx)?;
        ctx.register_udf(crate::udf::partition_udf());
        ctx.register_table(
            "events",
            Arc::new(EventsTable::new(Arc::clone(&snapshots), store_url)),
        )?;
        let things = ctx.sql(THINGS_SQL).await?.into_view();
        ctx.register_table("things", things)?;
        Ok(Self {
            inner: Arc::new(Inner {
                cache: ResultCache::new(config.cache.clone()),
                normalized: moka::sync::Cache::new(config.cache.max_entries.max(1_000)),
                config,
                snapshots,
                base: ctx.state(),
                cpu,
            }),
        })
    }

    /// A SQL query, configured with the builder's methods and run by
    /// awaiting it (or [`SqlQuery::stream`]).
    pub fn sql(&self, sql: impl Into<String>) -> SqlQuery {
        self.request(Request::Sql(sql.into()))
    }

    /// Current state of entities (`queryThings`).
    pub fn query_things(&self, query: ThingsQuery) -> SqlQuery {
        self.request(Request::Things(query))
    }

    /// Events matching conditions (`queryEvents`).
    pub fn query_events(&self, query: EventsQuery) -> SqlQuery {
        self.request(Request::Events(query))
    }

    /// Grouped aggregates (`aggregate`).
    pub fn aggregate(&self, query: AggregateQuery) -> SqlQuery {
        self.request(Request::Aggregate(query))
    }

    /// The events of some keys, a namespace or a shard in `position` order
    /// (the lake as replay source). Pin a snapshot with
    /// [`ReplayQuery::snapshot_id`] (or [`SqlQuery::at_snapshot`]) and
    /// stream it with [`SqlQuery::stream`].
    pub fn replay(&self, query: ReplayQuery) -> SqlQuery {
        let snapshot = query.snapshot_id;
        let mut q = self.request(Request::Replay(query));
        q.snapshot_id = snapshot;
        q
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
        EngineMetrics {
            cache: self.inner.cache.metrics().await,
            memory_reserved: self.inner.base.runtime_env().memory_pool.reserved(),
            memory_limit: self.inner.config.memory_limit,
        }
    }

    /// The live files of the current snapshot, as the catalog says now
    /// (whatever the freshness bound: a migration's catch-up relies on it).
    pub async fn current_snapshot(&self) -> Result<Arc<SnapshotFiles>> {
        self.inner.snapshots.pin_latest().await
    }

    /// `sql` in normalized form, checked to be read-only (memoized).
    fn normalize(&self, sql: &str) -> Result<Arc<str>> {
        if let Some(known) = self.inner.normalized.get(sql) {
            return Ok(known);
        }
        let normalized: Arc<str> = normalize_read_only(&self.inner.base, sql)?.into();
        // Entries are counted, not weighed: only texts of a sane size are
        // kept (a generated 10 MB IN-list is parsed each time instead).
        if sql.len() <= MEMOIZED_SQL_BYTES {
            self.inner
                .normalized
                .insert(sql.to_owned(), Arc::clone(&normalized));
        }
        Ok(normalized)
    }

    fn request(&self, request: Request) -> SqlQuery {
        SqlQuery {
            engine: self.clone(),
            request,
            timeout: self.inner.config.default_timeout,
            use_cache: self.inner.config.cache.enabled,
            scope: Scope::All,
            limit: ResultLimit::NONE,
            snapshot_id: None,
            as_of_ms: None,
            latest: false,
            render_json: false,
            guard: None,
        }
    }

    /// The snapshot that was current at `at` (time travel): the newest
    /// retained one committed at or before it.
    pub async fn snapshot_as_of(&self, at: chrono::DateTime<chrono::Utc>) -> Result<i64> {
        self.inner
            .snapshots
            .snapshot_as_of(at.timestamp_millis())
            .await
    }

    /// A session for one query: the engine's template plus the query's context.
    fn session(
        &self,
        snapshot: &Arc<SnapshotFiles>,
        scope: &Scope,
    ) -> (SessionContext, Arc<ScanRecorder>) {
        let recorder = Arc::new(ScanRecorder::default());
        let mut state = self.inner.base.clone();
        state.config_mut().set_extension(Arc::new(QueryContext {
            snapshot: Arc::clone(snapshot),
            recorder: Arc::clone(&recorder),
            scope: scope.clone(),
        }));
        (SessionContext::new_with_state(state), recorder)
    }
}

/// Allows queries only: SELECT, EXPLAIN (of a query), SHOW and DESCRIBE.
/// Everything that defines, changes or reads anything but the lake's
/// tables (DDL, DML, COPY, SET, CREATE EXTERNAL TABLE) is refused before
/// planning, and planning re-checks with DataFusion's own `SQLOptions`.
///
/// Returns the statement in canonical form (the result cache's key):
/// keywords and whitespace as the parser prints them, and unquoted
/// identifiers and function names in lower case, which is how DataFusion
/// resolves them anyway.
fn normalize_read_only(state: &SessionState, sql: &str) -> Result<String> {
    let mut statement = state.sql_to_statement(sql, &Dialect::Generic)?;
    let allowed = match &statement {
        Statement::Statement(s) => {
            use datafusion::sql::sqlparser::ast::Statement as S;
            match s.as_ref() {
                S::Query(_)
                | S::ShowTables { .. }
                | S::ShowColumns { .. }
                | S::ExplainTable { .. } => true,
                S::Explain { statement, .. } => matches!(statement.as_ref(), S::Query(_)),
                _ => false,
            }
        }
        Statement::Explain(explain) => matches!(
            explain.statement.as_ref(),
            Statement::Statement(s) if matches!(s.as_ref(), datafusion::sql::sqlparser::ast::Statement::Query(_))
        ),
        _ => false,
    };
    if !allowed {
        let kind = statement.to_string();
        let first = kind
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        return Err(Error::new(
            ErrorKind::NotAllowed,
            format!("only queries can run here; `{first} ...` is not allowed"),
        ));
    }
    if let Statement::Statement(s) = &mut statement {
        lowercase_identifiers(s.as_mut());
    }
    Ok(statement.to_string())
}

fn lowercase_identifiers(statement: &mut datafusion::sql::sqlparser::ast::Statement) {
    use std::ops::ControlFlow;

    use datafusion::sql::sqlparser::ast::{
        Expr, Ident, ObjectNamePart, visit_expressions_mut, visit_relations_mut,
    };
    fn lower(ident: &mut Ident) {
        if ident.quote_style.is_none() {
            ident.value = ident.value.to_lowercase();
        }
    }
    fn lower_parts(parts: &mut [ObjectNamePart]) {
        for part in parts {
            if let ObjectNamePart::Identifier(ident) = part {
                lower(ident);
            }
        }
    }
    let _ = visit_expressions_mut(statement, |expr| {
        match expr {
            Expr::Identifier(ident) => lower(ident),
            Expr::CompoundIdentifier(idents) => idents.iter_mut().for_each(lower),
            Expr::Function(f) => lower_parts(&mut f.name.0),
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = visit_relations_mut(statement, |name| {
        lower_parts(&mut name.0);
        ControlFlow::<()>::Continue(())
    });
}

fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
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

/// A query being configured. Await it for the whole result, or call
/// [`SqlQuery::stream`] for record batches as they are produced.
#[must_use = "a query does nothing until awaited or streamed"]
#[derive(Clone)]
pub struct SqlQuery {
    engine: CrossShardQuery,
    request: Request,
    timeout: Option<Duration>,
    use_cache: bool,
    scope: Scope,
    limit: ResultLimit,
    /// Pinned snapshot; `None`: the current one (or the one of `as_of`).
    snapshot_id: Option<i64>,
    /// Time travel: the snapshot current at this time (Unix ms).
    as_of_ms: Option<i64>,
    /// Pin the latest snapshot whatever the freshness bound.
    latest: bool,
    /// Render the JSON form of the rows with the result.
    render_json: bool,
    /// Kept until the query's work has ended (see [`PreparedQuery::holding`]).
    guard: Option<Arc<dyn std::any::Any + Send + Sync>>,
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

    /// Adds `batch` to `rows` and `bytes`, failing once either is over the limit.
    fn account(&self, rows: &mut u64, bytes: &mut u64, batch: &RecordBatch) -> Result<()> {
        *rows += batch.num_rows() as u64;
        *bytes += batch.get_array_memory_size() as u64;
        if *rows > self.max_rows {
            return Err(Error::new(
                ErrorKind::ResultTooLarge,
                format!(
                    "the result has more than {} rows; add a LIMIT or aggregate further",
                    self.max_rows
                ),
            ));
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

impl SqlQuery {
    /// Cancels the query if it runs longer than `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Neither reads nor fills the result cache.
    pub fn without_cache(mut self) -> Self {
        self.use_cache = false;
        self
    }

    /// Fails the query once its result holds more than `limit` allows.
    pub fn with_result_limit(mut self, limit: ResultLimit) -> Self {
        self.limit = limit;
        self
    }

    /// Runs against snapshot `snapshot_id` instead of the current one. A
    /// snapshot that is no longer retained fails with
    /// [`ErrorKind::SnapshotExpired`].
    pub fn at_snapshot(mut self, snapshot_id: i64) -> Self {
        self.snapshot_id = Some(snapshot_id);
        self
    }

    /// Runs against the snapshot that was current at `at` (time travel).
    pub fn as_of(mut self, at: chrono::DateTime<chrono::Utc>) -> Self {
        self.as_of_ms = Some(at.timestamp_millis());
        self
    }

    /// Pins the snapshot the catalog says is current now, ignoring the
    /// engine's freshness bound (for a caller that must see another
    /// process's commit of a moment ago).
    pub fn latest(mut self) -> Self {
        self.latest = true;
        self
    }

    /// Renders the result's columns and rows as JSON as part of the query,
    /// on the query runtime, and keeps the bytes with the cached result
    /// (weighed with it): later callers of
    /// [`QueryResult::to_json_bytes`] serve them without rendering again.
    pub fn rendering_json(mut self) -> Self {
        self.render_json = true;
        self
    }

    /// Restricts the query to `scope`'s namespaces.
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Pins the snapshot and works out what identifies the answer (scope,
    /// normalized query, snapshots), without running anything. A query that
    /// is not allowed (DDL, DML, ...) or does not parse fails here.
    pub async fn prepare(self) -> Result<PreparedQuery> {
        let started = Instant::now();
        let (snapshot, hold) = self
            .engine
            .pin(self.snapshot_id, self.as_of_ms, self.latest)
            .await?;
        let key = CacheKey {
            scope: self.scope.clone(),
            query: self.cache_text()?,
            snapshot_ids: snapshot.snapshot_id.into_iter().collect(),
        };
        Ok(PreparedQuery {
            query: self,
            snapshot,
            hold,
            key,
            started,
        })
    }

    /// Plans the request in `ctx` and returns its logical plan. The SQL was
    /// checked to be read-only when the query was prepared.
    async fn plan(&self, ctx: &SessionContext) -> Result<LogicalPlan> {
        let df = match &self.request {
            Request::Sql(sql) => {
                let plan = ctx.state().create_logical_plan(sql).await?;
                // Every refusal of the read-only options is a statement
                // that is not allowed here (decided by type, not by text).
                read_only().verify_plan(&plan).map_err(|refusal| {
                    Error::new(ErrorKind::NotAllowed, refusal.message().into_owned())
                        .with_source(refusal)
                })?;
                ctx.execute_logical_plan(plan).await?
            }
            Request::Things(q) => typed::things(ctx, q).await?,
            Request::Events(q) => typed::events(ctx, q).await?,
            Request::Aggregate(q) => typed::aggregate(ctx, q).await?,
            Request::Replay(q) => {
                let from = match q.since_snapshot {
                    Some(id) => Some(self.engine.inner.snapshots.next_position_after(id).await?),
                    None => None,
                };
                typed::replay(ctx, q, from).await?
            }
        };
        Ok(df.into_unoptimized_plan())
    }

    /// The request's part of the cache key: SQL normalized (memoized, so a
    /// repeated query is not parsed again), a typed query in canonical JSON.
    fn cache_text(&self) -> Result<Arc<str>> {
        fn typed(kind: &str, query: &impl Serialize) -> Result<Arc<str>> {
            let json = serde_json::to_string(query).map_err(|e| {
                Error::new(
                    ErrorKind::Unexpected,
                    format!("unserializable {kind} query: {e}"),
                )
            })?;
            Ok(format!("{kind}:{json}").into())
        }
        match &self.request {
            Request::Sql(sql) => self.engine.normalize(sql),
            Request::Things(q) => typed("things", q),
            Request::Events(q) => typed("events", q),
            Request::Aggregate(q) => typed("aggregate", q),
            Request::Replay(q) => typed("replay", q),
        }
    }

    async fn physical(&self, ctx: &SessionContext) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.plan(ctx).await?;
        Ok(ctx.state().create_physical_plan(&plan).await?)
    }

    /// Runs the query to completion.
    pub async fn execute(self) -> Result<QueryResult> {
        let deadline = self.deadline();
        let prepared = within(deadline, self.prepare()).await?;
        prepared.execute().await
    }

    /// The answer from the result cache if it holds one for the current
    /// snapshot, without running anything (`None` otherwise, or when this
    /// query does not use the cache). Lets a server answer cache hits
    /// without taking a query slot.
    pub async fn cached(&self) -> Result<Option<QueryResult>> {
        self.clone().prepare().await?.cached().await
    }

    /// Runs the query and streams record batches as they are produced. The
    /// result cache is not used. Statistics are available from the stream
    /// once it has ended.
    pub async fn stream(self) -> Result<QueryStream> {
        let deadline = self.deadline();
        let prepared = within(deadline, self.prepare()).await?;
        prepared.stream().await
    }

    /// When the query's timeout ends, counted from now.
    fn deadline(&self) -> Option<(Duration, tokio::time::Instant)> {
        self.timeout.map(|t| (t, tokio::time::Instant::now() + t))
    }
}

/// Awaits `work` until `deadline`, failing with a timeout after it.
async fn within<T>(
    deadline: Option<(Duration, tokio::time::Instant)>,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    match deadline {
        Some((limit, at)) => tokio::time::timeout_at(at, work)
            .await
            .map_err(|_| timeout_error(limit))?,
        None => work.await,
    }
}

/// A query with its snapshot pinned and its answer identified, ready to be
/// answered from the cache, run or streamed ([`SqlQuery::prepare`]).
#[must_use = "a prepared query does nothing until executed or streamed"]
pub struct PreparedQuery {
    query: SqlQuery,
    snapshot: Arc<SnapshotFiles>,
    hold: Option<OpenPin>,
    key: CacheKey,
    started: Instant,
}

impl std::fmt::Debug for PreparedQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedQuery")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl PreparedQuery {
    /// The snapshot the query reads (`None`: an empty table).
    pub fn snapshot_id(&self) -> Option<i64> {
        self.snapshot.snapshot_id
    }

    /// Whether the query pinned a snapshot by id or time (time travel):
    /// its answer can never change, while a query of the current snapshot
    /// may answer differently after the next commit.
    pub fn is_pinned(&self) -> bool {
        self.query.snapshot_id.is_some() || self.query.as_of_ms.is_some()
    }

    /// A digest of what determines the answer: the caller's scope, the
    /// normalized query and the snapshots. Equal fingerprints, equal
    /// answers (an HTTP ETag is made from it).
    pub fn fingerprint(&self) -> u128 {
        use std::hash::Hash;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        self.key.hash(&mut hasher);
        hasher.digest128()
    }

    /// Keeps `guard` until the query's work has really ended, which can be
    /// after its timeout answered (work that cannot be interrupted runs to
    /// its next await point). A server's query slot goes here, so slots
    /// bound the work running, not the requests waiting for it.
    pub fn holding(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self.query.guard = Some(Arc::new(guard));
        self
    }

    /// The answer from the result cache, if it holds one (`None` too when
    /// the query does not use the cache).
    pub async fn cached(&self) -> Result<Option<QueryResult>> {
        let cache = &self.query.engine.inner.cache;
        if !(self.query.use_cache && cache.enabled()) {
            return Ok(None);
        }
        match cache.peek(&self.key).await {
            Some(result) => {
                served_from_cache(&self.query.limit, &result, self.started, false).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Runs the query to completion (through the result cache unless the
    /// query opted out), on the engine's query runtime.
    pub async fn execute(self) -> Result<QueryResult> {
        let deadline = self
            .query
            .timeout
            .map(|t| (t, tokio::time::Instant::from_std(self.started) + t));
        within(deadline, self.run()).await
    }

    async fn run(self) -> Result<QueryResult> {
        let Self {
            query,
            snapshot,
            hold,
            key,
            started,
        } = self;
        let engine = query.engine.clone();
        let use_cache = query.use_cache && engine.inner.cache.enabled();
        let limit = query.limit;
        let work = executor::run(engine.inner.cpu.as_ref(), async move {
            let result = compute(&query, &snapshot, started).await;
            // The pin and the guard end with the work, not with the wait.
            drop((hold, query.guard));
            result
        });
        if !use_cache {
            let result = work.await?;
            return Ok(QueryResult::from_cached(&result, result.stats.clone()));
        }
        let (result, lookup) = engine.inner.cache.get_or_compute(key, work).await?;
        match lookup {
            Lookup::Ran => Ok(QueryResult::from_cached(&result, result.stats.clone())),
            Lookup::Hit => served_from_cache(&limit, &result, started, false),
            Lookup::Shared => served_from_cache(&limit, &result, started, true),
        }
    }

    /// Runs the query on the engine's query runtime and streams its
    /// batches as they are produced. The result cache is not used.
    pub async fn stream(self) -> Result<QueryStream> {
        let Self {
            query,
            snapshot,
            hold,
            started,
            ..
        } = self;
        let deadline = query
            .timeout
            .map(|t| (t, tokio::time::Instant::from_std(started) + t));
        let engine = query.engine.clone();
        let (limit, snapshot_id) = (query.limit, snapshot.snapshot_id);
        let (planned_tx, planned_rx) = tokio::sync::oneshot::channel();
        // Two batches in flight: the producer stays one ahead of the reader.
        let (batches_tx, batches_rx) = tokio::sync::mpsc::channel(2);
        let task = executor::spawn(engine.inner.cpu.as_ref(), async move {
            let (ctx, recorder) = query.engine.session(&snapshot, &query.scope);
            let planned = match query.physical(&ctx).await {
                Ok(plan) => execute_stream(Arc::clone(&plan), ctx.task_ctx())
                    .map(|rows| (plan, rows))
                    .map_err(Error::from),
                Err(e) => Err(e),
            };
            let mut rows = match planned {
                Ok((plan, rows)) => {
                    if planned_tx.send(Ok((plan, recorder))).is_err() {
                        return;
                    }
                    rows
                }
                Err(e) => {
                    let _ = planned_tx.send(Err(e));
                    return;
                }
            };
            while let Some(batch) = rows.next().await {
                if batches_tx.send(batch.map_err(Error::from)).await.is_err() {
                    break; // the reader is gone: stop
                }
            }
            drop(query.guard);
        });
        let planned = within(deadline, async {
            planned_rx.await.map_err(|_| {
                Error::new(ErrorKind::Unexpected, "the query stopped while planning")
            })?
        })
        .await?;
        let (plan, recorder) = planned;
        Ok(QueryStream {
            schema: plan.schema(),
            inner: Some(batches_rx),
            _task: Some(task),
            plan,
            recorder,
            started,
            rows: 0,
            bytes: 0,
            limit,
            snapshot_id,
            deadline: deadline.map(|(limit, at)| (limit, Box::pin(tokio::time::sleep_until(at)))),
            stats: None,
            _hold: hold,
        })
    }
}

/// Plans and runs `query` against `snapshot` in a session of its own,
/// collecting the result (held to the query's limit) and its statistics.
async fn compute(
    query: &SqlQuery,
    snapshot: &Arc<SnapshotFiles>,
    started: Instant,
) -> Result<CachedResult> {
    let (ctx, recorder) = query.engine.session(snapshot, &query.scope);
    let plan = query.physical(&ctx).await?;
    let mut stream = execute_stream(Arc::clone(&plan), ctx.task_ctx())?;
    let (mut batches, mut rows, mut bytes) = (Vec::new(), 0, 0);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        query.limit.account(&mut rows, &mut bytes, &batch)?;
        batches.push(batch);
    }
    let stats = ScanStats::from_execution(
        &recorder.findings(),
        &plan,
        rows,
        started.elapsed().as_secs_f64() * 1e3,
    );
    let result = CachedResult::new(plan.schema(), batches, stats, bytes);
    if query.render_json {
        let head = crate::format::render_json_head(&result.schema, &result.batches)?;
        // Set before anyone else can see the result: it cannot be set yet.
        let _ = result.json.set(head);
    }
    Ok(result)
}

/// A cached result as this caller's answer: held to this caller's limit
/// (it was filled under someone else's), with cache-hit stats.
fn served_from_cache(
    limit: &ResultLimit,
    result: &Arc<CachedResult>,
    started: Instant,
    shared_run: bool,
) -> Result<QueryResult> {
    let (mut rows, mut bytes) = (0, 0);
    for batch in &result.batches {
        limit.account(&mut rows, &mut bytes, batch)?;
    }
    let stats = result
        .stats
        .served_from_cache(started.elapsed().as_secs_f64() * 1e3, shared_run);
    Ok(QueryResult::from_cached(result, stats))
}

fn timeout_error(limit: Duration) -> Error {
    Error::new(
        ErrorKind::QueryTimeout,
        format!(
            "the query ran longer than its {} ms timeout and was cancelled",
            limit.as_millis()
        ),
    )
}

impl IntoFuture for SqlQuery {
    type Output = Result<QueryResult>;
    type IntoFuture = BoxFuture<'static, Result<QueryResult>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.execute())
    }
}

/// Record batches of a running query, in production order. Dropping the
/// stream cancels the query.
pub struct QueryStream {
    schema: SchemaRef,
    /// Batches from the task running the plan; `None` once ended.
    inner: Option<tokio::sync::mpsc::Receiver<Result<RecordBatch>>>,
    /// The task running the plan (on the query runtime); dropping it
    /// stops the query.
    _task: Option<AbortOnDropHandle<()>>,
    plan: Arc<dyn ExecutionPlan>,
    recorder: Arc<ScanRecorder>,
    started: Instant,
    rows: u64,
    bytes: u64,
    limit: ResultLimit,
    snapshot_id: Option<i64>,
    deadline: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    stats: Option<ScanStats>,
    /// Keeps the snapshot from expiring until the stream is dropped.
    _hold: Option<OpenPin>,
}

impl QueryStream {
    /// The result schema.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// The snapshot the stream reads (`None`: an empty table).
    pub fn snapshot_id(&self) -> Option<i64> {
        self.snapshot_id
    }

    /// Scan statistics, once the stream has ended.
    pub fn stats(&self) -> Option<&ScanStats> {
        self.stats.as_ref()
    }
}

impl Stream for QueryStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some((limit, sleep)) = this.deadline.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
            && this.inner.is_some()
        {
            // Aborting the task drops the DataFusion stream, which stops
            // its own tasks.
            this.inner = None;
            this._task = None;
            return Poll::Ready(Some(Err(timeout_error(*limit))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.poll_recv(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                if let Err(e) = this.limit.account(&mut this.rows, &mut this.bytes, &batch) {
                    this.inner = None;
                    this._task = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                this._task = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.inner = None;
                this.stats = Some(ScanStats::from_execution(
                    &this.recorder.findings(),
                    &this.plan,
                    this.rows,
                    this.started.elapsed().as_secs_f64() * 1e3,
                ));
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
