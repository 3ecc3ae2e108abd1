//! Reading a plain-Parquet snapshot into the format-neutral model
//! ([`crate::snapshot`]): a listing says which files exist, their footers
//! which commits are complete ([`ParquetEventsTable::snapshot`], which
//! caches the footers); each file's bounds come from its footer's row-group
//! statistics, computed once per file and cached by path here.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use datafusion_common::ScalarValue;
use object_store::path::Path;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use shardlake_core::event_schema;

use super::{ParquetDataFile, ParquetEventsTable, ParquetSnapshot};
use crate::error::Result;
use crate::history::snapshot_not_retained;
use crate::snapshot::{ColumnBounds, KnownSnapshots, LakeFile, SnapshotFiles};

/// What reading plain-Parquet snapshots keeps between reads: each file's
/// bounds, by path (files are immutable).
#[derive(Debug, Clone)]
pub(crate) struct ParquetReadCache {
    files: moka::sync::Cache<Path, Arc<LakeFile>>,
}

impl ParquetReadCache {
    /// Keeps the bounds of up to `files` files.
    pub(crate) fn new(files: u64) -> Self {
        Self {
            files: moka::sync::Cache::new(files),
        }
    }

    /// The files of `snapshot`, bounds cached per file.
    fn files_of(&self, snapshot: &ParquetSnapshot, known: &KnownSnapshots) -> Arc<SnapshotFiles> {
        let Some(id) = snapshot.state.snapshot_id else {
            return Arc::new(SnapshotFiles::default());
        };
        if let Some(files) = known.get(id) {
            return files;
        }
        let files: Vec<Arc<LakeFile>> = snapshot
            .files
            .iter()
            .map(|f| {
                self.files
                    .get_with(f.path.clone(), || Arc::new(LakeFile::from_parquet_file(f)))
            })
            .collect();
        known.remember(id, files)
    }
}

impl ParquetEventsTable {
    /// The live files of the latest snapshot.
    pub(crate) async fn current_files(
        &self,
        cache: &ParquetReadCache,
        known: &KnownSnapshots,
    ) -> Result<Arc<SnapshotFiles>> {
        let snapshot = self.snapshot().await?;
        Ok(cache.files_of(&snapshot, known))
    }

    /// The live files of snapshot `snapshot_id`, if a chain of complete
    /// commits still reaches it.
    pub(crate) async fn files_at(
        &self,
        snapshot_id: i64,
        cache: &ParquetReadCache,
        known: &KnownSnapshots,
    ) -> Result<Arc<SnapshotFiles>> {
        // Whether the snapshot is still retained is asked every time: a
        // cached file list must not outlive the snapshot's expiry.
        let snapshot = self
            .snapshot()
            .await?
            .as_of(snapshot_id)
            .ok_or_else(|| snapshot_not_retained(snapshot_id))?;
        Ok(cache.files_of(&snapshot, known))
    }

    /// The first position a commit after `snapshot_id` can have.
    pub(crate) async fn next_position_after(&self, snapshot_id: i64) -> Result<i64> {
        // A Parquet snapshot id is the position after its last commit.
        match self.snapshot().await?.as_of(snapshot_id) {
            Some(_) => Ok(snapshot_id),
            None => Err(snapshot_not_retained(snapshot_id)),
        }
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
                let fold = |array: Option<ArrayRef>, keep: Ordering| {
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
                    min: fold(converter.row_group_mins(row_groups).ok(), Ordering::Less),
                    max: fold(
                        converter.row_group_maxes(row_groups).ok(),
                        Ordering::Greater,
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
