//! The PipelineEmitter: shards hand it events; it validates them, queues them
//! with backpressure, batches them across shards by count, bytes and time,
//! and commits each batch as one snapshot, exactly once. A request is
//! acknowledged only after the commit holding its events is durable.
//!
//! ```text
//!  emit / try_emit ──validate──> queue (bounded by bytes) ──> committer task
//!        │                                                       │ batch (count | bytes | interval | flush)
//!        └── rejected events ──> dead letters                    │ plan: dedup vs watermarks, positions, sort
//!                                                                │ write files + conditional commit (retry, re-plan on conflict)
//!  ack (accepted, duplicates, rejected, watermarks) <────────────┘
//! ```

mod dead_letter;
mod metrics;
mod worker;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use shardlake_core::{
    Event, EventBatch, EventBatchBuilder, EventLimits, RejectedLine, push_json_array, push_ndjson,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

pub use self::dead_letter::DeadLetterRecord;
use self::dead_letter::DeadLetters;
use self::metrics::HealthCell;
pub use self::metrics::{EmitterMetrics, EmitterMetricsSnapshot, Health, HealthStatus};
use crate::commit::TableCommitter;
use crate::error::{Error, ErrorKind, Result};
use crate::executor::CpuRuntime;

/// How the emitter batches, bounds and retries. Also the server's
/// `[emitter]` section, key for key (`flush_interval` is
/// `flush_interval_ms` there; the validation limits sit in the section
/// itself: `max_payload_bytes`, `max_field_bytes`); the retry policy and the
/// dead-letter directory are not settings of the file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
// No `deny_unknown_fields`: serde cannot refuse unknown keys and flatten
// too (the server refuses keys that land in no setting).
#[serde(default)]
pub struct EmitterConfig {
    /// Commit once this many events are waiting.
    pub max_batch_events: usize,
    /// Commit without waiting for `flush_interval` once this many events
    /// are waiting: large requests commit as fast as the committer goes
    /// (each commit takes everything that arrived during the last one),
    /// while a trickle of small ones is still gathered into one commit.
    pub eager_commit_events: usize,
    /// Commit once this many bytes of events are waiting.
    pub max_batch_bytes: usize,
    /// Commit at the latest this long after the first event of a batch
    /// arrived: the bound on how long a lone request waits for its ack.
    #[serde(
        rename = "flush_interval_ms",
        with = "shardlake_core::serde_duration::millis"
    )]
    pub flush_interval: Duration,
    /// Bytes of events that may wait for a commit (queued plus in flight);
    /// beyond it `emit` waits and `try_emit` refuses.
    pub max_queued_bytes: usize,
    /// Validation limits for incoming events.
    #[serde(flatten)]
    pub limits: EventLimits,
    /// Retries of transient storage and catalog errors.
    #[serde(skip)]
    pub retry: RetryPolicy,
    /// Directory receiving dead-letter records; `None` keeps them only in metrics and acks.
    #[serde(skip)]
    pub dead_letter_dir: Option<PathBuf>,
}

impl Default for EmitterConfig {
    fn default() -> Self {
        Self {
            max_batch_events: 500_000,
            eager_commit_events: 10_000,
            max_batch_bytes: 256 * 1024 * 1024,
            flush_interval: Duration::from_millis(500),
            max_queued_bytes: 1024 * 1024 * 1024,
            limits: EventLimits::default(),
            retry: RetryPolicy::default(),
            dead_letter_dir: None,
        }
    }
}

/// Exponential backoff for transient errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
    /// Attempts before a batch is given up (its callers get the error).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            max_attempts: 8,
        }
    }
}

/// Events handed to [`PipelineEmitter::emit`] in any of the forms shards use.
#[derive(Debug)]
pub enum EmitInput<'a> {
    /// One event.
    Event(Event),
    /// Events in order; rejected ones are reported by 0-based index.
    Events(&'a [Event]),
    /// An NDJSON body; rejected lines are reported by 1-based line number.
    Ndjson(&'a [u8]),
    /// A JSON array body; rejected elements are reported by 0-based index.
    JsonArray(&'a [u8]),
    /// Events already validated into columnar form, with what was refused on the way.
    Validated(EventBatch, Vec<RejectedLine>),
}

impl From<Event> for EmitInput<'_> {
    fn from(e: Event) -> Self {
        EmitInput::Event(e)
    }
}

impl<'a> From<&'a [Event]> for EmitInput<'a> {
    fn from(e: &'a [Event]) -> Self {
        EmitInput::Events(e)
    }
}

impl<'a> From<&'a Vec<Event>> for EmitInput<'a> {
    fn from(e: &'a Vec<Event>) -> Self {
        EmitInput::Events(e)
    }
}

