//! Compaction: rewriting a namespace's small data files into large sorted
//! ones in one `replace` snapshot.
//!
//! Every commit adds at least one file per namespace it touches, so a lake
//! fed by frequent small commits (a server flushing every few hundred
//! milliseconds) accumulates thousands of small files, and queries pay per
//! file. Compaction reads the small files of each namespace that has many,
//! sorts their rows by `(partition_key, position)` like any commit does,
//! writes files of the target size, and commits a snapshot that deletes the
//! old files and adds the new ones. Rows, positions and watermarks are
//! unchanged: replay and exactly-once do not notice.
//!
//! iceberg-rust 0.10 has no rewrite action (only `fast_append`), so the
//! snapshot is produced here: a manifest of every surviving file
//! (`EXISTING`) plus the new ones (`ADDED`), a manifest of the removed files
//! (`DELETED`), a manifest list, the next metadata file, and the same
//! compare-and-swap on the catalog row the SQL catalog commits with. A
//! concurrent commit makes the swap fail; compaction then starts over from
//! the new version (the emitter's commits always win).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use iceberg::MetadataLocation;
use iceberg::spec::{
    DataFile, ManifestList, ManifestListWriter, ManifestWriterBuilder, Operation, PrimitiveLiteral,
    Snapshot, SnapshotReference, SnapshotRetention, Summary, TableMetadata,
};
use iceberg::table::Table;
use iceberg::{TableUpdate, spec::MAIN_BRANCH};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use shardlake_core::schema::columns;

use super::schema::arrow_schema_with_field_ids;
use super::table::IcebergEventsTable;
use super::writer::write_file;
use crate::data_file::{EXPECTED_COMPRESSION, WriterConfig, cut};
use crate::error::{Error, ErrorKind, Result};

/// Summary property marking a compaction snapshot.
pub const COMPACTION_PROPERTY: &str = "shardlake.compaction";

/// When and how much to compact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionConfig {
    /// Files smaller than this are candidates.
    pub small_file_bytes: u64,
    /// A namespace is compacted once it has at least this many small files.
    pub min_small_files: usize,
    /// Attempts when commits by others keep moving the table.
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

/// What a compaction did.
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
    pub snapshot_id: Option<i64>,
    /// Attempts used (more than one when other commits intervened).
    pub attempts: u32,
}

/// One live manifest entry with what an `EXISTING`/`DELETED` copy must keep.
struct LiveFile {
    data_file: DataFile,
    snapshot_id: i64,
    sequence_number: i64,
    file_sequence_number: Option<i64>,
}

impl IcebergEventsTable {
    /// Compacts every namespace with at least `config.min_small_files`
    /// files under `config.small_file_bytes`, writing files laid out by
    /// `writer`. Safe to run while emitters commit.
    pub async fn compact(
        &self,
        writer: &WriterConfig,
        config: &CompactionConfig,
    ) -> Result<CompactionReport> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let table = self.load().await?;
            let Some(pending) = plan_and_write(&table, writer, config).await? else {
                return Ok(CompactionReport {
                    attempts,
                    ..CompactionReport::default()
                });
            };
            let (metadata, location) = next_metadata(&table, &pending.snapshot)?;
            let mut report = pending.report;
            let current = table.metadata_location().ok_or_else(|| {
                Error::new(
                    ErrorKind::Unexpected,
                    "a loaded table without a metadata location",
                )
            })?;
            metadata.write_to(table.file_io(), &location).await?;
            if self
                .swap_metadata_location(current, &location.to_string())
                .await?
            {
                report.attempts = attempts;
                tracing::info!(?report, "compacted");
                return Ok(report);
            }
            if attempts >= config.max_attempts {
                return Err(Error::new(
                    ErrorKind::CommitConflict,
                    format!(
                        "compaction lost to concurrent commits {attempts} times; try again later"
                    ),
                ));
            }
            tracing::debug!(
                attempts,
                "compaction conflicted with a commit; starting over"
            );
        }
    }
}

/// The pending snapshot of one attempt.
struct Pending {
    report: CompactionReport,
    snapshot: Snapshot,
}

