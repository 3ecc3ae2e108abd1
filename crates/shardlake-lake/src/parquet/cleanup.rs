//! Cleanup in a plain-Parquet lake: the files of commits that never
//! completed (a crash before the seal, a failed attempt) and the temporary
//! files of uploads that never finished, once older than the grace period.
//!
//! The writer also removes incomplete commits when it starts; cleanup
//! catches what appears later (a failed compaction, an expiry interrupted
//! midway) without a restart. Only the writer cleans up: a file that looks
//! unfinished may be the writer's commit or upload in flight, which only
//! the writer can tell, so another process skips cleanup (and says so). A
//! commit this process is still writing is never touched, whatever its age.

use std::time::Duration;

use object_store::{ObjectMeta, ObjectStoreExt};

use super::{ParquetEventsTable, storage};
use crate::crashpoint;
use crate::error::{ErrorKind, Result};
use crate::maintenance::{CleanupReport, listing_and_cutoff};

impl ParquetEventsTable {
    /// Deletes leftovers older than `grace`; with `dry_run`, only reports.
    pub(crate) async fn cleanup(
        &self,
        grace: Duration,
        dry_run: bool,
        still_ours: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<CleanupReport> {
        let _lock = match self.lock_for_maintenance() {
            Ok(lock) => lock,
            Err(e) if e.kind() == ErrorKind::CommitConflict => {
                return Ok(CleanupReport {
                    dry_run,
                    skipped: Some(e.message().to_owned()),
                    ..CleanupReport::default()
                });
            }
            Err(e) => return Err(e),
        };
        let store = self.warehouse().store();
        let (listed, cutoff) =
            listing_and_cutoff(store.as_ref(), self.prefix(), chrono::Utc::now(), grace).await?;
        let mut report = CleanupReport {
            files_listed: listed.len(),
            dry_run,
            ..CleanupReport::default()
        };
        // Unfinished uploads: object_store's local staging files.
        let mut doomed: Vec<ObjectMeta> = Vec::new();
        for meta in listed {
            let name = meta.location.filename().unwrap_or_default();
            let staged = name
                .rsplit_once('#')
                .is_some_and(|(stem, n)| stem.ends_with(".parquet") && n.parse::<u64>().is_ok());
            if !staged {
                continue;
            }
            if meta.last_modified > cutoff {
                report.files_kept_young += 1;
            } else {
                doomed.push(meta);
            }
        }
        // Commits that never completed, not being written here. Watched
        // from before the read: a commit that lands meanwhile is not one.
        let writing = self.watch_writing();
        let snapshot = self.snapshot().await?;
        let cutoff_ms = cutoff.timestamp_millis();
        let mut incomplete = Vec::new();
        for file in &snapshot.incomplete {
            if writing.saw(&file.commit.commit_id) || file.last_modified_ms > cutoff_ms {
                report.files_kept_young += 1;
            } else {
                incomplete.push(std::sync::Arc::clone(file));
            }
        }
        report.files_deleted = doomed.len() + incomplete.len();
        report.data_files_deleted = report.files_deleted;
        report.bytes_deleted = doomed.iter().map(|m| m.size).sum::<u64>()
            + incomplete.iter().map(|f| f.size).sum::<u64>();
        if dry_run || report.files_deleted == 0 {
            return Ok(report);
        }
        if !still_ours() {
            return Err(crate::iceberg::lease_lost());
        }
        let _change = self.change();
        for (i, meta) in doomed.iter().enumerate() {
            match store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage("deleting a leftover file failed")(e)),
            }
            if i == 0 {
                crashpoint::hit(crashpoint::CLEANUP_MID_DELETE);
            }
        }
        self.delete(&incomplete).await?;
        tracing::info!(?report, "removed leftover files");
        Ok(report)
    }
}
