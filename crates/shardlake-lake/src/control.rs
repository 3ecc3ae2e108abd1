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
        for ddl in SCHEMA {
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
        let mut tx = self.write_transaction().await?;
        let mut conflicts = Vec::new();
        for key in keys {
            let owner: Option<(String,)> = sqlx::query_as(
                "SELECT migration_id FROM shardlake_migration_keys WHERE partition_key = ?",
            )
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(storage)?;
            match owner {
                Some((other,)) if other != migration => conflicts.push((key.clone(), other)),
                Some(_) => {}
                None => {
                    sqlx::query(
                        "INSERT INTO shardlake_migration_keys (partition_key, migration_id) VALUES (?, ?)",
                    )
                    .bind(key)
                    .bind(migration)
                    .execute(&mut *tx)
                    .await
                    .map_err(storage)?;
                }
            }
        }
        if conflicts.is_empty() {
            tx.commit().await.map_err(storage)?;
        } else {
            tx.rollback().await.map_err(storage)?;
        }
        Ok(conflicts)
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
        .execute(&self.pool)
        .await
        .map_err(storage)?;
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
                },
            )
            .collect())
    }

    /// Appends a write to `migration`'s buffer; returns its number
    /// (arrival order, never reused in this lake). Durable when this returns.
    pub async fn buffer_write(&self, migration: &str, key: &str, event: &str) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "INSERT INTO shardlake_write_buffer (migration_id, partition_key, event) \
             VALUES (?, ?, ?) RETURNING n",
        )
        .bind(migration)
        .bind(key)
        .bind(event)
        .fetch_one(&self.pool)
        .await
        .map_err(storage)?;
        Ok(n)
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
