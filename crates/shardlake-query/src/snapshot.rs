//! Pinning table versions and caching what planning needs from them.
//!
//! For a plain-Parquet lake a snapshot is the set of complete commits a
//! listing shows (see `shardlake_lake::parquet`); bounds come from each
//! file's footer, read once. The rest of this page is about Iceberg.
//!
//! Every query pins the table's current snapshot. Finding out which snapshot
//! is current costs one indexed lookup in the catalog database; metadata is
//! re-read only when that answer changes. With a freshness bound the answer
//! is kept in memory and reused (no lock, no lookup) until it is older than
//! the bound or this process changed the table (see [`LakeSnapshots::pin`]). The live files of a snapshot are
//! assembled from manifests, and manifests are immutable, so they are cached
//! by path: a new snapshot after a commit reads only the manifest that commit
//! added. The result is a flat list of [`LakeFile`]s with everything file
//! pruning needs (namespace, row count, per-column bounds and null counts).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use arrow::array::Array;
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use futures::{StreamExt, TryStreamExt};
use iceberg::spec::{DataFile, Datum, Literal, ManifestList, PrimitiveLiteral};
use iceberg::table::Table;
use object_store::path::Path;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use shardlake_core::event_schema;
use shardlake_lake::EventsTable;
use shardlake_lake::iceberg::IcebergEventsTable;
use shardlake_lake::iceberg::field_ids;
use shardlake_lake::parquet::{ParquetDataFile, ParquetEventsTable, ParquetSnapshot};
use shardlake_lake::pins::OpenPin;
use tokio::sync::Mutex;

use crate::error::{Error, ErrorKind, Result};

/// Manifests read at once while assembling a snapshot.
const MANIFEST_CONCURRENCY: usize = 8;

/// Min, max and null count of one column in one file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColumnBounds {
    /// Lower bound, if known.
    pub min: Option<ScalarValue>,
    /// Upper bound, if known.
    pub max: Option<ScalarValue>,
    /// Number of nulls, if known.
    pub nulls: Option<u64>,
}

/// A live data file of a snapshot, as planning sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LakeFile {
    /// Full location (URL) as recorded in the manifest.
    pub location: String,
    /// Path inside the warehouse's object store.
    pub path: Path,
    /// Size in bytes.
    pub size: u64,
    /// The namespace partition the file belongs to.
    pub namespace: String,
    /// Rows in the file.
    pub rows: u64,
    /// Bounds per column, indexed like [`shardlake_core::event_schema`].
    pub columns: Vec<ColumnBounds>,
}

/// The live files of one snapshot.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFiles {
    /// The snapshot, `None` for a table without any commit.
    pub snapshot_id: Option<i64>,
    /// Live data files.
    pub files: Vec<Arc<LakeFile>>,
    /// Namespaces present (the table's partitions).
    pub namespaces: BTreeSet<String>,
}

/// Field id of each column of [`event_schema`], in order.
const FIELD_IDS: [i32; 12] = [
    field_ids::NAMESPACE,
    field_ids::SHARD_ID,
    field_ids::SEQ,
    field_ids::PARTITION_KEY,
    field_ids::ENTITY_TYPE,
    field_ids::ENTITY_ID,
    field_ids::EVENT_TYPE,
    field_ids::VERSION,
    field_ids::TS,
    field_ids::IDEMPOTENCY_KEY,
    field_ids::PAYLOAD,
    field_ids::POSITION,
];

fn scalar(datum: &Datum, data_type: &DataType) -> Option<ScalarValue> {
    match (datum.literal(), data_type) {
        (PrimitiveLiteral::String(s), DataType::Utf8) => Some(ScalarValue::Utf8(Some(s.clone()))),
        (PrimitiveLiteral::Int(v), DataType::Int32) => Some(ScalarValue::Int32(Some(*v))),
        (PrimitiveLiteral::Long(v), DataType::Int64) => Some(ScalarValue::Int64(Some(*v))),
        (PrimitiveLiteral::Long(v), DataType::Timestamp(_, tz)) => {
            Some(ScalarValue::TimestampMicrosecond(Some(*v), tz.clone()))
        }
        _ => None,
    }
}

