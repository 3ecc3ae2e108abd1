//! The lake lifecycle: metadata pruned on commit, manifests merged,
//! snapshots expired around what pins them, unreachable files cleaned up,
//! in both formats, with every acknowledged event still there exactly once.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use shardlake_core::Event;
use shardlake_lake::iceberg::properties;
use shardlake_lake::maintenance::Progress;
use shardlake_lake::storage::DurableLocalFileSystem;
use shardlake_lake::{
    Action, CompactionConfig, Lake, MaintenanceConfig, MaintenanceReport, ObjectStorageConfig,
    RetentionConfig, TableFormat, Warehouse,
};
use shardlake_testkit::moto;

use crate::common::{assert_exactly, events};

use shardlake_testkit::quick_emitter_config as quick;

/// Maintenance that keeps nothing it may drop: every small file compacted,
/// every snapshot but the current one expired, no grace period.
fn aggressive() -> MaintenanceConfig {
    MaintenanceConfig {
        compaction: Some(CompactionConfig {
            small_file_bytes: u64::MAX,
            min_small_files: 2,
            max_attempts: 10,
        }),
        retention: RetentionConfig {
            retention: Duration::ZERO,
            min_snapshots_to_keep: 1,
        },
        orphan_grace: Duration::ZERO,
    }
}

fn quiet(_: Progress) {}

async fn maintain(
    lake: &Lake,
    config: &MaintenanceConfig,
    actions: &[Action],
) -> MaintenanceReport {
    let report = lake
        .maintain(config, actions, false, &quiet)
        .await
        .expect("maintenance");
    assert_eq!(report.skipped, None, "nobody else maintains this lake");
    report
}

/// Commits `all` in chunks of `chunk`, one commit each; the snapshot ids.
async fn commit_in_chunks(lake: &Lake, all: &[Event], chunk: usize) -> Vec<i64> {
    let emitter = lake.emitter(quick()).await.expect("emitter");
    let mut ids = Vec::new();
    for part in all.chunks(chunk) {
        let ack = emitter.emit(part).await.expect("commit");
        ids.push(ack.snapshot_id.expect("a commit"));
    }
    emitter.close().await.expect("close");
    ids
}

/// Files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn table_dir(dir: &Path) -> PathBuf {
    dir.join("warehouse/shardlake/events")
}

fn metadata_json_files(dir: &Path) -> usize {
    files_under(&table_dir(dir).join("metadata"))
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".metadata.json"))
        .count()
}

async fn manifests_of_current(lake: &Lake) -> usize {
    let t = lake.iceberg_table().expect("iceberg");
    let table = t.load().await.expect("load");
    let snapshot = table.metadata().current_snapshot().expect("snapshot");
    t.manifests()
        .manifest_list(&table, snapshot)
        .await
        .expect("list")
        .len()
}

#[tokio::test]
async fn metadata_is_pruned_on_commit_and_small_manifests_are_merged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open_local(dir.path()).await.expect("lake");
    let table = lake.iceberg_table().expect("iceberg");
    let props = table
        .load()
        .await
        .expect("load")
        .metadata()
        .properties()
        .clone();
    for (key, value) in properties::lifecycle_defaults() {
        assert_eq!(props.get(key).map(String::as_str), Some(value), "{key}");
    }
    table
        .set_properties(HashMap::from([
            (
                properties::METADATA_PREVIOUS_VERSIONS_MAX.to_owned(),
                "5".to_owned(),
            ),
            (
                properties::MANIFEST_MIN_COUNT_TO_MERGE.to_owned(),
                "4".to_owned(),
            ),
        ]))
        .await
        .expect("set properties");

    let all = events(0..3, 40, 3);
    let commits = commit_in_chunks(&lake, &all, 6).await.len();
    assert_eq!(commits, 20);
    // The current metadata file plus at most five previous ones.
    assert!(
        metadata_json_files(dir.path()) <= 6,
        "{}",
        metadata_json_files(dir.path())
    );
    let loaded = table.load().await.expect("load");
    assert!(loaded.metadata().metadata_log().len() <= 5);
    assert_eq!(
        manifests_of_current(&lake).await,
        20,
        "one manifest per append"
    );

    let report = maintain(&lake, &aggressive(), &[Action::MergeManifests]).await;
    let merge = report.manifests.expect("merge ran");
    assert!(merge.merged);
    assert_eq!(merge.manifests.before, 20);
    assert_eq!(manifests_of_current(&lake).await, merge.manifests.after);
    assert!(merge.manifests.after <= 2, "{:?}", merge.manifests);
    assert_exactly(&lake, &all).await;
    // Below the threshold nothing is merged.
    let again = maintain(&lake, &aggressive(), &[Action::MergeManifests]).await;
    assert!(!again.manifests.expect("ran").merged);

    // A user's own choice is honoured: without deletion after commit,
    // metadata files accumulate again.
    table
        .set_properties(HashMap::from([(
            properties::METADATA_DELETE_AFTER_COMMIT.to_owned(),
            "false".to_owned(),
        )]))
        .await
        .expect("set properties");
    commit_in_chunks(&lake, &events(3..4, 10, 3), 1).await;
    assert!(metadata_json_files(dir.path()) > 10);
}

