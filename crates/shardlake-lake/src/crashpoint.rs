//! Crash points: named places in the commit path where a test can stop the
//! process, to prove that a kill there loses and duplicates nothing.
//!
//! Inactive unless the `SHARDLAKE_CRASH_AT` environment variable is set to
//! `name` or `name:n` (the n-th time the point is reached, 1-based). When the
//! point is reached, the process prints `shardlake: crash point <name> reached`
//! on stderr and then blocks forever, so the test can kill it with SIGKILL at
//! exactly that point. Reading the variable happens once; an inactive point
//! costs one atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The environment variable that arms a crash point.
pub const CRASH_AT_ENV: &str = "SHARDLAKE_CRASH_AT";

/// Before any data file of a commit is written.
pub const BEFORE_WRITE: &str = "commit.before_write";
/// While a data file is being written (after its first bytes were handed to storage).
pub const MID_FILE: &str = "write.mid_file";
/// After the first namespace's data files are complete, before the others are.
pub const BETWEEN_FILES: &str = "write.between_files";
/// After the data files are written, before the catalog commit.
pub const BEFORE_CATALOG: &str = "commit.before_catalog";
/// After the catalog commit, before the events are acknowledged.
pub const AFTER_CATALOG: &str = "commit.after_catalog";
/// Compaction wrote its data files, before its commit (Iceberg: the
/// catalog swap; Parquet: the sealing file).
pub const COMPACT_BEFORE_COMMIT: &str = "maintain.compact.before_commit";
/// Compaction committed, before it reports.
pub const COMPACT_AFTER_COMMIT: &str = "maintain.compact.after_commit";
/// Manifest merging, before its commit.
pub const MERGE_BEFORE_COMMIT: &str = "maintain.merge.before_commit";
/// Expiry, before its commit (Parquet: before deleting superseded files).
pub const EXPIRE_BEFORE_COMMIT: &str = "maintain.expire.before_commit";
/// Cleanup, after deleting its first file.
pub const CLEANUP_MID_DELETE: &str = "maintain.cleanup.mid_delete";

struct Armed {
    name: String,
    nth: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(CRASH_AT_ENV).ok()?;
            let (name, nth) = match spec.split_once(':') {
                Some((name, n)) => (name.to_owned(), n.parse().ok()?),
                None => (spec, 1),
            };
            Some(Armed {
                name,
                nth,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Marks that the process reached crash point `name`.
pub fn hit(name: &str) {
    let Some(armed) = armed() else { return };
    if armed.name != name || armed.hits.fetch_add(1, Ordering::SeqCst) + 1 != armed.nth {
        return;
    }
    eprintln!("shardlake: crash point {name} reached");
    // Block this thread for good; the test kills the process with SIGKILL.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
