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
//! - **Compaction is a commit too**: it rewrites a run of consecutive
//!   commits into one commit covering the same positions, with the same
//!   watermarks, sealed like any commit ([`compact`]). Readers follow the
//!   chain of complete commits from the first position, taking at each
//!   position the commit that reaches furthest; the commits a compaction
//!   covers are *superseded*: still there for time travel until they
//!   expire, then deleted ([`expire`]).
//!
//! What the format cannot do without a catalog is compare-and-swap between
//! processes: a Parquet lake has **one writer at a time**, enforced by an
//! exclusive lock on `<data dir>/parquet-writer.lock` held by the committer
//! (a second emitter fails to start, saying so), and maintenance runs in
//! the process holding it. Checkpoints, pins and the tables other crates
//! keep in the lake's database (`Lake::database`; the migration control
//! tables) live in `<data dir>/control.db`.
//!
//! Readers get a snapshot's files with their bounds (from the footers'
//! row-group statistics) in the format-neutral [`crate::snapshot`] model
//! (`read`).

mod cleanup;
mod committer;
mod compact;
mod expire;
mod read;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetObjectReader};
use parquet::file::metadata::ParquetMetaData;
use serde::{Deserialize, Serialize};

pub use committer::ParquetCommitter;
pub(crate) use read::ParquetReadCache;

use crate::commit::{CommitState, FIRST_POSITION};
use crate::error::{Error, ErrorKind, Result};
use crate::in_flight::{Held, InFlight, Watch};
use crate::pins::SnapshotPins;
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
    /// The content digest of each shard's event at its watermark
    /// ([`crate::commit::content_digest`]); empty in files written before
    /// shardlake recorded it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub watermark_digests: BTreeMap<i32, u64>,
    /// When the commit was made (Unix milliseconds; for a compaction, when
    /// the last commit it covers was). 0 in files written before shardlake
    /// recorded it: readers then use the file's modification time.
    #[serde(default)]
    pub committed_at_ms: i64,
    /// Set on a compaction's commit: when it was written. It holds exactly
    /// the rows of the commits in its position range and supersedes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted_at_ms: Option<i64>,
}

/// One commit: its facts and its files.
#[derive(Debug, Clone)]
pub struct ParquetCommit {
    /// What every file of it says.
    pub facts: Arc<CommitFacts>,
    /// Its files, by path.
    pub files: Vec<Arc<ParquetDataFile>>,
}

impl ParquetCommit {
    /// When the commit was made (Unix milliseconds).
    pub fn committed_at_ms(&self) -> i64 {
        if self.facts.committed_at_ms > 0 {
            return self.facts.committed_at_ms;
        }
        self.files
            .iter()
            .map(|f| f.last_modified_ms)
            .max()
            .unwrap_or(0)
    }
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
    /// When the file was written (Unix milliseconds, from storage).
    pub last_modified_ms: i64,
}

/// The table as of one complete commit.
#[derive(Debug, Clone, Default)]
pub struct ParquetSnapshot {
    /// Watermarks and next position; `snapshot_id` is the last commit's
    /// `next_position` (`None`: no commit yet).
    pub state: CommitState,
    /// Files of the commits on the chain, in position order.
    pub files: Vec<Arc<ParquetDataFile>>,
    /// The commits on the chain (first position to the snapshot), in
    /// position order.
    pub commits: Vec<Arc<CommitFacts>>,
    /// Every complete commit, on the chain or superseded by a compaction,
    /// by first position (then longest first).
    pub complete: Vec<ParquetCommit>,
    /// Files of commits that are not complete (crashed, or being written).
    pub incomplete: Vec<Arc<ParquetDataFile>>,
}

impl ParquetSnapshot {
    /// The table as of snapshot `snapshot_id` (a commit's `next_position`),
    /// `None` if no chain of complete commits ends there (it never existed,
    /// or the commits reaching it expired).
    pub fn as_of(&self, snapshot_id: i64) -> Option<ParquetSnapshot> {
        let chain = chain(&self.complete, Some(snapshot_id));
        let last = chain.last()?;
        if last.facts.next_position != snapshot_id {
            return None;
        }
        Some(ParquetSnapshot {
            state: CommitState {
                watermarks: last.facts.watermarks.clone(),
                watermark_digests: last.facts.watermark_digests.clone(),
                next_position: last.facts.next_position,
                snapshot_id: Some(last.facts.next_position),
            },
            files: chain.iter().flat_map(|c| c.files.iter().cloned()).collect(),
            commits: chain.iter().map(|c| Arc::clone(&c.facts)).collect(),
            complete: self.complete.clone(),
            incomplete: Vec::new(),
        })
    }

