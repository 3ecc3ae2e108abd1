//! Reading an Iceberg snapshot into the format-neutral model
//! ([`crate::snapshot`]): the catalog says which metadata is current; the
//! snapshot's manifest list names its manifests, whose live entries are the
//! files, with bounds and null counts per column from the manifest.
//!
//! Manifests are immutable, so their files are cached by path: a new
//! snapshot after a commit reads only the manifest that commit added.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion_common::ScalarValue;
use futures::{StreamExt, TryStreamExt};
use iceberg::spec::{DataFile, Datum, Literal, ManifestList, PrimitiveLiteral, SnapshotRef};
use iceberg::table::Table;
use object_store::path::Path;
use shardlake_core::event_schema;
use shardlake_core::schema::field_ids;
use tokio::sync::Mutex;

use super::manifests::MANIFEST_CONCURRENCY;
use super::table::{IcebergEventsTable, summary};
use crate::error::{Error, ErrorKind, Result};
use crate::history::snapshot_not_retained;
use crate::snapshot::{ColumnBounds, KnownSnapshots, LakeFile, SnapshotFiles};

/// What reading Iceberg snapshots keeps between reads.
pub(crate) struct IcebergReadCache {
    /// The version last read: refreshed with one catalog lookup, re-read
    /// only when a commit happened.
    current: Mutex<Option<Table>>,
    /// The live files of each manifest read, by manifest path.
    manifests: moka::sync::Cache<String, Arc<Vec<Arc<LakeFile>>>>,
    /// Scheme and authority data files must be under.
    store_url: url::Url,
}

impl IcebergReadCache {
    /// Keeps the files of up to `manifests` manifests.
    pub(crate) fn new(table: &IcebergEventsTable, manifests: u64) -> Self {
        Self {
            current: Mutex::new(None),
            manifests: moka::sync::Cache::new(manifests),
            store_url: table.warehouse().store_url(),
        }
    }
}

impl IcebergEventsTable {
    /// The table's current version: the cached one unless a commit
    /// happened.
    async fn current_version(&self, cache: &IcebergReadCache) -> Result<Table> {
        let mut current = cache.current.lock().await;
        let loaded = match current.as_ref() {
            Some(known) => self.refresh(known).await?,
            None => self.load().await?,
        };
        *current = Some(loaded.clone());
        Ok(loaded)
    }

    /// The live files of the current snapshot.
    pub(crate) async fn current_files(
        &self,
        cache: &IcebergReadCache,
        known: &KnownSnapshots,
    ) -> Result<Arc<SnapshotFiles>> {
        let table = self.current_version(cache).await?;
        let Some(snapshot) = table.metadata().current_snapshot() else {
            return Ok(Arc::new(SnapshotFiles::default()));
        };
        let snapshot = Arc::clone(snapshot);
        files_of_snapshot(&table, &snapshot, cache, known).await
    }

    /// The live files of snapshot `snapshot_id`, if the table retains it.
    pub(crate) async fn files_at(
        &self,
        snapshot_id: i64,
        cache: &IcebergReadCache,
        known: &KnownSnapshots,
    ) -> Result<Arc<SnapshotFiles>> {
        // Whether the snapshot is still retained is asked every time: a
        // cached file list must not outlive the snapshot's expiry.
        let table = self.current_version(cache).await?;
        let snapshot = table
            .metadata()
            .snapshot_by_id(snapshot_id)
            .cloned()
            .ok_or_else(|| snapshot_not_retained(snapshot_id))?;
        files_of_snapshot(&table, &snapshot, cache, known).await
    }

    /// The first position a commit after `snapshot_id` can have.
    pub(crate) async fn next_position_after(
        &self,
        snapshot_id: i64,
        cache: &IcebergReadCache,
    ) -> Result<i64> {
        let table = self.current_version(cache).await?;
        let metadata = table.metadata();
        let mut at = Some(snapshot_id);
        // Every snapshot shardlake writes now carries its next position;
        // compaction snapshots of older versions did not: walk back to a
        // commit's (an expired parent makes the answer unknown).
        while let Some(id) = at {
            let snapshot = metadata
                .snapshot_by_id(id)
                .ok_or_else(|| snapshot_not_retained(snapshot_id))?;
            if let Some(next) = snapshot
                .summary()
                .additional_properties
                .get(summary::NEXT_POSITION)
                .and_then(|v| v.parse::<i64>().ok())
            {
                return Ok(next);
            }
            at = snapshot.parent_snapshot_id();
        }
        Ok(1)
    }
}

/// The live files of `snapshot` of `table`: the known list, else its
/// manifests' (each read once).
async fn files_of_snapshot(
    table: &Table,
    snapshot: &SnapshotRef,
    cache: &IcebergReadCache,
    known: &KnownSnapshots,
) -> Result<Arc<SnapshotFiles>> {
    let id = snapshot.snapshot_id();
    if let Some(files) = known.get(id) {
        return Ok(files);
    }
    let file_io = table.file_io();
    let bytes = file_io.new_input(snapshot.manifest_list())?.read().await?;
    let list = ManifestList::parse_with_version(&bytes, table.metadata().format_version())?;
    let per_manifest: Vec<Arc<Vec<Arc<LakeFile>>>> = futures::stream::iter(list.entries().to_vec())
        .map(|manifest| async move {
            if let Some(files) = cache.manifests.get(&manifest.manifest_path) {
                return Ok::<_, Error>(files);
            }
            let loaded = manifest.load_manifest(file_io).await?;
            let files = loaded
                .entries()
                .iter()
                .filter(|e| e.is_alive())
                .map(|e| LakeFile::from_data_file(e.data_file(), &cache.store_url).map(Arc::new))
                .collect::<Result<Vec<_>>>()?;
            let files = Arc::new(files);
            cache
                .manifests
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
    Ok(known.remember(id, files))
}

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
    /// A manifest's data file, its bounds from the manifest entry (looked
    /// up by each column's field id), its path inside the store at `root`.
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
        let columns = field_ids::IN_TABLE_ORDER
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
