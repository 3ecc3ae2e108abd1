//! The migration control state of a lake, in the lake's own database (the
//! Iceberg catalog database next to the table pointer, or `control.db` of a
//! Parquet lake): topology versions, migration records, key claims, the
//! migration lease and the write buffer of migrations.
//!
//! It lives there, not in memory, because a migration must survive the
//! process that runs it: a re-run after a crash finds which keys it
//! claimed, whether they are fenced, the writes buffered for them and which
//! topology version is current. The lake's database is already the one
//! thing every shardlake process of a lake shares and commits through
//! ([`Lake::database`]).
//!
//! A row's status and phase are typed here and stored by name; its record
//! is JSON text whose shape [`crate::record`] owns. A migration's snapshot
//! pins (holder `migration:<id>`, in the lake's pins table) are saved in
//! the same transaction as its row ([`pins::set_in`]).

use shardlake_lake::db::{Backend, Database};
use shardlake_lake::{Lake, pins};

use crate::error::{Error, ErrorKind, Result};
use crate::record::{MigrationStatus, Phase};

/// The migration control tables of a lake. Cheap to clone (a shared pool).
#[derive(Debug, Clone)]
pub struct ControlStore {
    db: Database,
}

/// One stored migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationRow {
    /// Migration id.
    pub id: String,
    /// Where it stands (stored by name: `running`, `completed`,
    /// `rolled_back` or `failed`).
    pub status: MigrationStatus,
    /// The phase reached (stored by name, [`Phase::as_str`]).
    pub phase: Phase,
    /// Whether writes to its moving keys are being buffered.
    pub fenced: bool,
    /// The migration's own record (JSON).
    pub record: String,
    /// Last change (UTC, `YYYY-MM-DD HH:MM:SS`).
    pub updated_at: String,
    /// Snapshots the migration still reads (its copy and catch-up
    /// snapshots): pinned against expiry, in the same transaction that
    /// saves the row, as holder `migration:<id>`. Empty once it is over.
    pub pinned_snapshots: Vec<i64>,
}

/// The pins holder of migration `id`'s snapshots.
fn pin_holder(id: &str) -> String {
    format!("migration:{id}")
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

/// A stored status or phase this build does not know: the row is refused,
/// never read as something else.
fn unknown(id: &str, what: &'static str, value: &str) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        format!("migration {id} has an unknown {what} `{value}` in the control store"),
    )
    .with_context("migration", id)
    .with_context(what, value)
}

fn parse_row(
    (id, status, phase, fenced, record, updated_at): (String, String, String, i64, String, String),
) -> Result<MigrationRow> {
    let Some(status_parsed) = MigrationStatus::from_name(&status) else {
        return Err(unknown(&id, "status", &status));
    };
    let Some(phase_parsed) = Phase::from_name(&phase) else {
        return Err(unknown(&id, "phase", &phase));
    };
    Ok(MigrationRow {
        id,
        status: status_parsed,
        phase: phase_parsed,
        fenced: fenced != 0,
        record,
        updated_at,
        pinned_snapshots: Vec::new(),
    })
}

/// The control tables, in `backend`'s spelling. Integers are `BIGINT`
/// (PostgreSQL's `INTEGER` is 32-bit) and `fenced` a 0/1 integer (both
/// backends decode it alike through sqlx's `Any` driver).
fn schema(backend: Backend) -> [String; 4] {
    let now = backend.now_text();
    [
        format!(
            "CREATE TABLE IF NOT EXISTS shardlake_topologies (
                version BIGINT PRIMARY KEY,
                topology TEXT NOT NULL,
                created_at TEXT NOT NULL DEFAULT ({now})
            )"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS shardlake_migrations (
                id TEXT PRIMARY KEY,
                status TEXT NOT NULL,
                phase TEXT NOT NULL,
                fenced BIGINT NOT NULL DEFAULT 0,
                record TEXT NOT NULL,
                runner TEXT,
                lease_until_ms BIGINT NOT NULL DEFAULT 0,
                created_at TEXT NOT NULL DEFAULT ({now}),
                updated_at TEXT NOT NULL DEFAULT ({now})
            )"
        ),
        "CREATE TABLE IF NOT EXISTS shardlake_migration_keys (
            partition_key TEXT PRIMARY KEY,
            migration_id TEXT NOT NULL
        )"
        .to_owned(),
        // A number is never reused, so it can name the write.
        format!(
            "CREATE TABLE IF NOT EXISTS shardlake_write_buffer (
                n {},
                migration_id TEXT NOT NULL,
                partition_key TEXT NOT NULL,
                event TEXT NOT NULL
            )",
            backend.serial_key()
        ),
    ]
}