impl From<EventBatch> for EmitInput<'_> {
    fn from(b: EventBatch) -> Self {
        EmitInput::Validated(b, Vec::new())
    }
}

/// A request being sent ([`PipelineEmitter::send`]): await it to queue the
/// events and get the [`AckFuture`] of their commit.
#[must_use = "a request does nothing until awaited"]
pub struct Sending<'a> {
    emitter: &'a PipelineEmitter,
    input: EmitInput<'a>,
    expected: BTreeMap<i32, i64>,
}

impl Sending<'_> {
    /// Optimistic concurrency: the request is written only if each shard in
    /// `expected` still has that committed watermark when its commit is
    /// planned (0: never committed). Otherwise the whole request is refused
    /// with [`ErrorKind::ConcurrencyConflict`] and
    /// [`Error::concurrency_detail`] gives the shard, the expected and the
    /// actual watermark (re-read from the table, not cached). Of two emitters
    /// racing with the same expectation exactly one wins. Migration uses it
    /// to fence an old shard owner after cutover.
    pub fn expecting(mut self, expected: BTreeMap<i32, i64>) -> Self {
        self.expected = expected;
        self
    }
}

impl<'a> IntoFuture for Sending<'a> {
    type Output = Result<AckFuture>;
    type IntoFuture = futures::future::BoxFuture<'a, Result<AckFuture>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.emitter.queue(self.input, self.expected))
    }
}

/// A request being emitted ([`PipelineEmitter::emit`]): await it for the
/// [`EmitAck`] once its commit is durable.
#[must_use = "a request does nothing until awaited"]
pub struct Emitting<'a>(Sending<'a>);

impl Emitting<'_> {
    /// See [`Sending::expecting`].
    pub fn expecting(self, expected: BTreeMap<i32, i64>) -> Self {
        Self(self.0.expecting(expected))
    }
}

impl<'a> IntoFuture for Emitting<'a> {
    type Output = Result<EmitAck>;
    type IntoFuture = futures::future::BoxFuture<'a, Result<EmitAck>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.0.await?.await })
    }
}

/// What happened to the events of one request, once their commit is durable.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EmitAck {
    /// Events of this request made durable by the commit.
    pub accepted: usize,
    /// Events dropped because their `(shard_id, seq)` was already committed
    /// (or appeared earlier in the same batch).
    pub duplicates: usize,
    /// Of the duplicates, those whose content differs from the event they
    /// repeat, where that can be checked: the stored event at the shard's
    /// watermark, or an earlier event of the same batch. A shard that
    /// reuses a `seq` for another event loses that event; this says so.
    pub conflicting_duplicates: usize,
    /// Invalid events, each with its index and reason. Nothing else of the
    /// request is affected by them.
    pub rejected: Vec<RejectedEvent>,
    /// Committed watermark of every shard that appears among the request's
    /// valid events, after the commit.
    pub watermarks: BTreeMap<i32, i64>,
    /// The snapshot that made the events durable (`None` if nothing new was written).
    #[serde(with = "shardlake_core::json_id::option")]
    pub snapshot_id: Option<i64>,
}

/// One refused event of a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectedEvent {
    /// Index as the request counts (line number for NDJSON).
    pub index: usize,
    /// Stable error code.
    pub code: &'static str,
    /// Explanation.
    pub error: String,
}

impl From<&RejectedLine> for RejectedEvent {
    fn from(r: &RejectedLine) -> Self {
        Self {
            index: r.index,
            code: r.error.code.as_str(),
            error: r.error.message.clone(),
        }
    }
}

/// A request waiting for its commit.
struct Pending {
    batch: EventBatch,
    /// Optimistic concurrency: the committed watermark each shard must
    /// have for this request to be written (checked at commit time).
    expect: BTreeMap<i32, i64>,
    rejected: Vec<RejectedEvent>,
    ack: oneshot::Sender<Result<EmitAck>>,
    _permit: OwnedSemaphorePermit,
}

enum Message {
    Emit(Pending),
    /// Commit everything received so far, then answer.
    Flush(oneshot::Sender<Result<()>>),
    /// Commit everything received so far, answer, and stop.
    Close(oneshot::Sender<Result<()>>),
}

struct Shared {
    config: EmitterConfig,
    metrics: EmitterMetrics,
    health: HealthCell,
    capacity: Arc<Semaphore>,
    dead_letters: DeadLetters,
}

/// Resolves to the [`EmitAck`] of a request once its commit is durable.
pub struct AckFuture {
    state: AckState,
}

enum AckState {
    Ready(Option<Result<EmitAck>>),
    Waiting(oneshot::Receiver<Result<EmitAck>>),
}

