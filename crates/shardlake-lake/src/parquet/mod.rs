//! The plain Parquet table format: no catalog, only files.
//!
//! ```text
//! <root>/events/namespace=<ns>/<first-position>-<commit-id>-<digest>.parquet
//! ```
//!
//! A Hive-style layout any Parquet reader understands. Each commit writes
//! one or more files (one namespace per file, as in the Iceberg format, with
//! the same sort order and writer settings), and every file's footer
//! carries the commit's facts ([`CommitFacts`], key `shardlake.commit`):
//! its id, its position range, how many files it wrote, and every shard's
//! watermark after it. So:
//!
//! - **Publishing is atomic per file**: `object_store` publishes a file
//!   only when complete (temp file + rename on disk, one PUT or a completed
//!   multipart upload on S3).
//! - **A commit is visible once all its files are**: readers group files by
//!   commit id and ignore a commit with fewer files than it announced. The
//!   last file written is the commit point; a crash before it leaves an
//!   incomplete commit that no reader counts, and whose positions the next
//!   commit reuses.
//! - **State is recovered from the files**: the latest complete commit's
//!   footer holds every watermark and the next position.
//! - **Snapshots are positions**: a commit's snapshot id is its
//!   `next_position` (unique and increasing), so a snapshot is "every
//!   complete commit up to that position" and time travel needs no log.
//!
//! What the format cannot do without a catalog is compare-and-swap between
//! processes: a Parquet lake has **one writer at a time**, enforced by an
//! exclusive lock on `<data dir>/parquet-writer.lock` held by the committer
//! (a second emitter fails to start, saying so). Checkpoints and the
//! migration control tables live in `<data dir>/control.db`. Compaction is
//! an Iceberg feature (it needs an atomic replace).

mod committer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetObjectReader};
use parquet::file::metadata::ParquetMetaData;
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

pub use committer::ParquetCommitter;

use crate::commit::{CommitState, FIRST_POSITION};
use crate::error::{Error, ErrorKind, Result};
use crate::warehouse::Warehouse;

/// Directory of the events table under the warehouse root.
pub const EVENTS_DIR: &str = "events";
/// Parquet key-value metadata key holding the file's [`CommitFacts`] (JSON).
pub const COMMIT_KEY: &str = "shardlake.commit";
/// The local database of a Parquet lake (checkpoints, control tables).
pub const CONTROL_DB: &str = "control.db";
/// The writer lock of a Parquet lake, in the data directory.
pub const WRITER_LOCK: &str = "parquet-writer.lock";

/// Footers read at once while listing the table.
const FOOTER_CONCURRENCY: usize = 16;

/// What every file of a commit says about the commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitFacts {
    /// The commit's id (unique per attempt).
    pub commit_id: String,
    /// Position of the commit's first event.
    pub first_position: i64,
    /// Position after its last event (also its snapshot id).
    pub next_position: i64,
    /// How many files the commit wrote.
    pub files: usize,
    /// Every shard's watermark after the commit.
    pub watermarks: BTreeMap<i32, i64>,
}

/// One data file, as listed and described by its footer.
#[derive(Debug)]
pub struct ParquetDataFile {
    /// Full location (URL).
    pub location: String,
    /// Path inside the warehouse's store.
    pub path: Path,
    /// Size in bytes.
    pub size: u64,
    /// The namespace (from the `namespace=<ns>` directory).
    pub namespace: String,
    /// Rows in the file.
    pub rows: u64,
    /// The commit the file belongs to.
    pub commit: Arc<CommitFacts>,
    /// The footer (row-group statistics for pruning).
    pub metadata: Arc<ParquetMetaData>,
}

/// The table as of one complete commit.
#[derive(Debug, Clone, Default)]
pub struct ParquetSnapshot {
    /// Watermarks and next position; `snapshot_id` is the last commit's
    /// `next_position` (`None`: no commit yet).
    pub state: CommitState,
    /// Files of complete commits, in position order.
    pub files: Vec<Arc<ParquetDataFile>>,
    /// Complete commits, in position order.
    pub commits: Vec<Arc<CommitFacts>>,
    /// Files of commits that are not complete (crashed, or being written).
    pub incomplete: Vec<Arc<ParquetDataFile>>,
}

