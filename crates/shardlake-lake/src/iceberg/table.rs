//! The Iceberg `events` table: created on first use, schema-checked on every
//! load, and the place where commit state (watermarks, next position) lives.
//!
//! Commit state is stored in *table properties*, updated in the same metadata
//! commit as the snapshot that adds the data. Properties (unlike snapshot
//! summaries) hold only the current value, survive snapshot expiration, and
//! cost one map entry per shard, not one per shard per snapshot.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;

use iceberg::io::{FileIO, FileIOBuilder};
use iceberg::spec::{TableMetadata, TableMetadataBuilder};
use iceberg::table::Table;
use iceberg::{Catalog, MetadataLocation, NamespaceIdent, TableCreation, TableIdent};

use super::catalog::{CATALOG_NAME, open_sql_catalog};
use super::manifests::{InFlightFiles, ManifestCache};
use super::schema::{check_schema, iceberg_schema, partition_spec, sort_order};
use crate::commit::{CommitState, FIRST_POSITION};
use crate::db::Database;
use crate::error::{Error, ErrorKind, Result};
use crate::pins::SnapshotPins;
use crate::storage::ObjectStoreStorageFactory;
use crate::warehouse::Warehouse;

/// Iceberg namespace holding shardlake's tables.
pub const ICEBERG_NAMESPACE: &str = "shardlake";
/// Name of the events table.
pub const EVENTS_TABLE: &str = "events";

/// Table properties written by shardlake.
pub mod properties {
    /// JSON object `{"<shard_id>": <highest committed seq>}`.
    pub const WATERMARKS: &str = "shardlake.watermarks";
    /// JSON map of shard id to the content digest of its event at the
    /// watermark (conflicting duplicates are told apart with it).
    pub const WATERMARK_DIGESTS: &str = "shardlake.watermark-digests";
    /// Position the next committed event gets.
    pub const NEXT_POSITION: &str = "shardlake.next-position";
    /// Version of shardlake's table layout: 1 before the lake lifecycle
    /// properties below existed, 2 since.
    pub const LAYOUT_VERSION: &str = "shardlake.layout-version";
    /// Standard Iceberg: delete metadata files that fall out of the
    /// metadata log after each commit.
    pub const METADATA_DELETE_AFTER_COMMIT: &str = "write.metadata.delete-after-commit.enabled";
    /// Standard Iceberg: previous metadata files kept in the log.
    pub const METADATA_PREVIOUS_VERSIONS_MAX: &str = "write.metadata.previous-versions-max";
    /// Standard Iceberg: merge small manifests.
    pub const MANIFEST_MERGE_ENABLED: &str = "commit.manifest-merge.enabled";
    /// Standard Iceberg: merge once a snapshot has at least this many manifests.
    pub const MANIFEST_MIN_COUNT_TO_MERGE: &str = "commit.manifest.min-count-to-merge";
    /// Standard Iceberg: size merged manifests are packed to.
    pub const MANIFEST_TARGET_SIZE_BYTES: &str = "commit.manifest.target-size-bytes";

    /// The layout shardlake writes now.
    pub const CURRENT_LAYOUT: &str = "2";

    /// What shardlake sets on the tables it creates (and adds, where
    /// missing, to tables of an older layout). A user's own values are
    /// never overwritten and always honoured.
    pub fn lifecycle_defaults() -> [(&'static str, &'static str); 5] {
        [
            (METADATA_DELETE_AFTER_COMMIT, "true"),
            (METADATA_PREVIOUS_VERSIONS_MAX, "100"),
            (MANIFEST_MERGE_ENABLED, "true"),
            (MANIFEST_MIN_COUNT_TO_MERGE, "100"),
            (MANIFEST_TARGET_SIZE_BYTES, "8388608"),
        ]
    }
}