impl ControlStore {
    /// The control store of `lake`, in its database; creates the control
    /// tables (and the pins table its upserts write) if they are not there.
    pub async fn open(lake: &Lake) -> Result<Self> {
        Self::open_in(lake.database()).await
    }

    async fn open_in(db: Database) -> Result<Self> {
        let schema = schema(db.backend());
        let ddl: Vec<&str> = schema.iter().map(String::as_str).collect();
        db.create_tables(&ddl).await?;
        pins::create_table(&db).await?;
        Ok(Self { db })
    }

    /// A transaction holding the database's write lock up front (SQLite's
    /// `BEGIN IMMEDIATE`, an advisory lock on PostgreSQL): a claim reads
    /// and then writes, and must see no other writer in between; a
    /// deferred SQLite transaction would also fail at once with "database
    /// is locked" when another connection wrote meanwhile, instead of
    /// waiting.
    async fn write_transaction(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        self.db.begin_write().await
    }

    /// The current (highest) topology version and its JSON, if any was
    /// published.
    pub async fn current_topology(&self) -> Result<Option<(i64, String)>> {
        sqlx::query_as(
            "SELECT version, topology FROM shardlake_topologies ORDER BY version DESC LIMIT 1",
        )
        .fetch_optional(self.db.pool())
        .await
        .map_err(storage)
    }

    /// Every published topology version, oldest first.
    pub async fn topology_history(&self) -> Result<Vec<(i64, String)>> {
        sqlx::query_as("SELECT version, topology FROM shardlake_topologies ORDER BY version")
            .fetch_all(self.db.pool())
            .await
            .map_err(storage)
    }