impl LakeFile {
    fn from_data_file(file: &DataFile, root: &url::Url) -> Result<Self> {
        let schema = event_schema();
        let namespace = match file.partition().fields().first() {
            Some(Some(Literal::Primitive(PrimitiveLiteral::String(ns)))) => ns.clone(),
            other => {
                return Err(Error::new(
                    ErrorKind::Storage,
                    format!(
                        "data file {} has partition {other:?}, not a namespace",
                        file.file_path()
                    ),
                ));
            }
        };
        let columns = FIELD_IDS
            .iter()
            .zip(schema.fields())
            .map(|(id, field)| ColumnBounds {
                min: file
                    .lower_bounds()
                    .get(id)
                    .and_then(|d| scalar(d, field.data_type())),
                max: file
                    .upper_bounds()
                    .get(id)
                    .and_then(|d| scalar(d, field.data_type())),
                nulls: file.null_value_counts().get(id).copied(),
            })
            .collect();
        let url = url::Url::parse(file.file_path()).map_err(|e| {
            Error::new(
                ErrorKind::Storage,
                format!("bad data file location {}", file.file_path()),
            )
            .with_source(e)
        })?;
        if url.scheme() != root.scheme() || url.host_str() != root.host_str() {
            return Err(Error::new(
                ErrorKind::Storage,
                format!(
                    "data file {} is outside the warehouse store",
                    file.file_path()
                ),
            ));
        }
        let path = Path::from_url_path(url.path()).map_err(|e| {
            Error::new(
                ErrorKind::Storage,
                format!("bad data file path {}", file.file_path()),
            )
            .with_source(e)
        })?;
        Ok(Self {
            location: file.file_path().to_owned(),
            path,
            size: file.file_size_in_bytes(),
            namespace,
            rows: file.record_count(),
            columns,
        })
    }
}

impl LakeFile {
    /// A plain-Parquet data file, its bounds from the footer's row-group
    /// statistics (the same figures Iceberg keeps in its manifests).
    fn from_parquet_file(file: &ParquetDataFile) -> Self {
        let schema = event_schema();
        let row_groups = file.metadata.row_groups();
        let parquet_schema = file.metadata.file_metadata().schema_descr();
        let columns = schema
            .fields()
            .iter()
            .map(|field| {
                let Ok(converter) =
                    StatisticsConverter::try_new(field.name(), &schema, parquet_schema)
                else {
                    return ColumnBounds::default();
                };
                let fold = |array: Option<arrow::array::ArrayRef>, keep: std::cmp::Ordering| {
                    let array = array?;
                    let mut best: Option<ScalarValue> = None;
                    for i in 0..array.len() {
                        // A row group without statistics makes the bound unknown.
                        if array.is_null(i) {
                            return None;
                        }
                        let v = ScalarValue::try_from_array(&array, i).ok()?;
                        best = match best {
                            Some(b) if b.partial_cmp(&v) != Some(keep.reverse()) => Some(b),
                            _ => Some(v),
                        };
                    }
                    best
                };
                let nulls = converter
                    .row_group_null_counts(row_groups)
                    .ok()
                    .and_then(|counts| {
                        (counts.null_count() == 0).then(|| counts.values().iter().sum::<u64>())
                    });
                ColumnBounds {
                    min: fold(
                        converter.row_group_mins(row_groups).ok(),
                        std::cmp::Ordering::Less,
                    ),
                    max: fold(
                        converter.row_group_maxes(row_groups).ok(),
                        std::cmp::Ordering::Greater,
                    ),
                    nulls,
                }
            })
            .collect();
        Self {
            location: file.location.clone(),
            path: file.path.clone(),
            size: file.size,
            namespace: file.namespace.clone(),
            rows: file.rows,
            columns,
        }
    }
}

