//! The plain-Parquet format: the same exactly-once contract as Iceberg, kept
//! by the files alone (Hive layout, commit facts in every footer, the last
//! file as the commit point, one writer).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::{ObjectStore, ObjectStoreExt};
use shardlake_lake::parquet::{COMMIT_KEY, CommitFacts};
use shardlake_lake::{
    EmitterConfig, ErrorKind, EventsTable, Lake, ObjectStorageConfig, RetryPolicy, TableFormat,
    Warehouse, WriterConfig,
};
use shardlake_testkit::moto;

use crate::common::{assert_exactly, events};
use crate::faulty::FaultyStore;

fn quick() -> EmitterConfig {
    EmitterConfig {
        flush_interval: Duration::from_millis(10),
        ..EmitterConfig::default()
    }
}

async fn parquet_lake(dir: &std::path::Path) -> Lake {
    Lake::open_with(dir, &ObjectStorageConfig::default(), TableFormat::Parquet)
        .await
        .expect("parquet lake")
}

/// Every `.parquet` object under the table directory, as a reader that
/// globs the directory would see them.
async fn parquet_objects(lake: &Lake) -> Vec<object_store::ObjectMeta> {
    let prefix = lake
        .warehouse()
        .object_path(&format!("{}events", lake.warehouse().root()))
        .expect("prefix");
    let mut all: Vec<object_store::ObjectMeta> = lake
        .warehouse()
        .store()
        .list(Some(&prefix))
        .try_collect()
        .await
        .expect("list");
    all.retain(|m| m.location.as_ref().ends_with(".parquet"));
    all
}

#[tokio::test]
async fn commits_recover_from_the_files_alone_after_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let batch = events(0..4, 30, 3);
    let first_ack = {
        let lake = parquet_lake(tmp.path()).await;
        let emitter = lake.emitter(quick()).await.expect("emitter");
        let ack = emitter.emit(&batch).await.expect("emit");
        assert_eq!((ack.accepted, ack.duplicates), (120, 0));
        assert_eq!(ack.snapshot_id, Some(121), "a snapshot id is a position");
        let again = emitter.emit(&batch).await.expect("resend");
        assert_eq!((again.accepted, again.duplicates), (0, 120));
        emitter.close().await.expect("close");
        ack
    };
    assert!(!tmp.path().join("catalog.db").exists(), "no catalog");

    // Hive layout: one directory per namespace, each file's footer naming
    // its commit and the watermarks after it.
    let lake = parquet_lake(tmp.path()).await;
    let objects = parquet_objects(&lake).await;
    assert_eq!(objects.len(), 3, "one file per namespace");
    for object in &objects {
        let dir = object.location.parts().nth_back(1).expect("dir");
        assert!(
            dir.as_ref().starts_with("namespace=ns-"),
            "{}",
            object.location
        );
        let bytes = lake
            .warehouse()
            .store()
            .get(&object.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        let reader =
            parquet::file::serialized_reader::SerializedFileReader::new(bytes).expect("footer");
        let kv = parquet::file::reader::FileReader::metadata(&reader)
            .file_metadata()
            .key_value_metadata()
            .cloned()
            .expect("kv");
        let facts: CommitFacts = serde_json::from_str(
            kv.iter()
                .find(|kv| kv.key == COMMIT_KEY)
                .and_then(|kv| kv.value.as_deref())
                .expect("commit facts"),
        )
        .expect("json");
        assert_eq!((facts.first_position, facts.next_position), (1, 121));
        assert_eq!(facts.files, 3);
        assert_eq!(facts.watermarks, first_ack.watermarks);
    }

    // A new process knows every watermark from the footers.
    let state = lake.commit_state().await.expect("state");
    assert_eq!(state.watermarks, first_ack.watermarks);
    assert_eq!((state.next_position, state.snapshot_id), (121, Some(121)));
    let emitter = lake.emitter(quick()).await.expect("emitter");
    let more = events(0..4, 40, 3);
    let ack = emitter.emit(&more).await.expect("emit");
    assert_eq!((ack.accepted, ack.duplicates), (40, 120));
    emitter.close().await.expect("close");
    assert_exactly(&lake, &more).await;
    assert_eq!(lake.data_files().await.expect("files").len(), 6);
}

