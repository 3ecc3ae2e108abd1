//! What keeps a snapshot from being expired while something still needs it.
//!
//! Snapshot expiry (see [`crate::maintenance`]) removes old snapshots and,
//! through cleanup, the files only they referenced. Three kinds of readers
//! need an old snapshot to stay:
//!
//! - **open queries** of this process: a query pins one snapshot for its
//!   whole run ([`SnapshotPins::hold`], in memory, released when the query
//!   ends);
//! - **leases**: a replay cursor handed out over HTTP names a snapshot the
//!   client will resume against; it is leased for a while
//!   ([`SnapshotPins::lease`]) and every resume renews the lease;
//! - **durable pins**: an unfinished migration reads its copy snapshot and
//!   its catch-up snapshots until it completes or is rolled back
//!   ([`SnapshotPins::set`] / [`SnapshotPins::release`], or [`set_in`]
//!   inside the transaction that saves the holder's own state).
//!
//! Leases and durable pins live in the lake's database (the catalog
//! database, or `control.db` of a Parquet lake), so every process
//! maintaining the lake sees them. Subscription checkpoints need no pin:
//! a checkpoint is a position, and every snapshot (the current one in
//! particular) holds every committed position, since compaction rewrites
//! files but never changes rows or positions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::db::Database;
use crate::error::{Error, ErrorKind, Result};
use serde::Serialize;

/// One thing keeping a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pin {
    /// Who holds it: `query` (an open query of this process),
    /// `replay-cursor`, `migration:<id>`, or a caller's own name.
    pub holder: String,
    /// The snapshot kept.
    #[serde(with = "shardlake_core::json_id")]
    pub snapshot_id: i64,
    /// When a lease runs out (Unix milliseconds); `None`: until released.
    pub expires_at_ms: Option<i64>,
}

/// The pins of one lake. Cheap to clone; clones share the open-query holds.
#[derive(Debug, Clone)]
pub struct SnapshotPins {
    db: Database,
    open: Arc<Mutex<HashMap<i64, usize>>>,
}

/// Keeps a snapshot while alive (an open query's pin).
#[derive(Debug)]
pub struct OpenPin {
    open: Arc<Mutex<HashMap<i64, usize>>>,
    snapshot_id: i64,
}

impl Drop for OpenPin {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.snapshot_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.snapshot_id);
            }
        }
    }
}

fn storage(e: sqlx::Error) -> Error {
    Error::new(ErrorKind::Storage, "snapshot pins: database failed").with_source(e)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The pins table.
const PINS_DDL: &str = "CREATE TABLE IF NOT EXISTS shardlake_snapshot_pins (
    holder TEXT NOT NULL,
    snapshot_id BIGINT NOT NULL,
    expires_at_ms BIGINT,
    PRIMARY KEY (holder, snapshot_id)
)";

/// Creates the pins table in the lake's database `db` if it is not there
/// yet. For a store that writes durable pins with its own rows
/// ([`set_in`]) and may open before anything else created the table.
pub async fn create_table(db: &Database) -> Result<()> {
    db.create_tables(&[PINS_DDL]).await
}

/// Makes `snapshot_ids` exactly what `holder` keeps, until released, on
/// `conn`: inside the caller's transaction, so durable pins can be saved
/// atomically with whatever they protect ([`SnapshotPins::set`] is this in
/// a transaction of its own).
pub async fn set_in(
    conn: &mut sqlx::AnyConnection,
    holder: &str,
    snapshot_ids: &[i64],
) -> Result<()> {
    sqlx::query("DELETE FROM shardlake_snapshot_pins WHERE holder = $1")
        .bind(holder)
        .execute(&mut *conn)
        .await
        .map_err(storage)?;
    for id in snapshot_ids {
        sqlx::query(
            "INSERT INTO shardlake_snapshot_pins (holder, snapshot_id, expires_at_ms) \
             VALUES ($1, $2, NULL) ON CONFLICT (holder, snapshot_id) DO NOTHING",
        )
        .bind(holder)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(storage)?;
    }
    Ok(())
}

impl SnapshotPins {
    pub(crate) async fn open(db: Database) -> Result<Self> {
        create_table(&db).await?;
        Ok(Self {
            db,
            open: Arc::default(),
        })
    }

    /// Keeps `snapshot_id` from expiring in this process until the returned
    /// guard is dropped.
    pub fn hold(&self, snapshot_id: i64) -> OpenPin {
        *self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(snapshot_id)
            .or_default() += 1;
        OpenPin {
            open: Arc::clone(&self.open),
            snapshot_id,
        }
    }

