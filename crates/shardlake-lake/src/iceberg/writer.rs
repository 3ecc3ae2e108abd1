//! Writing the rows of one commit as Iceberg data files: one rolling Parquet
//! writer per namespace partition, namespaces written concurrently.
//!
//! File names are content-addressed: `<first position>-<digest>-<n>.parquet`,
//! where the digest covers every value of the namespace's rows. A retry after
//! a crash rewrites the same names (no orphan pile-up), and two committers
//! racing from the same base can only produce the same name with identical
//! bytes, so neither can corrupt a file the other committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimestampMicrosecondType};
use futures::{StreamExt, TryStreamExt};
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
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use shardlake_core::schema::columns;
use xxhash_rust::xxh3::Xxh3;

use super::schema::arrow_schema_with_field_ids;
use crate::commit::CommitPlan;
use crate::crashpoint;
use crate::error::{Error, ErrorKind, Result};

/// How data files are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterConfig {
    /// A file rolls over to the next once it holds this many bytes.
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

impl WriterConfig {
    fn writer_properties(&self) -> Result<WriterProperties> {
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
            .set_statistics_enabled(EnabledStatistics::Page);
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

/// File names `<prefix>-<n>.parquet`, `n` counting files of one writer.
#[derive(Debug, Clone)]
struct ContentFileNames {
    prefix: String,
    count: Arc<AtomicU64>,
}

impl FileNameGenerator for ContentFileNames {
    fn generate_file_name(&self) -> String {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:05}.{}", self.prefix, DataFileFormat::Parquet)
    }
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
pub(crate) async fn write_data_files(
    table: &Table,
    plan: &CommitPlan,
    config: &WriterConfig,
) -> Result<Vec<DataFile>> {
    let props = config.writer_properties()?;
    let batch = RecordBatch::try_new(arrow_schema_with_field_ids(), plan.batch.columns().to_vec())?;
    let first_position = plan.first_position();
    let jobs: Vec<(usize, String, RecordBatch)> = plan
        .namespaces
        .iter()
        .enumerate()
        .map(|(i, (namespace, range))| {
            (i, namespace.clone(), batch.slice(range.start, range.len()))
        })
        .collect();
    let written: Vec<Vec<DataFile>> = futures::stream::iter(jobs)
        .map(|(i, namespace, slice)| {
            let props = props.clone();
            async move {
                let files =
                    write_namespace(table, &namespace, slice, first_position, props, config)
                        .await?;
                if i == 0 {
                    crashpoint::hit(crashpoint::BETWEEN_FILES);
                }
                Ok::<_, Error>(files)
            }
        })
        .buffer_unordered(config.parallelism.max(1))
        .try_collect()
        .await?;
    Ok(written.into_iter().flatten().collect())
}

async fn write_namespace(
    table: &Table,
    namespace: &str,
    rows: RecordBatch,
    first_position: i64,
    props: WriterProperties,
    config: &WriterConfig,
) -> Result<Vec<DataFile>> {
    let metadata = table.metadata();
    let schema = Arc::clone(metadata.current_schema());
    let spec = (**metadata.default_partition_spec()).clone();
    let partition = PartitionKey::new(
        spec,
        Arc::clone(&schema),
        Struct::from_iter([Some(Literal::string(namespace))]),
    );
    let names = ContentFileNames {
        prefix: format!("{first_position:020}-{:032x}", content_digest(&rows)),
        count: Arc::new(AtomicU64::new(0)),
    };
    let rolling = RollingFileWriterBuilder::new(
        ParquetWriterBuilder::new(props, schema),
        config.target_file_size,
        table.file_io().clone(),
        DefaultLocationGenerator::new(metadata)?,
        names,
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
    Ok(writer.close().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