    /// Every snapshot a chain of complete commits reaches, oldest first,
    /// with the commit that ends there (an original commit rather than a
    /// compaction, when both do).
    pub fn retained(&self) -> Vec<&ParquetCommit> {
        let mut reached: BTreeMap<i64, &ParquetCommit> = BTreeMap::new();
        let mut reachable: HashSet<i64> = HashSet::from([FIRST_POSITION]);
        for commit in &self.complete {
            if !reachable.contains(&commit.facts.first_position) {
                continue;
            }
            reachable.insert(commit.facts.next_position);
            let slot = reached.entry(commit.facts.next_position).or_insert(commit);
            if slot.facts.compacted_at_ms.is_some() && commit.facts.compacted_at_ms.is_none() {
                *slot = commit;
            }
        }
        reached.into_values().collect()
    }

    /// Whether a complete commit has id `commit_id`.
    pub fn contains_commit(&self, commit_id: &str) -> bool {
        self.complete.iter().any(|c| c.facts.commit_id == commit_id)
    }
}

/// The chain of complete commits from the first position: at each position
/// the commit reaching furthest (not past `limit`). Commits form a laminar
/// family (a compaction covers whole commits, and one writer makes them),
/// so this finds a chain to `limit` whenever one exists.
fn chain(complete: &[ParquetCommit], limit: Option<i64>) -> Vec<&ParquetCommit> {
    let mut by_first: BTreeMap<i64, &ParquetCommit> = BTreeMap::new();
    for commit in complete {
        if limit.is_some_and(|l| commit.facts.next_position > l) {
            continue;
        }
        let slot = by_first
            .entry(commit.facts.first_position)
            .or_insert(commit);
        if commit.facts.next_position > slot.facts.next_position {
            *slot = commit;
        }
    }
    let mut out = Vec::new();
    let mut at = FIRST_POSITION;
    while let Some(commit) = by_first.get(&at) {
        out.push(*commit);
        at = commit.facts.next_position;
    }
    out
}

/// Handle on the plain-Parquet `events` table of a warehouse. Cheap to
/// clone; clones share the footer cache and the listing cache.
#[derive(Debug, Clone)]
pub struct ParquetEventsTable {
    warehouse: Warehouse,
    prefix: Path,
    db: crate::db::Database,
    // Files are immutable: a footer is read once per process.
    footers: Arc<Mutex<HashMap<Path, Arc<ParquetDataFile>>>>,
    listing: Arc<Mutex<ListingCache>>,
    // Changes this process finished (see `local_changes`).
    changes: Arc<AtomicU64>,
    // Commits this process is writing (an emitter's, a compaction's): their
    // files are not the leftovers of a crash, whatever a listing shows.
    in_flight: InFlight,
    pins: SnapshotPins,
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
    changes: Arc<AtomicU64>,
}

impl Drop for Change {
    fn drop(&mut self) {
        // Runs on success, error and cancellation alike.
        self.listing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .changed();
        self.changes.fetch_add(1, Ordering::AcqRel);
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
        if warehouse.has_catalog_url() {
            return Err(Error::new(
                ErrorKind::DataInvalid,
                "a plain Parquet lake has one writer and keeps its control database in its data \
                 directory; a catalog URL (several servers on one lake) needs the Iceberg format",
            ));
        }
        let uri = format!(
            "sqlite://{}?mode=rwc",
            warehouse.data_dir().join(CONTROL_DB).display()
        );
        let db = crate::db::Database::connect(&uri).await?;
        check_location(&db, warehouse).await?;
        let prefix = warehouse.object_path(&format!("{}{EVENTS_DIR}", warehouse.root()))?;
        Ok(Self {
            warehouse: warehouse.clone(),
            prefix,
            pins: SnapshotPins::open(db.clone()).await?,
            db,
            footers: Arc::new(Mutex::new(HashMap::new())),
            listing: Arc::new(Mutex::new(ListingCache::default())),
            changes: Arc::default(),
            in_flight: InFlight::default(),
        })
    }

    /// What keeps snapshots from expiring.
    pub fn pins(&self) -> &SnapshotPins {
        &self.pins
    }

    /// The control database.
    pub(crate) fn database(&self) -> &crate::db::Database {
        &self.db
    }

    /// Marks commit `commit_id` as being written by this process until the
    /// guard drops: its files are nobody's leftovers meanwhile.
    pub(crate) fn writing(&self, commit_id: &str) -> Held {
        self.in_flight.hold(commit_id)
    }

    /// Remembers every commit in flight from now until the watch drops
    /// (see [`crate::in_flight`]).
    pub(crate) fn watch_writing(&self) -> Watch {
        self.in_flight.watch()
    }