/// Snapshot summary properties written by shardlake on each commit.
pub mod summary {
    /// Unique id of the commit attempt that produced the snapshot.
    pub const COMMIT_ID: &str = "shardlake.commit-id";
    /// Position of the first event of the snapshot.
    pub const FIRST_POSITION: &str = "shardlake.first-position";
    /// Position after the last event of the snapshot (on every snapshot
    /// shardlake writes, maintenance ones included, so a snapshot answers
    /// "what was committed after it" even when its parents expired).
    pub const NEXT_POSITION: &str = "shardlake.next-position";
}

/// Handle on the Iceberg `events` table of a warehouse. Cheap to clone;
/// clones share the manifest cache, the snapshot pins, the commit lock and
/// the files in flight.
#[derive(Debug, Clone)]
pub struct IcebergEventsTable {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    catalog: Arc<iceberg_catalog_sql::SqlCatalog>,
    // A direct connection to the catalog database: the table pointer is read
    // and compare-and-swapped here, with the statements the SQL catalog uses.
    db: Database,
    ident: TableIdent,
    warehouse: Warehouse,
    file_io: FileIO,
    manifests: ManifestCache,
    pins: SnapshotPins,
    // Serializes this process's commits on the table (see `lock_commits`).
    commits: tokio::sync::Mutex<()>,
    // Commit attempts this process finished (see `local_changes`).
    changes: std::sync::atomic::AtomicU64,
    // The version this process's last successful commit made current:
    // while the catalog still points at it, `load` hands it out instead of
    // reading and parsing the metadata file again (a file of megabytes once
    // thousands of snapshots are retained).
    committed: arc_swap::ArcSwapOption<Table>,
    in_flight: InFlightFiles,
}

/// Reads of a metadata file that vanished between reading the pointer and
/// the file (pruned by a commit in between) before giving up.
const LOAD_ATTEMPTS: usize = 3;

impl IcebergEventsTable {
    /// Opens the table, creating namespace and table on first use, checks
    /// its schema, and brings a table of an older shardlake layout up to
    /// date. Safe to race with another process doing the same (on
    /// PostgreSQL, openers take turns under an advisory lock: the catalog's
    /// own table creation is not race-safe there).
    pub async fn open(warehouse: &Warehouse) -> Result<Self> {
        let db = Database::connect(&warehouse.catalog_uri()).await?;
        let lock = db.open_lock().await?;
        let opened = Self::open_locked(warehouse, db).await;
        lock.release().await?;
        opened
    }

