//! The two table formats a lake can use, behind one handle.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::commit::{CommitState, TableCommitter};
use crate::data_file::WriterConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::iceberg::{self, IcebergCommitter, IcebergEventsTable, IcebergReadCache};
use crate::parquet::{ParquetCommitter, ParquetEventsTable, ParquetReadCache};
use crate::snapshot::{KnownSnapshots, SnapshotFiles};
use crate::warehouse::Warehouse;

/// How the `events` table is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    /// An Iceberg table in a SQL catalog (the default): concurrent writers,
    /// snapshots, readable by any Iceberg engine.
    #[default]
    Iceberg,
    /// Hive-style Parquet files and nothing else: readable by any Parquet
    /// reader; one writer at a time, which also maintains the lake.
    Parquet,
}

impl TableFormat {
    /// The format's name, as configs and flags spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Iceberg => "iceberg",
            Self::Parquet => "parquet",
        }
    }
}

impl fmt::Display for TableFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TableFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "iceberg" => Ok(Self::Iceberg),
            "parquet" => Ok(Self::Parquet),
            other => Err(Error::new(
                ErrorKind::DataInvalid,
                format!("unknown table format {other:?} (iceberg or parquet)"),
            )),
        }
    }
}

/// The `events` table of a lake, in either format.
#[derive(Debug, Clone)]
pub enum EventsTable {
    /// An Iceberg table.
    Iceberg(IcebergEventsTable),
    /// A plain-Parquet table (boxed: its caches make it far larger than
    /// the Iceberg handle, one `Arc`).
    Parquet(Box<ParquetEventsTable>),
}

impl EventsTable {
    /// Opens (creating on first use) the table of `warehouse`.
    pub async fn open(warehouse: &Warehouse, format: TableFormat) -> Result<Self> {
        Ok(match format {
            TableFormat::Iceberg => {
                let control = warehouse.data_dir().join(crate::parquet::CONTROL_DB);
                let catalog = warehouse.data_dir().join(crate::warehouse::CATALOG_FILE);
                if control.exists() && !catalog.exists() {
                    return Err(Error::new(
                        ErrorKind::DataInvalid,
                        format!(
                            "{} holds a plain-Parquet lake (control.db); open it with format parquet",
                            warehouse.data_dir().display()
                        ),
                    ));
                }
                Self::Iceberg(IcebergEventsTable::open(warehouse).await?)
            }
            TableFormat::Parquet => {
                Self::Parquet(Box::new(ParquetEventsTable::open(warehouse).await?))
            }
        })
    }

    /// The table's format.
    pub fn format(&self) -> TableFormat {
        match self {
            Self::Iceberg(_) => TableFormat::Iceberg,
            Self::Parquet(_) => TableFormat::Parquet,
        }
    }

    /// The warehouse the table lives in.
    pub fn warehouse(&self) -> &Warehouse {
        match self {
            Self::Iceberg(t) => t.warehouse(),
            Self::Parquet(t) => t.warehouse(),
        }
    }

    /// A count of the changes this process made to the table (commits,
    /// compactions, maintenance), bumped when each ends. Readers that keep
    /// the current snapshot in memory look at the catalog again when it
    /// moved, so this process's own commits are visible at once; other
    /// processes' commits need a look at the catalog.
    pub fn local_changes(&self) -> u64 {
        match self {
            Self::Iceberg(t) => t.local_changes(),
            Self::Parquet(t) => t.local_changes(),
        }
    }

    /// The committed state: every shard's watermark and the next position.
    pub async fn commit_state(&self) -> Result<CommitState> {
        match self {
            Self::Iceberg(t) => iceberg::commit_state(&t.load().await?),
            Self::Parquet(t) => Ok(t.snapshot().await?.state),
        }
    }

