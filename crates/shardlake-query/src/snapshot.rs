//! Pinning table versions, and how fresh the current one must be.
//!
//! Every query pins a snapshot of the table and plans from its live files.
//! What a snapshot's files are is the lake's business, whatever the format
//! ([`EventsTable::current_snapshot`], [`EventsTable::snapshot_by_id`]:
//! a flat list of [`LakeFile`]s with everything file pruning needs), and so
//! is what reading them caches (a [`SnapshotCache`]: recent snapshots'
//! file lists, Iceberg manifests or Parquet footers' bounds, read once).
//!
//! Finding out which snapshot is current costs one indexed lookup in the
//! catalog database (or a listing of a Parquet table). With a freshness
//! bound the answer is kept in memory and reused (no lock, no lookup) until
//! it is older than the bound or this process changed the table (see
//! [`LakeSnapshots::pin`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use shardlake_lake::pins::OpenPin;
use shardlake_lake::{EventsTable, SnapshotCache};
use tokio::sync::Mutex;

use crate::error::Result;

pub use shardlake_lake::snapshot::{ColumnBounds, LakeFile, SnapshotFiles};

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
    table: EventsTable,
    cache: SnapshotCache,
    /// How old the current snapshot [`Self::pin`] hands out may be.
    freshness: Duration,
    /// The last look at the catalog, reused within `freshness`.
    seen: ArcSwapOption<Seen>,
    /// One look at a time: the others wait for it and take its answer.
    looking: Mutex<()>,
}

impl std::fmt::Debug for LakeSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeSnapshots")
            .field("format", &self.cache.format().as_str())
            .field("cached_snapshots", &self.cache.cached_snapshots())
            .finish()
    }
}

impl LakeSnapshots {
    /// Snapshot pinning for `table`. Caches the file lists of the 16 most
    /// recent snapshots and up to `manifest_capacity` parsed manifests (or,
    /// for a Parquet table, that many files' bounds times 64): see
    /// [`EventsTable::snapshot_cache`].
    ///
    /// `freshness` bounds how old the current snapshot may be: a pin within
    /// it of the last look at the catalog reuses that look, unless this
    /// process changed the table since (its own commits are seen at once).
    /// Zero looks every time.
    pub fn new(table: EventsTable, manifest_capacity: u64, freshness: Duration) -> Self {
        Self {
            cache: table.snapshot_cache(manifest_capacity),
            table,
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
        self.table.current_snapshot(&self.cache).await
    }

    /// Pins snapshot `snapshot_id` (time travel, replay at a snapshot).
    pub async fn pin_at(&self, snapshot_id: i64) -> Result<Arc<SnapshotFiles>> {
        self.table.snapshot_by_id(snapshot_id, &self.cache).await
    }

    /// The first position a commit after `snapshot_id` can have: events
    /// with positions at or above it were committed later.
    pub async fn next_position_after(&self, snapshot_id: i64) -> Result<i64> {
        self.table
            .next_position_after(snapshot_id, &self.cache)
            .await
    }
}