impl ParquetSnapshot {
    /// The table as of snapshot `snapshot_id` (a commit's `next_position`),
    /// `None` if no complete commit ends there.
    pub fn as_of(&self, snapshot_id: i64) -> Option<ParquetSnapshot> {
        let last = self
            .commits
            .iter()
            .position(|c| c.next_position == snapshot_id)?;
        let commit = &self.commits[last];
        Some(ParquetSnapshot {
            state: CommitState {
                watermarks: commit.watermarks.clone(),
                next_position: commit.next_position,
                snapshot_id: Some(commit.next_position),
            },
            files: self
                .files
                .iter()
                .filter(|f| f.commit.next_position <= snapshot_id)
                .cloned()
                .collect(),
            commits: self.commits[..=last].to_vec(),
            incomplete: Vec::new(),
        })
    }

    /// Whether a complete commit has id `commit_id`.
    pub fn contains_commit(&self, commit_id: &str) -> bool {
        self.commits.iter().any(|c| c.commit_id == commit_id)
    }
}

/// Handle on the plain-Parquet `events` table of a warehouse. Cheap to
/// clone; clones share the footer cache and the listing cache.
#[derive(Debug, Clone)]
pub struct ParquetEventsTable {
    warehouse: Warehouse,
    prefix: Path,
    pool: SqlitePool,
    // Files are immutable: a footer is read once per process.
    footers: Arc<Mutex<HashMap<Path, Arc<ParquetDataFile>>>>,
    listing: Arc<Mutex<ListingCache>>,
}

/// The last listing, reusable while this process holds the writer lock.
///
/// Only the lock holder changes the table, so while a committer made from
/// this handle (or a clone) is alive, the table changes exactly when it
/// publishes or deletes files. Every change drops the kept listing when it
/// starts and when it ends, and a listing is kept only if no change started
/// or ended while it ran (same `generation`), so a kept listing is never
/// older than the last change. A reader without the lock (a CLI query next
/// to a running server) lists every time.
#[derive(Debug, Default)]
struct ListingCache {
    /// A committer of this handle holds the writer lock.
    exclusive: bool,
    /// Bumped when a change starts and when it ends.
    generation: u64,
    /// The last listing, if it is still the table's state.
    snapshot: Option<ParquetSnapshot>,
    /// LISTs of the table directory made through this handle.
    listings: u64,
}

impl ListingCache {
    /// A change started or ended: the kept listing may be out of date.
    fn changed(&mut self) {
        self.generation += 1;
        self.snapshot = None;
    }
}

/// Marks the table as changing while alive (a commit, an orphan cleanup):
/// listings taken meanwhile are not reused.
pub(crate) struct Change {
    listing: Arc<Mutex<ListingCache>>,
}

impl Drop for Change {
    fn drop(&mut self) {
        // Runs on success, error and cancellation alike.
        self.listing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .changed();
    }
}

fn storage(what: &str) -> impl FnOnce(object_store::Error) -> Error + '_ {
    move |e| Error::new(ErrorKind::Storage, what.to_owned()).with_source(e)
}

impl ParquetEventsTable {
    /// Opens the table of `warehouse` (creating its control database on
    /// first use) and checks the data directory belongs to a Parquet lake
    /// at this storage location.
    pub async fn open(warehouse: &Warehouse) -> Result<Self> {
        let catalog = warehouse.data_dir().join(crate::warehouse::CATALOG_FILE);
        if catalog.exists() {
            return Err(Error::new(
                ErrorKind::DataInvalid,
                format!(
                    "{} holds an Iceberg lake (catalog.db); open it with format iceberg",
                    warehouse.data_dir().display()
                ),
            ));
        }
        let uri = format!(
            "sqlite://{}?mode=rwc",
            warehouse.data_dir().join(CONTROL_DB).display()
        );
        let pool = SqlitePool::connect(&uri).await.map_err(|e| {
            Error::new(ErrorKind::Storage, "cannot open the control database").with_source(e)
        })?;
        check_location(&pool, warehouse).await?;
        let prefix = warehouse.object_path(&format!("{}{EVENTS_DIR}", warehouse.root()))?;
        Ok(Self {
            warehouse: warehouse.clone(),
            prefix,
            pool,
            footers: Arc::new(Mutex::new(HashMap::new())),
            listing: Arc::new(Mutex::new(ListingCache::default())),
        })
    }

    /// The warehouse the table lives in.
    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// Path of the table directory inside the store.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// Subscription checkpoints (in the control database).
    pub async fn checkpoints(&self) -> Result<crate::checkpoint::Checkpoints> {
        crate::checkpoint::Checkpoints::open(self.pool.clone()).await
    }