impl Future for AckFuture {
    type Output = Result<EmitAck>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            AckState::Ready(ack) => Poll::Ready(ack.take().unwrap_or_else(|| {
                Err(Error::new(
                    ErrorKind::Unexpected,
                    "ack polled after completion",
                ))
            })),
            AckState::Waiting(rx) => Pin::new(rx).poll(cx).map(|r| {
                r.unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorKind::Closed,
                        "the emitter stopped before committing these events",
                    ))
                })
            }),
        }
    }
}

/// The exactly-once emitter of one table. Cheap to share behind an `Arc`;
/// all methods take `&self`.
pub struct PipelineEmitter {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Message>,
    worker: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    /// The runtime the committer runs on, kept alive while it does.
    _runtime: Option<CpuRuntime>,
}

impl PipelineEmitter {
    /// Starts an emitter committing through `committer`, its committer a
    /// task of the caller's runtime.
    pub fn start(committer: Box<dyn TableCommitter>, config: EmitterConfig) -> Result<Self> {
        Self::start_on(committer, config, None)
    }

    /// Starts an emitter whose committer (sorting, encoding, writing,
    /// committing) runs on `runtime`, so that the caller's runtime (a
    /// server's, answering requests) keeps its workers for requests.
    pub fn start_on(
        committer: Box<dyn TableCommitter>,
        config: EmitterConfig,
        runtime: Option<CpuRuntime>,
    ) -> Result<Self> {
        let dead_letters = DeadLetters::new(config.dead_letter_dir.clone())?;
        let shared = Arc::new(Shared {
            capacity: Arc::new(Semaphore::new(config.max_queued_bytes.max(1))),
            config,
            metrics: EmitterMetrics::default(),
            health: HealthCell::default(),
            dead_letters,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let work = worker::Worker::new(committer, Arc::clone(&shared)).run(rx);
        let worker = match &runtime {
            Some(runtime) => runtime.handle().spawn(work),
            None => tokio::spawn(work),
        };
        Ok(Self {
            shared,
            tx,
            worker: tokio::sync::Mutex::new(Some(worker)),
            _runtime: runtime,
        })
    }

    /// Validates `input` and queues its valid events, waiting for queue space
    /// if needed; resolves once they are committed (or found duplicate).
    /// `.expecting(watermarks)` makes the request conditional (see
    /// [`Emitting::expecting`]).
    pub fn emit<'a>(&'a self, input: impl Into<EmitInput<'a>>) -> Emitting<'a> {
        Emitting(self.send(input))
    }

    /// Validates `input` and queues its valid events, waiting for queue space
    /// if needed, and returns without waiting for the commit. Requests are
    /// committed in the order they are sent; await the returned future for
    /// the ack. This is how a producer keeps several requests in flight.
    pub fn send<'a>(&'a self, input: impl Into<EmitInput<'a>>) -> Sending<'a> {
        Sending {
            emitter: self,
            input: input.into(),
            expected: BTreeMap::new(),
        }
    }

    async fn queue(&self, input: EmitInput<'_>, expected: BTreeMap<i32, i64>) -> Result<AckFuture> {
        let (batch, rejected) = self.validate(input)?;
        let permit = match self.permits_for(&batch) {
            0 => None,
            n => Some(
                Arc::clone(&self.shared.capacity)
                    .acquire_many_owned(n)
                    .await
                    .map_err(|_| closed())?,
            ),
        };
        self.enqueue(batch, &rejected, permit, expected)
    }

    /// Like [`Self::emit`] but refuses with [`ErrorKind::QueueFull`] instead
    /// of waiting when the queue has no room. Nothing is queued on refusal.
    pub fn try_emit<'a>(&self, input: impl Into<EmitInput<'a>>) -> Result<AckFuture> {
        let (batch, rejected) = self.validate(input.into())?;
        let permit = match self.permits_for(&batch) {
            0 => None,
            n => Some(
                Arc::clone(&self.shared.capacity)
                    .try_acquire_many_owned(n)
                    .map_err(|e| match e {
                        tokio::sync::TryAcquireError::Closed => closed(),
                        tokio::sync::TryAcquireError::NoPermits => Error::new(
                            ErrorKind::QueueFull,
                            "the emitter's queue is full; retry later",
                        ),
                    })?,
            ),
        };
        self.enqueue(batch, &rejected, permit, BTreeMap::new())
    }

    /// Commits everything emitted before this call; resolves when it is durable.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Message::Flush(tx)).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Commits everything emitted so far, then stops the committer. Later
    /// emits fail with [`ErrorKind::Closed`]. Closing twice is harmless.
    pub async fn close(&self) -> Result<()> {
        // Refuse new work first, so nothing slips in after the last commit.
        self.shared.capacity.close();
        let Some(worker) = self.worker.lock().await.take() else {
            return Ok(());
        };
        let (tx, rx) = oneshot::channel();
        let flushed = match self.tx.send(Message::Close(tx)) {
            Ok(()) => rx.await.map_err(|_| closed()).and_then(|r| r),
            Err(_) => Err(closed()),
        };
        worker.await.map_err(|e| {
            Error::new(ErrorKind::Unexpected, "the committer task panicked").with_source(e)
        })?;
        self.shared
            .health
            .update(|h| h.status = HealthStatus::Stopped);
        flushed
    }

    /// Current counters.
    pub fn metrics(&self) -> EmitterMetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.shared.health.get()
    }