#[tokio::test]
async fn a_commit_cut_short_is_invisible_and_cleaned_up_by_the_retry() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FaultyStore::new(Arc::new(LocalFileSystem::new())));
    std::fs::create_dir_all(tmp.path().join("warehouse")).expect("mkdir");
    let root =
        url::Url::from_directory_path(tmp.path().join("warehouse").canonicalize().expect("abs"))
            .expect("url");
    let warehouse =
        Warehouse::with_store(tmp.path(), root, Arc::clone(&store) as _).expect("warehouse");
    let lake = Lake::open_format(warehouse, TableFormat::Parquet)
        .await
        .expect("open")
        .with_writer_config(WriterConfig {
            // One file at a time: the failure below hits the seal.
            parallelism: 1,
            ..WriterConfig::default()
        });
    let emitter = lake
        .emitter(EmitterConfig {
            retry: RetryPolicy {
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(2),
                max_attempts: 5,
            },
            ..quick()
        })
        .await
        .expect("emitter");
    let batch = events(0..3, 20, 3);
    // Two of three files land, the commit point fails: the first attempt
    // leaves an incomplete commit behind.
    store.fail_write_after(2);
    let ack = emitter.emit(&batch).await.expect("retried to success");
    assert_eq!(ack.accepted, 60);
    assert_eq!(store.injected(), 1);
    assert!(emitter.metrics().commit_retries >= 1);
    assert_exactly(&lake, &batch).await;
    // The retry removed what the failed attempt left: a reader globbing the
    // directory sees exactly the committed files.
    assert_eq!(parquet_objects(&lake).await.len(), 3);
    emitter.close().await.expect("close");
}

#[tokio::test]
async fn a_crashed_commits_files_are_ignored_and_its_positions_reused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = parquet_lake(tmp.path()).await;
    let emitter = lake.emitter(quick()).await.expect("emitter");
    let first = events(0..2, 10, 2);
    emitter.emit(&first).await.expect("emit");
    emitter.close().await.expect("close");
    // What a crash mid-commit leaves: one file of a two-file commit.
    let objects = parquet_objects(&lake).await;
    let store = lake.warehouse().store();
    let original = objects[0].location.clone();
    let bytes = store
        .get(&original)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    let orphan = object_store::path::Path::from(
        original
            .as_ref()
            .replace("00000000000000000001-", "00000000000000000021-"),
    );
    // Rewrite its footer's facts: a commit of 2 files at positions 21..41.
    let rows = {
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
                .expect("parquet")
                .build()
                .expect("reader");
        reader.map(|b| b.expect("batch")).collect::<Vec<_>>()
    };
    let facts = CommitFacts {
        commit_id: "crashed".into(),
        first_position: 21,
        next_position: 41,
        files: 2,
        watermarks: BTreeMap::from([(0, 99), (1, 99)]),
        watermark_digests: BTreeMap::new(),
        committed_at_ms: 0,
        compacted_at_ms: None,
    };
    let mut buffer = Vec::new();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
            COMMIT_KEY.to_owned(),
            serde_json::to_string(&facts).expect("json"),
        )]))
        .build();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut buffer, rows[0].schema(), Some(props))
            .expect("writer");
    for batch in &rows {
        writer.write(batch).expect("write");
    }
    writer.close().expect("close");
    store.put(&orphan, buffer.into()).await.expect("put orphan");

    // Readers ignore it: state and rows are the complete commit's.
    let state = lake.commit_state().await.expect("state");
    assert_eq!(state.next_position, 21);
    assert_eq!(state.watermark(0), 10);
    assert_exactly(&lake, &first).await;

    // The next writer removes it and commits at the same positions.
    let emitter = lake.emitter(quick()).await.expect("emitter");
    assert!(
        store.head(&orphan).await.is_err(),
        "the orphan is removed when a writer starts"
    );
    let all = events(0..2, 15, 2);
    let ack = emitter.emit(&all).await.expect("emit");
    assert_eq!(ack.accepted, 10);
    assert_eq!(ack.snapshot_id, Some(31));
    emitter.close().await.expect("close");
    assert_exactly(&lake, &all).await;
}

