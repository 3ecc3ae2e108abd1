//! Recording what a query's scans really did, file by file.
//!
//! The table provider records what it planned (the pinned snapshot, its
//! files and partitions, the files it kept after metadata pruning). A thin
//! wrapper around DataFusion's Parquet reader records, for every file the
//! scan opens, the shards its footer lists and the bytes fetched: column
//! chunk data arrives through `get_byte_ranges`, footers and page indexes
//! through `get_metadata` and `get_bytes`. A file counts as *scanned* once
//! column data was fetched from it, so a file opened only to learn that all
//! of its row groups can be skipped is not.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::path::Path;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::file::metadata::ParquetMetaData;
use shardlake_lake::file_meta;

use crate::scope::Scope;
use crate::snapshot::{LakeFile, SnapshotFiles};

/// One planned scan: the pinned snapshot, the caller's scope, the files kept.
type PlannedScan = (Arc<SnapshotFiles>, Scope, Vec<Arc<LakeFile>>);

#[derive(Debug, Default)]
struct State {
    /// Every planned scan: the pinned snapshot, the caller's scope and the
    /// files kept. Kept as shared pointers: planning is on every query's
    /// path, so the counting is left to [`ScanRecorder::findings`].
    planned: Vec<PlannedScan>,
    shards_of: HashMap<Path, Vec<i32>>,
    data_bytes: HashMap<Path, u64>,
    bytes_fetched: u64,
    /// Whether `things` was answered from its maintained state.
    from_state: bool,
    /// Rows and files read to bring that state up to date.
    rows_folded: u64,
    folded: HashSet<Path>,
}

/// What the scans of one query planned and read.
#[derive(Debug, Default)]
pub struct ScanRecorder {
    state: Mutex<State>,
}

/// The recorder's findings, the file-level part of the scan statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileFindings {
    /// Snapshots the query's tables were pinned to.
    pub snapshot_ids: Vec<i64>,
    /// Live files in the pinned snapshots.
    pub files_total: usize,
    /// Files column data was read from.
    pub files_scanned: usize,
    /// Namespaces (partitions) in the pinned snapshots.
    pub partitions_total: usize,
    /// Namespaces of the files scanned.
    pub partitions_scanned: usize,
    /// Namespaces of the files left after planning-time pruning (the
    /// partition filter, file statistics, the scope): the ones the answer
    /// takes into account, whether from their data or their metadata.
    pub partitions_covered: usize,
    /// Distinct shards listed in the footers of the files scanned.
    pub shards_queried: usize,
    /// Bytes the scans fetched from storage: column data and page indexes.
    /// Footers are read once per file and kept in the metadata cache; they
    /// are not counted.
    pub bytes_scanned: u64,
    /// Whether `things` was answered from its maintained state.
    pub from_state: bool,
    /// Rows read to bring that state up to date (in no scan's metrics).
    pub rows_folded: u64,
    /// Files among `files_scanned` that were read only for that.
    pub files_folded: usize,
}

impl ScanRecorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A table scan was planned against `snapshot` for a caller limited to
    /// `scope`, keeping `kept`. Totals count only what the scope may see: a
    /// scoped caller learns nothing about other namespaces, not even how
    /// many there are.
    pub fn planned(&self, snapshot: &Arc<SnapshotFiles>, scope: &Scope, kept: Vec<Arc<LakeFile>>) {
        self.lock()
            .planned
            .push((Arc::clone(snapshot), scope.clone(), kept));
    }

    /// `things` was answered from its maintained state, after reading
    /// `rows` rows of `files` (none when it was up to date) into it.
    pub fn answered_from_state(&self, files: impl IntoIterator<Item = Path>, rows: u64) {
        let mut s = self.lock();
        s.from_state = true;
        s.rows_folded += rows;
        s.folded.extend(files);
    }

    fn opened(&self, path: &Path, metadata: &ParquetMetaData) {
        self.lock()
            .shards_of
            .insert(path.clone(), shards_in_footer(metadata));
    }

    /// A worker opened `path`, whose footer names `shards`
    /// (`distributed::scan_metrics`).
    pub(crate) fn remote_opened(&self, path: Path, shards: Vec<i32>) {
        self.lock().shards_of.insert(path, shards);
    }

    /// A worker fetched `bytes` of column data of `path`.
    pub(crate) fn remote_data_bytes(&self, path: Path, bytes: u64) {
        *self.lock().data_bytes.entry(path).or_default() += bytes;
    }

    /// A worker fetched `bytes` in all (data, footers, page indexes).
    pub(crate) fn remote_bytes_fetched(&self, bytes: u64) {
        self.lock().bytes_fetched += bytes;
    }

    fn fetched(&self, path: &Path, bytes: u64, data: bool) {
        let mut s = self.lock();
        s.bytes_fetched += bytes;
        if data {
            *s.data_bytes.entry(path.clone()).or_default() += bytes;
        }
    }

    /// Everything recorded so far.
    pub fn findings(&self) -> FileFindings {
        let s = self.lock();
        // A table scanned twice (a self-join) counts its files once.
        let snapshot_ids: BTreeSet<i64> = s
            .planned
            .iter()
            .filter_map(|(snap, _, _)| snap.snapshot_id)
            .collect();
        let (files_total, partitions_total) = totals(&s.planned);
        let covered: HashSet<&str> = s
            .planned
            .iter()
            .flat_map(|(_, _, kept)| kept.iter().map(|f| f.namespace.as_str()))
            .collect();
        let namespace_of: HashMap<&Path, &str> = match s.data_bytes.is_empty() {
            true => HashMap::new(),
            false => s
                .planned
                .iter()
                .flat_map(|(_, _, kept)| kept.iter().map(|f| (&f.path, f.namespace.as_str())))
                .collect(),
        };
        let scanned: Vec<&Path> = s
            .data_bytes
            .iter()
            .filter(|(_, b)| **b > 0)
            .map(|(p, _)| p)
            .collect();
        let partitions: HashSet<&str> = scanned
            .iter()
            .filter_map(|p| namespace_of.get(*p).copied())
            .collect();
        let shards: HashSet<i32> = scanned
            .iter()
            .filter_map(|p| s.shards_of.get(*p))
            .flatten()
            .copied()
            .collect();
        FileFindings {
            snapshot_ids: snapshot_ids.into_iter().collect(),
            files_total,
            files_scanned: scanned.len(),
            partitions_total,
            partitions_scanned: partitions.len(),
            partitions_covered: covered.len(),
            shards_queried: shards.len(),
            bytes_scanned: s.bytes_fetched,
            from_state: s.from_state,
            rows_folded: s.rows_folded,
            files_folded: scanned.iter().filter(|p| s.folded.contains(**p)).count(),
        }
    }
}

