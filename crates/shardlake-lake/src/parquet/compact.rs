//! Compaction of a plain-Parquet lake: a run of consecutive small commits
//! becomes one commit over the same positions.
//!
//! There is no catalog to swap, so compaction uses the format's own commit
//! point. It reads the run's files, sorts each namespace's rows by
//! `(partition_key, position)`, cuts them into files of the target size
//! and writes them as one commit whose facts cover the run's positions and
//! carry its last watermarks, with `compacted_at_ms` set; the last file
//! written seals it. Until then readers see the run's commits; from then on
//! the chain goes through the compaction (it reaches furthest), and the
//! run's commits are superseded: kept for time travel until expiry removes
//! them ([`super::expire`]). A crash before the seal leaves an incomplete
//! commit nobody reads, removed later. Rows, positions and watermarks do
//! not change.
//!
//! Only the lake's writer may compact (it holds the writer lock): in the
//! server that is the process itself, alongside its emitter, whose commits
//! only ever extend the chain past the run.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;

use super::committer::{file_path, write_file};
use super::{CommitFacts, ParquetCommit, ParquetEventsTable, chain, storage};
use crate::crashpoint;
use crate::data_file::{EXPECTED_COMPRESSION, WriterConfig, cut, decode_sorted};
use crate::error::{Error, ErrorKind, Result};
use crate::maintenance::{CompactionConfig, CompactionReport};

/// The most (compressed) bytes one compaction commit rewrites: bounds its
/// memory. A longer run of small commits is compacted in several commits.
const MAX_RUN_BYTES: u64 = 256 * 1024 * 1024;

impl ParquetEventsTable {
    /// Compacts every run of small commits with a namespace of at least
    /// `config.min_small_files` small files; with `dry_run`, only reports.
    pub(crate) async fn compact_with(
        &self,
        writer: &WriterConfig,
        config: &CompactionConfig,
        dry_run: bool,
    ) -> Result<CompactionReport> {
        let _lock = if dry_run {
            None
        } else {
            match self.lock_for_maintenance() {
                Ok(lock) => lock,
                Err(e) if e.kind() == ErrorKind::CommitConflict => {
                    return Ok(CompactionReport {
                        skipped: Some(e.message().to_owned()),
                        ..CompactionReport::default()
                    });
                }
                Err(e) => return Err(e),
            }
        };
        let snapshot = self.snapshot().await?;
        let runs = choose_runs(&chain(&snapshot.complete, None), config);
        let mut report = CompactionReport::default();
        for run in runs {
            let files: Vec<_> = run.iter().flat_map(|c| c.files.iter()).collect();
            report.files_removed += files.len();
            report.bytes_removed += files.iter().map(|f| f.size).sum::<u64>();
            report.rows += files.iter().map(|f| f.rows).sum::<u64>();
            let mut namespaces: Vec<&str> = files.iter().map(|f| f.namespace.as_str()).collect();
            namespaces.sort_unstable();
            namespaces.dedup();
            report.namespaces += namespaces.len();
            if dry_run {
                continue;
            }
            let (added, bytes, next_position) = self.compact_run(&run, writer).await?;
            report.files_added += added;
            report.bytes_added += bytes;
            report.snapshot_id = Some(next_position);
            report.attempts = 1;
        }
        if report.files_added > 0 {
            tracing::info!(?report, "compacted");
        }
        Ok(report)
    }

