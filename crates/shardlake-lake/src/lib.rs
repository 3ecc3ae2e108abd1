//! shardlake's lake: the `events` table on object storage (Iceberg or plain
//! Parquet), and the exactly-once [`PipelineEmitter`] that writes it.
//!
//! ```no_run
//! # async fn demo() -> shardlake_lake::Result<()> {
//! use shardlake_lake::{EmitterConfig, Lake};
//! use shardlake_core::Event;
//!
//! let lake = Lake::open_local("./shardlake-data").await?;
//! let emitter = lake.emitter(EmitterConfig::default()).await?;
//! let event = Event::new("acme", 0, 1, "Order:o-1", "thing.created", chrono::Utc::now());
//! let ack = emitter.emit(event).await?; // resolves once the commit is durable
//! assert_eq!(ack.accepted + ack.duplicates, 1);
//! emitter.close().await?;
//! # Ok(())
//! # }
//! ```

pub mod checkpoint;
pub mod commit;
pub mod crashpoint;
mod data_file;
pub mod db;
pub mod emitter;
mod error;
pub mod executor;
pub mod file_meta;
mod format;
pub mod history;
pub mod iceberg;
mod in_flight;
pub mod maintenance;
pub mod parquet;
pub mod pins;
pub mod snapshot;
pub mod storage;
pub mod warehouse;

use std::path::Path;

pub use commit::{CommitState, TableCommitter};
pub use data_file::WriterConfig;
pub use emitter::{
    AckFuture, EmitAck, EmitInput, EmitterConfig, EmitterMetricsSnapshot, Emitting, Health,
    HealthStatus, PipelineEmitter, RejectedEvent, RetryPolicy, Sending,
};
pub use error::{ConcurrencyError, Error, ErrorKind, Result};
pub use format::{DataFileSummary, EventsTable, SnapshotCache, TableFormat};
pub use history::SnapshotInfo;
pub use iceberg::{IcebergCommitter, IcebergEventsTable};
pub use maintenance::{
    Action, CleanupReport, CompactionConfig, CompactionReport, ExpiryReport, MaintenanceConfig,
    MaintenanceReport, ManifestMergeReport, RetentionConfig,
};
pub use pins::{Pin, SnapshotPins};
pub use storage::{ObjectStorageConfig, StorageRetryConfig};
pub use warehouse::{LakeDir, Warehouse};

/// A lake: a warehouse and its `events` table, in either format.
#[derive(Debug, Clone)]
pub struct Lake {
    warehouse: Warehouse,
    table: EventsTable,
    writer: WriterConfig,
}

impl Lake {
    /// Opens (creating on first use) the embedded default lake in `dir`:
    /// `<dir>/catalog.db` and `<dir>/warehouse/`.
    pub async fn open_local(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open(Warehouse::local(dir)?).await
    }

    /// Opens (creating on first use) a lake whose local files (catalog or
    /// control database, dead letters) live in `data_dir` and whose table
    /// files live where `storage` says (local disk or `s3://bucket/prefix`),
    /// in `format`.
    pub async fn open_with(
        data_dir: impl AsRef<Path>,
        storage: &ObjectStorageConfig,
        format: TableFormat,
    ) -> Result<Self> {
        Self::open_format(Warehouse::open(data_dir, storage)?, format).await
    }

    /// [`Self::open_with`], with the catalog in the database at `catalog`
    /// (`postgres://...`) when given.
    async fn open_in(
        data_dir: &Path,
        storage: &ObjectStorageConfig,
        catalog: Option<&str>,
        format: TableFormat,
    ) -> Result<Self> {
        let warehouse =
            Warehouse::open(data_dir, storage)?.with_catalog_url(catalog.map(str::to_owned));
        Self::open_format(warehouse, format).await
    }

    /// Opens the lake whose data directory is `data_dir`, in the format it
    /// was created with, creating nothing: a directory that holds no lake is
    /// refused (naming the lake it is inside of, if any), and so is a
    /// `format` that contradicts the lake's. For commands that only read,
    /// where a new empty lake would answer every question wrongly instead
    /// of failing.
    pub async fn open_existing(
        data_dir: impl AsRef<Path>,
        storage: &ObjectStorageConfig,
        format: Option<TableFormat>,
    ) -> Result<Self> {
        Self::open_existing_in(data_dir, storage, None, format).await
    }