/// Where snapshots come from.
enum Source {
    /// Iceberg: the catalog says which metadata is current; manifests list
    /// the files (cached by path, they are immutable).
    Iceberg {
        table: IcebergEventsTable,
        // Boxed: a loaded table is large, the Parquet variant small.
        current: Box<Mutex<Option<Table>>>,
        manifests: moka::sync::Cache<String, Arc<Vec<Arc<LakeFile>>>>,
    },
    /// Plain Parquet: a listing says which files exist, their footers which
    /// commits are complete (the lake caches footers; bounds are cached
    /// here by path).
    Parquet {
        table: ParquetEventsTable,
        files: moka::sync::Cache<Path, Arc<LakeFile>>,
    },
}

/// The current snapshot as a look at the catalog found it.
struct Seen {
    files: Arc<SnapshotFiles>,
    /// When the look started: every commit that landed before it is in
    /// `files`.
    at: Instant,
    /// The table's [`EventsTable::local_changes`] before the look.
    changes: u64,
}

/// Pins snapshots of the `events` table and caches their file lists.
pub struct LakeSnapshots {
    source: Source,
    table: EventsTable,
    store_url: url::Url,
    snapshots: moka::sync::Cache<i64, Arc<SnapshotFiles>>,
    /// How old the current snapshot [`Self::pin`] hands out may be.
    freshness: Duration,
    /// The last look at the catalog, reused within `freshness`.
    seen: ArcSwapOption<Seen>,
    /// One look at a time: the others wait for it and take its answer.
    looking: Mutex<()>,
}

impl std::fmt::Debug for LakeSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let format = match &self.source {
            Source::Iceberg { .. } => "iceberg",
            Source::Parquet { .. } => "parquet",
        };
        f.debug_struct("LakeSnapshots")
            .field("format", &format)
            .field("cached_snapshots", &self.snapshots.entry_count())
            .finish()
    }
}

impl LakeSnapshots {
    /// Snapshot pinning for `table`. Caches the file lists of the 16 most
    /// recent snapshots and up to `manifest_capacity` parsed manifests (or,
    /// for a Parquet table, that many files' bounds times 64).
    ///
    /// `freshness` bounds how old the current snapshot may be: a pin within
    /// it of the last look at the catalog reuses that look, unless this
    /// process changed the table since (its own commits are seen at once).
    /// Zero looks every time.
    pub fn new(table: EventsTable, manifest_capacity: u64, freshness: Duration) -> Self {
        let store_url = table.warehouse().store_url();
        let source = match table.clone() {
            EventsTable::Iceberg(table) => Source::Iceberg {
                table,
                current: Box::new(Mutex::new(None)),
                manifests: moka::sync::Cache::new(manifest_capacity),
            },
            EventsTable::Parquet(table) => Source::Parquet {
                table,
                files: moka::sync::Cache::new(manifest_capacity.saturating_mul(64)),
            },
        };
        Self {
            source,
            table,
            store_url,
            snapshots: moka::sync::Cache::new(16),
            freshness,
            seen: ArcSwapOption::empty(),
            looking: Mutex::new(()),
        }
    }

    /// The last look, if it may still be handed out.
    fn fresh(&self) -> Option<Arc<SnapshotFiles>> {
        let seen = self.seen.load();
        let seen = seen.as_ref()?;
        (seen.changes == self.table.local_changes() && seen.at.elapsed() < self.freshness)
            .then(|| Arc::clone(&seen.files))
    }

    /// Keeps snapshot `snapshot_id` from expiring in this process while the
    /// guard lives (an open query's pin).
    pub fn hold(&self, snapshot_id: i64) -> OpenPin {
        self.table.pins().hold(snapshot_id)
    }

    /// The snapshot that was current at `at_ms` (Unix milliseconds).
    pub async fn snapshot_as_of(&self, at_ms: i64) -> Result<i64> {
        self.table.snapshot_as_of(at_ms).await
    }

