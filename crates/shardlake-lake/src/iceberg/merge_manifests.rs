//! Manifest merging on its own: when no compaction ran (the files are
//! large, or few per namespace), each append still adds a manifest, and a
//! snapshot's manifest list would grow with every commit. Once the parent
//! has `commit.manifest.min-count-to-merge` small manifests, their live
//! entries are packed into manifests of the target size in one `replace`
//! snapshot ([`super::rewrite`]), rebased onto newer versions when
//! emitters commit meanwhile.

use super::compact::MAX_REBASES;
use super::rewrite::{Rewrite, Rewritten, merge_due, rewrite};
use super::table::IcebergEventsTable;
use crate::crashpoint;
use crate::error::{Error, ErrorKind, Result};
use crate::maintenance::{ManifestChange, ManifestMergeReport};

impl IcebergEventsTable {
    /// Merges small manifests if the table's merge settings say it is due.
    pub async fn merge_manifests(&self, dry_run: bool) -> Result<ManifestMergeReport> {
        for _ in 0..MAX_REBASES {
            let _commits = self.lock_commits().await;
            let base = self.load().await?;
            let (due, count) = merge_due(self, &base).await?;
            let unchanged = ManifestMergeReport {
                merged: false,
                manifests: ManifestChange {
                    before: count,
                    after: count,
                    replaced: 0,
                },
                snapshot_id: None,
            };
            if !due {
                return Ok(unchanged);
            }
            if dry_run {
                return Ok(ManifestMergeReport {
                    merged: true,
                    ..unchanged
                });
            }
            crashpoint::hit(crashpoint::MERGE_BEFORE_COMMIT);
            match rewrite(self, &base, &Rewrite::default()).await? {
                Rewritten::Committed {
                    snapshot_id,
                    manifests,
                    ..
                } => {
                    tracing::info!(?manifests, "merged manifests");
                    return Ok(ManifestMergeReport {
                        merged: true,
                        manifests,
                        snapshot_id: Some(snapshot_id),
                    });
                }
                Rewritten::Nothing | Rewritten::Stale(_) => return Ok(unchanged),
                Rewritten::Lost => {}
            }
        }
        Err(Error::new(
            ErrorKind::CommitConflict,
            "manifest merging lost to concurrent commits too often; try again later",
        ))
    }
}