/// Picks the small files, rewrites them, and writes manifests and the
/// manifest list of the replacing snapshot. `None`: nothing to do.
async fn plan_and_write(
    table: &Table,
    writer: &WriterConfig,
    config: &CompactionConfig,
) -> Result<Option<Pending>> {
    let metadata = table.metadata();
    let Some(parent) = metadata.current_snapshot() else {
        return Ok(None);
    };
    let live = live_entries(table, parent).await?;

    // Small files per namespace; compact namespaces with enough of them.
    let mut small: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, f) in live.iter().enumerate() {
        if f.data_file.file_size_in_bytes() < config.small_file_bytes {
            small
                .entry(namespace_of(&f.data_file)?)
                .or_default()
                .push(i);
        }
    }
    small.retain(|_, files| files.len() >= config.min_small_files.max(2));
    if small.is_empty() {
        return Ok(None);
    }

    let file_io = table.file_io();
    let max_bytes = writer.target_file_size.saturating_mul(EXPECTED_COMPRESSION);
    let mut removed = vec![false; live.len()];
    let mut added: Vec<DataFile> = Vec::new();
    let mut report = CompactionReport {
        namespaces: small.len(),
        ..CompactionReport::default()
    };
    for (namespace, indexes) in &small {
        let mut batches = Vec::new();
        for &i in indexes {
            let bytes = file_io
                .new_input(live[i].data_file.file_path())?
                .read()
                .await?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
            for batch in reader {
                batches.push(batch?);
            }
            removed[i] = true;
            report.files_removed += 1;
            report.bytes_removed += live[i].data_file.file_size_in_bytes();
        }
        let rows = sorted(&batches)?;
        report.rows += rows.num_rows() as u64;
        let first_position = min_position(&rows)?;
        for chunk in cut(&rows, max_bytes) {
            let file = write_file(table, namespace, chunk, first_position, writer).await?;
            report.bytes_added += file.file_size_in_bytes();
            added.push(file);
        }
    }
    report.files_added = added.len();

    // The replacing snapshot's manifests.
    let snapshot_id = new_snapshot_id(metadata);
    let sequence_number = metadata.last_sequence_number() + 1;
    let schema = Arc::clone(metadata.current_schema());
    let spec = (**metadata.default_partition_spec()).clone();
    let location = metadata.location();
    let uuid = uuid::Uuid::new_v4();
    let manifest = |n: u32| {
        file_io
            .new_output(format!("{location}/metadata/{uuid}-m{n}.avro"))
            .map(|out| {
                ManifestWriterBuilder::new(
                    out,
                    Some(snapshot_id),
                    Arc::clone(&schema),
                    spec.clone(),
                )
                .build_v2_data()
            })
    };
    let mut kept = manifest(0)?;
    for f in &added {
        kept.add_file(f.clone(), sequence_number)?;
    }
    let mut gone = manifest(1)?;
    for (f, removed) in live.iter().zip(&removed) {
        if *removed {
            gone.add_delete_file(
                f.data_file.clone(),
                f.sequence_number,
                f.file_sequence_number,
            )?;
        } else {
            kept.add_existing_file(
                f.data_file.clone(),
                f.snapshot_id,
                f.sequence_number,
                f.file_sequence_number,
            )?;
        }
    }
    let manifests = [
        kept.write_manifest_file().await?,
        gone.write_manifest_file().await?,
    ];
    let list_path = format!("{location}/metadata/snap-{snapshot_id}-1-{uuid}.avro");
    let mut list = ManifestListWriter::v2(
        file_io.new_output(&list_path)?.writer().await?,
        snapshot_id,
        Some(parent.snapshot_id()),
        sequence_number,
    );
    list.add_manifests(manifests.into_iter())?;
    list.close().await?;

    let total_records: u64 = live.iter().map(|f| f.data_file.record_count()).sum();
    let total_files = live.len() - report.files_removed + report.files_added;
    let summary = Summary {
        operation: Operation::Replace,
        additional_properties: HashMap::from([
            (COMPACTION_PROPERTY.to_owned(), "true".to_owned()),
            (
                "added-data-files".to_owned(),
                report.files_added.to_string(),
            ),
            (
                "deleted-data-files".to_owned(),
                report.files_removed.to_string(),
            ),
            ("added-records".to_owned(), report.rows.to_string()),
            ("deleted-records".to_owned(), report.rows.to_string()),
            (
                "added-files-size".to_owned(),
                report.bytes_added.to_string(),
            ),
            (
                "removed-files-size".to_owned(),
                report.bytes_removed.to_string(),
            ),
            ("total-records".to_owned(), total_records.to_string()),
            ("total-data-files".to_owned(), total_files.to_string()),
            ("total-delete-files".to_owned(), "0".to_owned()),
        ]),
    };
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(Some(parent.snapshot_id()))
        .with_sequence_number(sequence_number)
        .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
        .with_manifest_list(list_path)
        .with_summary(summary)
        .with_schema_id(metadata.current_schema_id())
        .build();
    report.snapshot_id = Some(snapshot_id);
    Ok(Some(Pending { report, snapshot }))
}

