//! The lake's SQL database: the Iceberg catalog rows (the table pointer the
//! compare-and-swap commits on) and shardlake's control state next to them
//! (snapshot pins, subscription checkpoints, the maintenance lease, the
//! migration tables).
//!
//! Two backends, one set of statements:
//!
//! - **SQLite** (`sqlite://<data dir>/catalog.db`, the embedded default):
//!   one machine, any number of processes on it.
//! - **PostgreSQL** (`postgres://...`): several servers on several hosts
//!   share one lake. Every statement the lake runs is written once, with
//!   `$n` placeholders and types both backends read the same way (`BIGINT`,
//!   `TEXT`; flags are 0/1 integers, since sqlx's `Any` driver decodes no
//!   SQLite booleans). The few places where the dialects differ ask
//!   [`Database::backend`].
//!
//! SQLite serializes writers itself (`BEGIN IMMEDIATE` takes the database's
//! write lock up front); on PostgreSQL [`Database::begin_write`] takes one
//! transaction-scoped advisory lock instead, so code that reads and then
//! writes in one transaction (a key claim, a pin set) keeps the
//! single-writer guarantee it was written against. `CREATE TABLE IF NOT
//! EXISTS` races between two PostgreSQL sessions (a unique violation on the
//! type catalog), so table creation runs under an advisory lock too
//! ([`Database::create_tables`]), and so does opening a lake
//! ([`Database::open_lock`]).

use std::fmt;
use std::sync::Once;

use sqlx::any::AnyPoolOptions;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Transaction};

use crate::error::{Error, ErrorKind, Result};

/// Advisory lock keys (PostgreSQL), one per purpose. Arbitrary constants
/// ("shrdlk" + a digit) that other applications sharing the database are
/// unlikely to use.
const WRITE_LOCK: i64 = 0x7368_7264_6c6b_0001;
const DDL_LOCK: i64 = 0x7368_7264_6c6b_0002;
const OPEN_LOCK: i64 = 0x7368_7264_6c6b_0003;

/// Which database a lake's catalog and control state live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (the single-machine default).
    Sqlite,
    /// A PostgreSQL database shared by several servers.
    Postgres,
}

impl Backend {
    /// The backend a catalog URL names, if it is one shardlake speaks.
    pub fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split_once("://").map(|(s, _)| s)?;
        match scheme {
            "sqlite" => Some(Self::Sqlite),
            "postgres" | "postgresql" => Some(Self::Postgres),
            _ => None,
        }
    }

    /// SQL for "now", as the `TEXT` timestamps of the control tables hold
    /// it (`YYYY-MM-DD HH:MM:SS`, UTC) on both backends.
    pub fn now_text(self) -> &'static str {
        match self {
            Self::Sqlite => "CURRENT_TIMESTAMP",
            Self::Postgres => "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')",
        }
    }

    /// Column definition of an ever-increasing, never reused row number.
    pub fn serial_key(self) -> &'static str {
        match self {
            // AUTOINCREMENT: a number is never reused, even after deletes.
            Self::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Self::Postgres => "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        }
    }
}

/// A pool of connections to the lake's database. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    // The URL without its password, for `Debug` (logs).
    shown: String,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("backend", &self.backend)
            .field("url", &self.shown)
            .finish()
    }
}

fn failed(what: &str, e: sqlx::Error) -> Error {
    Error::new(ErrorKind::Storage, format!("lake database: {what} failed")).with_source(e)
}