    async fn open_locked(warehouse: &Warehouse, db: Database) -> Result<Self> {
        let catalog = open_sql_catalog(warehouse).await?;
        let namespace = NamespaceIdent::new(ICEBERG_NAMESPACE.to_owned());
        let ident = TableIdent::new(namespace.clone(), EVENTS_TABLE.to_owned());
        // Losing a creation race with another opener is fine: check again.
        if !catalog.namespace_exists(&namespace).await?
            && let Err(e) = catalog.create_namespace(&namespace, HashMap::new()).await
            && !catalog.namespace_exists(&namespace).await?
        {
            return Err(e.into());
        }
        if !catalog.table_exists(&ident).await? {
            let mut props = vec![
                ("write.format.default".to_owned(), "parquet".to_owned()),
                (
                    "write.parquet.compression-codec".to_owned(),
                    "zstd".to_owned(),
                ),
                (
                    properties::LAYOUT_VERSION.to_owned(),
                    properties::CURRENT_LAYOUT.to_owned(),
                ),
            ];
            props.extend(
                properties::lifecycle_defaults()
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
            let creation = TableCreation::builder()
                .name(EVENTS_TABLE.to_owned())
                .schema((*iceberg_schema()).clone())
                .partition_spec(partition_spec()?)
                .sort_order(sort_order()?)
                .properties(props)
                .build();
            if let Err(e) = catalog.create_table(&namespace, creation).await
                && !catalog.table_exists(&ident).await?
            {
                return Err(e.into());
            }
        }
        let file_io = FileIOBuilder::new(Arc::new(ObjectStoreStorageFactory::new(
            warehouse.store(),
            warehouse.store_url(),
        )))
        .build();
        let table = Self {
            inner: Arc::new(Inner {
                catalog,
                pins: SnapshotPins::open(db.clone()).await?,
                db,
                ident,
                warehouse: warehouse.clone(),
                file_io,
                manifests: ManifestCache::default(),
                commits: tokio::sync::Mutex::new(()),
                changes: std::sync::atomic::AtomicU64::new(0),
                committed: arc_swap::ArcSwapOption::empty(),
                in_flight: InFlightFiles::default(),
            }),
        };
        table.check_location().await?;
        let loaded = table.load().await?;
        // Best effort: a reader without write access still opens the lake;
        // the next writer upgrades it.
        if let Err(e) = table.upgrade_layout(loaded).await {
            tracing::warn!(error = %e, "could not add the lifecycle properties to the table");
        }
        Ok(table)
    }

    /// Adds the lifecycle properties a table of layout 1 lacks (keeping any
    /// the user set), in one commit.
    async fn upgrade_layout(&self, mut table: Table) -> Result<()> {
        loop {
            let _commits = self.lock_commits().await;
            let props = table.metadata().properties();
            if props.get(properties::LAYOUT_VERSION).map(String::as_str)
                == Some(properties::CURRENT_LAYOUT)
            {
                return Ok(());
            }
            let mut missing: HashMap<String, String> = properties::lifecycle_defaults()
                .iter()
                .filter(|(k, _)| !props.contains_key(*k))
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            missing.insert(
                properties::LAYOUT_VERSION.to_owned(),
                properties::CURRENT_LAYOUT.to_owned(),
            );
            match self
                .commit(&table, |b| Ok(b.set_properties(missing)?))
                .await?
            {
                Some(_) => {
                    tracing::info!("table upgraded to layout {}", properties::CURRENT_LAYOUT);
                    return Ok(());
                }
                None => table = self.load().await?,
            }
        }
    }

    /// Sets table properties (say `write.metadata.previous-versions-max` or
    /// `commit.manifest.min-count-to-merge`), keeping every other one, in
    /// one commit. Commit state properties (`shardlake.*`) are refused:
    /// they are the emitter's.
    pub async fn set_properties(&self, properties: HashMap<String, String>) -> Result<()> {
        if let Some(key) = properties.keys().find(|k| k.starts_with("shardlake.")) {
            return Err(Error::new(
                ErrorKind::DataInvalid,
                format!("table property {key} belongs to shardlake's commit state"),
            ));
        }
        for _ in 0..super::compact::MAX_REBASES {
            let _commits = self.lock_commits().await;
            let table = self.load().await?;
            let props = properties.clone();
            if self
                .commit(&table, |b| Ok(b.set_properties(props)?))
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        Err(Error::new(
            ErrorKind::CommitConflict,
            "setting table properties lost to concurrent commits too often",
        ))
    }

    /// Refuses a catalog whose table lives in another store than the one
    /// configured (say, a lake created on local disk opened with an S3
    /// location): every read would fail later with a less helpful error.
    async fn check_location(&self) -> Result<()> {
        let metadata = self.current_metadata_location().await?;
        let root = self.inner.warehouse.root();
        if metadata.starts_with(root.as_str()) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::DataInvalid,
            format!(
                "{} belongs to a lake stored at {metadata}, but storage is \
                 configured at {root}; open it with the storage location it was created with",
                self.inner.warehouse.catalog_shown()
            ),
        ))
    }

