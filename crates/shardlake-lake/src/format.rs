//! The two table formats a lake can use, behind one handle.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::commit::{CommitState, TableCommitter};
use crate::data_file::WriterConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::iceberg::{self, IcebergCommitter, IcebergEventsTable};
use crate::parquet::{ParquetCommitter, ParquetEventsTable};
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
    /// A plain-Parquet table.
    Parquet(ParquetEventsTable),
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
            TableFormat::Parquet => Self::Parquet(ParquetEventsTable::open(warehouse).await?),
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

    /// Topologies, migrations, key claims and buffered writes.
    pub async fn control(&self) -> Result<crate::control::ControlStore> {
        match self {
            Self::Iceberg(t) => t.control().await,
            Self::Parquet(t) => t.control().await,
        }
    }

    /// What keeps snapshots from expiring.
    pub fn pins(&self) -> &crate::pins::SnapshotPins {
        match self {
            Self::Iceberg(t) => t.pins(),
            Self::Parquet(t) => t.pins(),
        }
    }

    /// The lake's local database (catalog or control database).
    pub(crate) fn pool(&self) -> &sqlx::SqlitePool {
        match self {
            Self::Iceberg(t) => t.pool(),
            Self::Parquet(t) => t.pool(),
        }
    }

    /// A committer for this table.
    pub async fn committer(&self, writer: WriterConfig) -> Result<Box<dyn TableCommitter>> {
        Ok(match self {
            Self::Iceberg(t) => Box::new(IcebergCommitter::new(t.clone(), writer).await?),
            Self::Parquet(t) => Box::new(ParquetCommitter::new(t.clone(), writer).await?),
        })
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
