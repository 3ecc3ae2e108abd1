//! The committer task: gathers queued requests into batches and commits each
//! batch exactly once, retrying transient failures and re-planning after
//! conflicts, then answers every request of the batch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::compute::concat_batches;
use shardlake_core::pending_event_schema;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{EmitAck, EmitterMetrics, Message, Pending, Shared};
use crate::commit::{CommitPlan, CommitState, TableCommitter, plan_commit};
use crate::error::{ConcurrencyError, Error, ErrorKind, Result};

/// Conflicts tolerated for one batch before giving up: each one means another
/// committer landed a commit, so this bounds only pathological contention.
const MAX_CONFLICTS_PER_BATCH: u32 = 1000;

pub(super) struct Worker {
    committer: Box<dyn TableCommitter>,
    shared: Arc<Shared>,
}

/// What a batch's commit achieved.
struct Outcome {
    /// Which rows of the batch were written (false: duplicate).
    kept: Vec<bool>,
    /// Which duplicates differ from the event they repeat.
    conflicting: Vec<bool>,
    /// Watermarks after the batch.
    watermarks: BTreeMap<i32, i64>,
    snapshot_id: Option<i64>,
    /// Per request: refused because a watermark expectation failed.
    refused: Vec<Option<ConcurrencyError>>,
}

impl Worker {
    pub(super) fn new(committer: Box<dyn TableCommitter>, shared: Arc<Shared>) -> Self {
        Self { committer, shared }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Message>) {
        let config = self.shared.config.clone();
        let mut batch: Vec<Pending> = Vec::new();
        let mut batch_events = 0usize;
        let mut batch_bytes = 0usize;
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut waiters: Vec<oneshot::Sender<Result<()>>> = Vec::new();
        let mut stop = false;
        loop {
            let full = batch_events >= config.max_batch_events
                || batch_events >= config.eager_commit_events
                || batch_bytes >= config.max_batch_bytes;
            let due = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            if !batch.is_empty() && (full || due || !waiters.is_empty() || stop) {
                let result = self.commit_batch(std::mem::take(&mut batch)).await;
                batch_events = 0;
                batch_bytes = 0;
                deadline = None;
                for w in waiters.drain(..) {
                    let _ = w.send(result.as_ref().map(|_| ()).map_err(Error::clone));
                }
                continue;
            }
            for w in waiters.drain(..) {
                let _ = w.send(Ok(()));
            }
            if stop {
                break;
            }
            let message = match deadline {
                Some(d) => tokio::select! {
                    m = rx.recv() => m,
                    () = tokio::time::sleep_until(d) => continue,
                },
                None => rx.recv().await,
            };
            // Everything that arrived meanwhile (during the last commit,
            // say) joins this batch: concurrent requests share one commit.
            let mut arrived = vec![message];
            let (mut more_events, mut more_bytes) = (0, 0);
            while batch_events + more_events < config.max_batch_events
                && batch_bytes + more_bytes < config.max_batch_bytes
            {
                let Ok(m) = rx.try_recv() else { break };
                if let Message::Emit(p) = &m {
                    more_events += p.batch.len();
                    more_bytes += p.batch.approx_bytes();
                }
                arrived.push(Some(m));
            }
            for message in arrived {
                match message {
                    Some(Message::Emit(pending)) => {
                        if batch.is_empty() {
                            deadline = Some(tokio::time::Instant::now() + config.flush_interval);
                        }
                        batch_events += pending.batch.len();
                        batch_bytes += pending.batch.approx_bytes();
                        batch.push(pending);
                    }
                    Some(Message::Flush(w)) => waiters.push(w),
                    Some(Message::Close(w)) => {
                        waiters.push(w);
                        stop = true;
                    }
                    // Every sender is gone: commit what we have and stop.
                    None => stop = true,
                }
            }
        }
        debug!("emitter committer stopped");
    }

