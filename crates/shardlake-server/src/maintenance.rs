//! The server's background lake maintenance: every
//! `maintenance.interval_secs`, one [`Lake::maintain`] run (compaction,
//! manifest merging, snapshot expiry, cleanup) in a task of its own, so
//! ingest and queries never wait for it. Each run is counted in `/metrics`,
//! the last one is shown in `/v1/stats`, and the last
//! [`RECENT_RUNS`] (failures too) in `GET /v1/maintenance`.
//!
//! [`Lake::maintain`]: shardlake_lake::Lake::maintain

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use shardlake_lake::{Action, MaintenanceReport};

use crate::state::AppState;

/// What the background maintenance did so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MaintenanceStatus {
    /// Runs that completed (including ones skipped because another process
    /// held the lake's maintenance lease).
    pub runs: u64,
    /// Runs that failed (retried at the next interval).
    pub failures: u64,
    /// The last completed run.
    pub last_run: Option<MaintenanceReport>,
    /// The last failure's message, if the last run failed.
    pub last_error: Option<String>,
}

/// How many runs [`MaintenanceState::recent`] keeps.
pub const RECENT_RUNS: usize = 20;

/// One background run as the console and `GET /v1/maintenance` show it:
/// its report, or why it failed.
#[derive(Debug, Clone, Serialize)]
pub struct MaintenanceRun {
    /// When the run ended (RFC 3339).
    pub finished_at: String,
    /// What it did, if it completed.
    pub report: Option<MaintenanceReport>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// The status shared between the task and `/v1/stats`.
#[derive(Debug, Default)]
pub struct MaintenanceState {
    status: Mutex<MaintenanceStatus>,
    recent: Mutex<VecDeque<MaintenanceRun>>,
}

impl MaintenanceState {
    /// A copy of the status now.
    pub fn status(&self) -> MaintenanceStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The last [`RECENT_RUNS`] runs, newest first.
    pub fn recent(&self) -> Vec<MaintenanceRun> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().cloned().collect()
    }

    fn update(&self, f: impl FnOnce(&mut MaintenanceStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn remember(&self, report: Option<MaintenanceReport>, error: Option<String>) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_RUNS {
            recent.pop_front();
        }
        recent.push_back(MaintenanceRun {
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            report,
            error,
        });
    }
}

/// Starts the background maintenance, unless it is off.
pub(crate) fn spawn(state: &AppState) -> Option<tokio::task::JoinHandle<()>> {
    let settings = state.config().maintenance.clone();
    if !settings.enabled {
        tracing::info!("background maintenance is off");
        return None;
    }
    let config = state.config().maintenance_config();
    let runtime = state.engine().cpu_runtime();
    let state = state.clone();
    let work = async move {
        let interval = Duration::from_secs(settings.interval_secs.max(1));
        loop {
            tokio::time::sleep(interval).await;
            if state.is_draining() {
                return;
            }
            let result = state
                .lake()
                .maintain(&config, &Action::ALL, false, &quiet)
                .await;
            record(&state, result);
        }
    };
    // Compaction decodes, sorts and encodes: CPU work, run where queries
    // and commits run, off the runtime that answers requests.
    Some(match runtime {
        Some(runtime) => runtime.handle().spawn(work),
        None => tokio::spawn(work),
    })
}

/// The background run shows no progress.
fn quiet(_: shardlake_lake::maintenance::Progress) {}

fn record(state: &AppState, result: shardlake_lake::Result<MaintenanceReport>) {
    let metrics = state.metrics();
    match result {
        Ok(report) => {
            metrics.maintenance_runs.inc();
            if report.skipped.is_some() {
                metrics.maintenance_skipped.inc();
            }
            if report
                .compaction
                .as_ref()
                .is_some_and(|c| c.files_added > 0)
            {
                metrics.compactions.inc();
            }
            metrics
                .maintenance_files_removed
                .inc_by(report.files_removed() as u64);
            metrics
                .maintenance_bytes_removed
                .inc_by(report.cleanup.as_ref().map_or(0, |c| c.bytes_deleted));
            metrics
                .maintenance_snapshots_expired
                .inc_by(report.snapshots_expired() as u64);
            metrics
                .maintenance_last_duration
                .set(report.duration_ms / 1e3);
            metrics
                .maintenance_last_run
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1e3);
            if report.files_removed() > 0 || report.snapshots_expired() > 0 {
                tracing::info!(
                    files_removed = report.files_removed(),
                    snapshots_expired = report.snapshots_expired(),
                    duration_ms = report.duration_ms,
                    "maintenance run"
                );
            }
            state.maintenance().remember(Some(report.clone()), None);
            state.maintenance().update(|s| {
                s.runs += 1;
                s.last_run = Some(report);
                s.last_error = None;
            });
        }
        Err(e) => {
            metrics.maintenance_failures.inc();
            tracing::warn!(error = %e, "maintenance failed; retrying next interval");
            state.maintenance().remember(None, Some(e.to_string()));
            state.maintenance().update(|s| {
                s.failures += 1;
                s.last_error = Some(e.to_string());
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_runs_keep_the_newest_first_and_forget_the_oldest() {
        let state = MaintenanceState::default();
        for i in 0..RECENT_RUNS + 3 {
            state.remember(None, Some(format!("run {i}")));
        }
        let recent = state.recent();
        assert_eq!(recent.len(), RECENT_RUNS);
        assert_eq!(
            recent.first().and_then(|r| r.error.as_deref()),
            Some(format!("run {}", RECENT_RUNS + 2).as_str())
        );
        assert_eq!(
            recent.last().and_then(|r| r.error.as_deref()),
            Some("run 3")
        );
    }
}