/// While a committer of this process holds the writer lock, the table
/// changes only through it: a snapshot is listed once per change, not per
/// read (a query costs no LIST). A reader without the lock, like a CLI
/// query next to a running server, lists every time and is never stale.
#[tokio::test]
async fn the_lock_holder_lists_once_per_change_and_other_readers_every_time() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = parquet_lake(tmp.path()).await;
    let EventsTable::Parquet(table) = lake.table() else {
        panic!("a parquet lake")
    };
    let emitter = lake.emitter(quick()).await.expect("emitter");
    emitter.emit(&events(0..2, 10, 2)).await.expect("emit");
    let first = table.snapshot().await.expect("snapshot");
    let listed = table.listings();
    for _ in 0..3 {
        assert_eq!(table.snapshot().await.expect("snapshot").state, first.state);
    }
    assert_eq!(
        table.listings(),
        listed,
        "an unchanged table was listed again"
    );

    let reader = Lake::open_with(
        tmp.path(),
        &ObjectStorageConfig::default(),
        TableFormat::Parquet,
    )
    .await
    .expect("a second handle");
    let EventsTable::Parquet(other) = reader.table() else {
        panic!("a parquet lake")
    };
    let before = other.listings();
    for _ in 0..2 {
        assert_eq!(other.snapshot().await.expect("snapshot").state, first.state);
    }
    assert_eq!(other.listings(), before + 2);

    // A commit invalidates the listing: both see it, the holder after one LIST.
    emitter.emit(&events(0..2, 20, 2)).await.expect("emit");
    let second = table.snapshot().await.expect("snapshot");
    assert!(second.state.next_position > first.state.next_position);
    assert_eq!(second.files.len(), first.files.len() + 2);
    assert_eq!(table.listings(), listed + 1);
    assert_eq!(
        other.snapshot().await.expect("snapshot").state,
        second.state
    );

    // Without the lock, this handle is a reader like any other.
    emitter.close().await.expect("close");
    let released = table.listings();
    table.snapshot().await.expect("snapshot");
    table.snapshot().await.expect("snapshot");
    assert_eq!(table.listings(), released + 2);
}

#[tokio::test]
async fn one_writer_at_a_time_and_formats_are_not_mixed_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = parquet_lake(tmp.path()).await;
    let first = lake.emitter(quick()).await.expect("first writer");
    let Err(err) = parquet_lake(tmp.path()).await.emitter(quick()).await else {
        panic!("a second writer was allowed");
    };
    assert_eq!(err.kind(), ErrorKind::CommitConflict);
    assert!(err.to_string().contains("one writer at a time"), "{err}");
    first.close().await.expect("close");
    drop(first);
    // Once the first writer is gone, the lock is free.
    let second = parquet_lake(tmp.path())
        .await
        .emitter(quick())
        .await
        .expect("the lock was released");
    second.close().await.expect("close");

    let err = Lake::open_local(tmp.path())
        .await
        .expect_err("a Parquet lake opened as Iceberg");
    assert_eq!(err.kind(), ErrorKind::DataInvalid);
    assert!(err.to_string().contains("format parquet"), "{err}");
    let iceberg = tempfile::tempdir().expect("tempdir");
    Lake::open_local(iceberg.path())
        .await
        .expect("iceberg lake");
    let err = Lake::open_with(
        iceberg.path(),
        &ObjectStorageConfig::default(),
        TableFormat::Parquet,
    )
    .await
    .map(|_| ())
    .expect_err("an Iceberg lake opened as Parquet");
    assert!(err.to_string().contains("format iceberg"), "{err}");
}

#[tokio::test]
async fn a_parquet_lake_on_s3_ingests_and_restarts_exactly_once() {
    let bucket = moto().bucket().await;
    let storage = bucket.storage("pq");
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = events(0..3, 20, 2);
    {
        let lake = Lake::open_with(tmp.path(), &storage, TableFormat::Parquet)
            .await
            .expect("open");
        let emitter = lake.emitter(quick()).await.expect("emitter");
        for chunk in first.chunks(25) {
            emitter.emit(chunk).await.expect("emit");
        }
        emitter.close().await.expect("close");
    }
    let keys = bucket.keys("pq/events/").await;
    assert!(
        keys.iter()
            .all(|k| k.contains("/namespace=ns-") && k.ends_with(".parquet")),
        "{keys:?}"
    );
    let lake = Lake::open_with(tmp.path(), &storage, TableFormat::Parquet)
        .await
        .expect("reopen");
    let emitter = lake.emitter(quick()).await.expect("emitter");
    let all = events(0..3, 30, 2);
    let ack = emitter.emit(&all).await.expect("emit");
    assert_eq!((ack.accepted, ack.duplicates), (30, 60));
    emitter.close().await.expect("close");
    assert_exactly(&lake, &all).await;
    let err = Lake::open_with(
        tmp.path(),
        &bucket.storage("elsewhere"),
        TableFormat::Parquet,
    )
    .await
    .map(|_| ())
    .expect_err("another location");
    assert_eq!(err.kind(), ErrorKind::DataInvalid);
}
