//! One query from start to answer: the `SqlQuery` builder the engine hands
//! out, `PreparedQuery` (its snapshot pinned and its answer identified, by
//! one `prepare` shared by the cache look-up, execution and streaming),
//! planning, execution on the query runtime and the use of the result cache.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::{SessionState, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::Serialize;
use shardlake_lake::executor;
use shardlake_lake::pins::OpenPin;

use super::guard::read_only;
use super::stream::QueryStream;
use super::{CrossShardQuery, ResultLimit, SqlDialect, dialect};
use crate::cache::{CacheKey, CachedResult, Lookup};
use crate::error::{Error, ErrorKind, Result};
use crate::scope::Scope;
use crate::snapshot::SnapshotFiles;
use crate::stats::ScanStats;
use crate::typed::{self, AggregateQuery, EventsQuery, ReplayQuery, ThingsQuery};

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
            parameters: Arc::new([]),
            dialect: SqlDialect::DataFusion,
            guard: None,
        }
    }
}

/// A query being configured. Await it for the whole result, or call
/// [`SqlQuery::stream`] for record batches as they are produced.
#[must_use = "a query does nothing until awaited or streamed"]
#[derive(Clone)]
pub struct SqlQuery {
    pub(super) engine: CrossShardQuery,
    request: Request,
    pub(super) timeout: Option<Duration>,
    pub(super) use_cache: bool,
    pub(super) scope: Scope,
    pub(super) limit: ResultLimit,
    /// Pinned snapshot; `None`: the current one (or the one of `as_of`).
    snapshot_id: Option<i64>,
    /// Time travel: the snapshot current at this time (Unix ms).
    as_of_ms: Option<i64>,
    /// Pin the latest snapshot whatever the freshness bound.
    latest: bool,
    /// Render the JSON form of the rows with the result.
    render_json: bool,
    /// Values of the SQL text's `$1`, `$2`, ... placeholders.
    parameters: Arc<[ScalarValue]>,
    /// The SQL text's dialect.
    pub(super) dialect: SqlDialect,
    /// Kept until the query's work has ended (see [`PreparedQuery::holding`]).
    pub(super) guard: Option<Arc<dyn std::any::Any + Send + Sync>>,
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

    /// Binds the SQL text's placeholders: `values[0]` is `$1`, and so on.
    /// Each value is cast to the type its use asks for; a missing or
    /// uncastable value fails the query as invalid.
    pub fn with_parameters(mut self, values: Vec<ScalarValue>) -> Self {
        self.parameters = values.into();
        self
    }

