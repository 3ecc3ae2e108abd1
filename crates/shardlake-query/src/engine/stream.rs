//! Streaming: a prepared query run on the query runtime by a task of its
//! own, its record batches handed over as they are produced through a
//! small channel, and `QueryStream`, which reads them, holds them to the
//! query's limit and timeout, and reports scan statistics at the end. A
//! stream whose answer fits in a cache entry leaves it in the result cache
//! when it ends, so the next caller (a Postgres client repeating a query,
//! an NDJSON export) gets a hit.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use futures::{Stream, StreamExt};
use shardlake_lake::executor;
use shardlake_lake::pins::OpenPin;
use tokio_util::task::AbortOnDropHandle;

use super::ResultLimit;
use super::query::{PreparedQuery, timeout_error, within};
use crate::cache::{CacheKey, CachedResult};
use crate::error::{Error, ErrorKind, Result};
use crate::recorder::ScanRecorder;
use crate::stats::ScanStats;

impl PreparedQuery {
    /// Runs the query on the engine's query runtime and streams its
    /// batches as they are produced. The result cache is not read (look at
    /// [`PreparedQuery::cached`] first); a complete answer that fits in an
    /// entry is left in it.
    pub async fn stream(self) -> Result<QueryStream> {
        let Self {
            query,
            snapshot,
            hold,
            started,
            key,
        } = self;
        let fill = (query.use_cache && query.engine.inner.cache.enabled()).then(|| CacheFill {
            engine: query.engine.clone(),
            key,
            batches: Vec::new(),
        });
        let deadline = query
            .timeout
            .map(|t| (t, tokio::time::Instant::from_std(started) + t));
        let engine = query.engine.clone();
        let (limit, snapshot_id) = (query.limit, snapshot.snapshot_id);
        let (planned_tx, planned_rx) = tokio::sync::oneshot::channel();
        // Two batches in flight: the producer stays one ahead of the reader.
        let (batches_tx, batches_rx) = tokio::sync::mpsc::channel(2);
        let task = executor::spawn(engine.inner.cpu.as_ref(), async move {
            let planned = async {
                let (state, recorder) =
                    query
                        .engine
                        .session(query.dialect, &snapshot, &query.scope)?;
                let plan = query.physical(&state).await?;
                let rows = execute_stream(Arc::clone(&plan), Arc::new(TaskContext::from(&state)))
                    .map_err(crate::distributed::classify)?;
                Ok::<_, Error>((plan, rows, recorder))
            }
            .await;
            let mut rows = match planned {
                Ok((plan, rows, recorder)) => {
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
                if batches_tx
                    .send(batch.map_err(crate::distributed::classify))
                    .await
                    .is_err()
                {
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
        let planning_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(QueryStream {
            schema: plan.schema(),
            inner: Some(batches_rx),
            _task: Some(task),
            plan,
            recorder,
            started,
            planning_ms,
            rows: 0,
            bytes: 0,
            limit,
            snapshot_id,
            deadline: deadline.map(|(limit, at)| (limit, Box::pin(tokio::time::sleep_until(at)))),
            stats: None,
            fill,
            _hold: hold,
        })
    }
}

/// A streamed answer on its way into the result cache.
struct CacheFill {
    engine: super::CrossShardQuery,
    key: CacheKey,
    batches: Vec<RecordBatch>,
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
    /// Milliseconds from the start until the plan was ready.
    planning_ms: f64,
    rows: u64,
    bytes: u64,
    limit: ResultLimit,
    snapshot_id: Option<i64>,
    deadline: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    stats: Option<ScanStats>,
    /// The batches so far, for the result cache (`None`: not cached, or
    /// larger than an entry may be).
    fill: Option<CacheFill>,
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
                if let Some(fill) = this.fill.as_mut() {
                    if this.bytes > fill.engine.inner.cache.max_result_bytes() {
                        this.fill = None;
                    } else {
                        fill.batches.push(batch.clone());
                    }
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
                let stats = ScanStats::from_execution(
                    &this.recorder,
                    &this.plan,
                    this.rows,
                    this.planning_ms,
                    this.started.elapsed().as_secs_f64() * 1e3,
                );
                if let Some(fill) = this.fill.take() {
                    let result = CachedResult::new(
                        Arc::clone(&this.schema),
                        fill.batches,
                        stats.clone(),
                        this.bytes,
                    );
                    // Off the reader's path: inserting may wait on the
                    // cache's housekeeping.
                    tokio::spawn(async move {
                        fill.engine.inner.cache.fill(fill.key, result).await;
                    });
                }
                this.stats = Some(stats);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
