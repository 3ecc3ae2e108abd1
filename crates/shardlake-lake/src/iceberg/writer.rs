//! Writing the rows of one commit as Iceberg data files: each namespace's rows
//! are cut into files of about the target size, files written concurrently.
//! Every file records in its footer which shards' events it holds
//! ([`crate::file_meta`]).
//!
//! File names are content-addressed: `<first position>-<digest>.parquet`,
//! where the digest covers every value of the file's rows. A retry after
//! a crash rewrites the same names (no orphan pile-up), and two committers
//! racing from the same base can only produce the same name with identical
//! bytes, so neither can corrupt a file the other committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimestampMicrosecondType};
use iceberg::spec::{DataFile, DataFileFormat, Literal, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultLocationGenerator, FileNameGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use shardlake_core::schema::columns;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use xxhash_rust::xxh3::Xxh3;

use super::schema::arrow_schema_with_field_ids;
use crate::commit::CommitPlan;
use crate::error::{Error, ErrorKind, Result};
use crate::{crashpoint, file_meta};

/// How data files are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterConfig {
    /// Target size of a data file in bytes. Each namespace's rows of a
    /// commit are cut into files of about this size before writing
    /// (estimated from their uncompressed size), so a file never mixes
    /// namespaces and its footer can say exactly which shards it holds.
    pub target_file_size: usize,
    /// Rows per Parquet row group (the unit of row-group pruning).
    pub row_group_rows: usize,
    /// Upper bound of rows per data page (the unit of page-index pruning).
    pub page_rows: usize,
    /// zstd compression level.
    pub zstd_level: i32,
    /// Namespaces written at the same time.
    pub parallelism: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            target_file_size: 128 * 1024 * 1024,
            row_group_rows: 128 * 1024,
            page_rows: 8 * 1024,
            zstd_level: 1,
            parallelism: 4,
        }
    }
}

/// Uncompressed bytes per byte of zstd-1 Parquet for typical event data
/// (measured on generated events: about 4); used to cut files near the
/// target size before they are written.
pub(crate) const EXPECTED_COMPRESSION: usize = 4;

impl WriterConfig {
    pub(crate) fn writer_properties(&self, metadata: Vec<KeyValue>) -> Result<WriterProperties> {
        let level = ZstdLevel::try_new(self.zstd_level).map_err(|e| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("bad zstd level {}", self.zstd_level),
            )
            .with_source(e)
        })?;
        let mut builder = WriterProperties::builder()
            .set_created_by(format!("shardlake version {}", env!("CARGO_PKG_VERSION")))
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(self.row_group_rows))
            .set_data_page_row_count_limit(self.page_rows)
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_key_value_metadata(Some(metadata));
        // Near-unique columns gain nothing from dictionaries; skipping them
        // saves the encoder building and then discarding one.
        for col in [
            columns::SEQ,
            columns::TS,
            columns::IDEMPOTENCY_KEY,
            columns::PAYLOAD,
            columns::POSITION,
            columns::ENTITY_ID,
        ] {
            builder = builder.set_column_dictionary_enabled(ColumnPath::from(col), false);
        }
        // The payload is JSON text: min/max statistics on it are large and
        // never prune anything.
        builder = builder.set_column_statistics_enabled(
            ColumnPath::from(columns::PAYLOAD),
            EnabledStatistics::None,
        );
        Ok(builder.build())
    }
}

/// The name of a file whose content is already decided. The writer never
/// rolls (files are cut beforehand), so it asks once; a second request
/// (which would be a bug) still gets a distinct name.
#[derive(Debug, Clone)]
struct FixedFileName {
    stem: String,
    count: Arc<AtomicU64>,
}

impl FileNameGenerator for FixedFileName {
    fn generate_file_name(&self) -> String {
        match self.count.fetch_add(1, Ordering::Relaxed) {
            0 => format!("{}.{}", self.stem, DataFileFormat::Parquet),
            n => format!("{}-{n}.{}", self.stem, DataFileFormat::Parquet),
        }
    }
}

