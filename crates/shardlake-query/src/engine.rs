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
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream, execute_stream};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use serde::Serialize;
use shardlake_lake::Lake;
use shardlake_lake::pins::OpenPin;

use crate::cache::{CacheConfig, CacheKey, CacheMetrics, CachedResult, ResultCache};
use crate::context::QueryContext;
use crate::error::{Error, ErrorKind, Result};
use crate::provider::{EventsTable, THINGS_SQL};
use crate::recorder::ScanRecorder;
use crate::scope::Scope;
use crate::snapshot::{LakeSnapshots, SnapshotFiles};
use crate::stats::ScanStats;
use crate::typed::{self, AggregateQuery, EventsQuery, ReplayQuery, ThingsQuery};

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
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            target_partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            memory_limit: 1024 * 1024 * 1024,
            default_timeout: Some(Duration::from_secs(60)),
            cache: CacheConfig::default(),
            manifest_cache_entries: 100_000,
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
}

impl QueryResult {
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
        ));
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
                config,
                snapshots,
                base: ctx.state(),
            }),
        })
    }

    /// A SQL query, configured with the builder's methods and run by
    /// awaiting it (or [`SqlQuery::stream`]).
    pub fn sql(&self, sql: impl Into<String>) -> SqlQuery {
        self.request(Request::Sql(sql.into()))
    }

    /// Current state of entities (seed 001's `queryThings`).
    pub fn query_things(&self, query: ThingsQuery) -> SqlQuery {
        self.request(Request::Things(query))
    }

    /// Events matching conditions (seed 001's `queryEvents`).
    pub fn query_events(&self, query: EventsQuery) -> SqlQuery {
        self.request(Request::Events(query))
    }

    /// Grouped aggregates (seed 001's `aggregate`).
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

    /// Cache and memory counters.
    pub async fn metrics(&self) -> EngineMetrics {
        EngineMetrics {
            cache: self.inner.cache.metrics().await,
            memory_reserved: self.inner.base.runtime_env().memory_pool.reserved(),
            memory_limit: self.inner.config.memory_limit,
        }
    }

    /// The live files of the current snapshot (for `/v1/tables`-style views).
    pub async fn current_snapshot(&self) -> Result<Arc<SnapshotFiles>> {
        self.inner.snapshots.pin().await
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
    async fn pin(
        &self,
        snapshot_id: Option<i64>,
        as_of_ms: Option<i64>,
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
                let files = snapshots.pin().await?;
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
            .pin(snapshot_id, as_of.map(|t| t.timestamp_millis()))
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

    /// Pins the query's snapshot for as long as the returned guard lives:
    /// expiry in this process keeps it meanwhile.
    async fn pin(&self) -> Result<(Arc<SnapshotFiles>, Option<OpenPin>)> {
        self.engine.pin(self.snapshot_id, self.as_of_ms).await
    }

    /// Restricts the query to `scope`'s namespaces.
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Plans the request in `ctx` and returns its logical plan.
    async fn plan(&self, ctx: &SessionContext) -> Result<LogicalPlan> {
        let df = match &self.request {
            Request::Sql(sql) => {
                normalize_read_only(&ctx.state(), sql)?;
                ctx.sql_with_options(sql, read_only()).await.map_err(|e| {
                    let e = Error::from(e);
                    if e.message().contains("not supported") {
                        Error::new(ErrorKind::NotAllowed, e.message().to_owned())
                    } else {
                        e
                    }
                })?
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

    /// The request's part of the cache key. Parsed with the engine's
    /// template state, so a cache hit never builds a session.
    fn cache_text(&self, state: &SessionState) -> Result<String> {
        Ok(match &self.request {
            Request::Sql(sql) => normalize_read_only(state, sql)?,
            Request::Things(q) => {
                format!("things:{}", serde_json::to_string(q).unwrap_or_default())
            }
            Request::Events(q) => {
                format!("events:{}", serde_json::to_string(q).unwrap_or_default())
            }
            Request::Aggregate(q) => {
                format!("aggregate:{}", serde_json::to_string(q).unwrap_or_default())
            }
            Request::Replay(q) => {
                format!("replay:{}", serde_json::to_string(q).unwrap_or_default())
            }
        })
    }

    async fn physical(&self, ctx: &SessionContext) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.plan(ctx).await?;
        Ok(ctx.state().create_physical_plan(&plan).await?)
    }

    /// Runs the query to completion.
    pub async fn execute(self) -> Result<QueryResult> {
        let started = Instant::now();
        let work = self.execute_inner(started);
        match self.timeout {
            Some(limit) => tokio::time::timeout(limit, work)
                .await
                .map_err(|_| timeout_error(limit))?,
            None => work.await,
        }
    }

    async fn execute_inner(&self, started: Instant) -> Result<QueryResult> {
        let engine = &self.engine;
        let (snapshot, _hold) = self.pin().await?;
        let compute = async {
            let (ctx, recorder) = engine.session(&snapshot, &self.scope);
            let plan = self.physical(&ctx).await?;
            let mut stream = execute_stream(Arc::clone(&plan), ctx.task_ctx())?;
            let (mut batches, mut rows, mut bytes) = (Vec::new(), 0, 0);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                self.limit.account(&mut rows, &mut bytes, &batch)?;
                batches.push(batch);
            }
            let stats = ScanStats::from_execution(
                &recorder.findings(),
                &plan,
                rows,
                started.elapsed().as_secs_f64() * 1e3,
            );
            Ok::<_, Error>(CachedResult {
                schema: plan.schema(),
                batches,
                stats,
                bytes,
            })
        };
        if !(self.use_cache && engine.inner.cache.enabled()) {
            let result = compute.await?;
            return Ok(QueryResult {
                schema: result.schema,
                batches: result.batches,
                stats: result.stats,
            });
        }
        let key = self.cache_key(&snapshot)?;
        let (result, hit) = engine.inner.cache.get_or_compute(key, compute).await?;
        if hit {
            return self.served_from_cache(&result, started);
        }
        Ok(QueryResult {
            schema: Arc::clone(&result.schema),
            batches: result.batches.clone(),
            stats: result.stats.clone(),
        })
    }

    fn cache_key(&self, snapshot: &SnapshotFiles) -> Result<CacheKey> {
        Ok(CacheKey {
            scope: self.scope.clone(),
            query: self.cache_text(&self.engine.inner.base)?,
            snapshot_ids: snapshot.snapshot_id.into_iter().collect(),
        })
    }

    /// A cached result as this caller's answer: held to this caller's
    /// limit (it was filled under someone else's), with cache-hit stats.
    fn served_from_cache(&self, result: &CachedResult, started: Instant) -> Result<QueryResult> {
        let (mut rows, mut bytes) = (0, 0);
        for batch in &result.batches {
            self.limit.account(&mut rows, &mut bytes, batch)?;
        }
        Ok(QueryResult {
            schema: Arc::clone(&result.schema),
            batches: result.batches.clone(),
            stats: result
                .stats
                .served_from_cache(started.elapsed().as_secs_f64() * 1e3),
        })
    }

    /// The answer from the result cache if it holds one for the current
    /// snapshot, without running anything (`None` otherwise, or when this
    /// query does not use the cache). Lets a server answer cache hits
    /// without taking a query slot.
    pub async fn cached(&self) -> Result<Option<QueryResult>> {
        if !(self.use_cache && self.engine.inner.cache.enabled()) {
            return Ok(None);
        }
        let started = Instant::now();
        let (snapshot, _hold) = self.pin().await?;
        let key = self.cache_key(&snapshot)?;
        match self.engine.inner.cache.peek(&key).await {
            Some(result) => self.served_from_cache(&result, started).map(Some),
            None => Ok(None),
        }
    }

    /// Runs the query and streams record batches as they are produced. The
    /// result cache is not used. Statistics are available from the stream
    /// once it has ended.
    pub async fn stream(self) -> Result<QueryStream> {
        let started = Instant::now();
        let deadline = self.timeout.map(|t| (t, tokio::time::Instant::now() + t));
        let engine = self.engine.clone();
        let (snapshot, hold) = self.pin().await?;
        let (ctx, recorder) = engine.session(&snapshot, &self.scope);
        let plan = match deadline {
            Some((limit, at)) => tokio::time::timeout_at(at, self.physical(&ctx))
                .await
                .map_err(|_| timeout_error(limit))??,
            None => self.physical(&ctx).await?,
        };
        let inner = execute_stream(Arc::clone(&plan), ctx.task_ctx())?;
        Ok(QueryStream {
            schema: plan.schema(),
            inner: Some(inner),
            plan,
            recorder,
            started,
            rows: 0,
            bytes: 0,
            limit: self.limit,
            snapshot_id: snapshot.snapshot_id,
            deadline: deadline.map(|(limit, at)| (limit, Box::pin(tokio::time::sleep_until(at)))),
            stats: None,
            _hold: hold,
        })
    }
}

fn timeout_error(limit: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
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
    inner: Option<SendableRecordBatchStream>,
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
            // Dropping the DataFusion stream stops its tasks.
            this.inner = None;
            return Poll::Ready(Some(Err(timeout_error(*limit))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                if let Err(e) = this.limit.account(&mut this.rows, &mut this.bytes, &batch) {
                    this.inner = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                Poll::Ready(Some(Err(e.into())))
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