    /// Keeps `snapshot_id` for `holder` for at least `ttl` from now (a lease
    /// only ever grows: a shorter renewal keeps the longer one).
    pub async fn lease(&self, holder: &str, snapshot_id: i64, ttl: Duration) -> Result<()> {
        let until = now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        sqlx::query(
            "INSERT INTO shardlake_snapshot_pins (holder, snapshot_id, expires_at_ms) \
             VALUES ($1, $2, $3) \
             ON CONFLICT (holder, snapshot_id) DO UPDATE SET expires_at_ms = CASE \
             WHEN shardlake_snapshot_pins.expires_at_ms IS NULL THEN NULL \
             WHEN excluded.expires_at_ms > shardlake_snapshot_pins.expires_at_ms \
             THEN excluded.expires_at_ms ELSE shardlake_snapshot_pins.expires_at_ms END",
        )
        .bind(holder)
        .bind(snapshot_id)
        .bind(until)
        .execute(self.db.pool())
        .await
        .map_err(storage)?;
        Ok(())
    }

    /// Makes `snapshot_ids` exactly what `holder` keeps, until released.
    pub async fn set(&self, holder: &str, snapshot_ids: &[i64]) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        set_in(&mut tx, holder, snapshot_ids).await?;
        tx.commit().await.map_err(storage)
    }

    /// Drops everything `holder` keeps.
    pub async fn release(&self, holder: &str) -> Result<()> {
        self.set(holder, &[]).await
    }

    /// Every pin in force now: durable pins, unexpired leases, and the open
    /// queries of this process. Leases that ran out are removed.
    pub async fn list(&self) -> Result<Vec<Pin>> {
        let now = now_ms();
        sqlx::query("DELETE FROM shardlake_snapshot_pins WHERE expires_at_ms <= $1")
            .bind(now)
            .execute(self.db.pool())
            .await
            .map_err(storage)?;
        let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT holder, snapshot_id, expires_at_ms FROM shardlake_snapshot_pins \
             ORDER BY snapshot_id, holder",
        )
        .fetch_all(self.db.pool())
        .await
        .map_err(storage)?;
        let mut pins: Vec<Pin> = rows
            .into_iter()
            .map(|(holder, snapshot_id, expires_at_ms)| Pin {
                holder,
                snapshot_id,
                expires_at_ms,
            })
            .collect();
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        pins.extend(open.keys().map(|&snapshot_id| Pin {
            holder: "query".to_owned(),
            snapshot_id,
            expires_at_ms: None,
        }));
        Ok(pins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pins() -> (tempfile::TempDir, SnapshotPins) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let uri = format!("sqlite://{}?mode=rwc", tmp.path().join("p.db").display());
        let db = Database::connect(&uri).await.expect("db");
        (tmp, SnapshotPins::open(db).await.expect("pins"))
    }

    fn ids(pins: &[Pin]) -> Vec<(String, i64)> {
        pins.iter()
            .map(|p| (p.holder.clone(), p.snapshot_id))
            .collect()
    }

    #[tokio::test]
    async fn holds_leases_and_durable_pins_are_listed_until_they_end() {
        let (_tmp, pins) = pins().await;
        let held = pins.hold(7);
        let again = pins.hold(7);
        pins.set("migration:m1", &[1, 2]).await.expect("set");
        pins.lease("replay-cursor", 3, Duration::from_secs(60))
            .await
            .expect("lease");
        pins.lease("replay-cursor", 4, Duration::ZERO)
            .await
            .expect("lease");
        assert_eq!(
            ids(&pins.list().await.expect("list")),
            vec![
                ("migration:m1".into(), 1),
                ("migration:m1".into(), 2),
                ("replay-cursor".into(), 3),
                ("query".into(), 7),
            ],
            "the lease that ran out is gone"
        );
        drop(held);
        assert!(ids(&pins.list().await.expect("list")).contains(&("query".into(), 7)));
        drop(again);
        pins.set("migration:m1", &[2]).await.expect("set");
        pins.release("missing").await.expect("release of nothing");
        assert_eq!(
            ids(&pins.list().await.expect("list")),
            vec![("migration:m1".into(), 2), ("replay-cursor".into(), 3)]
        );
        pins.release("migration:m1").await.expect("release");
        assert_eq!(
            ids(&pins.list().await.expect("list")),
            vec![("replay-cursor".into(), 3)]
        );
    }
}