    /// Commits `batch` and answers each of its requests.
    async fn commit_batch(&mut self, batch: Vec<Pending>) -> Result<()> {
        let events: usize = batch.iter().map(|p| p.batch.len()).sum();
        let bytes: usize = batch.iter().map(|p| p.batch.approx_bytes()).sum();
        let outcome = self.commit_with_retry(&batch).await;
        let m = &self.shared.metrics;
        EmitterMetrics::sub(&m.queued_events, events);
        EmitterMetrics::sub(&m.queued_bytes, bytes);
        match outcome {
            Ok(outcome) => {
                let mut offset = 0;
                for (pending, refused) in batch.into_iter().zip(outcome.refused) {
                    if let Some(conflict) = refused {
                        debug!(%conflict, "request refused: watermark expectation failed");
                        let _ = pending.ack.send(Err(Error::concurrency(conflict)));
                        continue;
                    }
                    let n = pending.batch.len();
                    let kept = &outcome.kept[offset..offset + n];
                    let conflicting = outcome.conflicting[offset..offset + n]
                        .iter()
                        .filter(|c| **c)
                        .count();
                    offset += n;
                    let accepted = kept.iter().filter(|k| **k).count();
                    if conflicting > 0 {
                        // The caller's ack says so too; a server logs it.
                        tracing::info!(
                            conflicting,
                            "duplicates whose content differs from the event stored for their (shard_id, seq): a shard reused seq numbers"
                        );
                    }
                    let shards: BTreeSet<i32> = pending.batch.shard_ids().iter().copied().collect();
                    let watermarks = shards
                        .into_iter()
                        .map(|s| (s, outcome.watermarks.get(&s).copied().unwrap_or(0)))
                        .collect();
                    let _ = pending.ack.send(Ok(EmitAck {
                        accepted,
                        duplicates: n - accepted,
                        conflicting_duplicates: conflicting,
                        rejected: pending.rejected,
                        watermarks,
                        snapshot_id: outcome.snapshot_id,
                    }));
                }
                Ok(())
            }
            Err(e) => {
                EmitterMetrics::add(&m.commit_failures, 1);
                EmitterMetrics::add(&m.events_failed, events);
                warn!(error = %e, events, "giving up on a batch; its callers get the error");
                for pending in batch {
                    let _ = pending.ack.send(Err(e.clone()));
                }
                Err(e)
            }
        }
    }