    /// The configuration in effect.
    pub fn config(&self) -> &EmitterConfig {
        &self.shared.config
    }

    fn validate(&self, input: EmitInput<'_>) -> Result<(EventBatch, Vec<RejectedLine>)> {
        let limits = self.shared.config.limits;
        let (batch, rejected) = match input {
            EmitInput::Validated(batch, rejected) => (batch, rejected),
            EmitInput::Event(event) => {
                let mut b = EventBatchBuilder::with_capacity(limits, 1, 1024);
                let rejected = match b.push_event(&event) {
                    Ok(()) => Vec::new(),
                    Err(e) => vec![RejectedLine::new(0, e, raw_json(&event).as_bytes())],
                };
                (b.finish(), rejected)
            }
            EmitInput::Events(events) => {
                let mut b =
                    EventBatchBuilder::with_capacity(limits, events.len(), events.len() * 256);
                let rejected = events
                    .iter()
                    .enumerate()
                    .filter_map(|(i, event)| {
                        b.push_event(event)
                            .err()
                            .map(|e| RejectedLine::new(i, e, raw_json(event).as_bytes()))
                    })
                    .collect();
                (b.finish(), rejected)
            }
            EmitInput::Ndjson(body) => {
                let mut b =
                    EventBatchBuilder::with_capacity(limits, body.len() / 256 + 1, body.len());
                let rejected = push_ndjson(&mut b, body, 1);
                (b.finish(), rejected)
            }
            EmitInput::JsonArray(body) => {
                let mut b =
                    EventBatchBuilder::with_capacity(limits, body.len() / 256 + 1, body.len());
                let rejected = push_json_array(&mut b, body)
                    .map_err(|e| Error::new(ErrorKind::DataInvalid, e.message.clone()))?;
                (b.finish(), rejected)
            }
        };
        if !rejected.is_empty() {
            EmitterMetrics::add(&self.shared.metrics.events_rejected, rejected.len());
            self.shared.dead_letters.record(&rejected);
        }
        Ok((batch, rejected))
    }

    fn permits_for(&self, batch: &EventBatch) -> u32 {
        if batch.is_empty() {
            return 0;
        }
        // A request larger than the whole queue still goes through, alone.
        let cap = self.shared.config.max_queued_bytes.max(1);
        u32::try_from(batch.approx_bytes().clamp(1, cap)).unwrap_or(u32::MAX)
    }

    fn enqueue(
        &self,
        batch: EventBatch,
        rejected: &[RejectedLine],
        permit: Option<OwnedSemaphorePermit>,
        expect: BTreeMap<i32, i64>,
    ) -> Result<AckFuture> {
        let rejected: Vec<RejectedEvent> = rejected.iter().map(RejectedEvent::from).collect();
        let Some(permit) = permit else {
            // Nothing valid to commit: the answer is known now.
            return Ok(AckFuture {
                state: AckState::Ready(Some(Ok(EmitAck {
                    rejected,
                    ..EmitAck::default()
                }))),
            });
        };
        let (ack, rx) = oneshot::channel();
        let events = batch.len();
        let bytes = batch.approx_bytes();
        self.tx
            .send(Message::Emit(Pending {
                batch,
                expect,
                rejected,
                ack,
                _permit: permit,
            }))
            .map_err(|_| closed())?;
        let m = &self.shared.metrics;
        EmitterMetrics::add(&m.events_emitted, events);
        EmitterMetrics::add(&m.queued_events, events);
        EmitterMetrics::add(&m.queued_bytes, bytes);
        Ok(AckFuture {
            state: AckState::Waiting(rx),
        })
    }
}

fn raw_json(event: &Event) -> String {
    serde_json::to_string(event).unwrap_or_else(|e| format!("<unserializable event: {e}>"))
}

fn closed() -> Error {
    Error::new(ErrorKind::Closed, "the emitter is closed")
}
