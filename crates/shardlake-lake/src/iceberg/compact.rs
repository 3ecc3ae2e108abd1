//! Compaction: rewriting a namespace's small data files into large sorted
//! ones in one `replace` snapshot.
//!
//! Every commit adds at least one file per namespace it touches, so a lake
//! fed by frequent small commits (a server flushing every few hundred
//! milliseconds) accumulates thousands of small files, and queries pay per
//! file. Compaction reads the small files of each namespace that has many,
//! sorts their rows by `(partition_key, position)` like any commit does,
//! writes files of the target size, and commits a snapshot that deletes the
//! old files and adds the new ones ([`super::rewrite`], which also merges
//! small manifests when that is due). Rows, positions and watermarks are
//! unchanged: replay and exactly-once do not notice.
//!
//! The data is rewritten once. A commit by an emitter in between only
//! makes the catalog swap fail; the replace snapshot is then rebased onto
//! the new version (new manifests, same data files), which takes
//! milliseconds, so compaction keeps up with a table committing many times
//! a second.

use std::collections::{BTreeMap, HashMap};

use iceberg::spec::{DataFile, PrimitiveLiteral};
use iceberg::table::Table;

use super::rewrite::{Rewrite, Rewritten, rewrite};
use super::table::IcebergEventsTable;
use super::writer::write_file;
use crate::crashpoint;
use crate::data_file::{EXPECTED_COMPRESSION, WriterConfig, cut, decode_sorted, min_position};
use crate::error::{Error, ErrorKind, Result};
use crate::maintenance::{CompactionConfig, CompactionReport};

/// Summary property marking a compaction snapshot.
pub const COMPACTION_PROPERTY: &str = "shardlake.compaction";

/// Rebases of one rewrite onto newer versions before giving up: each one
/// means another commit landed meanwhile, which a busy server does many
/// times a second.
pub(crate) const MAX_REBASES: u32 = 200;

/// The small files chosen in one namespace.
struct Chosen {
    namespace: String,
    files: Vec<DataFile>,
}

impl IcebergEventsTable {
    /// Compacts, in every namespace, each size tier of small files that
    /// holds at least `config.min_small_files` files
    /// ([`CompactionConfig::tier`]), writing files laid out by `writer`.
    /// Safe to run while emitters commit.
    pub async fn compact(
        &self,
        writer: &WriterConfig,
        config: &CompactionConfig,
    ) -> Result<CompactionReport> {
        self.compact_with(writer, config, false).await
    }

    /// [`Self::compact`], or with `dry_run` only what it would rewrite.
    pub(crate) async fn compact_with(
        &self,
        writer: &WriterConfig,
        config: &CompactionConfig,
        dry_run: bool,
    ) -> Result<CompactionReport> {
        let mut restarts = 0;
        loop {
            let base = self.load().await?;
            let chosen = self.choose(&base, config).await?;
            if chosen.is_empty() {
                return Ok(CompactionReport::default());
            }
            let mut namespaces: Vec<&str> = chosen.iter().map(|c| c.namespace.as_str()).collect();
            namespaces.dedup();
            let mut report = CompactionReport {
                namespaces: namespaces.len(),
                files_removed: chosen.iter().map(|c| c.files.len()).sum(),
                bytes_removed: chosen
                    .iter()
                    .flat_map(|c| &c.files)
                    .map(DataFile::file_size_in_bytes)
                    .sum(),
                rows: chosen
                    .iter()
                    .flat_map(|c| &c.files)
                    .map(DataFile::record_count)
                    .sum(),
                ..CompactionReport::default()
            };
            if dry_run {
                return Ok(report);
            }
            let plan = rewrite_files(&base, &chosen, writer).await?;
            report.files_added = plan.added.len();
            report.bytes_added = plan.added.iter().map(DataFile::file_size_in_bytes).sum();
            crashpoint::hit(crashpoint::COMPACT_BEFORE_COMMIT);
            for attempt in 1..=MAX_REBASES {
                // On the latest version, under the commit lock: this
                // process's emitter cannot commit in between, so only
                // another process can make the swap fail.
                let _commits = self.lock_commits().await;
                let base = self.load().await?;
                match rewrite(self, &base, &plan).await? {
                    Rewritten::Committed {
                        snapshot_id,
                        manifests,
                        ..
                    } => {
                        crashpoint::hit(crashpoint::COMPACT_AFTER_COMMIT);
                        report.snapshot_id = Some(snapshot_id);
                        report.attempts = attempt;
                        report.manifests = manifests;
                        tracing::info!(?report, "compacted");
                        return Ok(report);
                    }
                    Rewritten::Lost => {}
                    Rewritten::Nothing => return Ok(CompactionReport::default()),
                    Rewritten::Stale(why) => {
                        tracing::info!(why, "compaction is stale; starting over");
                        break;
                    }
                }
            }
            restarts += 1;
            if restarts >= config.max_attempts {
                return Err(Error::new(
                    ErrorKind::CommitConflict,
                    format!(
                        "compaction lost to concurrent commits {restarts} times; try again later"
                    ),
                ));
            }
        }
    }

    /// The small files of each namespace and size tier that has enough of
    /// them (one group per namespace and tier, namespaces in order).
    async fn choose(&self, base: &Table, config: &CompactionConfig) -> Result<Vec<Chosen>> {
        let Some(parent) = base.metadata().current_snapshot() else {
            return Ok(Vec::new());
        };
        let live = self.manifests().live_entries(base, parent).await?;
        // Per namespace and size tier; a tier with enough files is compacted.
        let mut small: BTreeMap<(String, u32), Vec<DataFile>> = BTreeMap::new();
        for entry in &live {
            let file = entry.data_file();
            if let Some(tier) = config.tier(file.file_size_in_bytes()) {
                small
                    .entry((namespace_of(file)?, tier))
                    .or_default()
                    .push(file.clone());
            }
        }
        Ok(small
            .into_iter()
            .filter(|(_, files)| files.len() >= config.min_small_files.max(2))
            .map(|((namespace, _), files)| Chosen { namespace, files })
            .collect())
    }
}

/// Reads the chosen files, sorts each namespace's rows in the table's
/// order and writes them as files of the target size.
async fn rewrite_files(base: &Table, chosen: &[Chosen], writer: &WriterConfig) -> Result<Rewrite> {
    let file_io = base.file_io();
    let max_bytes = writer.target_file_size.saturating_mul(EXPECTED_COMPRESSION);
    let mut plan = Rewrite {
        summary: HashMap::from([(COMPACTION_PROPERTY.to_owned(), "true".to_owned())]),
        ..Rewrite::default()
    };
    for c in chosen {
        let mut contents = Vec::with_capacity(c.files.len());
        for file in &c.files {
            contents.push(file_io.new_input(file.file_path())?.read().await?);
            plan.removed.insert(file.file_path().to_owned());
        }
        let rows = decode_sorted(contents).await?;
        let first_position = min_position(&rows)?;
        for chunk in cut(&rows, max_bytes) {
            plan.added
                .push(write_file(base, &c.namespace, chunk, first_position, writer).await?);
        }
    }
    Ok(plan)
}

fn namespace_of(file: &DataFile) -> Result<String> {
    match file.partition().fields().first() {
        Some(Some(iceberg::spec::Literal::Primitive(PrimitiveLiteral::String(ns)))) => {
            Ok(ns.clone())
        }
        _ => Err(Error::new(
            ErrorKind::Unexpected,
            format!("data file {} has no namespace partition", file.file_path()),
        )),
    }
}
