//! Snapshot expiry: removing old snapshots from the table's metadata, so
//! metadata size, the snapshot log and what cleanup must keep stay bounded.
//!
//! A snapshot is expired once it has not been the current snapshot for
//! `retention`, unless it is one of the `min_snapshots_to_keep` newest of
//! the table's lineage, or something pins it ([`crate::pins`]). Age is
//! measured from when the snapshot was *replaced*, not from when it was
//! written (Iceberg's `expireOlderThan` uses the latter): a query in
//! another process that pinned the current snapshot a moment ago keeps its
//! files for at least `retention`, even if that snapshot was written long
//! before.
//!
//! Only metadata changes here (Iceberg's `RemoveSnapshots`); the files only
//! expired snapshots referenced are deleted by cleanup
//! ([`super::cleanup`]). Commit state lives in table properties, which
//! expiry never touches: watermarks and positions survive any expiry.

use std::collections::HashSet;

use iceberg::spec::{MAIN_BRANCH, TableMetadata};

use super::table::IcebergEventsTable;
use crate::crashpoint;
use crate::error::{Error, ErrorKind, Result};
use crate::maintenance::{ExpiryReport, RetentionConfig};
use crate::pins::now_ms;

/// Which snapshots of `metadata` to expire at `now_ms`, and how many of the
/// kept ones are kept only for `pinned`.
pub(crate) fn plan_expiry(
    metadata: &TableMetadata,
    config: &RetentionConfig,
    pinned: &HashSet<i64>,
    now_ms: i64,
) -> (Vec<i64>, usize) {
    let cutoff =
        now_ms.saturating_sub(i64::try_from(config.retention.as_millis()).unwrap_or(i64::MAX));
    // shardlake tables have one branch, `main`, whose head is current.
    let heads: HashSet<i64> = metadata
        .current_snapshot_id()
        .into_iter()
        .chain(
            metadata
                .snapshot_for_ref(MAIN_BRANCH)
                .map(|s| s.snapshot_id()),
        )
        .collect();
    // The lineage of `main`, newest first, with when each was replaced.
    let mut replaced_at = std::collections::HashMap::new();
    let mut newest = Vec::new();
    let mut child: Option<i64> = None;
    let mut at = metadata.current_snapshot();
    while let Some(snapshot) = at {
        if let Some(c) = child.and_then(|id| metadata.snapshot_by_id(id)) {
            replaced_at.insert(snapshot.snapshot_id(), c.timestamp_ms());
        }
        newest.push(snapshot.snapshot_id());
        child = Some(snapshot.snapshot_id());
        at = snapshot
            .parent_snapshot_id()
            .and_then(|p| metadata.snapshot_by_id(p));
    }
    let keep_newest: HashSet<i64> = newest
        .iter()
        .take(config.min_snapshots_to_keep.max(1))
        .copied()
        .collect();
    let mut expire = Vec::new();
    let mut kept_for_pins = 0;
    for snapshot in metadata.snapshots() {
        let id = snapshot.snapshot_id();
        // Off the lineage (a dangling snapshot): its own time is all we know.
        let replaced = replaced_at
            .get(&id)
            .copied()
            .unwrap_or(snapshot.timestamp_ms());
        if heads.contains(&id) || keep_newest.contains(&id) || replaced > cutoff {
            continue;
        }
        if pinned.contains(&id) {
            kept_for_pins += 1;
            continue;
        }
        expire.push(id);
    }
    expire.sort_unstable();
    (expire, kept_for_pins)
}

impl IcebergEventsTable {
    /// The snapshots an expiry with `config` would remove now.
    pub(crate) async fn expiring(&self, config: &RetentionConfig) -> Result<HashSet<i64>> {
        let base = self.load().await?;
        let pinned = self.pinned().await?;
        Ok(plan_expiry(base.metadata(), config, &pinned, now_ms())
            .0
            .into_iter()
            .collect())
    }

    async fn pinned(&self) -> Result<HashSet<i64>> {
        Ok(self
            .pins()
            .list()
            .await?
            .into_iter()
            .map(|p| p.snapshot_id)
            .collect())
    }

    /// Expires what `config` no longer keeps (see the module docs); with
    /// `dry_run`, only reports it.
    pub async fn expire_snapshots(
        &self,
        config: &RetentionConfig,
        dry_run: bool,
    ) -> Result<ExpiryReport> {
        for attempt in 1..=super::compact::MAX_REBASES {
            let _commits = self.lock_commits().await;
            let base = self.load().await?;
            let pinned = self.pinned().await?;
            let (expire, pinned) = plan_expiry(base.metadata(), config, &pinned, now_ms());
            let total = base.metadata().snapshots().len();
            let report = ExpiryReport {
                snapshots_expired: expire.len(),
                snapshots_retained: total - expire.len(),
                snapshots_pinned: pinned,
                files_deleted: 0,
                attempts: attempt,
            };
            if dry_run || expire.is_empty() {
                return Ok(report);
            }
            crashpoint::hit(crashpoint::EXPIRE_BEFORE_COMMIT);
            if self
                .commit(&base, |b| Ok(b.remove_snapshots(&expire)))
                .await?
                .is_some()
            {
                tracing::info!(?report, "expired snapshots");
                return Ok(report);
            }
        }
        Err(Error::new(
            ErrorKind::CommitConflict,
            "snapshot expiry lost to concurrent commits too often; try again later",
        ))
    }
}