    async fn commit_with_retry(&mut self, batch: &[Pending]) -> Result<Outcome> {
        let shared = Arc::clone(&self.shared);
        let m = &shared.metrics;
        let policy = shared.config.retry;
        let expecting = batch.iter().any(|p| !p.expect.is_empty());
        let concat = |refused: &[Option<ConcurrencyError>]| {
            let batches: Vec<_> = batch
                .iter()
                .zip(refused)
                .filter(|(_, r)| r.is_none())
                .map(|(p, _)| p.batch.record_batch().clone())
                .collect();
            concat_batches(&pending_event_schema(), &batches)
        };
        let everything = concat(&vec![None; batch.len()])?;

        let mut attempts: Vec<(Arc<CommitPlan>, Vec<Option<ConcurrencyError>>)> = Vec::new();
        let mut failures = 0u32;
        let mut conflicts = 0u32;
        let mut backoff = policy.initial_backoff;
        let mut stale = false;
        // Whether the state was re-read from the table for this batch: an
        // expectation is refused only against a fresh read.
        let mut fresh = false;
        loop {
            if stale {
                if let Err(e) = self.committer.refresh().await {
                    failures += 1;
                    self.note_failure(&e, failures, policy.max_attempts)?;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(policy.max_backoff);
                    continue;
                }
                fresh = true;
                // An earlier attempt whose outcome we did not see may have landed.
                if let Some((landed, refused)) = attempts
                    .iter()
                    .find(|(p, _)| self.committer.contains_commit(&p.commit_id))
                {
                    info!(commit_id = %landed.commit_id, "an earlier commit attempt had landed");
                    return Ok(self.landed(landed, refused.clone()));
                }
            }
            let started = Instant::now();
            let base = self.committer.state().clone();
            let refused = if expecting {
                check_expectations(batch, &base)
            } else {
                vec![None; batch.len()]
            };
            if refused.iter().any(Option::is_some) && !fresh {
                // Refuse only against the table itself, not a cached state.
                stale = true;
                continue;
            }
            let input = if refused.iter().any(Option::is_some) {
                concat(&refused)?
            } else {
                everything.clone()
            };
            let pending_rows = input.num_rows();
            let plan = tokio::task::spawn_blocking(move || plan_commit(&input, &base))
                .await
                .map_err(|e| {
                    Error::new(ErrorKind::Unexpected, "planning task failed").with_source(e)
                })??;
            let plan = Arc::new(plan);
            debug!(
                rows = plan.rows(),
                plan_ms = started.elapsed().as_secs_f64() * 1e3,
                "planned"
            );
            if plan.rows() == 0 {
                EmitterMetrics::add(&m.events_duplicate, pending_rows);
                return Ok(Outcome {
                    kept: plan.kept.clone(),
                    conflicting: plan.conflicting.clone(),
                    watermarks: plan.state.watermarks.clone(),
                    snapshot_id: None,
                    refused,
                });
            }
            match self.committer.commit(&plan).await {
                Ok(()) => {
                    let elapsed = started.elapsed();
                    m.record_commit_latency(elapsed);
                    shared.health.success();
                    debug!(
                        rows = plan.rows(),
                        namespaces = plan.namespaces.len(),
                        elapsed_ms = elapsed.as_millis() as u64,
                        "committed"
                    );
                    return Ok(self.landed(&plan, refused));
                }
                Err(e) if e.kind() == ErrorKind::CommitConflict => {
                    conflicts += 1;
                    EmitterMetrics::add(&m.commit_conflicts, 1);
                    debug!(
                        conflicts,
                        "commit conflict; re-reading watermarks and re-planning"
                    );
                    if conflicts > MAX_CONFLICTS_PER_BATCH {
                        return Err(e);
                    }
                    attempts.push((plan, refused));
                    stale = true;
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    EmitterMetrics::add(&m.commit_retries, 1);
                    attempts.push((plan, refused));
                    self.note_failure(&e, failures, policy.max_attempts)?;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(policy.max_backoff);
                    // The commit may or may not have landed: find out first.
                    stale = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Records a failed attempt; errors out once attempts are exhausted.
    fn note_failure(&self, e: &Error, failures: u32, max_attempts: u32) -> Result<()> {
        self.shared.health.failure(&e.to_string());
        warn!(error = %e, attempt = failures, "commit attempt failed");
        if failures >= max_attempts {
            return Err(Error::new(
                e.kind(),
                format!("commit failed after {failures} attempts: {e}"),
            ));
        }
        Ok(())
    }

    /// The outcome of `plan`, which is now part of the table.
    fn landed(&self, plan: &CommitPlan, refused: Vec<Option<ConcurrencyError>>) -> Outcome {
        let m = &self.shared.metrics;
        let total = plan.kept.len();
        EmitterMetrics::add(&m.commits, 1);
        EmitterMetrics::add(&m.events_committed, plan.rows());
        EmitterMetrics::add(&m.events_duplicate, total - plan.rows());
        let state = self.committer.state();
        Outcome {
            kept: plan.kept.clone(),
            conflicting: plan.conflicting.clone(),
            // The table's watermarks are at least the plan's; report the table's.
            watermarks: state.watermarks.clone(),
            snapshot_id: state.snapshot_id,
            refused,
        }
    }
}

/// Checks each request's watermark expectations against `base`, in request
/// order: a request that passes moves its shards' watermarks forward for
/// the requests after it, so two requests of one batch expecting the same
/// watermark cannot both pass.
fn check_expectations(batch: &[Pending], base: &CommitState) -> Vec<Option<ConcurrencyError>> {
    let mut watermarks = base.watermarks.clone();
    batch
        .iter()
        .map(|p| {
            for (&shard_id, &expected) in &p.expect {
                let actual = watermarks.get(&shard_id).copied().unwrap_or(0);
                if actual != expected {
                    return Some(ConcurrencyError {
                        shard_id,
                        expected,
                        actual,
                    });
                }
            }
            for (&shard, &seq) in p.batch.shard_ids().iter().zip(p.batch.seqs()) {
                let w = watermarks.entry(shard).or_insert(0);
                *w = (*w).max(seq);
            }
            None
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use async_trait::async_trait;
    use shardlake_core::Event;

    use super::*;
    use crate::commit::CommitState;
    use crate::emitter::{EmitterConfig, PipelineEmitter, RetryPolicy};

    /// A table held in memory whose commits can land and still report an
    /// error (the reply was lost), or fail outright.
    #[derive(Default)]
    struct Log {
        state: CommitState,
        landed: Vec<(String, usize)>,
        lose_reply_of_next: u32,
        fail_next: u32,
    }

    struct MemoryCommitter(Arc<Mutex<Log>>, CommitState);

    #[async_trait]
    impl TableCommitter for MemoryCommitter {
        fn state(&self) -> &CommitState {
            &self.1
        }

        async fn refresh(&mut self) -> Result<()> {
            self.1 = self.0.lock().expect("lock").state.clone();
            Ok(())
        }

        async fn commit(&mut self, plan: &Arc<CommitPlan>) -> Result<()> {
            let mut log = self.0.lock().expect("lock");
            if log.fail_next > 0 {
                log.fail_next -= 1;
                return Err(Error::new(ErrorKind::Storage, "injected: write failed"));
            }
            if log.state != plan.base {
                return Err(Error::new(ErrorKind::CommitConflict, "table moved"));
            }
            log.state = plan.state.clone();
            log.landed.push((plan.commit_id.clone(), plan.rows()));
            if log.lose_reply_of_next > 0 {
                log.lose_reply_of_next -= 1;
                return Err(Error::new(
                    ErrorKind::Storage,
                    "injected: connection reset after commit",
                ));
            }
            self.1 = log.state.clone();
            Ok(())
        }

        fn contains_commit(&self, commit_id: &str) -> bool {
            self.0
                .lock()
                .expect("lock")
                .landed
                .iter()
                .any(|(id, _)| id == commit_id)
        }
    }

    fn emitter(log: &Arc<Mutex<Log>>) -> PipelineEmitter {
        let config = EmitterConfig {
            flush_interval: Duration::from_millis(1),
            retry: RetryPolicy {
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
                max_attempts: 5,
            },
            ..EmitterConfig::default()
        };
        let committer = MemoryCommitter(Arc::clone(log), CommitState::default());
        PipelineEmitter::start(Box::new(committer), config).expect("start")
    }

    fn events(n: i64) -> Vec<Event> {
        let ts = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("ts");
        (1..=n)
            .map(|seq| Event::new("ns", 1, seq, "k", "thing.created", ts))
            .collect()
    }

    #[tokio::test]
    async fn a_commit_whose_reply_was_lost_is_found_not_repeated() {
        let log = Arc::new(Mutex::new(Log {
            lose_reply_of_next: 1,
            ..Log::default()
        }));
        let emitter = emitter(&log);
        let ack = emitter.emit(&events(10)).await.expect("ack");
        // Reported as accepted (it is durable), and committed once.
        assert_eq!((ack.accepted, ack.duplicates), (10, 0));
        assert_eq!(log.lock().expect("lock").landed.len(), 1);
        let m = emitter.metrics();
        assert_eq!(
            (m.commits, m.events_committed, m.commit_retries),
            (1, 10, 1)
        );
    }

    #[tokio::test]
    async fn a_failed_write_is_retried_and_commits_once() {
        let log = Arc::new(Mutex::new(Log {
            fail_next: 2,
            ..Log::default()
        }));
        let emitter = emitter(&log);
        let ack = emitter.emit(&events(4)).await.expect("ack");
        assert_eq!(ack.accepted, 4);
        let landed: Vec<usize> = log
            .lock()
            .expect("lock")
            .landed
            .iter()
            .map(|l| l.1)
            .collect();
        assert_eq!(landed, vec![4]);
        assert_eq!(emitter.metrics().commit_retries, 2);
    }

    #[tokio::test]
    async fn exhausted_retries_fail_every_request_of_the_batch() {
        let log = Arc::new(Mutex::new(Log {
            fail_next: 100,
            ..Log::default()
        }));
        let emitter = emitter(&log);
        let err = emitter.emit(&events(3)).await.expect_err("gives up");
        assert_eq!(err.kind(), ErrorKind::Storage);
        assert!(err.message().contains("after 5 attempts"), "{err}");
        assert!(log.lock().expect("lock").landed.is_empty());
        assert_eq!(emitter.metrics().commit_failures, 1);
    }
}