    /// Topologies and migrations (in the control database).
    pub async fn control(&self) -> Result<crate::control::ControlStore> {
        crate::control::ControlStore::open(self.pool.clone()).await
    }

    /// The table's latest snapshot: one LIST of the table directory plus
    /// one footer read per file not seen before, or no request at all while
    /// this process holds the writer lock and nothing changed since the
    /// last listing.
    pub async fn snapshot(&self) -> Result<ParquetSnapshot> {
        let generation = {
            let mut cache = self.listing.lock().map_err(|_| poisoned())?;
            if let Some(snapshot) = &cache.snapshot {
                return Ok(snapshot.clone());
            }
            cache.listings += 1;
            cache.generation
        };
        let snapshot = self.list().await?;
        let mut cache = self.listing.lock().map_err(|_| poisoned())?;
        if cache.exclusive && cache.generation == generation {
            cache.snapshot = Some(snapshot.clone());
        }
        Ok(snapshot)
    }

    /// How many times this handle (and its clones) listed the table
    /// directory: for diagnostics and tests.
    pub fn listings(&self) -> u64 {
        self.listing.lock().map_or(0, |cache| cache.listings)
    }

    /// Called by the committer once it holds the writer lock (`true`) and
    /// when it lets go (`false`).
    pub(crate) fn set_exclusive(&self, exclusive: bool) {
        let mut cache = self.listing.lock().unwrap_or_else(|p| p.into_inner());
        cache.exclusive = exclusive;
        cache.snapshot = None;
    }

    /// Starts a change of the table's files; it ends when the guard drops.
    pub(crate) fn change(&self) -> Change {
        self.listing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .changed();
        Change {
            listing: Arc::clone(&self.listing),
        }
    }

    async fn list(&self) -> Result<ParquetSnapshot> {
        let store = self.warehouse.store();
        let listed: Vec<ObjectMeta> = store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(storage("listing the table failed"))?;
        let listed: Vec<(ObjectMeta, String)> = listed
            .into_iter()
            .filter_map(|meta| {
                let namespace = namespace_of(&self.prefix, &meta.location)?;
                Some((meta, namespace))
            })
            .collect();
        let known = {
            let footers = self.footers.lock().map_err(|_| poisoned())?;
            listed
                .iter()
                .map(|(meta, _)| footers.get(&meta.location).cloned())
                .collect::<Vec<_>>()
        };
        let files: Vec<Arc<ParquetDataFile>> = futures::stream::iter(listed.into_iter().zip(known))
            .map(|((meta, namespace), known)| {
                let store = Arc::clone(&store);
                async move {
                    match known {
                        Some(file) => Ok(file),
                        None => self.describe(store, meta, namespace).await,
                    }
                }
            })
            .buffered(FOOTER_CONCURRENCY)
            .try_collect()
            .await?;
        {
            let mut footers = self.footers.lock().map_err(|_| poisoned())?;
            let live: HashSet<&Path> = files.iter().map(|f| &f.path).collect();
            footers.retain(|path, _| live.contains(path));
            for file in &files {
                footers
                    .entry(file.path.clone())
                    .or_insert_with(|| Arc::clone(file));
            }
        }
        assemble(files)
    }

    async fn describe(
        &self,
        store: Arc<dyn ObjectStore>,
        meta: ObjectMeta,
        namespace: String,
    ) -> Result<Arc<ParquetDataFile>> {
        let mut reader =
            ParquetObjectReader::new(store, meta.location.clone()).with_file_size(meta.size);
        let metadata = reader.get_metadata(None).await.map_err(|e| {
            Error::new(
                ErrorKind::Storage,
                format!("cannot read the footer of {}", meta.location),
            )
            .with_source(e)
        })?;
        let facts = metadata
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|kv| kv.key == COMMIT_KEY))
            .and_then(|kv| kv.value.as_deref())
            .ok_or_else(|| {
                // A foreign file in the table directory: refuse to guess
                // which commit it belongs to.
                Error::new(
                    ErrorKind::Storage,
                    format!(
                        "{} has no {COMMIT_KEY} in its footer: not written by shardlake",
                        meta.location
                    ),
                )
            })?;
        let commit: CommitFacts = serde_json::from_str(facts).map_err(|e| {
            Error::new(
                ErrorKind::Storage,
                format!("{} has a bad {COMMIT_KEY}", meta.location),
            )
            .with_source(e)
        })?;
        let mut location = self.warehouse.store_url();
        location.set_path(&format!("/{}", meta.location));
        Ok(Arc::new(ParquetDataFile {
            location: location.to_string(),
            path: meta.location,
            size: meta.size,
            namespace,
            rows: metadata.file_metadata().num_rows().max(0) as u64,
            commit: Arc::new(commit),
            metadata,
        }))
    }

    /// Deletes files (the writer's cleanup of incomplete commits).
    pub(crate) async fn delete(&self, files: &[Arc<ParquetDataFile>]) -> Result<()> {
        let _change = self.change();
        let store = self.warehouse.store();
        for file in files {
            match store.delete(&file.path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage("deleting an orphan file failed")(e)),
            }
        }
        Ok(())
    }
}

