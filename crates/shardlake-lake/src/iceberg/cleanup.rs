//! Cleanup: deleting the files no retained snapshot references.
//!
//! After compaction replaced them and expiry removed the snapshots that
//! still listed them, data files, manifests and manifest lists are
//! unreachable; so are the files of commits that failed or crashed before
//! their compare-and-swap, and metadata files a commit could not prune.
//! Cleanup lists the table's directory and deletes every file that is
//!
//! - not referenced by the current metadata: its metadata log, and every
//!   retained snapshot's manifest list, manifests and live data files;
//! - older than the grace period (a file younger than it may belong to a
//!   commit another process is making right now);
//! - for an emitter's data file (named `<first position>-<digest>.parquet`),
//!   below the table's next position: a file at or above it may be
//!   re-committed under the same name by a retry, since names are
//!   deterministic, so it stays until the table has moved past it.
//!
//! Reachability compares file names as well as paths: names are unique
//! (positions and digests, UUIDs, versions), and a file is kept if either
//! matches, so no difference in how a path was spelled can get a live file
//! deleted. Compaction, expiry and cleanup of one lake run one at a time
//! (the maintenance lease), so cleanup never races a rewrite.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use object_store::ObjectMeta;
use object_store::path::Path;

use super::manifests::file_name;
use super::table::{IcebergEventsTable, commit_state};
use crate::crashpoint;
use crate::error::{Error, ErrorKind, Result};
use crate::maintenance::{CleanupReport, listing_and_cutoff};

/// Deletes at once.
const DELETE_CONCURRENCY: usize = 16;

impl IcebergEventsTable {
    /// Deletes unreachable files older than `grace` (see the module docs);
    /// with `dry_run`, only reports them. `expiring` names snapshots to
    /// treat as gone already (a dry run's planned expiry). `still_ours` is
    /// asked before deleting: `false` (the maintenance lease was lost)
    /// stops the cleanup.
    pub(crate) async fn cleanup(
        &self,
        grace: Duration,
        dry_run: bool,
        expiring: &HashSet<i64>,
        still_ours: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<CleanupReport> {
        // Files written after this instant are younger than any version
        // read below, so the grace period counts from here: however long
        // reading the retained snapshots takes, a file committed meanwhile
        // is never old enough to go.
        let started = chrono::Utc::now();
        // Before reading the table: a commit in flight now may land and be
        // forgotten before the files are judged below.
        let in_flight = self.in_flight().watch();
        let base = self.load().await?;
        let metadata = base.metadata();
        let next_position = commit_state(&base)?.next_position;

        // Everything the current metadata references.
        let mut reachable: Vec<String> = Vec::new();
        if let Some(location) = base.metadata_location() {
            reachable.push(location.to_owned());
        }
        reachable.extend(
            metadata
                .metadata_log()
                .iter()
                .map(|m| m.metadata_file.clone()),
        );
        for snapshot in metadata.snapshots() {
            if expiring.contains(&snapshot.snapshot_id()) {
                continue;
            }
            reachable.push(snapshot.manifest_list().to_owned());
            let list = self.manifests().manifest_list(&base, snapshot).await?;
            let entries = self.manifests().entries_of(&base, &list).await?;
            for (manifest, entries) in list.iter().zip(&entries) {
                reachable.push(manifest.manifest_path.clone());
                reachable.extend(
                    entries
                        .iter()
                        .filter(|e| e.is_alive())
                        .map(|e| e.file_path().to_owned()),
                );
            }
        }
        let mut names: HashSet<String> = HashSet::with_capacity(reachable.len());
        let mut paths: HashSet<Path> = HashSet::with_capacity(reachable.len());
        for location in &reachable {
            names.insert(file_name(location).to_owned());
            paths.insert(self.warehouse().object_path(location)?);
        }

        let prefix = self.warehouse().object_path(metadata.location())?;
        let store = self.warehouse().store();
        let (listed, cutoff) = listing_and_cutoff(store.as_ref(), &prefix, started, grace).await?;
        let mut report = CleanupReport {
            files_listed: listed.len(),
            dry_run,
            ..CleanupReport::default()
        };
        let mut doomed: Vec<ObjectMeta> = Vec::new();
        for meta in listed {
            let name = meta.location.filename().unwrap_or_default();
            if paths.contains(&meta.location) || names.contains(name) {
                continue;
            }
            let at_or_after_next = emitter_file_position(name).is_some_and(|p| p >= next_position);
            if meta.last_modified > cutoff || at_or_after_next || in_flight.saw(name) {
                report.files_kept_young += 1;
                continue;
            }
            doomed.push(meta);
        }
        for meta in &doomed {
            report.files_deleted += 1;
            report.bytes_deleted += meta.size;
            if meta.location.as_ref().contains("/metadata/") {
                report.metadata_files_deleted += 1;
            } else {
                report.data_files_deleted += 1;
            }
        }
        if dry_run || doomed.is_empty() {
            return Ok(report);
        }
        if !still_ours() {
            return Err(lease_lost());
        }
        let mut deleted = 0usize;
        let mut results = store.delete_stream(
            futures::stream::iter(doomed.into_iter().map(|m| Ok(m.location))).boxed(),
        );
        while let Some(result) = results.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage("deleting an unreachable file failed")(e)),
            }
            deleted += 1;
            if deleted == 1 {
                crashpoint::hit(crashpoint::CLEANUP_MID_DELETE);
            }
            if deleted.is_multiple_of(DELETE_CONCURRENCY) && !still_ours() {
                return Err(lease_lost());
            }
        }
        tracing::info!(?report, "removed unreachable files");
        Ok(report)
    }
}

/// The first position in an emitter's data file name
/// (`<20-digit position>-<32 hex digest>[-n].parquet`).
pub(crate) fn emitter_file_position(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".parquet")?;
    let (position, rest) = stem.split_once('-')?;
    let digest = rest.split('-').next()?;
    if position.len() != 20 || digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    position.parse().ok()
}

fn storage(what: &str) -> impl FnOnce(object_store::Error) -> Error + '_ {
    move |e| Error::new(ErrorKind::Storage, what.to_owned()).with_source(e)
}

pub(crate) fn lease_lost() -> Error {
    Error::new(
        ErrorKind::CommitConflict,
        "another process took over this lake's maintenance; stopped before deleting more",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emitter_file_names_carry_their_first_position() {
        let digest = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            emitter_file_position(&format!("00000000000000000042-{digest}.parquet")),
            Some(42)
        );
        assert_eq!(
            emitter_file_position(&format!("00000000000000000042-{digest}-1.parquet")),
            Some(42)
        );
        for other in [
            "00000000000000000042-short.parquet",
            "snap-1-1-uuid.avro",
            "42-0123456789abcdef0123456789abcdef.parquet",
            "00001-8b2d.metadata.json",
        ] {
            assert_eq!(emitter_file_position(other), None, "{other}");
        }
    }
}
