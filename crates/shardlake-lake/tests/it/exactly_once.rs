//! Exactly once under concurrency and failure: two committers on one table,
//! storage that fails transiently or for good, a table with a foreign schema.

use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};
use iceberg::{Catalog, NamespaceIdent, TableCreation};
use object_store::local::LocalFileSystem;
use shardlake_core::Event;
use shardlake_lake::iceberg::open_sql_catalog;
use shardlake_lake::{
    EmitterConfig, ErrorKind, HealthStatus, Lake, PipelineEmitter, RetryPolicy, Warehouse,
};

use crate::common::{assert_exactly, events};
use crate::faulty::FaultyStore;

fn config() -> EmitterConfig {
    EmitterConfig {
        flush_interval: Duration::from_millis(5),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(20),
            max_attempts: 50,
        },
        ..EmitterConfig::default()
    }
}

/// Sends `events` in requests of `chunk` events, `in_flight` at a time.
async fn send_all(
    emitter: &PipelineEmitter,
    events: &[Event],
    chunk: usize,
    in_flight: usize,
) -> (usize, usize) {
    let mut acks = Vec::new();
    for group in events.chunks(chunk * in_flight) {
        let mut pending = Vec::new();
        for part in group.chunks(chunk) {
            pending.push(emitter.send(part).await.expect("send"));
        }
        acks.extend(try_join_all(pending).await.expect("acks"));
    }
    (
        acks.iter().map(|a| a.accepted).sum(),
        acks.iter().map(|a| a.duplicates).sum(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_committers_on_one_table_lose_and_duplicate_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Two lakes over the same directory: two catalog connections, two
    // committers, racing through the catalog's compare-and-swap.
    let a = Lake::open_local(tmp.path()).await.expect("open a");
    let b = Lake::open_local(tmp.path()).await.expect("open b");
    let ea = a.emitter(config()).await.expect("emitter a");
    let eb = b.emitter(config()).await.expect("emitter b");

    // Different shards.
    let left = events(0..4, 60, 3);
    let right = events(4..8, 60, 3);
    let ((acc_a, dup_a), (acc_b, dup_b)) =
        tokio::join!(send_all(&ea, &left, 7, 4), send_all(&eb, &right, 11, 4));
    assert_eq!((acc_a, dup_a, acc_b, dup_b), (240, 0, 240, 0));
    let mut expected: Vec<Event> = left.into_iter().chain(right).collect();
    assert_exactly(&a, &expected).await;

    // Overlapping shards: both committers get the same events.
    let shared = events(8..12, 50, 2);
    let ((acc_a, dup_a), (acc_b, dup_b)) =
        tokio::join!(send_all(&ea, &shared, 9, 1), send_all(&eb, &shared, 13, 1));
    assert_eq!(
        acc_a + acc_b,
        200,
        "each event accepted by exactly one committer"
    );
    assert_eq!(dup_a + dup_b, 200, "and reported duplicate by the other");
    expected.extend(shared);
    assert_exactly(&a, &expected).await;

    let conflicts = ea.metrics().commit_conflicts + eb.metrics().commit_conflicts;
    let commits = ea.metrics().commits + eb.metrics().commits;
    // Every commit is a snapshot; conflicts were re-planned, never appended.
    let table = a
        .iceberg_table()
        .expect("iceberg")
        .load()
        .await
        .expect("load");
    assert_eq!(table.metadata().snapshots().count() as u64, commits);
    eprintln!("commits {commits}, conflicts resolved {conflicts}");
    ea.close().await.expect("close");
    eb.close().await.expect("close");
}

fn faulty_lake_dir(tmp: &std::path::Path) -> (Warehouse, Arc<FaultyStore>) {
    std::fs::create_dir_all(tmp.join("warehouse")).expect("mkdir");
    let root = url::Url::from_directory_path(tmp.join("warehouse").canonicalize().expect("abs"))
        .expect("url");
    let store = Arc::new(FaultyStore::new(Arc::new(LocalFileSystem::new())));
    let warehouse = Warehouse::with_store(tmp, root, Arc::clone(&store) as _).expect("warehouse");
    (warehouse, store)
}

#[tokio::test]
async fn transient_storage_errors_are_retried_without_duplicates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (warehouse, store) = faulty_lake_dir(tmp.path());
    let lake = Lake::open(warehouse).await.expect("open");
    let emitter = lake.emitter(config()).await.expect("emitter");
    let batch = events(0..3, 20, 2);
    // Fail a few writes: some land mid-commit (data files, manifests).
    store.fail_next_writes(3);
    let ack = emitter.emit(&batch).await.expect("retried to success");
    assert_eq!(ack.accepted, 60);
    assert_eq!(store.injected(), 3);
    assert!(emitter.metrics().commit_retries >= 1);
    assert_eq!(emitter.health().status, HealthStatus::Healthy);
    assert_exactly(&lake, &batch).await;
}

#[tokio::test]
async fn storage_down_fails_the_batch_and_loses_nothing_once_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (warehouse, store) = faulty_lake_dir(tmp.path());
    let lake = Lake::open(warehouse).await.expect("open");
    let emitter = lake
        .emitter(EmitterConfig {
            retry: RetryPolicy {
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(2),
                max_attempts: 3,
            },
            ..config()
        })
        .await
        .expect("emitter");
    let batch = events(0..2, 10, 1);
    store.set_down(true);
    let err = emitter.emit(&batch).await.expect_err("storage is down");
    assert_eq!(err.kind(), ErrorKind::Storage);
    let health = emitter.health();
    assert_eq!(health.status, HealthStatus::Degraded);
    assert!(health.last_error.is_some());
    assert_eq!(emitter.metrics().events_failed, 20);

    store.set_down(false);
    // The shard retries: nothing was committed, so everything is accepted now.
    let ack = emitter.emit(&batch).await.expect("back up");
    assert_eq!((ack.accepted, ack.duplicates), (20, 0));
    assert_eq!(emitter.health().status, HealthStatus::Healthy);
    assert_exactly(&lake, &batch).await;
}

#[tokio::test]
async fn a_table_with_another_schema_is_refused_not_rewritten() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::local(tmp.path()).expect("warehouse");
    let catalog = open_sql_catalog(&warehouse).await.expect("catalog");
    let ns = NamespaceIdent::new("shardlake".into());
    catalog
        .create_namespace(&ns, Default::default())
        .await
        .expect("namespace");
    let schema = Schema::builder()
        .with_fields(vec![
            NestedField::required(1, "namespace", Type::Primitive(PrimitiveType::String)).into(),
            NestedField::required(2, "shard_id", Type::Primitive(PrimitiveType::Long)).into(),
        ])
        .build()
        .expect("schema");
    catalog
        .create_table(
            &ns,
            TableCreation::builder()
                .name("events".into())
                .schema(schema)
                .build(),
        )
        .await
        .expect("table");
    let before = catalog
        .load_table(&iceberg::TableIdent::new(ns.clone(), "events".into()))
        .await
        .expect("load")
        .metadata_location()
        .map(str::to_owned);

    let err = Lake::open(warehouse).await.expect_err("schema mismatch");
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch);
    assert!(err.message().contains("shard_id"), "{err}");
    let after = catalog
        .load_table(&iceberg::TableIdent::new(ns, "events".into()))
        .await
        .expect("load")
        .metadata_location()
        .map(str::to_owned);
    assert_eq!(before, after, "the foreign table was left untouched");
}