    /// Loads the current version of the table and checks its schema: one
    /// catalog lookup and one read of the metadata file.
    pub async fn load(&self) -> Result<Table> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let location = self.current_metadata_location().await?;
            if let Some(committed) = self.inner.committed.load_full()
                && committed.metadata_location() == Some(location.as_str())
            {
                return Ok((*committed).clone());
            }
            match TableMetadata::read_from(&self.inner.file_io, &location).await {
                Ok(metadata) => {
                    check_schema(metadata.current_schema())?;
                    return self.table_at(metadata, location);
                }
                // A commit may have pruned the file after we read the
                // pointer: the pointer has moved on, read it again.
                Err(e)
                    if attempt < LOAD_ATTEMPTS
                        && !self.inner.file_io.exists(&location).await.unwrap_or(true) =>
                {
                    tracing::debug!(error = %e, location, "metadata file gone; reloading");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn table_at(&self, metadata: TableMetadata, location: String) -> Result<Table> {
        Ok(Table::builder()
            .file_io(self.inner.file_io.clone())
            .identifier(self.inner.ident.clone())
            .metadata(metadata)
            .metadata_location(location)
            .runtime(iceberg::Runtime::try_current()?)
            // shardlake reads manifests through its own cache.
            .disable_cache()
            .build()?)
    }

    /// Location of the table's current metadata file: one indexed catalog
    /// lookup, no file I/O. Changes with every commit.
    pub async fn current_metadata_location(&self) -> Result<String> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT metadata_location FROM iceberg_tables \
             WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3",
        )
        .bind(CATALOG_NAME)
        .bind(self.inner.ident.namespace().join("."))
        .bind(self.inner.ident.name())
        .fetch_optional(self.inner.db.pool())
        .await
        .map_err(|e| Error::new(ErrorKind::Storage, "catalog lookup failed").with_source(e))?;
        row.and_then(|(location,)| location).ok_or_else(|| {
            Error::new(
                ErrorKind::Storage,
                format!(
                    "table {} has no metadata location in the catalog",
                    self.inner.ident
                ),
            )
        })
    }