#[tokio::test]
async fn expiry_keeps_every_pinned_snapshot_and_watermarks_survive_expiring_everything_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let all = events(0..4, 30, 2);
    let (old, rest) = all.split_at(60);
    let ids = {
        let lake = Lake::open_local(dir.path()).await.expect("lake");
        let ids = commit_in_chunks(&lake, old, 6).await;
        assert_eq!(ids.len(), 10);
        let pins = lake.pins();
        pins.lease("replay-cursor", ids[2], Duration::from_secs(3600))
            .await
            .expect("lease");
        pins.set("migration:m1", &[ids[4]]).await.expect("pin");
        let open_query = pins.hold(ids[6]);

        let report = maintain(&lake, &aggressive(), &[Action::Expire]).await;
        let expiry = report.expiry.expect("expiry ran");
        assert_eq!(expiry.snapshots_pinned, 3);
        assert_eq!(expiry.snapshots_expired, 10 - 4);
        let retained: BTreeSet<i64> = lake
            .snapshots()
            .await
            .expect("snapshots")
            .iter()
            .map(|s| s.snapshot_id)
            .collect();
        assert_eq!(retained, BTreeSet::from([ids[2], ids[4], ids[6], ids[9]]));
        let listed = lake.snapshots().await.expect("snapshots");
        let pinned_by = |id: i64| {
            listed
                .iter()
                .find(|s| s.snapshot_id == id)
                .map(|s| s.pinned_by.clone())
                .unwrap_or_default()
        };
        assert_eq!(pinned_by(ids[2]), vec!["replay-cursor".to_owned()]);
        assert_eq!(pinned_by(ids[4]), vec!["migration:m1".to_owned()]);
        assert_eq!(pinned_by(ids[6]), vec!["query".to_owned()]);

        // Released pins let their snapshots go; the unexpired lease stays.
        drop(open_query);
        pins.release("migration:m1").await.expect("release");
        maintain(&lake, &aggressive(), &[Action::Expire, Action::Cleanup]).await;
        let retained: BTreeSet<i64> = lake
            .snapshots()
            .await
            .expect("snapshots")
            .iter()
            .map(|s| s.snapshot_id)
            .collect();
        assert_eq!(retained, BTreeSet::from([ids[2], ids[9]]));
        ids
    };

    // A restarted process sees the same watermarks: a resend of everything
    // is all duplicates, and the new events get the next positions.
    let lake = Lake::open_local(dir.path()).await.expect("reopen");
    let state = lake.commit_state().await.expect("state");
    assert_eq!(state.next_position, 61);
    assert_eq!(state.snapshot_id, Some(ids[9]));
    let emitter = lake.emitter(quick()).await.expect("emitter");
    let ack = emitter.emit(old).await.expect("resend");
    assert_eq!((ack.accepted, ack.duplicates), (0, 60));
    let ack = emitter.emit(&all).await.expect("the rest");
    assert_eq!((ack.accepted, ack.duplicates), (rest.len(), 60));
    emitter.close().await.expect("close");
    assert_exactly(&lake, &all).await;
}