/// Cuts `rows` into slices of at most `max_bytes` uncompressed bytes (at
/// least one row each).
pub(crate) fn cut(rows: &RecordBatch, max_bytes: usize) -> Vec<RecordBatch> {
    let string_bytes = |i: usize| -> Vec<usize> {
        let a = rows.column(i).as_string::<i32>();
        let o = a.value_offsets();
        (0..a.len()).map(|r| (o[r + 1] - o[r]) as usize).collect()
    };
    // Fixed-width columns plus the variable ones that dominate.
    let variable: Vec<Vec<usize>> = [0, 3, 4, 5, 6, 9, 10]
        .into_iter()
        .map(string_bytes)
        .collect();
    let mut out = Vec::new();
    let (mut start, mut acc) = (0, 0);
    for r in 0..rows.num_rows() {
        let row = 36 + variable.iter().map(|v| v[r]).sum::<usize>();
        if acc + row > max_bytes && r > start {
            out.push(rows.slice(start, r - start));
            start = r;
            acc = 0;
        }
        acc += row;
    }
    if start < rows.num_rows() {
        out.push(rows.slice(start, rows.num_rows() - start));
    }
    out
}

/// A 128-bit digest of every value of `batch` (nulls included).
pub(crate) fn content_digest(batch: &RecordBatch) -> u128 {
    let mut h = Xxh3::new();
    for column in batch.columns() {
        let nulls = column.logical_nulls();
        let is_null = |i: usize| nulls.as_ref().is_some_and(|n| n.is_null(i));
        match column.data_type() {
            DataType::Utf8 => {
                let a = column.as_string::<i32>();
                for i in 0..a.len() {
                    if is_null(i) {
                        h.update(&[0]);
                    } else {
                        let v = a.value(i).as_bytes();
                        h.update(&[1]);
                        h.update(&(v.len() as u64).to_le_bytes());
                        h.update(v);
                    }
                }
            }
            DataType::Int32 => {
                for (i, v) in column
                    .as_primitive::<Int32Type>()
                    .values()
                    .iter()
                    .enumerate()
                {
                    h.update(&[u8::from(!is_null(i))]);
                    h.update(&v.to_le_bytes());
                }
            }
            DataType::Int64 => {
                for (i, v) in column
                    .as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .enumerate()
                {
                    h.update(&[u8::from(!is_null(i))]);
                    h.update(&v.to_le_bytes());
                }
            }
            DataType::Timestamp(_, _) => {
                let values = column.as_primitive::<TimestampMicrosecondType>().values();
                for (i, v) in values.iter().enumerate() {
                    h.update(&[u8::from(!is_null(i))]);
                    h.update(&v.to_le_bytes());
                }
            }
            other => h.update(format!("{other}").as_bytes()),
        }
    }
    h.digest128()
}

/// Writes the rows of `plan` into data files of `table`, one partition per
/// namespace, and returns them for the commit.
///
/// Each namespace is a task of its own (sorting, hashing and Parquet
/// encoding are CPU work), up to `config.parallelism` at a time, so a commit
/// uses every core.
pub(crate) async fn write_data_files(
    table: &Table,
    plan: &Arc<CommitPlan>,
    config: &WriterConfig,
) -> Result<Vec<DataFile>> {
    let max_bytes = config.target_file_size.saturating_mul(EXPECTED_COMPRESSION);
    let slots = Arc::new(Semaphore::new(config.parallelism.max(1)));
    let mut tasks = JoinSet::new();
    for i in 0..plan.namespaces.len() {
        let (plan, table, config, slots) = (
            Arc::clone(plan),
            table.clone(),
            config.clone(),
            Arc::clone(&slots),
        );
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.map_err(|e| {
                Error::new(ErrorKind::Unexpected, "writer slots closed").with_source(e)
            })?;
            let rows = sorted_namespace(&plan, i).await?;
            let namespace = &plan.namespaces[i].namespace;
            let mut files = Vec::new();
            for chunk in cut(&rows, max_bytes) {
                files.push(
                    write_file(&table, namespace, chunk, plan.first_position(), &config).await?,
                );
                crashpoint::hit(crashpoint::BETWEEN_FILES);
            }
            Ok::<_, Error>(files)
        });
    }
    let mut written = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let files = result.map_err(|e| {
            Error::new(ErrorKind::Unexpected, "writer task failed").with_source(e)
        })??;
        written.extend(files);
    }
    // Manifest order follows namespace order, whatever order tasks finished in.
    written.sort_by(|a, b| a.file_path().cmp(b.file_path()));
    Ok(written)
}

