//! Emitter metrics and health: lock-free counters updated on the hot path,
//! read as a consistent-enough snapshot by `/v1/stats`, `/metrics` and the CLI.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Counters of one emitter. All monotonic except the `queued_*` gauges.
#[derive(Debug, Default)]
pub struct EmitterMetrics {
    pub(crate) events_emitted: AtomicU64,
    pub(crate) events_committed: AtomicU64,
    pub(crate) events_duplicate: AtomicU64,
    pub(crate) events_rejected: AtomicU64,
    pub(crate) events_failed: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) commit_conflicts: AtomicU64,
    pub(crate) commit_retries: AtomicU64,
    pub(crate) commit_failures: AtomicU64,
    pub(crate) commit_latency_us_sum: AtomicU64,
    pub(crate) commit_latency_us_max: AtomicU64,
    pub(crate) queued_bytes: AtomicU64,
    pub(crate) queued_events: AtomicU64,
}

impl EmitterMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: usize) {
        counter.fetch_sub(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn record_commit_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.commit_latency_us_sum.fetch_add(us, Ordering::Relaxed);
        self.commit_latency_us_max.fetch_max(us, Ordering::Relaxed);
    }

    /// A point-in-time copy of every counter.
    pub fn snapshot(&self) -> EmitterMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let commits = get(&self.commits);
        EmitterMetricsSnapshot {
            events_emitted: get(&self.events_emitted),
            events_committed: get(&self.events_committed),
            events_duplicate: get(&self.events_duplicate),
            events_rejected: get(&self.events_rejected),
            events_failed: get(&self.events_failed),
            commits,
            commit_conflicts: get(&self.commit_conflicts),
            commit_retries: get(&self.commit_retries),
            commit_failures: get(&self.commit_failures),
            commit_latency_ms_avg: if commits == 0 {
                0.0
            } else {
                get(&self.commit_latency_us_sum) as f64 / commits as f64 / 1000.0
            },
            commit_latency_ms_max: get(&self.commit_latency_us_max) as f64 / 1000.0,
            queued_bytes: get(&self.queued_bytes),
            queued_events: get(&self.queued_events),
        }
    }
}

/// Values of [`EmitterMetrics`] at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmitterMetricsSnapshot {
    /// Valid events accepted into the queue.
    pub events_emitted: u64,
    /// Events made durable by a commit.
    pub events_committed: u64,
    /// Events dropped because their `(shard_id, seq)` was already committed.
    pub events_duplicate: u64,
    /// Invalid events refused (and dead-lettered).
    pub events_rejected: u64,
    /// Valid events whose commit failed after all retries (the caller got an error).
    pub events_failed: u64,
    /// Successful commits (snapshots).
    pub commits: u64,
    /// Commits that lost a race with another committer and were re-planned.
    pub commit_conflicts: u64,
    /// Retries after transient storage or catalog errors.
    pub commit_retries: u64,
    /// Batches given up after all retries.
    pub commit_failures: u64,
    /// Mean wall time of a successful commit (plan, write, catalog), ms.
    pub commit_latency_ms_avg: f64,
    /// Longest successful commit, ms.
    pub commit_latency_ms_max: f64,
    /// Bytes waiting in the queue or in the commit under way.
    pub queued_bytes: u64,
    /// Events waiting in the queue or in the commit under way.
    pub queued_events: u64,
}

/// Overall condition of an emitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Commits succeed.
    Healthy,
    /// The last commit attempt failed and is being retried, or the last batch failed.
    Degraded,
    /// The emitter is closed or its committer stopped; nothing will be committed.
    Stopped,
}

/// Health report of an emitter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// Overall condition.
    pub status: HealthStatus,
    /// When the last commit succeeded.
    pub last_commit_at: Option<DateTime<Utc>>,
    /// The most recent error, if the emitter is not healthy.
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            status: HealthStatus::Healthy,
            last_commit_at: None,
            last_error: None,
            consecutive_failures: 0,
        }
    }
}

/// Shared, updatable health.
#[derive(Debug, Default)]
pub(crate) struct HealthCell(Mutex<Health>);

impl HealthCell {
    pub(crate) fn get(&self) -> Health {
        self.0
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut Health)) {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard);
    }

    pub(crate) fn success(&self) {
        self.update(|h| {
            h.status = HealthStatus::Healthy;
            h.last_commit_at = Some(Utc::now());
            h.last_error = None;
            h.consecutive_failures = 0;
        });
    }

    pub(crate) fn failure(&self, error: &str) {
        self.update(|h| {
            if h.status != HealthStatus::Stopped {
                h.status = HealthStatus::Degraded;
            }
            h.last_error = Some(error.to_owned());
            h.consecutive_failures = h.consecutive_failures.saturating_add(1);
        });
    }
}
