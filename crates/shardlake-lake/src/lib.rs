//! shardlake's lake: the `events` table on object storage, and the
//! exactly-once [`PipelineEmitter`] that writes it.
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
pub mod control;
pub mod crashpoint;
pub mod emitter;
mod error;
pub mod file_meta;
pub mod iceberg;
pub mod storage;
pub mod warehouse;

use std::path::Path;

pub use commit::{CommitState, TableCommitter};
pub use emitter::{
    AckFuture, EmitAck, EmitInput, EmitterConfig, EmitterMetricsSnapshot, Health, HealthStatus,
    PipelineEmitter, RejectedEvent, RetryPolicy,
};
pub use error::{ConcurrencyError, Error, ErrorKind, Result};
pub use iceberg::{IcebergCommitter, IcebergEventsTable, WriterConfig};
pub use storage::{ObjectStorageConfig, StorageRetryConfig};
pub use warehouse::Warehouse;

/// A lake: a warehouse and its `events` table.
#[derive(Debug, Clone)]
pub struct Lake {
    warehouse: Warehouse,
    table: IcebergEventsTable,
    writer: WriterConfig,
}

impl Lake {
    /// Opens (creating on first use) the embedded default lake in `dir`:
    /// `<dir>/catalog.db` and `<dir>/warehouse/`.
    pub async fn open_local(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open(Warehouse::local(dir)?).await
    }

    /// Opens (creating on first use) a lake whose catalog database lives in
    /// the local `data_dir` and whose table files live where `storage` says
    /// (local disk or `s3://bucket/prefix`).
    pub async fn open_with_storage(
        data_dir: impl AsRef<Path>,
        storage: &ObjectStorageConfig,
    ) -> Result<Self> {
        Self::open(Warehouse::open(data_dir, storage)?).await
    }

    /// Opens (creating on first use) the lake of `warehouse`.
    pub async fn open(warehouse: Warehouse) -> Result<Self> {
        let table = IcebergEventsTable::open(&warehouse).await?;
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

    /// The Iceberg `events` table.
    pub fn events_table(&self) -> &IcebergEventsTable {
        &self.table
    }

    /// The committed state: every shard's watermark and the next position.
    pub async fn commit_state(&self) -> Result<CommitState> {
        iceberg::commit_state(&self.table.load().await?)
    }

    /// Rewrites each namespace's small data files into large sorted ones in
    /// one `replace` snapshot (see [`iceberg::CompactionConfig`]). Rows,
    /// positions and watermarks are unchanged; safe while emitters commit.
    pub async fn compact(
        &self,
        config: &iceberg::CompactionConfig,
    ) -> Result<iceberg::CompactionReport> {
        self.table.compact(&self.writer, config).await
    }

    /// Durable subscription checkpoints (in the catalog database).
    pub async fn checkpoints(&self) -> Result<checkpoint::Checkpoints> {
        self.table.checkpoints().await
    }

    /// Topology versions, migration records, key claims and buffered
    /// writes (in the catalog database).
    pub async fn control(&self) -> Result<control::ControlStore> {
        self.table.control().await
    }

    /// Starts an emitter committing to the `events` table. Dead letters go to
    /// `<data dir>/dead-letter/` unless the config says otherwise.
    pub async fn emitter(&self, mut config: EmitterConfig) -> Result<PipelineEmitter> {
        if config.dead_letter_dir.is_none() {
            config.dead_letter_dir =
                Some(self.warehouse.data_dir().join(warehouse::DEAD_LETTER_DIR));
        }
        let committer = IcebergCommitter::new(self.table.clone(), self.writer.clone()).await?;
        PipelineEmitter::start(Box::new(committer), config)
    }
}