    /// Reads the SQL text in `dialect` (the engine's own by default).
    pub fn in_dialect(mut self, dialect: SqlDialect) -> Self {
        self.dialect = dialect;
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

    /// Plans the request in `state` and returns its optimized logical plan.
    ///
    /// The optimized plan of a SQL text is kept and reused: it depends on
    /// nothing a query pins (the snapshot and the scope reach the scan
    /// through the session when the physical plan is made), except for
    /// functions whose value depends on when the query runs (`now()`,
    /// `current_date`, ...), which the optimizer folds into constants: such
    /// plans are made anew every time.
    async fn optimized_plan(&self, state: &SessionState) -> Result<LogicalPlan> {
        let Request::Sql(sql) = &self.request else {
            let ctx = SessionContext::new_with_state(state.clone());
            return Ok(state.optimize(&self.plan(&ctx).await?)?);
        };
        // One memo per dialect: a text is never taken for another's.
        let plans = &self.engine.inner.plans[self.dialect.memo()];
        let bound = !self.parameters.is_empty();
        if !bound && let Some(plan) = plans.get(sql.as_str()) {
            return Ok(plan);
        }
        let mut plan = self.engine.logical_plan(state, sql, self.dialect).await?;
        // Every refusal of the read-only options is a statement that is not
        // allowed here (decided by type, not by text).
        verify_read_only(&plan)?;
        if bound {
            // Bound before optimizing, so pruning and filter pushdown see
            // the values, not placeholders.
            plan = plan
                .with_param_values(self.parameters.to_vec())
                .map_err(|e| Error::new(ErrorKind::InvalidQuery, e.to_string()))?;
        }
        let optimized = state.optimize(&plan)?;
        if !bound && reusable(&plan) {
            plans.insert(sql.clone(), optimized.clone());
        }
        Ok(optimized)
    }

    /// Plans a typed request in `ctx` and returns its logical plan.
    async fn plan(&self, ctx: &SessionContext) -> Result<LogicalPlan> {
        let df = match &self.request {
            Request::Sql(sql) => ctx.sql(sql).await?,
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
            Request::Sql(sql) if !self.parameters.is_empty() => {
                // The values are part of the question: typed, so `1` and
                // `'1'` are different answers.
                let mut text = self.engine.normalize(sql, self.dialect)?.to_string();
                for (i, value) in self.parameters.iter().enumerate() {
                    use std::fmt::Write;
                    let _ = write!(text, "\n${}: {}", i + 1, describe_value(value));
                }
                Ok(text.into())
            }
            Request::Sql(sql) => self.engine.normalize(sql, self.dialect),
            Request::Things(q) => typed("things", q),
            Request::Events(q) => typed("events", q),
            Request::Aggregate(q) => typed("aggregate", q),
            Request::Replay(q) => typed("replay", q),
        }
    }

    pub(super) async fn physical(&self, state: &SessionState) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.optimized_plan(state).await?;
        Ok(state
            .query_planner()
            .create_physical_plan(&plan, state)
            .await?)
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
    /// result cache is not read; a complete answer that fits in an entry is
    /// left in it. Statistics are available from the stream once it has
    /// ended.
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
pub(super) async fn within<T>(
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
    pub(super) query: SqlQuery,
    pub(super) snapshot: Arc<SnapshotFiles>,
    pub(super) hold: Option<OpenPin>,
    pub(super) key: CacheKey,
    pub(super) started: Instant,
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
}

/// Plans and runs `query` against `snapshot` in a session of its own,
/// collecting the result (held to the query's limit) and its statistics.
async fn compute(
    query: &SqlQuery,
    snapshot: &Arc<SnapshotFiles>,
    started: Instant,
) -> Result<CachedResult> {
    let (state, recorder) = query
        .engine
        .session(query.dialect, snapshot, &query.scope)?;
    let plan = query.physical(&state).await?;
    let planning_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut stream = execute_stream(Arc::clone(&plan), Arc::new(TaskContext::from(&state)))
        .map_err(crate::distributed::classify)?;
    let (mut batches, mut rows, mut bytes) = (Vec::new(), 0, 0);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(crate::distributed::classify)?;
        query.limit.account(&mut rows, &mut bytes, &batch)?;
        batches.push(batch);
    }
    let stats = ScanStats::from_execution(
        &recorder,
        &plan,
        rows,
        planning_ms,
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

/// Whether an optimized form of `plan` may be reused by later queries: no
/// function in it (subqueries included) gives a value that depends on when
/// it runs, and it is a query, not an `EXPLAIN` (whose text reports the
/// planning it did).
fn reusable(plan: &LogicalPlan) -> bool {
    if matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)) {
        return false;
    }
    let mut time_dependent = false;
    let visited = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && f.func.signature().volatility != Volatility::Immutable
                {
                    time_dependent = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    visited.is_ok() && !time_dependent
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

pub(super) fn timeout_error(limit: Duration) -> Error {
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

impl CrossShardQuery {
    /// The unoptimized plan of `sql`, read in `dialect`, in `state`.
    async fn logical_plan(
        &self,
        state: &SessionState,
        sql: &str,
        dialect: SqlDialect,
    ) -> Result<LogicalPlan> {
        Ok(match dialect {
            SqlDialect::DataFusion => state.create_logical_plan(sql).await?,
            SqlDialect::Postgres => {
                state
                    .statement_to_plan(dialect::parse_postgres(sql)?)
                    .await?
            }
        })
    }
}

/// A bound value as the cache key sees it: its type and its value.
fn describe_value(value: &ScalarValue) -> String {
    format!("{}={value}", value.data_type())
}

/// Fails unless `plan` is one the read-only options allow.
fn verify_read_only(plan: &LogicalPlan) -> Result<()> {
    read_only().verify_plan(plan).map_err(|refusal| {
        Error::new(ErrorKind::NotAllowed, refusal.message().into_owned()).with_source(refusal)
    })
}

/// What a SQL text takes and returns, found by planning it without
/// running it ([`CrossShardQuery::describe`]).
#[derive(Debug, Clone)]
pub struct Description {
    /// The type of each placeholder (`$1` first), where its use decides
    /// one; `None` where it does not (`SELECT $1`).
    pub parameters: Vec<Option<arrow::datatypes::DataType>>,
    /// The result's columns.
    pub schema: SchemaRef,
}

impl CrossShardQuery {
    /// Plans `sql` (which may hold `$1`, `$2`, ... placeholders) without
    /// pinning a snapshot or running anything, and says what it takes and
    /// returns: what a Postgres client's Parse and Describe ask. A statement
    /// that is not allowed or does not plan fails as it would when run.
    pub async fn describe(&self, sql: &str, dialect: SqlDialect) -> Result<Description> {
        self.normalize(sql, dialect)?;
        let state = self.template(dialect)?;
        let plan = self.logical_plan(state, sql, dialect).await?;
        verify_read_only(&plan)?;
        let mut by_name = plan.get_parameter_types()?;
        let count = by_name.len();
        let mut parameters = Vec::with_capacity(count);
        // `$1` .. `$n` by number (not as text: `$10` comes after `$9`).
        for n in 1..=count {
            match by_name.remove(&format!("${n}")) {
                Some(data_type) => parameters.push(data_type),
                None => {
                    return Err(Error::new(
                        ErrorKind::InvalidQuery,
                        format!("placeholders must be numbered $1 to ${count}; ${n} is missing"),
                    ));
                }
            }
        }
        Ok(Description {
            parameters,
            schema: Arc::new(plan.schema().as_arrow().clone()),
        })
    }
}
