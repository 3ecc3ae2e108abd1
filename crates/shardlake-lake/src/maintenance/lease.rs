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
//! sooner, when it ran on this host, its process id is gone. The runner
//! names its host (`<host>:<pid>:<uuid>`): with the lake's database on
//! PostgreSQL, maintainers on other hosts have process ids that mean
//! nothing here, and only the lease's end frees their hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::db::Database;

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
    db: Database,
    runner: String,
    held: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl MaintenanceLease {
    /// Takes the lease, or returns who holds it.
    pub(crate) async fn acquire(db: &Database) -> Result<std::result::Result<Self, String>> {
        db.create_tables(&["CREATE TABLE IF NOT EXISTS shardlake_maintenance (
                name TEXT PRIMARY KEY,
                runner TEXT NOT NULL,
                lease_until_ms BIGINT NOT NULL
            )"])
            .await?;
        let pool = db.pool();
        let runner = format!(
            "{}:{}:{}",
            this_host(),
            std::process::id(),
            uuid::Uuid::new_v4()
        );
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
            db: db.clone(),
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
        sqlx::query("DELETE FROM shardlake_maintenance WHERE name = 'lake' AND runner = $1")
            .bind(&self.runner)
            .execute(self.db.pool())
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

/// This machine's name, as runners record it (`/proc/sys/kernel/hostname`;
/// `localhost` where there is none).
fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().replace(':', "-"))
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Whether the process named in `runner` (`<host>:<pid>:<uuid>`, or
/// `<pid>:<uuid>` as runners before hosts were recorded) may still run.
/// Answered from `/proc` for a process of this host (Linux); a process of
/// another host, one named unreadably, or one on a system without `/proc`
/// counts as alive, and its lease has to run out.
fn process_alive(runner: &str) -> bool {
    let parts: Vec<&str> = runner.split(':').collect();
    let pid = match parts.as_slice() {
        [host, pid, _] if *host == this_host() => pid.parse::<u32>().ok(),
        [pid, _] => pid.parse::<u32>().ok(),
        _ => None,
    };
    let Some(pid) = pid else {
        return true;
    };
    let proc = std::path::Path::new("/proc");
    pid == std::process::id() || !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// Replaces a dead `holder`'s lease with `runner`'s, if it is still its.
async fn take_over(pool: &sqlx::AnyPool, holder: &str, runner: &str) -> Result<bool> {
    let until = now_ms() + LEASE.as_millis() as i64;
    let done = sqlx::query(
        "UPDATE shardlake_maintenance SET runner = $1, lease_until_ms = $2 \
         WHERE name = 'lake' AND runner = $3",
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
async fn take(pool: &sqlx::AnyPool, runner: &str) -> Result<bool> {
    let now = now_ms();
    let until = now + LEASE.as_millis() as i64;
    let done = sqlx::query(
        "INSERT INTO shardlake_maintenance (name, runner, lease_until_ms) VALUES ('lake', $1, $2) \
         ON CONFLICT (name) DO UPDATE SET runner = excluded.runner, \
         lease_until_ms = excluded.lease_until_ms \
         WHERE shardlake_maintenance.runner = excluded.runner \
         OR shardlake_maintenance.lease_until_ms < $3",
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
        let db = Database::connect(&uri).await.expect("db");
        let pool = db.pool();
        let first = MaintenanceLease::acquire(&db)
            .await
            .expect("db")
            .expect("free");
        assert!(first.holder()());
        let second = MaintenanceLease::acquire(&db).await.expect("db");
        let holder = second.err().expect("held by the first");
        assert!(
            holder.starts_with(&format!("{}:{}:", this_host(), std::process::id())),
            "{holder}"
        );
        first.release().await.expect("release");
        let third = MaintenanceLease::acquire(&db).await.expect("db");
        let third = third.expect("free again after release");
        third.release().await.expect("release");

        // A holder whose process is gone (a SIGKILLed `shardlake maintain`)
        // does not block the lake until its lease runs out.
        let dead = format!("{}:4000000000:dead", this_host());
        sqlx::query("INSERT INTO shardlake_maintenance VALUES ('lake', $1, $2)")
            .bind(&dead)
            .bind(now_ms() + 3_600_000)
            .execute(pool)
            .await
            .expect("a dead holder's lease");
        let fourth = MaintenanceLease::acquire(&db).await.expect("db");
        let fourth = fourth.expect("a dead holder's lease is taken over");
        fourth.release().await.expect("release");

        // A holder on another host may be alive whatever its pid: only its
        // lease's end frees the lake. So may one recorded before hosts were.
        assert!(process_alive("elsewhere:4000000000:x"));
        assert!(!process_alive("4000000000:old-format"));
        assert!(!process_alive(&dead));
        sqlx::query("INSERT INTO shardlake_maintenance VALUES ('lake', 'elsewhere:1:x', $1)")
            .bind(now_ms() + 3_600_000)
            .execute(pool)
            .await
            .expect("another host's lease");
        let fifth = MaintenanceLease::acquire(&db).await.expect("db");
        assert_eq!(fifth.err().as_deref(), Some("elsewhere:1:x"));
    }
}
