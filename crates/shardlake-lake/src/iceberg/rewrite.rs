//! Replace snapshots: data files removed and added (compaction), small
//! manifests merged (Iceberg's manifest merging), in one snapshot whose
//! rows are exactly its parent's.
//!
//! A rewrite is planned against one table version and committed with the
//! compare-and-swap. When a concurrent commit wins, the rewrite is rebased
//! instead of redone: shardlake's other commits only append (they add a
//! manifest and leave the others alone), so the same intent applies to the
//! new version as long as every file it removes is still live there. The
//! expensive part (rewriting data files) is never repeated, and the cheap
//! part (manifests, list, metadata) is written again on the new base. A
//! removed file that is no longer live means another rewrite got there
//! first: the caller gets [`Rewritten::Stale`] and starts over.
//!
//! Manifest layout of the new snapshot, newest first:
//! - a manifest of the added files (`ADDED`);
//! - a manifest of the removed files (`DELETED`, keeping their sequence
//!   numbers), for readers of the snapshot's changes;
//! - the live entries of every manifest that held a removed file, plus,
//!   when merging is due, of every small manifest, packed as `EXISTING`
//!   entries into manifests of about `commit.manifest.target-size-bytes`;
//! - every other manifest with live files, carried over unread.
//!
//! Merging is due when the parent has at least
//! `commit.manifest.min-count-to-merge` manifests smaller than the target
//! size and `commit.manifest-merge.enabled` is on (Iceberg's semantics; the
//! defaults shardlake sets are Java's: on, 100, 8 MiB).

use std::collections::{HashMap, HashSet};

use iceberg::spec::{DataFile, ManifestEntryRef, ManifestFile, Operation};
use iceberg::table::Table;

use super::snapshot::{SnapshotWriter, add_as_main, change_summary};
use super::table::{IcebergEventsTable, commit_state, properties, summary};
use crate::error::{Error, ErrorKind, Result};
use crate::maintenance::ManifestChange;

/// What a rewrite changes.
#[derive(Debug, Default, Clone)]
pub(crate) struct Rewrite {
    /// Locations of live data files to remove.
    pub removed: HashSet<String>,
    /// Data files to add (holding exactly the removed files' rows).
    pub added: Vec<DataFile>,
    /// Extra snapshot summary properties.
    pub summary: HashMap<String, String>,
}

/// When and how small manifests are merged: the table's
/// `commit.manifest-merge.*` properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MergePolicy {
    pub enabled: bool,
    pub min_count_to_merge: usize,
    pub target_size_bytes: u64,
}

impl MergePolicy {
    /// The policy `table`'s properties set (Iceberg's defaults where unset).
    pub(crate) fn of(table: &Table) -> Self {
        let props = table.metadata().properties();
        let get = |key: &str| props.get(key).map(String::as_str);
        Self {
            enabled: get(properties::MANIFEST_MERGE_ENABLED)
                .is_none_or(|v| !v.eq_ignore_ascii_case("false")),
            min_count_to_merge: get(properties::MANIFEST_MIN_COUNT_TO_MERGE)
                .and_then(|v| v.parse().ok())
                .unwrap_or(100)
                .max(2),
            target_size_bytes: get(properties::MANIFEST_TARGET_SIZE_BYTES)
                .and_then(|v| v.parse().ok())
                .unwrap_or(8 * 1024 * 1024)
                .max(1),
        }
    }
}

/// How a rewrite attempt ended.
#[derive(Debug)]
pub(crate) enum Rewritten {
    /// Committed: the new snapshot and what happened to the manifests.
    Committed {
        snapshot_id: i64,
        manifests: ManifestChange,
    },
    /// Nothing to do (no files to replace and no merge due).
    Nothing,
    /// Another commit won the swap: rebase on a fresh version.
    Lost,
    /// A file to remove is no longer live: the plan is stale.
    Stale(String),
}

/// Whether a rewrite of `base` with no file changes would merge manifests,
/// and how many the parent has: the check maintenance does before trying.
pub(crate) async fn merge_due(table: &IcebergEventsTable, base: &Table) -> Result<(bool, usize)> {
    let Some(parent) = base.metadata().current_snapshot() else {
        return Ok((false, 0));
    };
    let list = table.manifests().manifest_list(base, parent).await?;
    let policy = MergePolicy::of(base);
    let small = list
        .iter()
        .filter(|m| (m.manifest_length.max(0) as u64) < policy.target_size_bytes)
        .count();
    Ok((
        policy.enabled && small >= policy.min_count_to_merge,
        list.len(),
    ))
}

