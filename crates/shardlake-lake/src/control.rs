//! The lake's control state, in the catalog database next to the table
//! pointer: topology versions, migration records, key claims and the write
//! buffer of migrations.
//!
//! It lives here, not in memory, because a migration must survive the
//! process that runs it: a re-run after a crash finds which keys it
//! claimed, whether they are fenced, the writes buffered for them and which
//! topology version is current. The catalog database is already the one
//! thing every shardlake process of a lake shares and commits through.
//!
//! Records are opaque JSON text here; `shardlake-migrate` owns their shape.

use sqlx::SqlitePool;

use crate::error::{Error, ErrorKind, Result};

/// The control tables of a lake.
#[derive(Debug, Clone)]
pub struct ControlStore {
    pool: SqlitePool,
}

/// One stored migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationRow {
    /// Migration id.
    pub id: String,
    /// `running`, `completed`, `rolled_back` or `failed`.
    pub status: String,
    /// The phase reached.
    pub phase: String,
    /// Whether writes to its moving keys are being buffered.
    pub fenced: bool,
    /// The migration's own record (JSON).
    pub record: String,
    /// Last change (UTC, SQLite `CURRENT_TIMESTAMP`).
    pub updated_at: String,
    /// Snapshots the migration still reads (its copy and catch-up
    /// snapshots): pinned against expiry, in the same transaction that
    /// saves the row, as holder `migration:<id>`. Empty once it is over.
    pub pinned_snapshots: Vec<i64>,
}

/// One buffered write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferedWrite {
    /// Arrival order within the migration.
    pub n: i64,
    /// The write's partition key.
    pub partition_key: String,
    /// The write (an event in its JSON form).
    pub event: String,
}

fn storage(e: sqlx::Error) -> Error {
    Error::new(ErrorKind::Storage, "control store failed").with_source(e)
}

const SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS shardlake_topologies (
        version INTEGER PRIMARY KEY,
        topology TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
    )",
    "CREATE TABLE IF NOT EXISTS shardlake_migrations (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        phase TEXT NOT NULL,
        fenced INTEGER NOT NULL DEFAULT 0,
        record TEXT NOT NULL,
        runner TEXT,
        lease_until_ms INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
        updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
    )",
    "CREATE TABLE IF NOT EXISTS shardlake_migration_keys (
        partition_key TEXT PRIMARY KEY,
        migration_id TEXT NOT NULL
    )",
    // AUTOINCREMENT: a number is never reused, so it can name the write.
    "CREATE TABLE IF NOT EXISTS shardlake_write_buffer (
        n INTEGER PRIMARY KEY AUTOINCREMENT,
        migration_id TEXT NOT NULL,
        partition_key TEXT NOT NULL,
        event TEXT NOT NULL
    )",
];

impl ControlStore {
    pub(crate) async fn open(pool: SqlitePool) -> Result<Self> {
        for ddl in SCHEMA.iter().chain([&crate::pins::PINS_DDL]) {
            sqlx::query(ddl).execute(&pool).await.map_err(storage)?;
        }
        Ok(Self { pool })
    }

    /// A transaction that takes SQLite's write lock up front: a deferred one
    /// that reads and then writes fails at once with "database is locked"
    /// when another connection wrote meanwhile, instead of waiting.
    async fn write_transaction(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(storage)
    }

