//! Expiry in a plain-Parquet lake: a snapshot is a chain of complete
//! commits, so a snapshot expires when the superseded commits its chain
//! needs are deleted.
//!
//! A commit a compaction covers is deleted once it has been superseded for
//! `retention` (since the first compaction covering it was sealed), unless
//! a snapshot that must stay lies strictly inside the covering
//! compaction's range: one of the `min_snapshots_to_keep` newest snapshots,
//! or a pinned one ([`crate::pins`]). The chain itself (what the latest
//! snapshot reads) is never touched, and the watermarks it ends with are
//! the table's state, so nothing about exactly-once changes.

use std::collections::HashSet;

use super::{ParquetCommit, ParquetEventsTable, ParquetSnapshot, chain};
use crate::crashpoint;
use crate::error::Result;
use crate::maintenance::{ExpiryReport, RetentionConfig};
use crate::pins::now_ms;

impl ParquetEventsTable {
    /// Deletes the superseded commits `config` no longer keeps; with
    /// `dry_run`, only reports. `still_ours` is asked before deleting.
    pub(crate) async fn expire_snapshots(
        &self,
        config: &RetentionConfig,
        dry_run: bool,
        still_ours: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<ExpiryReport> {
        let snapshot = self.snapshot().await?;
        let pinned: HashSet<i64> = self
            .pins()
            .list()
            .await?
            .into_iter()
            .map(|p| p.snapshot_id)
            .collect();
        let (doomed, kept_for_pins) = plan(&snapshot, config, &pinned, now_ms());
        let before = snapshot.retained().len();
        let after = {
            let remaining = ParquetSnapshot {
                complete: snapshot
                    .complete
                    .iter()
                    .filter(|c| !doomed.contains(&c.facts.commit_id.as_str()))
                    .cloned()
                    .collect(),
                ..ParquetSnapshot::default()
            };
            remaining.retained().len()
        };
        let files: Vec<_> = snapshot
            .complete
            .iter()
            .filter(|c| doomed.contains(&c.facts.commit_id.as_str()))
            .flat_map(|c| c.files.iter().cloned())
            .collect();
        let report = ExpiryReport {
            snapshots_expired: before - after,
            snapshots_retained: after,
            snapshots_pinned: kept_for_pins,
            files_deleted: files.len(),
            attempts: 1,
        };
        if dry_run || files.is_empty() {
            return Ok(report);
        }
        if !still_ours() {
            return Err(crate::iceberg::lease_lost());
        }
        crashpoint::hit(crashpoint::EXPIRE_BEFORE_COMMIT);
        self.delete(&files).await?;
        tracing::info!(?report, "expired superseded commits");
        Ok(report)
    }
}

/// The ids of the superseded commits to delete at `now_ms`, and how many
/// are kept only for `pinned` snapshots.
fn plan<'s>(
    snapshot: &'s ParquetSnapshot,
    config: &RetentionConfig,
    pinned: &HashSet<i64>,
    now_ms: i64,
) -> (HashSet<&'s str>, usize) {
    let cutoff =
        now_ms.saturating_sub(i64::try_from(config.retention.as_millis()).unwrap_or(i64::MAX));
    let chain = chain(&snapshot.complete, None);
    let on_chain: HashSet<&str> = chain.iter().map(|c| c.facts.commit_id.as_str()).collect();
    let newest: HashSet<i64> = snapshot
        .retained()
        .iter()
        .rev()
        .take(config.min_snapshots_to_keep.max(1))
        .map(|c| c.facts.next_position)
        .collect();
    let covers = |outer: &ParquetCommit, inner: &ParquetCommit| {
        outer.facts.commit_id != inner.facts.commit_id
            && outer.facts.compacted_at_ms.is_some()
            && outer.facts.first_position <= inner.facts.first_position
            && inner.facts.next_position <= outer.facts.next_position
    };
    let mut doomed = HashSet::new();
    let mut kept_for_pins = 0;
    for commit in &snapshot.complete {
        if on_chain.contains(commit.facts.commit_id.as_str()) {
            continue;
        }
        let Some(cover) = chain.iter().find(|c| covers(c, commit)) else {
            continue;
        };
        let inside = |s: &i64| cover.facts.first_position < *s && *s < cover.facts.next_position;
        if newest.iter().any(inside) {
            continue;
        }
        let superseded_at = snapshot
            .complete
            .iter()
            .filter(|c| covers(c, commit))
            .filter_map(|c| c.facts.compacted_at_ms)
            .min()
            .unwrap_or(i64::MAX);
        if superseded_at > cutoff {
            continue;
        }
        if pinned.iter().any(inside) {
            kept_for_pins += 1;
            continue;
        }
        doomed.insert(commit.facts.commit_id.as_str());
    }
    (doomed, kept_for_pins)
}