#[tokio::test]
async fn cleanup_deletes_only_what_nothing_references_once_the_grace_period_passed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open_local(dir.path()).await.expect("lake");
    let all = events(0..3, 40, 3);
    commit_in_chunks(&lake, &all, 8).await;
    let config = aggressive();
    maintain(&lake, &config, &[Action::Compact, Action::Expire]).await;
    let next = lake.commit_state().await.expect("state").next_position;

    // Leftovers of failed commits: an emitter file below the next position
    // (no retry can ever write it again), one at it (a retry may commit it
    // under that very name), and a stray metadata file.
    let data = table_dir(dir.path()).join("data/namespace=ns-0");
    let digest = "0123456789abcdef0123456789abcdef";
    let below = data.join(format!("{:020}-{digest}.parquet", 1));
    let at_next = data.join(format!("{next:020}-{digest}.parquet"));
    let stray = table_dir(dir.path()).join("metadata/00042-lost.metadata.json");
    for f in [&below, &at_next, &stray] {
        std::fs::write(f, b"leftover").expect("plant");
    }
    let before = files_under(&table_dir(dir.path())).len();

    // A dry run and a long grace period delete nothing.
    let dry = lake
        .maintain(&config, &[Action::Cleanup], true, &quiet)
        .await
        .expect("dry run")
        .cleanup
        .expect("cleanup");
    assert!(dry.dry_run && dry.files_deleted > 2, "{dry:?}");
    let patient = MaintenanceConfig {
        orphan_grace: Duration::from_secs(3600),
        ..config.clone()
    };
    let young = maintain(&lake, &patient, &[Action::Cleanup])
        .await
        .cleanup
        .expect("ran");
    assert_eq!(young.files_deleted, 0);
    assert_eq!(files_under(&table_dir(dir.path())).len(), before);

    let report = maintain(&lake, &config, &[Action::Cleanup]).await;
    let cleanup = report.cleanup.expect("cleanup ran");
    assert_eq!(cleanup.files_deleted, dry.files_deleted);
    assert!(cleanup.data_files_deleted > 0 && cleanup.metadata_files_deleted > 0);
    assert!(!below.exists() && !stray.exists());
    assert!(at_next.exists(), "a file a retry may still commit is kept");
    std::fs::remove_file(&at_next).expect("remove the planted file");

    // What is left is exactly what the table references: one data file per
    // namespace, and every row.
    let data_files = files_under(&table_dir(dir.path()).join("data"));
    assert_eq!(
        data_files.len(),
        lake.data_files().await.expect("files").len()
    );
    assert_eq!(data_files.len(), 3);
    assert_exactly(&lake, &all).await;
    let again = maintain(&lake, &config, &[Action::Cleanup]).await;
    assert_eq!(again.cleanup.expect("ran").files_deleted, 0);
}

/// A store that holds back writes under `/metadata/` while closed: a commit
/// whose data files are written and whose catalog swap has not happened.
#[derive(Debug)]
struct GatedStore {
    inner: DurableLocalFileSystem,
    open: tokio::sync::watch::Sender<bool>,
    waiting: tokio::sync::watch::Sender<usize>,
}

impl std::fmt::Display for GatedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gated({})", self.inner)
    }
}

impl GatedStore {
    async fn pass(&self, location: &ObjectPath) {
        if !location.as_ref().contains("/metadata/") {
            return;
        }
        let mut open = self.open.subscribe();
        if *open.borrow() {
            return;
        }
        self.waiting.send_modify(|n| *n += 1);
        let _ = open.wait_for(|o| *o).await;
    }
}

#[async_trait]
impl ObjectStore for GatedStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.pass(location).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.pass(location).await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn cleanup_and_compaction_never_touch_the_files_of_a_commit_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let maintainer = Lake::open_local(dir.path()).await.expect("lake");
    let first = events(0..2, 30, 2);
    commit_in_chunks(&maintainer, &first, 10).await;

    // A second writer on the same lake, whose commit stops after its data
    // files are written.
    let gate = Arc::new(GatedStore {
        inner: DurableLocalFileSystem::new(),
        open: tokio::sync::watch::channel(false).0,
        waiting: tokio::sync::watch::channel(0).0,
    });
    let root = maintainer.warehouse().root().clone();
    let warehouse =
        Warehouse::with_store(dir.path(), root, Arc::clone(&gate) as Arc<dyn ObjectStore>)
            .expect("warehouse");
    let mut waiting = gate.waiting.subscribe();
    let writer = Lake::open(warehouse).await.expect("second writer");
    // Opening wrote nothing under metadata/ (the table exists): the gate
    // holds only the commit below.
    let second = events(2..4, 30, 2);
    let in_flight = {
        let (writer, second) = (writer.clone(), second.clone());
        tokio::spawn(async move {
            let emitter = writer.emitter(quick()).await.expect("emitter");
            let ack = emitter.emit(&second).await.expect("the gated commit lands");
            emitter.close().await.expect("close");
            ack
        })
    };
    waiting
        .wait_for(|n| *n > 0)
        .await
        .expect("the commit reaches the gate");

    // Everything maintenance may do, with no grace period at all.
    maintain(&maintainer, &aggressive(), &Action::ALL).await;

    gate.open.send_replace(true);
    let ack = in_flight.await.expect("writer task");
    assert_eq!(ack.accepted, second.len());
    let everything: Vec<Event> = first.iter().chain(&second).cloned().collect();
    assert_exactly(&maintainer, &everything).await;
    // And maintenance afterwards folds the new commit in as well.
    maintain(&maintainer, &aggressive(), &Action::ALL).await;
    assert_exactly(&maintainer, &everything).await;
}