impl Database {
    /// Connects to the database at `url` (`sqlite://...` or
    /// `postgres://...`).
    pub async fn connect(url: &str) -> Result<Self> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = Backend::of_url(url).ok_or_else(|| {
            Error::new(
                ErrorKind::DataInvalid,
                format!(
                    "catalog URL {} is neither sqlite:// nor postgres://",
                    redact(url)
                ),
            )
        })?;
        let pool = AnyPoolOptions::new()
            .max_connections(10)
            .connect(url)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Storage,
                    format!("cannot open the lake database at {}", redact(url)),
                )
                .with_source(e)
            })?;
        Ok(Self {
            pool,
            backend,
            shown: redact(url),
        })
    }

    /// The pool, for statements.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A transaction holding the database's single write lock from its
    /// first statement: SQLite's `BEGIN IMMEDIATE`, or a transaction-scoped
    /// advisory lock on PostgreSQL. A transaction that reads and then writes
    /// (claims, pin sets) sees no other writer in between on either.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        match self.backend {
            Backend::Sqlite => self
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(|e| failed("a write transaction", e)),
            Backend::Postgres => {
                let mut tx = self
                    .pool
                    .begin()
                    .await
                    .map_err(|e| failed("a write transaction", e))?;
                advisory_xact_lock(&mut tx, WRITE_LOCK).await?;
                Ok(tx)
            }
        }
    }

    /// Runs `ddl` (`CREATE TABLE IF NOT EXISTS ...` statements) so that
    /// two processes doing it at once both succeed: on PostgreSQL in one
    /// transaction under an advisory lock; on SQLite one statement at a
    /// time, as before (a deferred transaction that read the schema and
    /// then had to create a table would get `SQLITE_BUSY` at once, without
    /// waiting, when another connection wrote in between).
    pub async fn create_tables(&self, ddl: &[&str]) -> Result<()> {
        if self.backend == Backend::Sqlite {
            for statement in ddl {
                sqlx::query(statement)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| failed("creating tables", e))?;
            }
            return Ok(());
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| failed("creating tables", e))?;
        advisory_xact_lock(&mut tx, DDL_LOCK).await?;
        for statement in ddl {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| failed("creating tables", e))?;
        }
        tx.commit().await.map_err(|e| failed("creating tables", e))
    }

    /// Holds, until the guard is released, the lock under which a process
    /// opens (and on first use creates) the lake: the Iceberg catalog
    /// creates its tables and the namespace without a lock of its own. A
    /// no-op on SQLite, whose file lock serializes those statements.
    pub async fn open_lock(&self) -> Result<OpenLock> {
        if self.backend == Backend::Sqlite {
            return Ok(OpenLock(None));
        }
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| failed("the open lock", e))?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(OPEN_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(|e| failed("the open lock", e))?;
        Ok(OpenLock(Some(conn)))
    }

    /// Whether the catalog at `url` has a table `namespace.table` (a lake
    /// exists there). A database without the catalog tables has none.
    pub async fn has_catalog_table(&self, namespace: &str, table: &str) -> Result<bool> {
        let exists: std::result::Result<Option<(String,)>, sqlx::Error> = sqlx::query_as(
            "SELECT table_name FROM iceberg_tables \
             WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3",
        )
        .bind(crate::iceberg::CATALOG_NAME)
        .bind(namespace)
        .bind(table)
        .fetch_optional(&self.pool)
        .await;
        match exists {
            Ok(row) => Ok(row.is_some()),
            // No catalog tables yet: no lake (any other failure is one).
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("42P01")
                    || e.message().contains("no such table") =>
            {
                Ok(false)
            }
            Err(e) => Err(failed("looking up the catalog", e)),
        }
    }
}

/// The lock of [`Database::open_lock`]; give it back with
/// [`OpenLock::release`] (dropping it closes the connection, which ends the
/// session and its lock as well).
pub struct OpenLock(Option<PoolConnection<Any>>);

impl OpenLock {
    /// Releases the lock.
    pub async fn release(self) -> Result<()> {
        if let Some(mut conn) = self.0 {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(OPEN_LOCK)
                .execute(&mut *conn)
                .await
                .map_err(|e| failed("releasing the open lock", e))?;
        }
        Ok(())
    }
}

async fn advisory_xact_lock(conn: &mut AnyConnection, key: i64) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(key)
        .execute(conn)
        .await
        .map_err(|e| failed("taking an advisory lock", e))?;
    Ok(())
}

/// Now, as the `TEXT` timestamps of the control tables hold it
/// (`YYYY-MM-DD HH:MM:SS`, UTC; the same as [`Backend::now_text`]).
pub fn now_text() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `url` without its password (`postgres://user:***@host/db`).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_and_redaction() {
        assert_eq!(
            Backend::of_url("sqlite:///tmp/x.db?mode=rwc"),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            Backend::of_url("postgresql://u@h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of_url("mysql://u@h/db"), None);
        assert_eq!(Backend::of_url("catalog.db"), None);
        assert_eq!(
            redact("postgres://lake:s3cret@db.internal:5432/lake"),
            "postgres://lake:***@db.internal:5432/lake"
        );
        assert_eq!(redact("postgres://lake@h/db"), "postgres://lake@h/db");
    }

    #[tokio::test]
    async fn write_transactions_and_tables_on_sqlite() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", tmp.path().join("x.db").display());
        let db = Database::connect(&url).await.expect("connect");
        assert_eq!(db.backend(), Backend::Sqlite);
        let ddl = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v BIGINT NOT NULL)";
        db.create_tables(&[ddl]).await.expect("create");
        db.create_tables(&[ddl]).await.expect("create again");
        let mut tx = db.begin_write().await.expect("begin");
        sqlx::query("INSERT INTO t (k, v) VALUES ($1, $2)")
            .bind("a")
            .bind(i64::MAX)
            .execute(&mut *tx)
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
        let (v,): (i64,) = sqlx::query_as("SELECT v FROM t WHERE k = $1")
            .bind("a")
            .fetch_one(db.pool())
            .await
            .expect("read");
        assert_eq!(v, i64::MAX, "64-bit values survive");
        assert!(
            !db.has_catalog_table("shardlake", "events")
                .await
                .expect("probe")
        );
        db.open_lock()
            .await
            .expect("lock")
            .release()
            .await
            .expect("unlock");
        let err = Database::connect("mysql://x@y/z")
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::DataInvalid);
    }
}
