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

use arrow::array::RecordBatch;
use iceberg::spec::{DataContentType, DataFile, DataFileFormat, Literal, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultLocationGenerator, FileNameGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use parquet::file::metadata::KeyValue;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::schema::sort_order;
use crate::commit::CommitPlan;
use crate::data_file::{EXPECTED_COMPRESSION, WriterConfig, content_digest, cut, sorted_namespace};
use crate::error::{Error, ErrorKind, Result};
use crate::{crashpoint, file_meta};

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
    let mut writer = rolling.build();
    let partition = Some(partition);
    let step = config.row_group_rows.max(1);
    let mut offset = 0;
    while offset < rows.num_rows() {
        let len = step.min(rows.num_rows() - offset);
        writer.write(&partition, &rows.slice(offset, len)).await?;
        offset += len;
    }
    // What iceberg's DataFileWriter does, plus the sort order: the rows
    // are sorted in the table's order, and saying so lets readers (Spark,
    // Trino, DataFusion via shardlake) rely on it.
    let sorted = table_sort_order_id(table);
    let mut files = Vec::new();
    for mut file in writer.close().await? {
        file.content(DataContentType::Data);
        if let Some(key) = &partition {
            file.partition(key.data().clone());
            file.partition_spec_id(key.spec().spec_id());
        }
        if let Some(id) = sorted {
            file.sort_order_id(id);
        }
        files.push(
            file.build().map_err(|e| {
                Error::new(ErrorKind::Unexpected, format!("data file metadata: {e}"))
            })?,
        );
    }
    match (files.pop(), files.is_empty()) {
        (Some(file), true) => Ok(file),
        _ => Err(Error::new(
            ErrorKind::Unexpected,
            "a data file writer produced other than one file",
        )),
    }
}

/// The id under which `table` declares shardlake's sort order,
/// `(partition_key, position)`, which every data file is written in; `None`
/// for a table that does not declare it (files are then written unsorted
/// as far as Iceberg knows).
fn table_sort_order_id(table: &Table) -> Option<i32> {
    let ours = sort_order().ok()?;
    table
        .metadata()
        .sort_orders_iter()
        .find(|order| order.fields == ours.fields)
        .and_then(|order| i32::try_from(order.order_id).ok())
}