/// Maintenance with no grace period at all, in the process whose emitter
/// is committing all the while: the files of commits in flight and of
/// commits made while cleanup reads the table are never taken for
/// leftovers (the table stays readable after every run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_with_no_grace_beside_a_busy_emitter_keeps_every_live_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open_local(dir.path()).await.expect("lake");
    let all = events(0..4, 60, 3);
    let writer = {
        let (lake, all) = (lake.clone(), all.clone());
        tokio::spawn(async move { commit_in_chunks(&lake, &all, 4).await })
    };
    let mut runs = 0;
    while !writer.is_finished() {
        maintain(&lake, &aggressive(), &Action::ALL).await;
        runs += 1;
        // Everything the current snapshot references is still there.
        lake.data_files()
            .await
            .expect("the current manifests are all there");
    }
    assert_eq!(writer.await.expect("writer").len(), 60);
    assert!(runs > 1, "maintenance ran alongside the writer");
    maintain(&lake, &aggressive(), &Action::ALL).await;
    assert_exactly(&lake, &all).await;
}

#[tokio::test]
async fn a_parquet_lake_compacts_travels_in_time_until_expiry_and_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = ObjectStorageConfig::default();
    let open = || Lake::open_with(dir.path(), &storage, TableFormat::Parquet);
    let lake = open().await.expect("lake");
    let all = events(0..3, 40, 2);
    let (old, rest) = all.split_at(96);
    let ids = commit_in_chunks(&lake, old, 8).await;
    assert_eq!(ids.len(), 12);
    let files_before = lake.data_files().await.expect("files").len();
    assert!(files_before >= 20, "{files_before}");

    let report = maintain(&lake, &aggressive(), &[Action::Compact]).await;
    let compaction = report.compaction.expect("compaction ran");
    assert_eq!(compaction.files_removed, files_before);
    assert_eq!(compaction.files_added, 2, "one file per namespace");
    assert_eq!(lake.data_files().await.expect("files").len(), 2);
    assert_exactly(&lake, old).await;
    let state = lake.commit_state().await.expect("state");
    assert_eq!(state.next_position, 97);
    // The superseded commits stay reachable until they expire.
    let retained = lake.snapshots().await.expect("snapshots");
    assert_eq!(retained.len(), 12, "{retained:?}");
    let table = match lake.table() {
        shardlake_lake::EventsTable::Parquet(t) => t.clone(),
        shardlake_lake::EventsTable::Iceberg(_) => unreachable!("a parquet lake"),
    };
    let at_five = table.snapshot().await.expect("snapshot").as_of(ids[4]);
    let at_five = at_five.expect("time travel within the retention window");
    assert_eq!(at_five.state.next_position, 41);
    assert_eq!(
        at_five.files.iter().map(|f| f.rows).sum::<u64>(),
        40,
        "the snapshot's own rows"
    );

    let report = maintain(&lake, &aggressive(), &[Action::Expire, Action::Cleanup]).await;
    let expiry = report.expiry.expect("expiry ran");
    assert_eq!(expiry.files_deleted, files_before);
    assert_eq!(expiry.snapshots_expired, 11);
    assert!(
        table
            .snapshot()
            .await
            .expect("snapshot")
            .as_of(ids[4])
            .is_none()
    );
    let files = files_under(&dir.path().join("warehouse/events"));
    assert_eq!(files.len(), 2, "{files:?}");

    // A restart recovers the state from the compacted files alone.
    drop(lake);
    let lake = open().await.expect("reopen");
    let emitter = lake.emitter(quick()).await.expect("emitter");
    let ack = emitter.emit(&all).await.expect("resend and the rest");
    assert_eq!((ack.accepted, ack.duplicates), (rest.len(), old.len()));
    emitter.close().await.expect("close");
    assert_exactly(&lake, &all).await;
}

#[tokio::test]
async fn the_whole_cycle_on_s3_in_both_formats() {
    let bucket = moto().bucket().await;
    for (format, prefix) in [(TableFormat::Iceberg, "ice"), (TableFormat::Parquet, "pq")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = bucket.storage(prefix);
        let lake = Lake::open_with(dir.path(), &storage, format)
            .await
            .expect("lake on s3");
        let all = events(0..3, 20, 2);
        commit_in_chunks(&lake, &all, 6).await;
        let report = maintain(&lake, &aggressive(), &Action::ALL).await;
        assert!(
            report
                .compaction
                .as_ref()
                .is_some_and(|c| c.files_added > 0),
            "{format}: {report:?}"
        );
        assert!(report.files_removed() > 0, "{format}: {report:?}");
        assert_exactly(&lake, &all).await;
        let data_keys = bucket
            .keys(&format!("{prefix}/"))
            .await
            .into_iter()
            .filter(|k| k.ends_with(".parquet"))
            .count();
        assert_eq!(
            data_keys,
            lake.data_files().await.expect("files").len(),
            "{format}: only live data files are left"
        );
        drop(lake);
        let lake = Lake::open_with(dir.path(), &storage, format)
            .await
            .expect("reopen");
        let emitter = lake.emitter(quick()).await.expect("emitter");
        let ack = emitter.emit(&all).await.expect("resend");
        assert_eq!(ack.accepted, 0, "{format}");
        emitter.close().await.expect("close");
    }
}