    /// [`Self::open_existing`] with the catalog in the database at
    /// `catalog` when given (`postgres://...`: several servers on one
    /// lake): a lake exists there when the catalog has its table. The data
    /// directory then only holds dead letters.
    pub async fn open_existing_in(
        data_dir: impl AsRef<Path>,
        storage: &ObjectStorageConfig,
        catalog: Option<&str>,
        format: Option<TableFormat>,
    ) -> Result<Self> {
        let data_dir = data_dir.as_ref();
        if let Some(url) = catalog {
            let shown = format!("the catalog at {}", db::redact(url));
            if !catalog_has_lake(url).await? {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no shardlake lake in {shown} (create one with shardlake ingest)"),
                ));
            }
            check_format(&shown, TableFormat::Iceberg, format)?;
            return Self::open_in(data_dir, storage, catalog, TableFormat::Iceberg).await;
        }
        match LakeDir::probe(data_dir) {
            LakeDir::Lake(found) => {
                check_format(&data_dir.display().to_string(), found, format)?;
                Self::open_with(data_dir, storage, found).await
            }
            other => Err(not_a_lake(data_dir, &other)),
        }
    }

    /// Opens the lake whose data directory is `data_dir` in its own format,
    /// or creates one in `format` (default Iceberg) if there is none; says
    /// which (`true`: created). `format` only chooses for a new lake: one
    /// that contradicts an existing lake's format is refused, naming both,
    /// and so is a directory inside another lake's data directory (a new
    /// lake nested in an old one is never what was meant).
    pub async fn open_or_create(
        data_dir: impl AsRef<Path>,
        storage: &ObjectStorageConfig,
        format: Option<TableFormat>,
    ) -> Result<(Self, bool)> {
        Self::open_or_create_in(data_dir, storage, None, format).await
    }

    /// [`Self::open_or_create`] with the catalog in the database at
    /// `catalog` when given (see [`Self::open_existing_in`]). Two servers
    /// creating the same lake at once both succeed, on the same table.
    pub async fn open_or_create_in(
        data_dir: impl AsRef<Path>,
        storage: &ObjectStorageConfig,
        catalog: Option<&str>,
        format: Option<TableFormat>,
    ) -> Result<(Self, bool)> {
        let data_dir = data_dir.as_ref();
        if let Some(url) = catalog {
            let shown = format!("the catalog at {}", db::redact(url));
            let existed = catalog_has_lake(url).await?;
            if existed {
                check_format(&shown, TableFormat::Iceberg, format)?;
            } else if format == Some(TableFormat::Parquet) {
                return Err(Error::new(
                    ErrorKind::DataInvalid,
                    "a plain Parquet lake keeps its control database in its data directory; \
                     a catalog URL (several servers on one lake) needs the Iceberg format",
                ));
            }
            let lake = Self::open_in(data_dir, storage, catalog, TableFormat::Iceberg).await?;
            return Ok((lake, !existed));
        }
        match LakeDir::probe(data_dir) {
            LakeDir::Lake(found) => {
                check_format(&data_dir.display().to_string(), found, format)?;
                Ok((Self::open_with(data_dir, storage, found).await?, false))
            }
            inside @ LakeDir::Inside { .. } => Err(not_a_lake(data_dir, &inside)),
            LakeDir::Empty => {
                let lake = Self::open_with(data_dir, storage, format.unwrap_or_default()).await?;
                Ok((lake, true))
            }
        }
    }

    /// Opens (creating on first use) the Iceberg lake of `warehouse`.
    pub async fn open(warehouse: Warehouse) -> Result<Self> {
        Self::open_format(warehouse, TableFormat::Iceberg).await
    }

    /// Opens (creating on first use) the lake of `warehouse` in `format`.
    pub async fn open_format(warehouse: Warehouse, format: TableFormat) -> Result<Self> {
        let table = EventsTable::open(&warehouse, format).await?;
        Ok(Self {
            warehouse,
            table,
            writer: WriterConfig::default(),
        })
    }

    /// Uses `writer` for the data files of emitters started later.
    pub fn with_writer_config(mut self, writer: WriterConfig) -> Self {
        self.writer = writer;
        self
    }

    /// The warehouse.
    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// The `events` table.
    pub fn table(&self) -> &EventsTable {
        &self.table
    }

    /// The table format.
    pub fn format(&self) -> TableFormat {
        self.table.format()
    }

    /// The Iceberg `events` table, if the lake is in the Iceberg format.
    pub fn iceberg_table(&self) -> Option<&IcebergEventsTable> {
        match &self.table {
            EventsTable::Iceberg(t) => Some(t),
            EventsTable::Parquet(_) => None,
        }
    }

    /// The committed state: every shard's watermark and the next position.
    pub async fn commit_state(&self) -> Result<CommitState> {
        self.table.commit_state().await
    }

    /// The current data files (any format).
    pub async fn data_files(&self) -> Result<Vec<DataFileSummary>> {
        self.table.data_files().await
    }

    /// Rewrites each namespace's small data files into large sorted ones
    /// (see [`CompactionConfig`]): one `replace` snapshot in Iceberg, one
    /// commit over the same positions in plain Parquet. Rows, positions and
    /// watermarks are unchanged; safe while emitters commit. Part of
    /// [`Lake::maintain`], which also expires and cleans up.
    pub async fn compact(&self, config: &CompactionConfig) -> Result<CompactionReport> {
        self.compact_with(config, false).await
    }

    /// [`Lake::compact`], or with `dry_run` what it would rewrite.
    pub(crate) async fn compact_with(
        &self,
        config: &CompactionConfig,
        dry_run: bool,
    ) -> Result<CompactionReport> {
        match &self.table {
            EventsTable::Iceberg(t) => t.compact_with(&self.writer, config, dry_run).await,
            EventsTable::Parquet(t) => t.compact_with(&self.writer, config, dry_run).await,
        }
    }

    /// What keeps snapshots from expiring (open queries, leases, pins).
    pub fn pins(&self) -> &SnapshotPins {
        self.table.pins()
    }

    /// Durable subscription checkpoints (in the catalog or control database).
    pub async fn checkpoints(&self) -> Result<checkpoint::Checkpoints> {
        self.table.checkpoints().await
    }

    /// The lake's database: the Iceberg catalog database (SQLite or
    /// PostgreSQL), or `control.db` of a Parquet lake. Every process of the
    /// lake shares it; components that keep durable state next to the table
    /// (and write [`pins::set_in`] with it) create their own tables in it.
    /// Cheap to clone (a shared pool).
    pub fn database(&self) -> db::Database {
        self.table.database().clone()
    }

    /// Starts an emitter committing to the `events` table. Dead letters go to
    /// `<data dir>/dead-letter/` unless the config says otherwise.
    pub async fn emitter(&self, config: EmitterConfig) -> Result<PipelineEmitter> {
        self.emitter_on(config, None).await
    }

    /// [`Self::emitter`] with its committer on `runtime` (see
    /// [`PipelineEmitter::start_on`]).
    pub async fn emitter_on(
        &self,
        mut config: EmitterConfig,
        runtime: Option<executor::CpuRuntime>,
    ) -> Result<PipelineEmitter> {
        if config.dead_letter_dir.is_none() {
            config.dead_letter_dir =
                Some(self.warehouse.data_dir().join(warehouse::DEAD_LETTER_DIR));
        }
        let committer = self.table.committer(self.writer.clone()).await?;
        PipelineEmitter::start_on(committer, config, runtime)
    }
}