/// Live files and namespaces the scans' snapshots hold within their
/// callers' scopes. A table scanned twice (a self-join) counts once: one
/// snapshot and scope (every scan of one query) is counted without sets.
/// The shards a data file's footer says its events came from.
pub(crate) fn shards_in_footer(metadata: &ParquetMetaData) -> Vec<i32> {
    metadata
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == file_meta::SHARDS_KEY))
        .and_then(|k| k.value.as_deref())
        .and_then(|v| file_meta::decode(v).ok())
        .map(|ranges| ranges.iter().map(|r| r.shard_id).collect())
        .unwrap_or_default()
}

fn totals(planned: &[PlannedScan]) -> (usize, usize) {
    let Some((first, first_scope, _)) = planned.first() else {
        return (0, 0);
    };
    if planned
        .iter()
        .all(|(snap, scope, _)| Arc::ptr_eq(snap, first) && scope == first_scope)
    {
        let files = first
            .files
            .iter()
            .filter(|f| first_scope.allows(&f.namespace))
            .count();
        let namespaces = first
            .namespaces
            .iter()
            .filter(|ns| first_scope.allows(ns))
            .count();
        return (files, namespaces);
    }
    let mut files: HashSet<&Path> = HashSet::new();
    let mut namespaces: HashSet<&str> = HashSet::new();
    for (snapshot, scope, _) in planned {
        files.extend(
            snapshot
                .files
                .iter()
                .filter(|f| scope.allows(&f.namespace))
                .map(|f| &f.path),
        );
        namespaces.extend(
            snapshot
                .namespaces
                .iter()
                .filter(|ns| scope.allows(ns))
                .map(String::as_str),
        );
    }
    (files.len(), namespaces.len())
}

/// A Parquet reader factory that records each file's footer and fetches.
#[derive(Debug)]
pub struct RecordingReaderFactory {
    inner: Arc<dyn ParquetFileReaderFactory>,
    recorder: Arc<ScanRecorder>,
}

impl RecordingReaderFactory {
    /// Wraps `inner`, recording into `recorder`.
    pub fn new(inner: Arc<dyn ParquetFileReaderFactory>, recorder: Arc<ScanRecorder>) -> Self {
        Self { inner, recorder }
    }
}

impl ParquetFileReaderFactory for RecordingReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> datafusion::error::Result<Box<dyn AsyncFileReader + Send>> {
        let path = partitioned_file.object_meta.location.clone();
        let inner = self.inner.create_reader(
            partition_index,
            partitioned_file,
            metadata_size_hint,
            metrics,
        )?;
        Ok(Box::new(RecordingReader {
            inner,
            path,
            recorder: Arc::clone(&self.recorder),
        }))
    }
}

struct RecordingReader {
    inner: Box<dyn AsyncFileReader + Send>,
    path: Path,
    recorder: Arc<ScanRecorder>,
}

impl AsyncFileReader for RecordingReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        // Single ranges are how the metadata loader fetches page indexes.
        self.recorder
            .fetched(&self.path, range.end - range.start, false);
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        // Column chunk data of the row groups being decoded.
        let total = ranges.iter().map(|r| r.end - r.start).sum();
        self.recorder.fetched(&self.path, total, true);
        self.inner.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let metadata = self.inner.get_metadata(options).await?;
            self.recorder.opened(&self.path, &metadata);
            Ok(metadata)
        }
        .boxed()
    }
}
