//! Pinning table versions and caching what planning needs from them.
//!
//! Every query pins the table's current snapshot. Finding out which snapshot
//! is current costs one indexed lookup in the catalog database; metadata is
//! re-read only when that answer changes. The live files of a snapshot are
//! assembled from manifests, and manifests are immutable, so they are cached
//! by path: a new snapshot after a commit reads only the manifest that commit
//! added. The result is a flat list of [`LakeFile`]s with everything file
//! pruning needs (namespace, row count, per-column bounds and null counts).

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use futures::{StreamExt, TryStreamExt};
use iceberg::spec::{DataFile, Datum, Literal, ManifestList, PrimitiveLiteral};
use iceberg::table::Table;
use object_store::path::Path;
use shardlake_core::event_schema;
use shardlake_lake::IcebergEventsTable;
use shardlake_lake::iceberg::field_ids;
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

/// Pins snapshots of the `events` table and caches their file lists.
pub struct LakeSnapshots {
    table: IcebergEventsTable,
    store_url: url::Url,
    current: Mutex<Option<Table>>,
    snapshots: moka::sync::Cache<i64, Arc<SnapshotFiles>>,
    manifests: moka::sync::Cache<String, Arc<Vec<Arc<LakeFile>>>>,
}

impl std::fmt::Debug for LakeSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeSnapshots")
            .field("table", self.table.ident())
            .field("cached_snapshots", &self.snapshots.entry_count())
            .field("cached_manifests", &self.manifests.entry_count())
            .finish()
    }
}

impl LakeSnapshots {
    /// Snapshot pinning for `table`. Caches the file lists of the 16 most
    /// recent snapshots and up to `manifest_capacity` parsed manifests.
    pub fn new(table: IcebergEventsTable, manifest_capacity: u64) -> Self {
        let store_url = table.warehouse().store_url();
        Self {
            table,
            store_url,
            current: Mutex::new(None),
            snapshots: moka::sync::Cache::new(16),
            manifests: moka::sync::Cache::new(manifest_capacity),
        }
    }

    /// The table's current version: the cached one unless a commit happened.
    pub async fn current_table(&self) -> Result<Table> {
        let mut current = self.current.lock().await;
        let table = match current.as_ref() {
            Some(known) => self.table.refresh(known).await?,
            None => self.table.load().await?,
        };
        *current = Some(table.clone());
        Ok(table)
    }

    /// Pins the current snapshot and returns its live files.
    pub async fn pin(&self) -> Result<Arc<SnapshotFiles>> {
        let table = self.current_table().await?;
        self.files_of(&table).await
    }

    /// Pins snapshot `snapshot_id` (time travel, replay at a snapshot).
    pub async fn pin_at(&self, snapshot_id: i64) -> Result<Arc<SnapshotFiles>> {
        if let Some(files) = self.snapshots.get(&snapshot_id) {
            return Ok(files);
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
        let table = self.current_table().await?;
        let metadata = table.metadata();
        let mut at = Some(snapshot_id);
        // Compaction snapshots carry no positions: walk back to a commit's.
        while let Some(id) = at {
            let snapshot = metadata
                .snapshot_by_id(id)
                .ok_or_else(|| unknown_snapshot(id))?;
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
                    if let Some(files) = self.manifests.get(&manifest.manifest_path) {
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
                    self.manifests
                        .insert(manifest.manifest_path.clone(), Arc::clone(&files));
                    Ok(files)
                })
                .buffered(MANIFEST_CONCURRENCY)
                .try_collect()
                .await?;
        let files: Vec<Arc<LakeFile>> = per_manifest
            .iter()
            .flat_map(|m| m.iter().cloned())
            .collect();
        let namespaces = files.iter().map(|f| f.namespace.clone()).collect();
        let pinned = Arc::new(SnapshotFiles {
            snapshot_id: Some(id),
            files,
            namespaces,
        });
        self.snapshots.insert(id, Arc::clone(&pinned));
        Ok(pinned)
    }
}

fn unknown_snapshot(id: i64) -> Error {
    Error::new(
        ErrorKind::InvalidQuery,
        format!("snapshot {id} does not exist in the table (or has expired)"),
    )
}
