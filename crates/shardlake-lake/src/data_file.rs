//! The data files both table formats write: their layout settings
//! ([`WriterConfig`]), how a commit's rows are sorted and cut into files of
//! about the target size, and the content digest that names them.
//!
//! A data file never mixes namespaces, so its footer can say exactly which
//! shards' events it holds ([`crate::file_meta`]) and its directory or
//! partition value prunes it.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Int32Type, Int64Type, SchemaRef, TimestampMicrosecondType};
use parquet::arrow::PARQUET_FIELD_ID_META_KEY;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use shardlake_core::event_schema;
use shardlake_core::schema::{columns, field_ids};
use xxhash_rust::xxh3::Xxh3;

use crate::commit::CommitPlan;
use crate::error::{Error, ErrorKind, Result};

static ARROW_SCHEMA_WITH_FIELD_IDS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields = event_schema()
        .fields()
        .iter()
        .zip(field_ids::IN_TABLE_ORDER)
        .map(|(field, id)| {
            field.as_ref().clone().with_metadata(HashMap::from([(
                PARQUET_FIELD_ID_META_KEY.to_owned(),
                id.to_string(),
            )]))
        })
        .collect::<Vec<_>>();
    Arc::new(arrow::datatypes::Schema::new(fields))
});

/// [`shardlake_core::event_schema`] with each column's field id as
/// `PARQUET:field_id` metadata: the schema of every data file, in either
/// format (Iceberg readers find columns by these ids).
pub fn arrow_schema_with_field_ids() -> SchemaRef {
    Arc::clone(&ARROW_SCHEMA_WITH_FIELD_IDS)
}

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

/// The variable-width (Utf8) columns of the table: their lengths dominate a
/// row's size, so [`cut`] measures them row by row.
const VARIABLE_COLUMNS: [&str; 7] = [
    columns::NAMESPACE,
    columns::PARTITION_KEY,
    columns::ENTITY_TYPE,
    columns::ENTITY_ID,
    columns::EVENT_TYPE,
    columns::IDEMPOTENCY_KEY,
    columns::PAYLOAD,
];

/// Bytes of a row's fixed-width columns: `shard_id` (4) plus `seq`,
/// `version`, `ts` and `position` (8 each). The test below derives it from
/// the schema.
const FIXED_ROW_BYTES: usize = 36;

/// Cuts `rows` (in the table's schema) into slices of at most `max_bytes`
/// uncompressed bytes (at least one row each).
pub(crate) fn cut(rows: &RecordBatch, max_bytes: usize) -> Vec<RecordBatch> {
    let string_bytes = |name: &str| -> Option<Vec<usize>> {
        let a = rows.column_by_name(name)?.as_string::<i32>();
        let o = a.value_offsets();
        Some((0..a.len()).map(|r| (o[r + 1] - o[r]) as usize).collect())
    };
    // Fixed-width columns plus the variable ones that dominate.
    let variable: Vec<Vec<usize>> = VARIABLE_COLUMNS
        .into_iter()
        .filter_map(string_bytes)
        .collect();
    let mut out = Vec::new();
    let (mut start, mut acc) = (0, 0);
    for r in 0..rows.num_rows() {
        let row = FIXED_ROW_BYTES + variable.iter().map(|v| v[r]).sum::<usize>();
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

/// The rows of namespace `i` of `plan` in write order, in the table's
/// Arrow schema (with field ids): sorting is CPU work, so it runs on the
/// blocking pool.
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

/// The rows of the Parquet files `contents` (one namespace's files being
/// compacted, in either format), decoded and sorted in the table's order.
/// Decoding and sorting are CPU work, done on the blocking pool so the
/// async workers keep serving ingest and queries.
pub(crate) async fn decode_sorted(contents: Vec<bytes::Bytes>) -> Result<RecordBatch> {
    tokio::task::spawn_blocking(move || {
        let mut batches = Vec::new();
        for bytes in contents {
            for batch in
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?
                    .build()?
            {
                batches.push(batch?);
            }
        }
        sort_rows(&batches)
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Unexpected, "compaction task failed").with_source(e))?
}

/// `batches` (rows of one namespace, from any files of the table) as one
/// batch in the table's order, `(partition_key, position)`: what compaction
/// writes, in either format.
pub(crate) fn sort_rows(batches: &[RecordBatch]) -> Result<RecordBatch> {
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

pub(crate) fn min_position(rows: &RecordBatch) -> Result<i64> {
    let positions = rows
        .column_by_name(columns::POSITION)
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::Int64Array>())
        .ok_or_else(|| Error::new(ErrorKind::Unexpected, "positions are not Int64"))?;
    Ok(arrow::compute::min(positions).unwrap_or(0))
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
    fn row_size_constants_follow_the_schema() {
        let schema = event_schema();
        let utf8: Vec<&str> = schema
            .fields()
            .iter()
            .filter(|f| f.data_type() == &DataType::Utf8)
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(utf8, VARIABLE_COLUMNS);
        let fixed: usize = schema
            .fields()
            .iter()
            .filter_map(|f| f.data_type().primitive_width())
            .sum();
        assert_eq!(fixed, FIXED_ROW_BYTES);
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