    /// The Iceberg table's current version: the cached one unless a commit
    /// happened.
    async fn current_table(&self) -> Result<Table> {
        let Source::Iceberg { table, current, .. } = &self.source else {
            return Err(Error::new(
                ErrorKind::Unexpected,
                "an Iceberg table was asked of a Parquet lake",
            ));
        };
        let mut current = current.lock().await;
        let loaded = match current.as_ref() {
            Some(known) => table.refresh(known).await?,
            None => table.load().await?,
        };
        *current = Some(loaded.clone());
        Ok(loaded)
    }

    /// Pins the current snapshot and returns its live files.
    ///
    /// The snapshot is never older than the freshness bound: it includes
    /// every commit of this process that ended before the call, and every
    /// other process's commit that landed more than `freshness` before it.
    /// Within the bound this is two atomic loads.
    pub async fn pin(&self) -> Result<Arc<SnapshotFiles>> {
        if self.freshness.is_zero() {
            return self.look().await;
        }
        if let Some(files) = self.fresh() {
            return Ok(files);
        }
        let _one = self.looking.lock().await;
        // Another caller may have looked while this one waited.
        if let Some(files) = self.fresh() {
            return Ok(files);
        }
        self.look_and_keep().await
    }

    /// Pins the current snapshot as the catalog says now, whatever the
    /// freshness bound (a migration's catch-up must see every commit).
    pub async fn pin_latest(&self) -> Result<Arc<SnapshotFiles>> {
        self.look_and_keep().await
    }

    /// Looks, and keeps the answer for [`Self::pin`].
    async fn look_and_keep(&self) -> Result<Arc<SnapshotFiles>> {
        let (at, changes) = (Instant::now(), self.table.local_changes());
        let files = self.look().await?;
        self.seen.store(Some(Arc::new(Seen {
            files: Arc::clone(&files),
            at,
            changes,
        })));
        Ok(files)
    }

    /// Asks the catalog (or the listing) which snapshot is current.
    async fn look(&self) -> Result<Arc<SnapshotFiles>> {
        if let Source::Parquet { table, .. } = &self.source {
            let snapshot = table.snapshot().await?;
            return Ok(self.parquet_files(&snapshot));
        }
        let table = self.current_table().await?;
        self.files_of(&table).await
    }

    /// The files of a Parquet snapshot, bounds cached per file.
    fn parquet_files(&self, snapshot: &ParquetSnapshot) -> Arc<SnapshotFiles> {
        let Some(id) = snapshot.state.snapshot_id else {
            return Arc::new(SnapshotFiles::default());
        };
        if let Some(files) = self.snapshots.get(&id) {
            return files;
        }
        let Source::Parquet { files: cache, .. } = &self.source else {
            return Arc::new(SnapshotFiles::default());
        };
        let files: Vec<Arc<LakeFile>> = snapshot
            .files
            .iter()
            .map(|f| cache.get_with(f.path.clone(), || Arc::new(LakeFile::from_parquet_file(f))))
            .collect();
        self.remember(id, files)
    }

    /// Caches the file list of snapshot `id`.
    fn remember(&self, id: i64, files: Vec<Arc<LakeFile>>) -> Arc<SnapshotFiles> {
        let namespaces = files.iter().map(|f| f.namespace.clone()).collect();
        let pinned = Arc::new(SnapshotFiles {
            snapshot_id: Some(id),
            files,
            namespaces,
        });
        self.snapshots.insert(id, Arc::clone(&pinned));
        pinned
    }

