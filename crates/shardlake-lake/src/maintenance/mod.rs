//! Lake maintenance: what keeps a lake's cost bounded by configuration
//! rather than by its age.
//!
//! Every commit adds files (data files, a manifest, a manifest list, a
//! metadata file). Without maintenance, commit latency, planning time,
//! query latency, metadata size and the file count all grow with the
//! number of commits. One run of [`crate::Lake::maintain`] does, in order:
//!
//! 1. **compaction**: small data files of a namespace become large sorted
//!    ones ([`crate::iceberg::CompactionConfig`]); in the Iceberg format
//!    the same replace snapshot merges small manifests;
//! 2. **manifest merging** (Iceberg), when compaction did not run and the
//!    table's `commit.manifest.*` settings say it is due;
//! 3. **expiry**: snapshots replaced more than `snapshot_retention` ago are
//!    removed, keeping the newest `min_snapshots_to_keep` and everything
//!    pinned ([`crate::pins`]); in the Parquet format, the files a
//!    compaction superseded are removed once expired;
//! 4. **cleanup**: files nothing retained references (replaced files,
//!    files of failed or crashed commits) are deleted once older than
//!    `orphan_grace`.
//!
//! Metadata files are pruned by each commit itself
//! (`write.metadata.delete-after-commit.enabled`,
//! `write.metadata.previous-versions-max`). A run holds the lake's
//! maintenance lease ([`lease`]): one maintainer per lake at a time,
//! whichever process it is; the others skip their turn. The server runs
//! maintenance in the background every `interval` (its `[maintenance]`
//! section); `shardlake maintain` runs it once.

mod lease;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Lake;
use crate::error::Result;
use crate::format::EventsTable;
pub(crate) use lease::MaintenanceLease;

/// What maintenance does, and how much it keeps. Also the lake's part of
/// the server's `[maintenance]` section (`snapshot_retention_secs`,
/// `min_snapshots_to_keep`, `orphan_grace_secs`); compaction is the
/// `[compaction]` section's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
// No `deny_unknown_fields`: serde cannot refuse unknown keys and flatten
// too (the server refuses keys that land in no setting).
#[serde(default)]
pub struct MaintenanceConfig {
    /// Compaction settings; `None` skips compaction.
    #[serde(skip)]
    pub compaction: Option<CompactionConfig>,
    /// Files younger than this are never deleted by cleanup.
    #[serde(
        rename = "orphan_grace_secs",
        with = "shardlake_core::serde_duration::secs"
    )]
    pub orphan_grace: Duration,
    /// Which snapshots expiry keeps.
    #[serde(flatten)]
    pub retention: RetentionConfig,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            compaction: Some(CompactionConfig::default()),
            retention: RetentionConfig::default(),
            orphan_grace: Duration::from_secs(3600),
        }
    }
}

/// When and how much to compact (also the server's `[compaction]`
/// section, key for key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompactionConfig {
    /// Files smaller than this are candidates.
    pub small_file_bytes: u64,
    /// A namespace's files of one size tier are compacted once there are at
    /// least this many ([`CompactionConfig::tier`]).
    pub min_small_files: usize,
    /// Times the whole compaction starts over when another rewrite removed
    /// files it was replacing.
    pub max_attempts: u32,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            small_file_bytes: 32 * 1024 * 1024,
            min_small_files: 8,
            max_attempts: 5,
        }
    }
}

/// Size tiers of small files (see [`CompactionConfig::tier`]).
pub(crate) const TIERS: u32 = 5;

impl CompactionConfig {
    /// The size tier of a file of `size` bytes, `None` if it is not small.
    ///
    /// Compaction is size-tiered, as in LSM trees: small files are grouped
    /// by size, each tier four times the one below, the top one ending at
    /// `small_file_bytes` (so with the defaults: under 128 KiB, 512 KiB,
    /// 2 MiB, 8 MiB, 32 MiB), and a tier is compacted once it holds
    /// `min_small_files` files. What a compaction writes lands in a higher
    /// tier. A byte is therefore rewritten about once per tier on its way
    /// to a large file, instead of every time new small files arrive next
    /// to it, and a namespace keeps at most about `min_small_files` files
    /// per tier plus what arrived since the last run.
    pub fn tier(&self, size: u64) -> Option<u32> {
        if size >= self.small_file_bytes {
            return None;
        }
        let base = (self.small_file_bytes >> (2 * (TIERS - 1))).max(1);
        let mut tier = 0;
        let mut bound = base;
        while size >= bound && tier < TIERS - 1 {
            tier += 1;
            bound = bound.saturating_mul(4);
        }
        Some(tier)
    }
}