    /// Holds the writer lock for maintenance: `None` if a committer of this
    /// process holds it already, the lock file otherwise. Refused while
    /// another process writes the lake (its server maintains it).
    pub(crate) fn lock_for_maintenance(&self) -> Result<Option<std::fs::File>> {
        if self
            .listing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .exclusive
        {
            return Ok(None);
        }
        lock_writer(self.warehouse.data_dir()).map(Some)
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
        crate::checkpoint::Checkpoints::open(self.db.clone()).await
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

    /// Bumped whenever a change of this process (a commit, a compaction,
    /// a cleanup, through this handle or a clone) ends, whatever its
    /// outcome (see [`crate::EventsTable::local_changes`]).
    pub fn local_changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
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
            changes: Arc::clone(&self.changes),
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
            last_modified_ms: meta.last_modified.timestamp_millis(),
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

/// Takes the lake's writer lock (`<data dir>/parquet-writer.lock`): held
/// while the returned file is open, released by the OS if the process dies.
pub(crate) fn lock_writer(data_dir: &std::path::Path) -> Result<std::fs::File> {
    let path = data_dir.join(WRITER_LOCK);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| {
            Error::new(
                ErrorKind::Storage,
                format!("cannot open the writer lock {}", path.display()),
            )
            .with_source(e)
        })?;
    lock.try_lock().map_err(|e| {
        Error::new(
            ErrorKind::CommitConflict,
            format!(
                "another process is writing this plain-Parquet lake (it holds {}); \
                 a Parquet lake has one writer at a time, which also maintains it \
                 (use the Iceberg format for more)",
                path.display()
            ),
        )
        .with_source(e)
    })?;
    Ok(lock)
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

/// Groups files into commits, keeps the complete ones, and follows their
/// chain from the first position. Every complete commit must be on the
/// chain or inside a compaction on it: anything else means two writers, or
/// files removed by hand, and is refused rather than guessed at.
fn assemble(files: Vec<Arc<ParquetDataFile>>) -> Result<ParquetSnapshot> {
    let mut by_commit: BTreeMap<(i64, String), Vec<Arc<ParquetDataFile>>> = BTreeMap::new();
    for file in files {
        by_commit
            .entry((file.commit.first_position, file.commit.commit_id.clone()))
            .or_default()
            .push(file);
    }
    let mut snapshot = ParquetSnapshot::default();
    for (_, mut files) in by_commit {
        let facts = Arc::clone(&files[0].commit);
        if files.len() != facts.files || files.iter().any(|f| *f.commit != *facts) {
            snapshot.incomplete.extend(files);
            continue;
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        snapshot.complete.push(ParquetCommit { facts, files });
    }
    snapshot.complete.sort_by(|a, b| {
        (
            a.facts.first_position,
            std::cmp::Reverse(a.facts.next_position),
        )
            .cmp(&(
                b.facts.first_position,
                std::cmp::Reverse(b.facts.next_position),
            ))
    });
    let chain = chain(&snapshot.complete, None);
    let on_chain: HashSet<&str> = chain.iter().map(|c| c.facts.commit_id.as_str()).collect();
    for commit in &snapshot.complete {
        if on_chain.contains(commit.facts.commit_id.as_str()) {
            continue;
        }
        let covered = chain.iter().any(|c| {
            c.facts.compacted_at_ms.is_some()
                && c.facts.first_position <= commit.facts.first_position
                && commit.facts.next_position <= c.facts.next_position
        });
        if !covered {
            let end = chain
                .last()
                .map_or(FIRST_POSITION, |c| c.facts.next_position);
            return Err(Error::new(
                ErrorKind::Storage,
                format!(
                    "commit {} covers positions {}..{} but the chain of commits {}: \
                     the lake had two writers, or files were removed by hand",
                    commit.facts.commit_id,
                    commit.facts.first_position,
                    commit.facts.next_position,
                    if commit.facts.first_position >= end {
                        format!("ends at {end}")
                    } else {
                        "has another commit there".to_owned()
                    }
                ),
            ));
        }
    }
    if let Some(last) = chain.last() {
        snapshot.state = CommitState {
            watermarks: last.facts.watermarks.clone(),
            watermark_digests: last.facts.watermark_digests.clone(),
            next_position: last.facts.next_position,
            snapshot_id: Some(last.facts.next_position),
        };
    }
    snapshot.files = chain.iter().flat_map(|c| c.files.iter().cloned()).collect();
    snapshot.commits = chain.iter().map(|c| Arc::clone(&c.facts)).collect();
    Ok(snapshot)
}

/// Records the storage location in the control database on first use and
/// refuses another one later (the same check the Iceberg catalog gets).
async fn check_location(db: &crate::db::Database, warehouse: &Warehouse) -> Result<()> {
    let failed =
        |e: sqlx::Error| Error::new(ErrorKind::Storage, "control database failed").with_source(e);
    db.create_tables(&[
        "CREATE TABLE IF NOT EXISTS shardlake_lake (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ])
    .await?;
    let pool = db.pool();
    let root = warehouse.root().to_string();
    sqlx::query(
        "INSERT INTO shardlake_lake (key, value) VALUES ('location', $1) \
         ON CONFLICT (key) DO NOTHING",
    )
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