    /// Makes `new` the table's metadata file if `expected` still is
    /// (compare-and-swap in the catalog database, the same statement the
    /// SQL catalog commits with). Returns whether it swapped.
    async fn swap_metadata_location(&self, expected: &str, new: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2 \
             WHERE catalog_name = $3 AND table_namespace = $4 AND table_name = $5 \
             AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = $6",
        )
        .bind(new)
        .bind(expected)
        .bind(CATALOG_NAME)
        .bind(self.inner.ident.namespace().join("."))
        .bind(self.inner.ident.name())
        .bind(expected)
        .execute(self.inner.db.pool())
        .await
        .map_err(|e| Error::new(ErrorKind::Storage, "catalog update failed").with_source(e))?;
        Ok(done.rows_affected() == 1)
    }

    /// Takes this process's commit lock on the table: held from choosing the
    /// base version to the compare-and-swap, so the commits of one process
    /// (its emitter's appends, its maintenance) never race each other and
    /// a maintenance commit planned on the latest version lands at once,
    /// instead of losing to appends that arrive every few milliseconds.
    /// Data files are written before taking it. Commits of other processes
    /// still race, and the compare-and-swap settles those.
    pub(crate) async fn lock_commits(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.commits.lock().await
    }

    /// Bumped whenever a commit attempt of this process (through this
    /// handle or a clone) ends, whatever its outcome: a reader that saw
    /// the same count before and after looking at the catalog knows no
    /// commit of this process happened in between (see
    /// [`crate::EventsTable::local_changes`]).
    pub fn local_changes(&self) -> u64 {
        self.inner
            .changes
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Commits the next version of the table: `update` turns `base`'s
    /// metadata into the next one, which is written next to it and made
    /// current with a compare-and-swap on the catalog row, conditional on
    /// `base` still being current. Every shardlake commit (appends,
    /// compaction, manifest merging, expiry, property changes) goes through
    /// here.
    ///
    /// Returns the new version, or `None` if another commit made `base`
    /// stale (nothing was changed; the file written for the attempt is
    /// removed again). After a successful swap, metadata files that fell out
    /// of the metadata log are deleted when
    /// `write.metadata.delete-after-commit.enabled` is on, keeping at most
    /// `write.metadata.previous-versions-max` previous ones. An error other
    /// than a lost swap leaves it unknown whether the commit landed.
    pub(crate) async fn commit(
        &self,
        base: &Table,
        update: impl FnOnce(TableMetadataBuilder) -> Result<TableMetadataBuilder>,
    ) -> Result<Option<Table>> {
        let current = base.metadata_location_result()?.to_owned();
        let builder = base.metadata().clone().into_builder(Some(current.clone()));
        let built = update(builder)?.build()?;
        let location = MetadataLocation::from_str(&current)?
            .with_next_version()
            .with_new_metadata(&built.metadata);
        let path = location.to_string();
        self.inner.in_flight.add(&path);
        let swapped = async {
            built
                .metadata
                .write_to(&self.inner.file_io, &location)
                .await?;
            self.swap_metadata_location(&current, &path).await
        }
        .await;
        let delete_expired = delete_after_commit(&built.metadata);
        // Published before the count moves, so a reader that sees the new
        // count finds the new version without reading it back.
        let committed = match swapped {
            Ok(true) => {
                let table = self.table_at(built.metadata, path.clone());
                if let Ok(table) = &table {
                    self.inner.committed.store(Some(Arc::new(table.clone())));
                }
                Some(table)
            }
            _ => None,
        };
        // Landed, lost (another commit landed) or unknown: readers look again.
        self.inner
            .changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.inner.in_flight.remove(&path);
        let location = path;
        let Some(table) = committed else {
            swapped?;
            if let Err(e) = self.inner.file_io.delete(&location).await {
                tracing::debug!(error = %e, location, "could not remove a lost commit's metadata");
            }
            return Ok(None);
        };
        if delete_expired {
            for old in &built.expired_metadata_logs {
                if let Err(e) = self.inner.file_io.delete(&old.metadata_file).await {
                    // Cleanup removes what this misses.
                    tracing::debug!(error = %e, file = old.metadata_file, "could not prune metadata");
                }
            }
        }
        table.map(Some)
    }

    /// The current version of the table: `known` itself if nothing was
    /// committed since it was loaded, else a fresh (schema-checked) load.
    pub async fn refresh(&self, known: &Table) -> Result<Table> {
        let current = self.current_metadata_location().await?;
        if known.metadata_location() == Some(current.as_str()) {
            return Ok(known.clone());
        }
        self.load().await
    }

    /// The subscription checkpoints kept in the same catalog database.
    pub async fn checkpoints(&self) -> Result<crate::checkpoint::Checkpoints> {
        crate::checkpoint::Checkpoints::open(self.inner.db.clone()).await
    }

    /// What keeps snapshots from expiring.
    pub fn pins(&self) -> &SnapshotPins {
        &self.inner.pins
    }

    /// Files this process is writing for commits not swapped in yet.
    pub(crate) fn in_flight(&self) -> &InFlightFiles {
        &self.inner.in_flight
    }

    /// Parsed manifests, shared by every user of this handle.
    pub fn manifests(&self) -> &ManifestCache {
        &self.inner.manifests
    }

    /// The catalog database.
    pub(crate) fn database(&self) -> &Database {
        &self.inner.db
    }

    /// The file IO every table file goes through.
    pub fn file_io(&self) -> &FileIO {
        &self.inner.file_io
    }

    /// The catalog the table lives in.
    pub fn catalog(&self) -> Arc<dyn Catalog> {
        Arc::clone(&self.inner.catalog) as Arc<dyn Catalog>
    }

    /// The table's identifier.
    pub fn ident(&self) -> &TableIdent {
        &self.inner.ident
    }

    /// The warehouse the table lives in.
    pub fn warehouse(&self) -> &Warehouse {
        &self.inner.warehouse
    }
}