fn poisoned() -> Error {
    Error::new(ErrorKind::Unexpected, "footer cache lock poisoned")
}

/// `<prefix>/namespace=<ns>/<name>.parquet` -> `ns`; anything else (temp
/// files of unfinished uploads, stray files) -> `None`.
fn namespace_of(prefix: &Path, location: &Path) -> Option<String> {
    let mut parts = location.prefix_match(prefix)?;
    let dir = parts.next()?;
    let name = parts.next()?;
    if parts.next().is_some() || !name.as_ref().ends_with(".parquet") {
        return None;
    }
    dir.as_ref().strip_prefix("namespace=").map(str::to_owned)
}

/// Groups files into commits and keeps the complete ones, which must form
/// one unbroken chain of positions.
fn assemble(files: Vec<Arc<ParquetDataFile>>) -> Result<ParquetSnapshot> {
    let mut by_commit: BTreeMap<(i64, String), Vec<Arc<ParquetDataFile>>> = BTreeMap::new();
    for file in files {
        by_commit
            .entry((file.commit.first_position, file.commit.commit_id.clone()))
            .or_default()
            .push(file);
    }
    let mut snapshot = ParquetSnapshot::default();
    let mut expected = FIRST_POSITION;
    for (_, mut group) in by_commit {
        let facts = Arc::clone(&group[0].commit);
        if group.len() != facts.files || group.iter().any(|f| *f.commit != *facts) {
            snapshot.incomplete.extend(group);
            continue;
        }
        if facts.first_position != expected {
            return Err(Error::new(
                ErrorKind::Storage,
                format!(
                    "commit {} covers positions {}..{} but the previous commit ends at {expected}: \
                     the lake had two writers, or files were removed by hand",
                    facts.commit_id, facts.first_position, facts.next_position
                ),
            ));
        }
        expected = facts.next_position;
        group.sort_by(|a, b| a.path.cmp(&b.path));
        snapshot.files.extend(group);
        snapshot.state = CommitState {
            watermarks: facts.watermarks.clone(),
            next_position: facts.next_position,
            snapshot_id: Some(facts.next_position),
        };
        snapshot.commits.push(facts);
    }
    Ok(snapshot)
}

/// Records the storage location in the control database on first use and
/// refuses another one later (the same check the Iceberg catalog gets).
async fn check_location(pool: &SqlitePool, warehouse: &Warehouse) -> Result<()> {
    let failed =
        |e: sqlx::Error| Error::new(ErrorKind::Storage, "control database failed").with_source(e);
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS shardlake_lake (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )
    .execute(pool)
    .await
    .map_err(failed)?;
    let root = warehouse.root().to_string();
    sqlx::query("INSERT OR IGNORE INTO shardlake_lake (key, value) VALUES ('location', ?)")
        .bind(&root)
        .execute(pool)
        .await
        .map_err(failed)?;
    let (recorded,): (String,) =
        sqlx::query_as("SELECT value FROM shardlake_lake WHERE key = 'location'")
            .fetch_one(pool)
            .await
            .map_err(failed)?;
    if recorded == root {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::DataInvalid,
        format!(
            "the control database in {} belongs to a lake stored at {recorded}, but storage is \
             configured at {root}; open it with the storage location it was created with",
            warehouse.data_dir().display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_table_files_are_listed() {
        let prefix = Path::from("w/events");
        let ns = |p: &str| namespace_of(&prefix, &Path::from(p));
        assert_eq!(
            ns("w/events/namespace=acme/00000000000000000001-c-d.parquet"),
            Some("acme".into())
        );
        assert_eq!(ns("w/events/namespace=acme/x.parquet#1"), None);
        assert_eq!(ns("w/events/other/x.parquet"), None);
        assert_eq!(ns("w/events/namespace=acme/deeper/x.parquet"), None);
        assert_eq!(ns("w/elsewhere/namespace=acme/x.parquet"), None);
    }
}