/// What a compaction did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompactionReport {
    /// Namespaces rewritten.
    pub namespaces: usize,
    /// Data files replaced.
    pub files_removed: usize,
    /// Data files written.
    pub files_added: usize,
    /// Rows rewritten.
    pub rows: u64,
    /// Bytes of the replaced files.
    pub bytes_removed: u64,
    /// Bytes of the new files.
    pub bytes_added: u64,
    /// The `replace` snapshot, `None` if there was nothing to compact.
    #[serde(with = "shardlake_core::json_id::option")]
    pub snapshot_id: Option<i64>,
    /// Commit attempts used (more than one when other commits intervened).
    pub attempts: u32,
    /// Manifests before and after.
    pub manifests: ManifestChange,
    /// Why nothing was tried, if so (a plain-Parquet lake written by
    /// another process is compacted there).
    pub skipped: Option<String>,
}

/// What to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Keep snapshots replaced less than this long ago.
    #[serde(
        rename = "snapshot_retention_secs",
        with = "shardlake_core::serde_duration::secs"
    )]
    pub retention: Duration,
    /// Always keep this many of the newest snapshots (at least 1: the
    /// current one).
    pub min_snapshots_to_keep: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(3600),
            min_snapshots_to_keep: 10,
        }
    }
}

/// What an expiry did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExpiryReport {
    /// Snapshots removed.
    pub snapshots_expired: usize,
    /// Snapshots the table keeps.
    pub snapshots_retained: usize,
    /// Snapshots kept only because something pins them.
    pub snapshots_pinned: usize,
    /// Files deleted with the expired snapshots (the Parquet format, whose
    /// snapshots are its files; in Iceberg, cleanup deletes them).
    pub files_deleted: usize,
    /// Commit attempts used.
    pub attempts: u32,
}

/// Manifests before and after a rewrite.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ManifestChange {
    /// Manifests of the parent snapshot.
    pub before: usize,
    /// Manifests of the new snapshot.
    pub after: usize,
    /// Manifests whose entries were rewritten into new ones.
    pub replaced: usize,
}

/// What a manifest merge did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ManifestMergeReport {
    /// Whether a merge was due (and, unless a dry run, committed).
    pub merged: bool,
    /// Manifests before and after.
    pub manifests: ManifestChange,
    /// The `replace` snapshot written, if any.
    #[serde(with = "shardlake_core::json_id::option")]
    pub snapshot_id: Option<i64>,
}

/// One maintenance action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Rewrite small data files into large ones.
    Compact,
    /// Merge small manifests (Iceberg).
    MergeManifests,
    /// Expire old snapshots.
    Expire,
    /// Delete unreachable files.
    Cleanup,
}

impl Action {
    /// Every action, in the order a run performs them.
    pub const ALL: [Action; 4] = [
        Action::Compact,
        Action::MergeManifests,
        Action::Expire,
        Action::Cleanup,
    ];

    /// The action's name, as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compact => "compact",
            Self::MergeManifests => "merge-manifests",
            Self::Expire => "expire",
            Self::Cleanup => "cleanup",
        }
    }
}

/// What cleanup deleted (or, in a dry run, would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// Files found in the table's directory.
    pub files_listed: usize,
    /// Files deleted.
    pub files_deleted: usize,
    /// Bytes deleted.
    pub bytes_deleted: u64,
    /// Of them, data files.
    pub data_files_deleted: usize,
    /// Of them, metadata files (manifests, manifest lists, metadata JSON).
    pub metadata_files_deleted: usize,
    /// Unreachable files kept because they are younger than the grace
    /// period or may still be committed under their name.
    pub files_kept_young: usize,
    /// Whether nothing was deleted on purpose.
    pub dry_run: bool,
    /// Why nothing was tried, if so (a plain-Parquet lake whose writer is
    /// another process: what looks unfinished may be its commit in flight,
    /// so that process cleans up).
    pub skipped: Option<String>,
}

/// Every object under `prefix`, and the time before which a file is past
/// `grace`, counted back from `started` (when the cleanup began reading
/// the table): what both formats' cleanup starts from.
pub(crate) async fn listing_and_cutoff(
    store: &dyn object_store::ObjectStore,
    prefix: &object_store::path::Path,
    started: chrono::DateTime<chrono::Utc>,
    grace: Duration,
) -> Result<(Vec<object_store::ObjectMeta>, chrono::DateTime<chrono::Utc>)> {
    use futures::TryStreamExt;
    let listed = store.list(Some(prefix)).try_collect().await.map_err(|e| {
        crate::Error::new(crate::ErrorKind::Storage, "listing the table failed").with_source(e)
    })?;
    let cutoff = started - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    Ok((listed, cutoff))
}

/// What one maintenance run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MaintenanceReport {
    /// Only planned, nothing changed.
    pub dry_run: bool,
    /// Why the run did nothing (another process holds the lease), if so.
    pub skipped: Option<String>,
    /// Compaction, if it ran.
    pub compaction: Option<CompactionReport>,
    /// Manifest merging, if it ran.
    pub manifests: Option<ManifestMergeReport>,
    /// Expiry, if it ran.
    pub expiry: Option<ExpiryReport>,
    /// Cleanup, if it ran.
    pub cleanup: Option<CleanupReport>,
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// How long it took, milliseconds.
    pub duration_ms: f64,
}

impl MaintenanceReport {
    /// Snapshots expired.
    pub fn snapshots_expired(&self) -> usize {
        self.expiry.as_ref().map_or(0, |e| e.snapshots_expired)
    }

