//! A snapshot of the `events` table as readers see it, whatever the format:
//! its live data files, each with what file pruning needs (namespace, row
//! count, per-column bounds and null counts).
//!
//! Each format reads its snapshots into this model in its own module
//! (`iceberg/read.rs`: manifests; `parquet/read.rs`: the listing and the
//! footers), and [`crate::EventsTable`] hands them out
//! ([`crate::EventsTable::current_snapshot`],
//! [`crate::EventsTable::snapshot_by_id`]), caching what it read in a
//! [`crate::SnapshotCache`]. Nothing outside the lake needs to know which
//! format produced a snapshot.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion_common::ScalarValue;
use object_store::path::Path;

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

/// File lists of snapshots already read, by id: a snapshot never changes,
/// so one read again (the same current snapshot, time travel to it) costs
/// nothing.
#[derive(Debug, Clone)]
pub(crate) struct KnownSnapshots(moka::sync::Cache<i64, Arc<SnapshotFiles>>);

impl KnownSnapshots {
    /// Keeps the file lists of the `capacity` most recent snapshots.
    pub(crate) fn new(capacity: u64) -> Self {
        Self(moka::sync::Cache::new(capacity))
    }

    /// The file list of snapshot `id`, if read before.
    pub(crate) fn get(&self, id: i64) -> Option<Arc<SnapshotFiles>> {
        self.0.get(&id)
    }

    /// Keeps `files` as the file list of snapshot `id`.
    pub(crate) fn remember(&self, id: i64, files: Vec<Arc<LakeFile>>) -> Arc<SnapshotFiles> {
        let namespaces = files.iter().map(|f| f.namespace.clone()).collect();
        let pinned = Arc::new(SnapshotFiles {
            snapshot_id: Some(id),
            files,
            namespaces,
        });
        self.0.insert(id, Arc::clone(&pinned));
        pinned
    }

    /// How many file lists are kept.
    pub(crate) fn len(&self) -> u64 {
        self.0.entry_count()
    }
}