/// Whether commits of `metadata` delete the metadata files that fall out of
/// its log (`write.metadata.delete-after-commit.enabled`, off unless set,
/// as in Iceberg; shardlake sets it on its tables).
fn delete_after_commit(metadata: &TableMetadata) -> bool {
    metadata
        .properties()
        .get(properties::METADATA_DELETE_AFTER_COMMIT)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Reads the commit state recorded in `table`'s properties.
pub fn commit_state(table: &Table) -> Result<CommitState> {
    let props = table.metadata().properties();
    let watermarks = match props.get(properties::WATERMARKS) {
        None => BTreeMap::new(),
        Some(json) => serde_json::from_str(json).map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("table property {} is not valid", properties::WATERMARKS),
            )
            .with_source(e)
        })?,
    };
    let watermark_digests = match props.get(properties::WATERMARK_DIGESTS) {
        None => BTreeMap::new(),
        Some(json) => serde_json::from_str(json).map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!(
                    "table property {} is not valid",
                    properties::WATERMARK_DIGESTS
                ),
            )
            .with_source(e)
        })?,
    };
    let next_position = match props.get(properties::NEXT_POSITION) {
        None => FIRST_POSITION,
        Some(n) => n.parse().map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("table property {} is not valid", properties::NEXT_POSITION),
            )
            .with_source(e)
        })?,
    };
    Ok(CommitState {
        watermarks,
        watermark_digests,
        next_position,
        snapshot_id: table.metadata().current_snapshot_id(),
    })
}

/// Encodes `state` as the table properties [`commit_state`] reads.
pub fn state_properties(state: &CommitState) -> Result<Vec<(String, String)>> {
    let watermarks = serde_json::to_string(&state.watermarks).map_err(|e| {
        Error::new(ErrorKind::Unexpected, "cannot encode watermarks").with_source(e)
    })?;
    let digests = serde_json::to_string(&state.watermark_digests).map_err(|e| {
        Error::new(ErrorKind::Unexpected, "cannot encode watermark digests").with_source(e)
    })?;
    Ok(vec![
        (properties::WATERMARKS.to_owned(), watermarks),
        (properties::WATERMARK_DIGESTS.to_owned(), digests),
        (
            properties::NEXT_POSITION.to_owned(),
            state.next_position.to_string(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn property(table: &Table, key: &str) -> Option<String> {
        table.metadata().properties().get(key).cloned()
    }

    #[tokio::test]
    async fn a_load_after_this_handles_commit_reuses_it_but_never_hides_another_commit() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let warehouse = Warehouse::local(tmp.path()).expect("warehouse");
        let ours = IcebergEventsTable::open(&warehouse).await.expect("open");
        let theirs = IcebergEventsTable::open(&warehouse).await.expect("open");
        let set = |v: &str| HashMap::from([("test.marker".to_owned(), v.to_owned())]);

        ours.set_properties(set("ours")).await.expect("commit");
        let committed = ours.inner.committed.load_full().expect("published");
        let loaded = ours.load().await.expect("load");
        assert!(
            Arc::ptr_eq(&loaded.metadata_ref(), &committed.metadata_ref()),
            "the committed version is handed out, not read back"
        );
        assert_eq!(property(&loaded, "test.marker").as_deref(), Some("ours"));

        // Another handle (as another process would) commits on top: the
        // catalog no longer points at our version, so it is read.
        theirs.set_properties(set("theirs")).await.expect("commit");
        let loaded = ours.load().await.expect("load");
        assert!(!Arc::ptr_eq(
            &loaded.metadata_ref(),
            &committed.metadata_ref()
        ));
        assert_eq!(property(&loaded, "test.marker").as_deref(), Some("theirs"));
        assert_eq!(
            loaded.metadata_location(),
            Some(
                ours.current_metadata_location()
                    .await
                    .expect("pointer")
                    .as_str()
            )
        );
    }
}
