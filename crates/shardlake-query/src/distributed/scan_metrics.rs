//! What the scans of a distributed query read, carried home as metrics.
//!
//! A local scan records through `RecordingReaderFactory` into the query's
//! `ScanRecorder`, an object in this process that no plan codec can carry.
//! On a worker the same reader records into its scan node's metrics
//! instead (standard counters with labels, which datafusion-distributed
//! sends back with each task's last batch): per file the shards its footer
//! names (`shardlake_file_opened`) and the bytes of column data it fetched
//! (`shardlake_file_data_bytes`), and all bytes fetched
//! (`shardlake_bytes_fetched`), each labelled with the worker. [`absorb`]
//! reads them on the coordinator into the query's recorder, so the
//! statistics are computed from the same findings either way.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileScanConfig, ParquetFileReaderFactory, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, Label, MetricBuilder, MetricValue,
};
use datafusion_datasource::file::FileSource;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::path::Path;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::file::metadata::ParquetMetaData;

use crate::recorder::{ScanRecorder, shards_in_footer};

const FILE_OPENED: &str = "shardlake_file_opened";
const FILE_DATA_BYTES: &str = "shardlake_file_data_bytes";
const BYTES_FETCHED: &str = "shardlake_bytes_fetched";
const FILE: &str = "file";
const SHARDS: &str = "shards";
const WORKER: &str = "worker";

/// On a worker: `plan` (a stage as decoded) with every Parquet scan reading
/// through a reader that records into the scan's metrics. The plan keeps its
/// shape, node for node: the coordinator maps the metrics that come back
/// onto its own copy of the stage by position.
pub(super) fn record_on_worker(
    plan: Arc<dyn ExecutionPlan>,
    runtime: &RuntimeEnv,
    worker: &str,
) -> Arc<dyn ExecutionPlan> {
    let rewritten = Arc::clone(&plan).transform_up(|node| {
        let Some(scan) = node.as_any().downcast_ref::<DataSourceExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(files) = scan.data_source().as_any().downcast_ref::<FileScanConfig>() else {
            return Ok(Transformed::no(node));
        };
        let Some(parquet) = files.file_source().as_any().downcast_ref::<ParquetSource>() else {
            return Ok(Transformed::no(node));
        };
        let store = runtime.object_store(&files.object_store_url)?;
        let inner = Arc::new(
            datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory::new(
                store,
                runtime.cache_manager.get_file_metadata_cache(),
            ),
        );
        let source =
            parquet
                .clone()
                .with_parquet_file_reader_factory(Arc::new(MetricsReaderFactory {
                    inner,
                    worker: worker.to_owned(),
                }));
        let mut files = files.clone();
        files.file_source = Arc::new(source) as Arc<dyn FileSource>;
        Ok(Transformed::yes(
            DataSourceExec::from_data_source(files) as Arc<dyn ExecutionPlan>
        ))
    });
    // A plan that cannot be rewritten runs as sent: its statistics then
    // miss what it read, its answer does not.
    rewritten.map(|t| t.data).unwrap_or(plan)
}

/// A Parquet reader factory whose readers record into the scan's metrics.
#[derive(Debug)]
struct MetricsReaderFactory {
    inner: Arc<dyn ParquetFileReaderFactory>,
    worker: String,
}

impl ParquetFileReaderFactory for MetricsReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> datafusion::error::Result<Box<dyn AsyncFileReader + Send>> {
        let path = file.object_meta.location.clone();
        let inner = self
            .inner
            .create_reader(partition_index, file, metadata_size_hint, metrics)?;
        let labelled = |name: &'static str| {
            MetricBuilder::new(metrics)
                .with_label(Label::new(FILE, path.to_string()))
                .with_label(Label::new(WORKER, self.worker.clone()))
                .counter(name, partition_index)
        };
        Ok(Box::new(MetricsReader {
            inner,
            data_bytes: labelled(FILE_DATA_BYTES),
            fetched: MetricBuilder::new(metrics)
                .with_label(Label::new(WORKER, self.worker.clone()))
                .counter(BYTES_FETCHED, partition_index),
            opened: Some((metrics.clone(), path, self.worker.clone(), partition_index)),
        }))
    }
}

struct MetricsReader {
    inner: Box<dyn AsyncFileReader + Send>,
    data_bytes: Count,
    fetched: Count,
    /// Where to record the file's shards once its footer is read.
    opened: Option<(ExecutionPlanMetricsSet, Path, String, usize)>,
}

impl AsyncFileReader for MetricsReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.fetched.add((range.end - range.start) as usize);
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        self.fetched.add(total as usize);
        self.data_bytes.add(total as usize);
        self.inner.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let metadata = self.inner.get_metadata(options).await?;
            if let Some((metrics, path, worker, partition)) = self.opened.take() {
                let shards: Vec<String> = shards_in_footer(&metadata)
                    .iter()
                    .map(i32::to_string)
                    .collect();
                MetricBuilder::new(&metrics)
                    .with_label(Label::new(FILE, path.to_string()))
                    .with_label(Label::new(SHARDS, shards.join(",")))
                    .with_label(Label::new(WORKER, worker))
                    .counter(FILE_OPENED, partition)
                    .add(1);
            }
            Ok(metadata)
        }
        .boxed()
    }
}

/// On the coordinator: the scan metrics of `plan` (a distributed plan with
/// its workers' metrics brought back) into `recorder`, and the bytes each
/// worker fetched into `by_worker`.
pub(super) fn absorb(
    plan: &Arc<dyn ExecutionPlan>,
    recorder: &ScanRecorder,
    by_worker: &mut BTreeMap<String, u64>,
) {
    let mut stack = vec![Arc::clone(plan)];
    while let Some(node) = stack.pop() {
        if node.as_any().is::<DataSourceExec>()
            && let Some(metrics) = node.metrics()
        {
            for metric in metrics.iter() {
                let MetricValue::Count { name, count } = metric.value() else {
                    continue;
                };
                let label = |key: &str| {
                    metric
                        .labels()
                        .iter()
                        .find(|l| l.name() == key)
                        .map(|l| l.value().to_owned())
                };
                match name.as_ref() {
                    FILE_OPENED => {
                        if let Some(file) = label(FILE) {
                            let shards = label(SHARDS)
                                .unwrap_or_default()
                                .split(',')
                                .filter_map(|s| s.parse().ok())
                                .collect();
                            recorder.remote_opened(lake_path(file), shards);
                        }
                        if let Some(worker) = label(WORKER) {
                            by_worker.entry(worker).or_default();
                        }
                    }
                    FILE_DATA_BYTES => {
                        if let Some(file) = label(FILE) {
                            recorder.remote_data_bytes(lake_path(file), count.value() as u64);
                        }
                    }
                    BYTES_FETCHED => {
                        recorder.remote_bytes_fetched(count.value() as u64);
                        if let Some(worker) = label(WORKER) {
                            *by_worker.entry(worker).or_default() += count.value() as u64;
                        }
                    }
                    _ => {}
                }
            }
        }
        stack.extend(node.children().into_iter().cloned());
    }
}

/// A file's path as its label spelled it (the path's own text).
fn lake_path(text: String) -> Path {
    Path::parse(&text).unwrap_or_else(|_| Path::from(text))
}