/// The next metadata of `table` with `snapshot` as `main`, and where it goes.
fn next_metadata(table: &Table, snapshot: &Snapshot) -> Result<(TableMetadata, MetadataLocation)> {
    let current = table.metadata_location().ok_or_else(|| {
        Error::new(
            ErrorKind::Unexpected,
            "a loaded table without a metadata location",
        )
    })?;
    let mut builder = table
        .metadata()
        .clone()
        .into_builder(Some(current.to_owned()));
    let snapshot_id = snapshot.snapshot_id();
    builder = TableUpdate::AddSnapshot {
        snapshot: snapshot.clone(),
    }
    .apply(builder)?;
    builder = TableUpdate::SetSnapshotRef {
        ref_name: MAIN_BRANCH.to_owned(),
        reference: SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
    }
    .apply(builder)?;
    let metadata = builder.build()?.metadata;
    let location = current
        .parse::<MetadataLocation>()?
        .with_next_version()
        .with_new_metadata(&metadata);
    Ok((metadata, location))
}

/// Every live entry of `snapshot`, with its sequence numbers.
async fn live_entries(table: &Table, snapshot: &Snapshot) -> Result<Vec<LiveFile>> {
    let file_io = table.file_io();
    let bytes = file_io.new_input(snapshot.manifest_list())?.read().await?;
    let list = ManifestList::parse_with_version(&bytes, table.metadata().format_version())?;
    let mut live = Vec::new();
    for manifest_file in list.entries() {
        let manifest = manifest_file.load_manifest(file_io).await?;
        for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
            let (Some(snapshot_id), Some(sequence_number)) =
                (entry.snapshot_id(), entry.sequence_number())
            else {
                return Err(Error::new(
                    ErrorKind::Unexpected,
                    "a committed manifest entry without snapshot id or sequence number",
                ));
            };
            live.push(LiveFile {
                data_file: entry.data_file().clone(),
                snapshot_id,
                sequence_number,
                file_sequence_number: entry.file_sequence_number,
            });
        }
    }
    Ok(live)
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

/// `batches` as one batch in the table's order: `(partition_key, position)`.
fn sorted(batches: &[RecordBatch]) -> Result<RecordBatch> {
    let schema = arrow_schema_with_field_ids();
    let batches: Vec<RecordBatch> = batches
        .iter()
        .map(|b| RecordBatch::try_new(Arc::clone(&schema), b.columns().to_vec()))
        .collect::<std::result::Result<_, _>>()?;
    let all = concat_batches(&schema, &batches)?;
    let column = |name: &str| {
        all.column_by_name(name)
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::Unexpected, format!("data file without `{name}`")))
    };
    let indices = lexsort_to_indices(
        &[
            SortColumn {
                values: column(columns::PARTITION_KEY)?,
                options: None,
            },
            SortColumn {
                values: column(columns::POSITION)?,
                options: None,
            },
        ],
        None,
    )?;
    Ok(take_record_batch(&all, &indices)?)
}

fn min_position(rows: &RecordBatch) -> Result<i64> {
    let positions = rows
        .column_by_name(columns::POSITION)
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::Int64Array>())
        .ok_or_else(|| Error::new(ErrorKind::Unexpected, "positions are not Int64"))?;
    Ok(arrow::compute::min(positions).unwrap_or(0))
}

/// A snapshot id not used by `metadata` (positive, random, as iceberg does).
fn new_snapshot_id(metadata: &TableMetadata) -> i64 {
    loop {
        let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((hi ^ lo) & i64::MAX as u64) as i64;
        if id != 0 && metadata.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}
