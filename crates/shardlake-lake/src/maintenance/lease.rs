//! One maintainer per lake at a time.
//!
//! Compaction, expiry and cleanup are safe against any number of emitters,
//! but not against each other in two processes: a cleanup that listed a
//! compaction's output name as an old orphan could delete it just after a
//! second compaction wrote the same (content-addressed) name again. So a
//! maintenance run first takes a lease on the lake's database row
//! `shardlake_maintenance`, renews it while it runs and stops before
//! deleting anything once it is lost. A process that finds the lease held
//! skips its run. A holder that died is noticed: its lease runs out, or,
//! sooner, its process id is gone (every process of a lake runs on the
//! machine holding its SQLite database, so the id is meaningful).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::SqlitePool;

use crate::error::{Error, ErrorKind, Result};
use crate::pins::now_ms;

/// How long a lease lasts without renewal.
const LEASE: Duration = Duration::from_secs(120);
/// How often a held lease is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(20);

fn storage(e: sqlx::Error) -> Error {
    Error::new(ErrorKind::Storage, "maintenance lease: database failed").with_source(e)
}

/// A held maintenance lease, renewed in the background until released.
pub(crate) struct MaintenanceLease {
    pool: SqlitePool,
    runner: String,
    held: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl MaintenanceLease {
    /// Takes the lease, or returns who holds it.
    pub(crate) async fn acquire(pool: &SqlitePool) -> Result<std::result::Result<Self, String>> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS shardlake_maintenance (
                name TEXT PRIMARY KEY,
                runner TEXT NOT NULL,
                lease_until_ms INTEGER NOT NULL
            )",
        )
        .execute(pool)
        .await
        .map_err(storage)?;
        let runner = format!("{}:{}", std::process::id(), uuid::Uuid::new_v4());
        if !take(pool, &runner).await? {
            let holder: Option<(String,)> =
                sqlx::query_as("SELECT runner FROM shardlake_maintenance WHERE name = 'lake'")
                    .fetch_optional(pool)
                    .await
                    .map_err(storage)?;
            let holder = holder.map(|(r,)| r).unwrap_or_default();
            if !process_alive(&holder) && take_over(pool, &holder, &runner).await? {
                tracing::info!(holder, "took over the maintenance lease of a dead process");
            } else {
                return Ok(Err(holder));
            }
        }
        let held = Arc::new(AtomicBool::new(true));
        let renewer = {
            let (pool, runner, held) = (pool.clone(), runner.clone(), Arc::clone(&held));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    if !matches!(take(&pool, &runner).await, Ok(true)) {
                        held.store(false, Ordering::SeqCst);
                        return;
                    }
                }
            })
        };
        Ok(Ok(Self {
            pool: pool.clone(),
            runner,
            held,
            renewer,
        }))
    }

    /// Whether the lease is still ours (checked before deleting files).
    pub(crate) fn holder(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let held = Arc::clone(&self.held);
        move || held.load(Ordering::SeqCst)
    }

    /// Gives the lease up.
    pub(crate) async fn release(self) -> Result<()> {
        self.renewer.abort();
        sqlx::query("DELETE FROM shardlake_maintenance WHERE name = 'lake' AND runner = ?")
            .bind(&self.runner)
            .execute(&self.pool)
            .await
            .map_err(storage)?;
        Ok(())
    }
}

impl Drop for MaintenanceLease {
    fn drop(&mut self) {
        // A run that errors out stops renewing; the lease runs out.
        self.renewer.abort();
    }
}

/// Whether the process named in `runner` (`<pid>:<uuid>`) may still run.
/// Answered from `/proc` where there is one (Linux); elsewhere, or for an
/// unreadable name, it counts as alive and the lease has to run out.
fn process_alive(runner: &str) -> bool {
    let Some(pid) = runner
        .split_once(':')
        .and_then(|(pid, _)| pid.parse::<u32>().ok())
    else {
        return true;
    };
    let proc = std::path::Path::new("/proc");
    pid == std::process::id() || !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// Replaces a dead `holder`'s lease with `runner`'s, if it is still its.
async fn take_over(pool: &SqlitePool, holder: &str, runner: &str) -> Result<bool> {
    let until = now_ms() + LEASE.as_millis() as i64;
    let done = sqlx::query(
        "UPDATE shardlake_maintenance SET runner = ?, lease_until_ms = ? \
         WHERE name = 'lake' AND runner = ?",
    )
    .bind(runner)
    .bind(until)
    .bind(holder)
    .execute(pool)
    .await
    .map_err(storage)?;
    Ok(done.rows_affected() == 1)
}

/// Takes or renews the lease for `runner`; whether it holds it now.
async fn take(pool: &SqlitePool, runner: &str) -> Result<bool> {
    let now = now_ms();
    let until = now + LEASE.as_millis() as i64;
    let done = sqlx::query(
        "INSERT INTO shardlake_maintenance (name, runner, lease_until_ms) VALUES ('lake', ?, ?) \
         ON CONFLICT (name) DO UPDATE SET runner = excluded.runner, \
         lease_until_ms = excluded.lease_until_ms \
         WHERE shardlake_maintenance.runner = excluded.runner \
         OR shardlake_maintenance.lease_until_ms < ?",
    )
    .bind(runner)
    .bind(until)
    .bind(now)
    .execute(pool)
    .await
    .map_err(storage)?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_runner_at_a_time_and_release_frees_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let uri = format!("sqlite://{}?mode=rwc", tmp.path().join("l.db").display());
        let pool = SqlitePool::connect(&uri).await.expect("pool");
        let first = MaintenanceLease::acquire(&pool)
            .await
            .expect("db")
            .expect("free");
        assert!(first.holder()());
        let second = MaintenanceLease::acquire(&pool).await.expect("db");
        let holder = second.err().expect("held by the first");
        assert!(
            holder.starts_with(&format!("{}:", std::process::id())),
            "{holder}"
        );
        first.release().await.expect("release");
        let third = MaintenanceLease::acquire(&pool).await.expect("db");
        let third = third.expect("free again after release");
        third.release().await.expect("release");

        // A holder whose process is gone (a SIGKILLed `shardlake maintain`)
        // does not block the lake until its lease runs out.
        sqlx::query("INSERT INTO shardlake_maintenance VALUES ('lake', '4000000000:dead', ?)")
            .bind(now_ms() + 3_600_000)
            .execute(&pool)
            .await
            .expect("a dead holder's lease");
        let fourth = MaintenanceLease::acquire(&pool).await.expect("db");
        assert!(fourth.is_ok(), "a dead holder's lease is taken over");
    }
}