/// The error for a data directory that holds no lake (see [`LakeDir`]).
pub fn not_a_lake(data_dir: &Path, found: &LakeDir) -> Error {
    let shown = data_dir.display();
    let message = match found {
        LakeDir::Inside { root, .. } => format!(
            "{shown} is inside the shardlake lake at {} (use --warehouse {})",
            root.display(),
            root.display()
        ),
        _ => format!("no shardlake lake at {shown} (create one with shardlake ingest)"),
    };
    Error::new(ErrorKind::NotFound, message)
}

/// Refuses a format `asked` for that contradicts the lake's own (the lake
/// `at` a data directory or in a catalog).
fn check_format(at: &str, found: TableFormat, asked: Option<TableFormat>) -> Result<()> {
    match asked {
        Some(asked) if asked != found => Err(Error::new(
            ErrorKind::DataInvalid,
            format!(
                "the lake at {at} is a {found} lake, not {asked}: the table format only \
                 chooses for a new lake (leave it out, or use another directory)"
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether the catalog database at `url` holds a shardlake lake.
async fn catalog_has_lake(url: &str) -> Result<bool> {
    db::Database::connect(url)
        .await?
        .has_catalog_table(iceberg::ICEBERG_NAMESPACE, iceberg::EVENTS_TABLE)
        .await
}