    /// Files removed from storage (cleanup, and the Parquet format's
    /// expired files).
    pub fn files_removed(&self) -> usize {
        self.cleanup.as_ref().map_or(0, |c| c.files_deleted)
            + self.expiry.as_ref().map_or(0, |e| e.files_deleted)
    }
}

/// Progress of a run, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// An action started.
    Started(Action),
    /// An action finished.
    Finished(Action),
}

impl Lake {
    /// Runs `actions` (see the module docs) once, holding the lake's
    /// maintenance lease; with `dry_run`, only reports what they would do.
    pub async fn maintain(
        &self,
        config: &MaintenanceConfig,
        actions: &[Action],
        dry_run: bool,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<MaintenanceReport> {
        let started = Instant::now();
        let mut report = MaintenanceReport {
            dry_run,
            started_at: chrono::Utc::now().to_rfc3339(),
            ..MaintenanceReport::default()
        };
        let lease = if dry_run {
            None
        } else {
            match MaintenanceLease::acquire(self.table().database()).await? {
                Ok(lease) => Some(lease),
                Err(holder) => {
                    report.skipped = Some(format!(
                        "another process ({holder}) is maintaining this lake"
                    ));
                    return Ok(report);
                }
            }
        };
        let still_ours: Box<dyn Fn() -> bool + Send + Sync> = match &lease {
            Some(lease) => Box::new(lease.holder()),
            None => Box::new(|| true),
        };
        let result = self
            .run_actions(
                config,
                actions,
                dry_run,
                progress,
                &*still_ours,
                &mut report,
            )
            .await;
        if let Some(lease) = lease {
            lease.release().await?;
        }
        result?;
        report.duration_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(report)
    }

    async fn run_actions(
        &self,
        config: &MaintenanceConfig,
        actions: &[Action],
        dry_run: bool,
        progress: &(dyn Fn(Progress) + Send + Sync),
        still_ours: &(dyn Fn() -> bool + Send + Sync),
        report: &mut MaintenanceReport,
    ) -> Result<()> {
        // Plain calls, no closures over references: futures holding those
        // across awaits trip rustc's `Send` inference in spawned tasks.
        if actions.contains(&Action::Compact)
            && let Some(compaction) = &config.compaction
        {
            progress(Progress::Started(Action::Compact));
            report.compaction = Some(self.compact_with(compaction, dry_run).await?);
            progress(Progress::Finished(Action::Compact));
        }
        let mut expiring = HashSet::new();
        match self.table() {
            EventsTable::Iceberg(t) => {
                let compacted = report
                    .compaction
                    .as_ref()
                    .is_some_and(|c| c.snapshot_id.is_some());
                if actions.contains(&Action::MergeManifests) && !compacted {
                    progress(Progress::Started(Action::MergeManifests));
                    report.manifests = Some(t.merge_manifests(dry_run).await?);
                    progress(Progress::Finished(Action::MergeManifests));
                }
                if actions.contains(&Action::Expire) {
                    progress(Progress::Started(Action::Expire));
                    let expiry = t.expire_snapshots(&config.retention, dry_run).await?;
                    if dry_run {
                        expiring = t.expiring(&config.retention).await?;
                    }
                    report.expiry = Some(expiry);
                    progress(Progress::Finished(Action::Expire));
                }
                if actions.contains(&Action::Cleanup) {
                    progress(Progress::Started(Action::Cleanup));
                    report.cleanup = Some(
                        t.cleanup(config.orphan_grace, dry_run, &expiring, still_ours)
                            .await?,
                    );
                    progress(Progress::Finished(Action::Cleanup));
                }
            }
            EventsTable::Parquet(t) => {
                if actions.contains(&Action::Expire) {
                    progress(Progress::Started(Action::Expire));
                    report.expiry = Some(
                        t.expire_snapshots(&config.retention, dry_run, still_ours)
                            .await?,
                    );
                    progress(Progress::Finished(Action::Expire));
                }
                if actions.contains(&Action::Cleanup) {
                    progress(Progress::Started(Action::Cleanup));
                    report.cleanup =
                        Some(t.cleanup(config.orphan_grace, dry_run, still_ours).await?);
                    progress(Progress::Finished(Action::Cleanup));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_tiers_grow_by_four_up_to_the_small_file_size() {
        let c = CompactionConfig::default();
        let kib = 1024;
        assert_eq!(c.tier(5 * kib), Some(0));
        assert_eq!(c.tier(127 * kib), Some(0));
        assert_eq!(c.tier(128 * kib), Some(1));
        assert_eq!(c.tier(600 * kib), Some(2));
        assert_eq!(c.tier(3 * 1024 * kib), Some(3));
        assert_eq!(c.tier(31 * 1024 * kib), Some(4));
        assert_eq!(c.tier(32 * 1024 * kib), None, "not small");
        let eager = CompactionConfig {
            small_file_bytes: u64::MAX,
            ..c
        };
        assert_eq!(eager.tier(100 * 1024 * kib), Some(0));
    }
}