/// Tries `rewrite` once against `base` (see the module docs).
pub(crate) async fn rewrite(
    table: &IcebergEventsTable,
    base: &Table,
    rewrite: &Rewrite,
) -> Result<Rewritten> {
    let Some(parent) = base.metadata().current_snapshot() else {
        return Ok(if rewrite.removed.is_empty() {
            Rewritten::Nothing
        } else {
            Rewritten::Stale("the table has no snapshot".to_owned())
        });
    };
    let list = table.manifests().manifest_list(base, parent).await?;
    let entries = table.manifests().entries_of(base, &list).await?;
    let live = |e: &&ManifestEntryRef| e.is_alive();

    // Every file to remove must still be live here.
    let mut removed_entries: Vec<ManifestEntryRef> = Vec::new();
    let mut touched = vec![false; list.len()];
    for (i, manifest) in entries.iter().enumerate() {
        for entry in manifest.iter().filter(live) {
            if rewrite.removed.contains(entry.file_path()) {
                touched[i] = true;
                removed_entries.push(std::sync::Arc::clone(entry));
            }
        }
    }
    if removed_entries.len() != rewrite.removed.len() {
        let found: HashSet<&str> = removed_entries.iter().map(|e| e.file_path()).collect();
        let missing = rewrite
            .removed
            .iter()
            .find(|p| !found.contains(p.as_str()))
            .cloned()
            .unwrap_or_default();
        return Ok(Rewritten::Stale(format!(
            "{missing} is no longer live in the table"
        )));
    }

    let policy = MergePolicy::of(base);
    let is_small = |m: &ManifestFile| (m.manifest_length.max(0) as u64) < policy.target_size_bytes;
    let merge =
        policy.enabled && list.iter().filter(|m| is_small(m)).count() >= policy.min_count_to_merge;
    let has_live = |m: &ManifestFile| {
        m.added_files_count.unwrap_or(1) + m.existing_files_count.unwrap_or(1) > 0
    };
    // Which manifests are rewritten, carried, or dropped (no live files).
    let mut rewritten: Vec<usize> = Vec::new();
    let mut carried: Vec<ManifestFile> = Vec::new();
    let mut dropped = 0;
    for (i, manifest) in list.iter().enumerate() {
        if touched[i] || (merge && is_small(manifest)) {
            rewritten.push(i);
        } else if has_live(manifest) {
            carried.push(manifest.clone());
        } else {
            dropped += 1;
        }
    }
    if rewrite.removed.is_empty() && rewrite.added.is_empty() && rewritten.len() < 2 && dropped == 0
    {
        return Ok(Rewritten::Nothing);
    }

    let mut writer = SnapshotWriter::new(base, table.in_flight());
    let mut manifests: Vec<ManifestFile> = Vec::new();
    manifests.extend(writer.added_manifest(rewrite.added.iter().cloned()).await?);
    if !removed_entries.is_empty() {
        let mut deleted = writer.manifest()?;
        for entry in &removed_entries {
            deleted.add_delete_file(
                entry.data_file().clone(),
                sequence_number(entry)?,
                entry.file_sequence_number,
            )?;
        }
        manifests.push(deleted.write_manifest_file().await?);
    }
    // Survivors of the rewritten manifests, packed to the target size
    // (entries per manifest estimated from the manifests they come from).
    let survivors: Vec<&ManifestEntryRef> = rewritten
        .iter()
        .flat_map(|&i| entries[i].iter().filter(live))
        .filter(|e| !rewrite.removed.contains(e.file_path()))
        .collect();
    let (bytes, count) = rewritten.iter().fold((0u64, 0u64), |(b, c), &i| {
        (
            b + list[i].manifest_length.max(0) as u64,
            c + entries[i].len() as u64,
        )
    });
    let per_entry = (bytes / count.max(1)).max(1);
    let per_manifest = usize::try_from(policy.target_size_bytes / per_entry)
        .unwrap_or(usize::MAX)
        .max(1);
    for chunk in survivors.chunks(per_manifest) {
        let mut merged = writer.manifest()?;
        for entry in chunk {
            merged.add_existing_file(
                entry.data_file().clone(),
                entry
                    .snapshot_id()
                    .ok_or_else(|| inherited("snapshot id"))?,
                sequence_number(entry)?,
                entry.file_sequence_number,
            )?;
        }
        manifests.push(merged.write_manifest_file().await?);
    }
    let created = manifests.len();
    let kept = carried.len();
    manifests.extend(carried);

    let change = ManifestChange {
        before: list.len(),
        after: manifests.len(),
        replaced: rewritten.len() + dropped,
    };
    let mut props = change_summary(
        base,
        rewrite.added.iter(),
        removed_entries.iter().map(|e| e.data_file()),
    );
    props.extend(rewrite.summary.clone());
    props.insert("manifests-replaced".to_owned(), change.replaced.to_string());
    props.insert("manifests-created".to_owned(), created.to_string());
    props.insert("manifests-kept".to_owned(), kept.to_string());
    props.insert(
        summary::NEXT_POSITION.to_owned(),
        commit_state(base)?.next_position.to_string(),
    );
    let snapshot_id = writer.snapshot_id();
    let (snapshot, listed) = writer.finish(&manifests, Operation::Replace, props).await?;
    let list_path = snapshot.manifest_list().to_owned();
    match table.commit(base, |b| add_as_main(b, snapshot)).await? {
        Some(_) => {
            writer.committed();
            table.manifests().remember_list(&list_path, listed);
            Ok(Rewritten::Committed {
                snapshot_id,
                manifests: change,
            })
        }
        None => {
            writer.discard().await;
            Ok(Rewritten::Lost)
        }
    }
}

fn sequence_number(entry: &ManifestEntryRef) -> Result<i64> {
    entry
        .sequence_number()
        .ok_or_else(|| inherited("sequence number"))
}

fn inherited(what: &str) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        format!("a committed manifest entry without its {what}"),
    )
}