    /// Pins snapshot `snapshot_id` (time travel, replay at a snapshot).
    pub async fn pin_at(&self, snapshot_id: i64) -> Result<Arc<SnapshotFiles>> {
        // Whether the snapshot is still retained is asked every time: a
        // cached file list must not outlive the snapshot's expiry.
        if let Source::Parquet { table, .. } = &self.source {
            let snapshot = table
                .snapshot()
                .await?
                .as_of(snapshot_id)
                .ok_or_else(|| unknown_snapshot(snapshot_id))?;
            return Ok(self.parquet_files(&snapshot));
        }
        let table = self.current_table().await?;
        let snapshot = table
            .metadata()
            .snapshot_by_id(snapshot_id)
            .cloned()
            .ok_or_else(|| unknown_snapshot(snapshot_id))?;
        self.files_of_snapshot(&table, &snapshot).await
    }

    /// The first position a commit after `snapshot_id` can have: events
    /// with positions at or above it were committed later.
    pub async fn next_position_after(&self, snapshot_id: i64) -> Result<i64> {
        if let Source::Parquet { table, .. } = &self.source {
            // A Parquet snapshot id is the position after its last commit.
            return match table.snapshot().await?.as_of(snapshot_id) {
                Some(_) => Ok(snapshot_id),
                None => Err(unknown_snapshot(snapshot_id)),
            };
        }
        let table = self.current_table().await?;
        let metadata = table.metadata();
        let mut at = Some(snapshot_id);
        // Every snapshot shardlake writes now carries its next position;
        // compaction snapshots of older versions did not: walk back to a
        // commit's (an expired parent makes the answer unknown).
        while let Some(id) = at {
            let snapshot = metadata
                .snapshot_by_id(id)
                .ok_or_else(|| unknown_snapshot(snapshot_id))?;
            if let Some(next) = snapshot
                .summary()
                .additional_properties
                .get(shardlake_lake::iceberg::summary::NEXT_POSITION)
                .and_then(|v| v.parse::<i64>().ok())
            {
                return Ok(next);
            }
            at = snapshot.parent_snapshot_id();
        }
        Ok(1)
    }

    /// The live files of `table`'s current snapshot.
    pub async fn files_of(&self, table: &Table) -> Result<Arc<SnapshotFiles>> {
        let Some(snapshot) = table.metadata().current_snapshot() else {
            return Ok(Arc::new(SnapshotFiles::default()));
        };
        let snapshot = Arc::clone(snapshot);
        self.files_of_snapshot(table, &snapshot).await
    }

    async fn files_of_snapshot(
        &self,
        table: &Table,
        snapshot: &iceberg::spec::SnapshotRef,
    ) -> Result<Arc<SnapshotFiles>> {
        let id = snapshot.snapshot_id();
        if let Some(files) = self.snapshots.get(&id) {
            return Ok(files);
        }
        let file_io = table.file_io();
        let bytes = file_io.new_input(snapshot.manifest_list())?.read().await?;
        let list = ManifestList::parse_with_version(&bytes, table.metadata().format_version())?;
        let per_manifest: Vec<Arc<Vec<Arc<LakeFile>>>> =
            futures::stream::iter(list.entries().to_vec())
                .map(|manifest| async move {
                    let Source::Iceberg { manifests, .. } = &self.source else {
                        return Err(Error::new(ErrorKind::Unexpected, "not an Iceberg lake"));
                    };
                    if let Some(files) = manifests.get(&manifest.manifest_path) {
                        return Ok::<_, Error>(files);
                    }
                    let loaded = manifest.load_manifest(file_io).await?;
                    let files = loaded
                        .entries()
                        .iter()
                        .filter(|e| e.is_alive())
                        .map(|e| {
                            LakeFile::from_data_file(e.data_file(), &self.store_url).map(Arc::new)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let files = Arc::new(files);
                    manifests.insert(manifest.manifest_path.clone(), Arc::clone(&files));
                    Ok(files)
                })
                .buffered(MANIFEST_CONCURRENCY)
                .try_collect()
                .await?;
        let files: Vec<Arc<LakeFile>> = per_manifest
            .iter()
            .flat_map(|m| m.iter().cloned())
            .collect();
        Ok(self.remember(id, files))
    }
}

fn unknown_snapshot(id: i64) -> Error {
    shardlake_lake::history::snapshot_not_retained(id)
}