    /// Locations of the current data files, with their namespace and rows.
    pub async fn data_files(&self) -> Result<Vec<DataFileSummary>> {
        match self {
            Self::Iceberg(t) => Ok(iceberg::current_data_files(t)
                .await?
                .iter()
                .map(|f| DataFileSummary {
                    location: f.file_path().to_owned(),
                    namespace: f
                        .partition()
                        .fields()
                        .first()
                        .and_then(|v| v.as_ref())
                        .map(|v| match v {
                            ::iceberg::spec::Literal::Primitive(
                                ::iceberg::spec::PrimitiveLiteral::String(s),
                            ) => s.clone(),
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default(),
                    rows: f.record_count(),
                })
                .collect()),
            Self::Parquet(t) => Ok(t
                .snapshot()
                .await?
                .files
                .iter()
                .map(|f| DataFileSummary {
                    location: f.location.clone(),
                    namespace: f.namespace.clone(),
                    rows: f.rows,
                })
                .collect()),
        }
    }

    /// Subscription checkpoints.
    pub async fn checkpoints(&self) -> Result<crate::checkpoint::Checkpoints> {
        match self {
            Self::Iceberg(t) => t.checkpoints().await,
            Self::Parquet(t) => t.checkpoints().await,
        }
    }

    /// What keeps snapshots from expiring.
    pub fn pins(&self) -> &crate::pins::SnapshotPins {
        match self {
            Self::Iceberg(t) => t.pins(),
            Self::Parquet(t) => t.pins(),
        }
    }

    /// The lake's database (catalog or control database).
    pub(crate) fn database(&self) -> &crate::db::Database {
        match self {
            Self::Iceberg(t) => t.database(),
            Self::Parquet(t) => t.database(),
        }
    }

    /// A committer for this table.
    pub async fn committer(&self, writer: WriterConfig) -> Result<Box<dyn TableCommitter>> {
        Ok(match self {
            Self::Iceberg(t) => Box::new(IcebergCommitter::new(t.clone(), writer).await?),
            Self::Parquet(t) => Box::new(ParquetCommitter::new((**t).clone(), writer).await?),
        })
    }
}

/// Snapshots whose file lists a [`SnapshotCache`] keeps.
const KNOWN_SNAPSHOTS: u64 = 16;

/// Bounds cached per manifest of capacity, for a Parquet table (which has
/// no manifests: its files' bounds are cached one by one).
const PARQUET_FILES_PER_MANIFEST: u64 = 64;

/// What reading one table's snapshots keeps in memory between reads: the
/// file lists of the most recent snapshots, and the format's own reuse
/// (Iceberg: the current table version and each manifest's files, by
/// path; Parquet: each file's bounds, by path). Made by
/// [`EventsTable::snapshot_cache`] and only good for that table.
pub struct SnapshotCache {
    known: KnownSnapshots,
    format: FormatCache,
}

enum FormatCache {
    // Boxed: the Iceberg cache holds a loaded table, which is large.
    Iceberg(Box<IcebergReadCache>),
    Parquet(ParquetReadCache),
}

impl SnapshotCache {
    /// How many snapshots' file lists are kept.
    pub fn cached_snapshots(&self) -> u64 {
        self.known.len()
    }

    /// The format of the table the cache belongs to.
    pub fn format(&self) -> TableFormat {
        match self.format {
            FormatCache::Iceberg(_) => TableFormat::Iceberg,
            FormatCache::Parquet(_) => TableFormat::Parquet,
        }
    }
}

impl fmt::Debug for SnapshotCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotCache")
            .field("format", &self.format())
            .field("cached_snapshots", &self.cached_snapshots())
            .finish()
    }
}

/// The error for a cache used with a table it was not made for.
fn foreign_cache(table: TableFormat, cache: TableFormat) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        format!("a snapshot cache of the {cache} table was used with the {table} table"),
    )
}

/// Reading snapshots, whatever the format: the one seam between the table
/// formats and readers (the query engine), which see a snapshot only as
/// [`SnapshotFiles`]. Each format reads its own in its module
/// (`iceberg/read.rs`, `parquet/read.rs`).
impl EventsTable {
    /// A cache for reading this table's snapshots: the file lists of the
    /// 16 most recent snapshots, and up to `manifests` manifests' files
    /// (or, for a Parquet table, that many files' bounds times 64).
    pub fn snapshot_cache(&self, manifests: u64) -> SnapshotCache {
        let format = match self {
            Self::Iceberg(t) => FormatCache::Iceberg(Box::new(IcebergReadCache::new(t, manifests))),
            Self::Parquet(_) => FormatCache::Parquet(ParquetReadCache::new(
                manifests.saturating_mul(PARQUET_FILES_PER_MANIFEST),
            )),
        };
        SnapshotCache {
            known: KnownSnapshots::new(KNOWN_SNAPSHOTS),
            format,
        }
    }

    /// The live files of the current snapshot, as the catalog (Iceberg) or
    /// a listing (Parquet) says now: empty, with no id, for a table
    /// without any commit.
    pub async fn current_snapshot(&self, cache: &SnapshotCache) -> Result<Arc<SnapshotFiles>> {
        match (self, &cache.format) {
            (Self::Iceberg(t), FormatCache::Iceberg(c)) => t.current_files(c, &cache.known).await,
            (Self::Parquet(t), FormatCache::Parquet(c)) => t.current_files(c, &cache.known).await,
            _ => Err(foreign_cache(self.format(), cache.format())),
        }
    }

    /// The live files of snapshot `snapshot_id` (time travel, replay at a
    /// snapshot); [`ErrorKind::SnapshotExpired`] if the table does not
    /// retain it (asked every time: a cached file list never outlives its
    /// snapshot's expiry).
    pub async fn snapshot_by_id(
        &self,
        snapshot_id: i64,
        cache: &SnapshotCache,
    ) -> Result<Arc<SnapshotFiles>> {
        match (self, &cache.format) {
            (Self::Iceberg(t), FormatCache::Iceberg(c)) => {
                t.files_at(snapshot_id, c, &cache.known).await
            }
            (Self::Parquet(t), FormatCache::Parquet(c)) => {
                t.files_at(snapshot_id, c, &cache.known).await
            }
            _ => Err(foreign_cache(self.format(), cache.format())),
        }
    }

    /// The first position a commit after `snapshot_id` can have: events
    /// with positions at or above it were committed later.
    /// [`ErrorKind::SnapshotExpired`] if the table does not retain it.
    pub async fn next_position_after(
        &self,
        snapshot_id: i64,
        cache: &SnapshotCache,
    ) -> Result<i64> {
        match (self, &cache.format) {
            (Self::Iceberg(t), FormatCache::Iceberg(c)) => {
                t.next_position_after(snapshot_id, c).await
            }
            (Self::Parquet(t), FormatCache::Parquet(_)) => t.next_position_after(snapshot_id).await,
            _ => Err(foreign_cache(self.format(), cache.format())),
        }
    }
}

/// A current data file, format-independently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFileSummary {
    /// Full location (URL).
    pub location: String,
    /// Its namespace.
    pub namespace: String,
    /// Rows in it.
    pub rows: u64,
}