    /// The current (highest) topology version and its JSON, if any was
    /// published.
    pub async fn current_topology(&self) -> Result<Option<(i64, String)>> {
        sqlx::query_as(
            "SELECT version, topology FROM shardlake_topologies ORDER BY version DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(storage)
    }

    /// Every published topology version, oldest first.
    pub async fn topology_history(&self) -> Result<Vec<(i64, String)>> {
        sqlx::query_as("SELECT version, topology FROM shardlake_topologies ORDER BY version")
            .fetch_all(&self.pool)
            .await
            .map_err(storage)
    }

    /// Publishes `topology` as `version` if it is higher than the current
    /// one; `false` (nothing written) otherwise. Versions never go back,
    /// also between processes (one statement, checked by SQLite).
    pub async fn publish_topology(&self, version: i64, topology: &str) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO shardlake_topologies (version, topology) SELECT ?, ? \
             WHERE ? > (SELECT COALESCE(MAX(version), 0) FROM shardlake_topologies)",
        )
        .bind(version)
        .bind(topology)
        .bind(version)
        .execute(&self.pool)
        .await
        .map_err(storage)?;
        Ok(done.rows_affected() == 1)
    }

    /// Claims `keys` for `migration`, all or none. Returns the keys another
    /// migration holds (`(key, migration)`); empty means the claim holds.
    /// Claiming a key the same migration holds already is a no-op.
    pub async fn claim_keys(
        &self,
        migration: &str,
        keys: &[String],
    ) -> Result<Vec<(String, String)>> {
        self.claim(migration, keys, None).await
    }

    /// Creates `row` and claims `keys` for it in one transaction, so no
    /// claim exists without the record that can release it. Returns the
    /// conflicts (nothing is written then).
    pub async fn begin_migration(
        &self,
        row: &MigrationRow,
        keys: &[String],
    ) -> Result<Vec<(String, String)>> {
        self.claim(&row.id, keys, Some(row)).await
    }

    async fn claim(
        &self,
        migration: &str,
        keys: &[String],
        row: Option<&MigrationRow>,
    ) -> Result<Vec<(String, String)>> {
        // One statement per step over the whole key list (`json_each`):
        // the write lock is held for milliseconds, not one round trip per key.
        let keys = serde_json::to_string(keys)
            .map_err(|e| Error::new(ErrorKind::Unexpected, format!("keys: {e}")))?;
        let mut tx = self.write_transaction().await?;
        let conflicts: Vec<(String, String)> = sqlx::query_as(
            "SELECT k.partition_key, k.migration_id FROM shardlake_migration_keys k \
             JOIN json_each(?) j ON k.partition_key = j.value WHERE k.migration_id != ? \
             ORDER BY k.partition_key",
        )
        .bind(&keys)
        .bind(migration)
        .fetch_all(&mut *tx)
        .await
        .map_err(storage)?;
        if !conflicts.is_empty() {
            tx.rollback().await.map_err(storage)?;
            return Ok(conflicts);
        }
        if let Some(row) = row {
            Self::upsert(&mut tx, row).await?;
        }
        sqlx::query(
            "INSERT INTO shardlake_migration_keys (partition_key, migration_id) \
             SELECT value, ? FROM json_each(?) WHERE true ON CONFLICT (partition_key) DO NOTHING",
        )
        .bind(migration)
        .bind(&keys)
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        Ok(Vec::new())
    }

    /// Makes `runner` the one process driving `migration` until
    /// `until_ms` (Unix milliseconds), if nobody else holds an unexpired
    /// lease on it. Returns the holder and its lease end otherwise.
    pub async fn lease(
        &self,
        migration: &str,
        runner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<std::result::Result<(), (String, i64)>> {
        let done = sqlx::query(
            "UPDATE shardlake_migrations SET runner = ?, lease_until_ms = ? \
             WHERE id = ? AND (runner IS NULL OR runner = ? OR lease_until_ms < ?)",
        )
        .bind(runner)
        .bind(until_ms)
        .bind(migration)
        .bind(runner)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(storage)?;
        if done.rows_affected() == 1 {
            return Ok(Ok(()));
        }
        let holder: Option<(Option<String>, i64)> =
            sqlx::query_as("SELECT runner, lease_until_ms FROM shardlake_migrations WHERE id = ?")
                .bind(migration)
                .fetch_optional(&self.pool)
                .await
                .map_err(storage)?;
        Ok(Err(match holder {
            Some((runner, until)) => (runner.unwrap_or_default(), until),
            None => (String::new(), 0),
        }))
    }

    /// Ends `runner`'s lease on `migration` (if it still holds it).
    pub async fn release_lease(&self, migration: &str, runner: &str) -> Result<()> {
        sqlx::query(
            "UPDATE shardlake_migrations SET runner = NULL, lease_until_ms = 0 WHERE id = ? AND runner = ?",
        )
        .bind(migration)
        .bind(runner)
        .execute(&self.pool)
        .await
        .map_err(storage)?;
        Ok(())
    }

    /// Releases every key `migration` claimed.
    pub async fn release_keys(&self, migration: &str) -> Result<()> {
        sqlx::query("DELETE FROM shardlake_migration_keys WHERE migration_id = ?")
            .bind(migration)
            .execute(&self.pool)
            .await
            .map_err(storage)?;
        Ok(())
    }

    /// Creates or replaces a migration's row.
    pub async fn save_migration(&self, row: &MigrationRow) -> Result<()> {
        let mut tx = self.write_transaction().await?;
        Self::upsert(&mut tx, row).await?;
        tx.commit().await.map_err(storage)
    }

    async fn upsert(conn: &mut sqlx::SqliteConnection, row: &MigrationRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO shardlake_migrations (id, status, phase, fenced, record) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, phase = excluded.phase, \
             fenced = excluded.fenced, record = excluded.record, updated_at = CURRENT_TIMESTAMP",
        )
        .bind(&row.id)
        .bind(&row.status)
        .bind(&row.phase)
        .bind(row.fenced)
        .bind(&row.record)
        .execute(&mut *conn)
        .await
        .map_err(storage)?;
        let holder = format!("migration:{}", row.id);
        sqlx::query("DELETE FROM shardlake_snapshot_pins WHERE holder = ?")
            .bind(&holder)
            .execute(&mut *conn)
            .await
            .map_err(storage)?;
        for id in &row.pinned_snapshots {
            sqlx::query(
                "INSERT OR IGNORE INTO shardlake_snapshot_pins (holder, snapshot_id, expires_at_ms) \
                 VALUES (?, ?, NULL)",
            )
            .bind(&holder)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(storage)?;
        }
        Ok(())
    }

    /// One migration, if it exists.
    pub async fn migration(&self, id: &str) -> Result<Option<MigrationRow>> {
        Ok(self
            .rows("WHERE id = ?", Some(id))
            .await?
            .into_iter()
            .next())
    }

    /// Every migration, newest first.
    pub async fn migrations(&self) -> Result<Vec<MigrationRow>> {
        self.rows("", None).await
    }

    async fn rows(&self, filter: &str, id: Option<&str>) -> Result<Vec<MigrationRow>> {
        let sql = format!(
            "SELECT id, status, phase, fenced, record, updated_at FROM shardlake_migrations {filter} \
             ORDER BY created_at DESC, id DESC"
        );
        let mut query = sqlx::query_as::<_, (String, String, String, bool, String, String)>(&sql);
        if let Some(id) = id {
            query = query.bind(id);
        }
        Ok(query
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?
            .into_iter()
            .map(
                |(id, status, phase, fenced, record, updated_at)| MigrationRow {
                    id,
                    status,
                    phase,
                    fenced,
                    record,
                    updated_at,
                    pinned_snapshots: Vec::new(),
                },
            )
            .collect())
    }

    /// Appends a write to `migration`'s buffer if the migration still
    /// fences its keys; returns its number (arrival order, never reused in
    /// this lake), or `None` when the fence is gone (the caller's view is
    /// stale: route the write instead). Durable when this returns.
    pub async fn buffer_write(
        &self,
        migration: &str,
        key: &str,
        event: &str,
    ) -> Result<Option<i64>> {
        let n: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO shardlake_write_buffer (migration_id, partition_key, event) \
             SELECT ?, ?, ? WHERE EXISTS \
             (SELECT 1 FROM shardlake_migrations WHERE id = ? AND fenced = 1) RETURNING n",
        )
        .bind(migration)
        .bind(key)
        .bind(event)
        .bind(migration)
        .fetch_optional(&self.pool)
        .await
        .map_err(storage)?;
        Ok(n.map(|(n,)| n))
    }

    /// The writes buffered for `migration`, in arrival order.
    pub async fn buffered_writes(&self, migration: &str) -> Result<Vec<BufferedWrite>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT n, partition_key, event FROM shardlake_write_buffer WHERE migration_id = ? ORDER BY n",
        )
        .bind(migration)
        .fetch_all(&self.pool)
        .await
        .map_err(storage)?;
        Ok(rows
            .into_iter()
            .map(|(n, partition_key, event)| BufferedWrite {
                n,
                partition_key,
                event,
            })
            .collect())
    }

    /// Removes buffered writes `n` (delivered) of `migration`.
    pub async fn remove_buffered(&self, migration: &str, n: &[i64]) -> Result<()> {
        let mut tx = self.write_transaction().await?;
        for n in n {
            sqlx::query("DELETE FROM shardlake_write_buffer WHERE migration_id = ? AND n = ?")
                .bind(migration)
                .bind(n)
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
        }
        tx.commit().await.map_err(storage)
    }
}