    /// Publishes `topology` as `version` if it is higher than the current
    /// one; `false` (nothing written) otherwise. Versions never go back,
    /// also between processes (one statement under the write lock).
    pub async fn publish_topology(&self, version: i64, topology: &str) -> Result<bool> {
        let mut tx = self.write_transaction().await?;
        let done = sqlx::query(
            "INSERT INTO shardlake_topologies (version, topology) SELECT $1, $2 \
             WHERE $1 > (SELECT COALESCE(MAX(version), 0) FROM shardlake_topologies)",
        )
        .bind(version)
        .bind(topology)
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
        tx.commit().await.map_err(storage)?;
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
        // One statement per step over the whole key list (a JSON array
        // expanded by the database): the write lock is held for
        // milliseconds, not one round trip per key.
        let keys = serde_json::to_string(keys)
            .map_err(|e| Error::new(ErrorKind::Unexpected, format!("keys: {e}")))?;
        let each_key = match self.db.backend() {
            Backend::Sqlite => "json_each($1) j",
            Backend::Postgres => "jsonb_array_elements_text($1::jsonb) AS j(value)",
        };
        let mut tx = self.write_transaction().await?;
        let conflicts: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT k.partition_key, k.migration_id FROM shardlake_migration_keys k \
             JOIN {each_key} ON k.partition_key = j.value WHERE k.migration_id != $2 \
             ORDER BY k.partition_key"
        ))
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
        sqlx::query(&format!(
            "INSERT INTO shardlake_migration_keys (partition_key, migration_id) \
             SELECT j.value, $2 FROM {each_key} WHERE true \
             ON CONFLICT (partition_key) DO NOTHING"
        ))
        .bind(&keys)
        .bind(migration)
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
            "UPDATE shardlake_migrations SET runner = $1, lease_until_ms = $2 \
             WHERE id = $3 AND (runner IS NULL OR runner = $1 OR lease_until_ms < $4)",
        )
        .bind(runner)
        .bind(until_ms)
        .bind(migration)
        .bind(now_ms)
        .execute(self.db.pool())
        .await
        .map_err(storage)?;
        if done.rows_affected() == 1 {
            return Ok(Ok(()));
        }
        let holder: Option<(Option<String>, i64)> =
            sqlx::query_as("SELECT runner, lease_until_ms FROM shardlake_migrations WHERE id = $1")
                .bind(migration)
                .fetch_optional(self.db.pool())
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
            "UPDATE shardlake_migrations SET runner = NULL, lease_until_ms = 0 \
             WHERE id = $1 AND runner = $2",
        )
        .bind(migration)
        .bind(runner)
        .execute(self.db.pool())
        .await
        .map_err(storage)?;
        Ok(())
    }

    /// Releases every key `migration` claimed.
    pub async fn release_keys(&self, migration: &str) -> Result<()> {
        sqlx::query("DELETE FROM shardlake_migration_keys WHERE migration_id = $1")
            .bind(migration)
            .execute(self.db.pool())
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

    async fn upsert(conn: &mut sqlx::AnyConnection, row: &MigrationRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO shardlake_migrations \
             (id, status, phase, fenced, record, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, phase = excluded.phase, \
             fenced = excluded.fenced, record = excluded.record, updated_at = excluded.updated_at",
        )
        .bind(&row.id)
        .bind(row.status.as_str())
        .bind(row.phase.as_str())
        .bind(i64::from(row.fenced))
        .bind(&row.record)
        .bind(shardlake_lake::db::now_text())
        .execute(&mut *conn)
        .await
        .map_err(storage)?;
        pins::set_in(conn, &pin_holder(&row.id), &row.pinned_snapshots).await
    }

    /// One migration, if it exists.
    pub async fn migration(&self, id: &str) -> Result<Option<MigrationRow>> {
        Ok(self
            .rows("WHERE id = $1", Some(id))
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
        let mut query = sqlx::query_as::<_, (String, String, String, i64, String, String)>(&sql);
        if let Some(id) = id {
            query = query.bind(id);
        }
        query
            .fetch_all(self.db.pool())
            .await
            .map_err(storage)?
            .into_iter()
            .map(parse_row)
            .collect()
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
        // On PostgreSQL the fence row is read `FOR SHARE`: unfencing (an
        // UPDATE of that row) then waits for this insert to commit, so the
        // flush that follows the unfence reads every write buffered under
        // the fence. SQLite's single writer gives the same order.
        let lock = match self.db.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR SHARE",
        };
        let n: Option<(i64,)> = sqlx::query_as(&format!(
            "INSERT INTO shardlake_write_buffer (migration_id, partition_key, event) \
             SELECT $1, $2, $3 WHERE EXISTS \
             (SELECT 1 FROM shardlake_migrations WHERE id = $1 AND fenced = 1{lock}) RETURNING n"
        ))
        .bind(migration)
        .bind(key)
        .bind(event)
        .fetch_optional(self.db.pool())
        .await
        .map_err(storage)?;
        Ok(n.map(|(n,)| n))
    }

    /// The writes buffered for `migration`, in arrival order.
    pub async fn buffered_writes(&self, migration: &str) -> Result<Vec<BufferedWrite>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT n, partition_key, event FROM shardlake_write_buffer WHERE migration_id = $1 ORDER BY n",
        )
        .bind(migration)
        .fetch_all(self.db.pool())
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
            sqlx::query("DELETE FROM shardlake_write_buffer WHERE migration_id = $1 AND n = $2")
                .bind(migration)
                .bind(n)
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
        }
        tx.commit().await.map_err(storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lake() -> (tempfile::TempDir, Lake) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open_local(tmp.path()).await.expect("lake");
        (tmp, lake)
    }

    fn row(id: &str, status: MigrationStatus, phase: Phase, pins: Vec<i64>) -> MigrationRow {
        MigrationRow {
            id: id.to_owned(),
            status,
            phase,
            fenced: true,
            record: "{}".to_owned(),
            updated_at: String::new(),
            pinned_snapshots: pins,
        }
    }

    #[tokio::test]
    async fn rows_keep_their_status_and_phase_and_pin_with_the_record() {
        let (_tmp, lake) = lake().await;
        let store = ControlStore::open(&lake).await.expect("open");
        ControlStore::open(&lake).await.expect("opens again");
        let saved = row("m1", MigrationStatus::Failed, Phase::CatchingUp, vec![5, 3]);
        assert!(
            store
                .begin_migration(&saved, &["k1".to_owned()])
                .await
                .expect("begin")
                .is_empty()
        );
        let read = store.migration("m1").await.expect("read").expect("row");
        assert_eq!(read.status, MigrationStatus::Failed);
        assert_eq!(read.phase, Phase::CatchingUp);
        assert!(read.fenced);
        let stored: (String, String) =
            sqlx::query_as("SELECT status, phase FROM shardlake_migrations WHERE id = 'm1'")
                .fetch_one(lake.database().pool())
                .await
                .expect("raw");
        assert_eq!(stored, ("failed".to_owned(), "catching_up".to_owned()));
        let pinned = |pins: Vec<shardlake_lake::Pin>| {
            pins.into_iter()
                .map(|p| (p.holder, p.snapshot_id))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pinned(lake.pins().list().await.expect("pins")),
            vec![
                ("migration:m1".to_owned(), 3),
                ("migration:m1".to_owned(), 5)
            ]
        );
        store
            .save_migration(&row(
                "m1",
                MigrationStatus::Completed,
                Phase::Complete,
                vec![],
            ))
            .await
            .expect("save");
        assert!(lake.pins().list().await.expect("pins").is_empty());
        let all = store.migrations().await.expect("all");
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].status, all[0].phase),
            (MigrationStatus::Completed, Phase::Complete)
        );
    }

    #[tokio::test]
    async fn an_unknown_stored_status_or_phase_is_refused_naming_it() {
        let (_tmp, lake) = lake().await;
        let store = ControlStore::open(&lake).await.expect("open");
        store
            .save_migration(&row("m1", MigrationStatus::Running, Phase::Copying, vec![]))
            .await
            .expect("save");
        for (column, value) in [("status", "paused"), ("phase", "warming_up")] {
            sqlx::query(&format!(
                "UPDATE shardlake_migrations SET status = 'running', phase = 'copying', \
                 {column} = $1 WHERE id = 'm1'"
            ))
            .bind(value)
            .execute(lake.database().pool())
            .await
            .expect("update");
            let err = store.migration("m1").await.expect_err("unknown value");
            assert_eq!(err.kind(), ErrorKind::Unexpected, "{err}");
            assert!(err.to_string().contains(value), "{err}");
            assert!(err.to_string().contains("m1"), "{err}");
            let err = store.migrations().await.expect_err("unknown value");
            assert_eq!(err.kind(), ErrorKind::Unexpected, "{err}");
        }
    }

    #[test]
    fn names_parse_back() {
        for phase in Phase::ALL {
            assert_eq!(Phase::from_name(phase.as_str()), Some(phase));
        }
        for status in MigrationStatus::ALL {
            assert_eq!(MigrationStatus::from_name(status.as_str()), Some(status));
        }
        assert_eq!(Phase::from_name("Copying"), None);
        assert_eq!(MigrationStatus::from_name(""), None);
    }
}