/// The rows of namespace `i` of `plan` in write order, in the table's
/// Arrow schema (with field ids): sorting is CPU work, so it runs on the
/// blocking pool. Shared by both table formats.
pub(crate) async fn sorted_namespace(plan: &Arc<CommitPlan>, i: usize) -> Result<RecordBatch> {
    let sorter = Arc::clone(plan);
    let rows = tokio::task::spawn_blocking(move || sorter.namespace_batch(i))
        .await
        .map_err(|e| Error::new(ErrorKind::Unexpected, "sort task failed").with_source(e))??;
    Ok(RecordBatch::try_new(
        arrow_schema_with_field_ids(),
        rows.columns().to_vec(),
    )?)
}

pub(crate) async fn write_file(
    table: &Table,
    namespace: &str,
    rows: RecordBatch,
    first_position: i64,
    config: &WriterConfig,
) -> Result<DataFile> {
    let metadata = table.metadata();
    let schema = Arc::clone(metadata.current_schema());
    let spec = (**metadata.default_partition_spec()).clone();
    let partition = PartitionKey::new(
        spec,
        Arc::clone(&schema),
        Struct::from_iter([Some(Literal::string(namespace))]),
    );
    let shards = KeyValue::new(
        file_meta::SHARDS_KEY.to_owned(),
        file_meta::encode(&file_meta::shard_ranges(&rows)),
    );
    let name = FixedFileName {
        stem: format!("{first_position:020}-{:032x}", content_digest(&rows)),
        count: Arc::new(AtomicU64::new(0)),
    };
    let rolling = RollingFileWriterBuilder::new(
        ParquetWriterBuilder::new(config.writer_properties(vec![shards])?, schema),
        usize::MAX,
        table.file_io().clone(),
        DefaultLocationGenerator::new(metadata)?,
        name,
    );
    let mut writer = DataFileWriterBuilder::new(rolling)
        .build(Some(partition))
        .await?;
    let step = config.row_group_rows.max(1);
    let mut offset = 0;
    while offset < rows.num_rows() {
        let len = step.min(rows.num_rows() - offset);
        writer.write(rows.slice(offset, len)).await?;
        offset += len;
    }
    let mut files = writer.close().await?;
    match (files.pop(), files.is_empty()) {
        (Some(file), true) => Ok(file),
        _ => Err(Error::new(
            ErrorKind::Unexpected,
            "a data file writer produced other than one file",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_cut_by_uncompressed_size() {
        let mut b = shardlake_core::EventBatchBuilder::new(shardlake_core::EventLimits::default());
        let ts = chrono::DateTime::from_timestamp(0, 0).expect("ts");
        for seq in 1..=100 {
            let e = shardlake_core::Event::new("ns", 1, seq, "k", "e", ts)
                .with_payload(&serde_json::json!({"pad": "x".repeat(100)}));
            b.push_event(&e).expect("valid");
        }
        let rows = b.finish().into_record_batch();
        let pieces = cut(&rows, 2_000);
        assert!(pieces.len() > 5, "{}", pieces.len());
        assert_eq!(pieces.iter().map(RecordBatch::num_rows).sum::<usize>(), 100);
        assert_eq!(cut(&rows, usize::MAX).len(), 1);
        // A row larger than the limit still gets a file of its own.
        assert_eq!(cut(&rows.slice(0, 3), 1).len(), 3);
    }

    #[test]
    fn digest_sees_every_value() {
        let a = arrow::array::StringArray::from(vec![Some("x"), None, Some("y")]);
        let b = arrow::array::StringArray::from(vec![Some("x"), Some(""), Some("y")]);
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("s", DataType::Utf8, true),
        ]));
        let batch =
            |arr| RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(arr)]).expect("batch");
        let da = content_digest(&batch(a.clone()));
        assert_eq!(da, content_digest(&batch(a)));
        assert_ne!(da, content_digest(&batch(b)));
    }
}