    /// Rewrites `run` as one commit; returns files and bytes written and
    /// the position the commit ends at.
    async fn compact_run(
        &self,
        run: &[&ParquetCommit],
        writer: &WriterConfig,
    ) -> Result<(usize, u64, i64)> {
        let (first, last) = match (run.first(), run.last()) {
            (Some(first), Some(last)) => (first, last),
            _ => return Ok((0, 0, 0)),
        };
        let commit_id = uuid::Uuid::new_v4().to_string();
        let _change = self.change();
        let _writing = self.writing(&commit_id);
        let store = self.warehouse().store();
        let max_bytes = writer.target_file_size.saturating_mul(EXPECTED_COMPRESSION);

        // Each namespace's rows of the run, sorted and cut into files.
        let mut by_namespace: BTreeMap<&str, Vec<Path>> = BTreeMap::new();
        for file in run.iter().flat_map(|c| c.files.iter()) {
            by_namespace
                .entry(file.namespace.as_str())
                .or_default()
                .push(file.path.clone());
        }
        let mut chunks: Vec<(String, RecordBatch)> = Vec::new();
        for (namespace, paths) in by_namespace {
            let contents: Vec<bytes::Bytes> = futures::stream::iter(paths)
                .map(|path| {
                    let store = Arc::clone(&store);
                    async move {
                        store
                            .get(&path)
                            .await
                            .map_err(storage("reading a file to compact failed"))?
                            .bytes()
                            .await
                            .map_err(storage("reading a file to compact failed"))
                    }
                })
                .buffered(writer.parallelism.max(1))
                .try_collect()
                .await?;
            let rows = decode_sorted(contents).await?;
            chunks.extend(
                cut(&rows, max_bytes)
                    .into_iter()
                    .map(|chunk| (namespace.to_owned(), chunk)),
            );
        }

        let facts = CommitFacts {
            commit_id: commit_id.clone(),
            first_position: first.facts.first_position,
            next_position: last.facts.next_position,
            files: chunks.len(),
            watermarks: last.facts.watermarks.clone(),
            watermark_digests: last.facts.watermark_digests.clone(),
            committed_at_ms: last.committed_at_ms(),
            compacted_at_ms: Some(chrono::Utc::now().timestamp_millis()),
        };
        let encoded = serde_json::to_string(&facts).map_err(|e| {
            Error::new(ErrorKind::Unexpected, "cannot encode commit facts").with_source(e)
        })?;
        let mut files: Vec<(Path, RecordBatch)> = chunks
            .into_iter()
            .map(|(namespace, rows)| {
                let path = file_path(self, &namespace, facts.first_position, &commit_id, &rows);
                (path, rows)
            })
            .collect();
        let files_written = files.len();
        // As for any commit, the last file written seals it.
        let seal = files.pop();
        futures::stream::iter(files)
            .map(|(path, rows)| {
                let (store, encoded, writer) =
                    (Arc::clone(&store), encoded.clone(), writer.clone());
                async move { write_file(store, path, rows, &encoded, &writer).await }
            })
            .buffer_unordered(writer.parallelism.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        crashpoint::hit(crashpoint::COMPACT_BEFORE_COMMIT);
        if let Some((path, rows)) = seal {
            write_file(Arc::clone(&store), path, rows, &encoded, writer).await?;
        }
        crashpoint::hit(crashpoint::COMPACT_AFTER_COMMIT);
        let written = self
            .list()
            .await?
            .complete
            .iter()
            .find(|c| c.facts.commit_id == commit_id)
            .map(|c| c.files.iter().map(|f| f.size).sum::<u64>())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Storage,
                    "a compaction's files went missing before it was complete",
                )
            })?;
        Ok((files_written, written, facts.next_position))
    }
}

/// Runs of consecutive chain commits of small files in one size tier (a
/// commit's tier is its largest file's, see [`CompactionConfig::tier`]),
/// each at most [`MAX_RUN_BYTES`], that give some namespace at least
/// `min_small_files` files. Older commits sit in higher tiers, as
/// compaction leaves them, so runs of a tier are contiguous.
fn choose_runs<'a>(
    chain: &[&'a ParquetCommit],
    config: &CompactionConfig,
) -> Vec<Vec<&'a ParquetCommit>> {
    let mut runs = Vec::new();
    let mut run: Vec<&ParquetCommit> = Vec::new();
    let mut run_tier = None;
    let mut bytes = 0u64;
    let close = |run: &mut Vec<&'a ParquetCommit>, runs: &mut Vec<Vec<&'a ParquetCommit>>| {
        let mut per_namespace: BTreeMap<&str, usize> = BTreeMap::new();
        for file in run.iter().flat_map(|c| c.files.iter()) {
            *per_namespace.entry(file.namespace.as_str()).or_default() += 1;
        }
        let worth = run.len() >= 2
            && per_namespace
                .values()
                .any(|&n| n >= config.min_small_files.max(2));
        let taken = std::mem::take(run);
        if worth {
            runs.push(taken);
        }
    };
    for commit in chain {
        let size: u64 = commit.files.iter().map(|f| f.size).sum();
        let largest = commit.files.iter().map(|f| f.size).max().unwrap_or(0);
        let tier = config.tier(largest);
        if tier.is_none() || tier != run_tier || bytes + size > MAX_RUN_BYTES {
            close(&mut run, &mut runs);
            bytes = 0;
        }
        run_tier = tier;
        if tier.is_some() {
            run.push(commit);
            bytes += size;
        }
    }
    close(&mut run, &mut runs);
    runs
}
