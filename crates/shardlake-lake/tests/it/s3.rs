//! The lake on S3 (moto's server on loopback): the same contract as on
//! local disk, through the same code, plus what only object storage does
//! (503 `SlowDown`, requests that never return).

use std::time::Duration;

use shardlake_lake::CompactionConfig;
use shardlake_lake::{
    EmitterConfig, ErrorKind, HealthStatus, Lake, ObjectStorageConfig, RetryPolicy,
    StorageRetryConfig, TableFormat,
};
use shardlake_testkit::{Fault, FlakyS3, moto};

use crate::common::{assert_exactly, events};

fn quick() -> EmitterConfig {
    EmitterConfig {
        flush_interval: Duration::from_millis(10),
        ..EmitterConfig::default()
    }
}

#[tokio::test]
async fn ingest_restart_and_compaction_on_s3_are_exactly_once() {
    let bucket = moto().bucket().await;
    let storage = bucket.storage("lakes/one");
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = events(0..4, 30, 3);
    {
        let lake = Lake::open_with(tmp.path(), &storage, TableFormat::Iceberg)
            .await
            .expect("open on s3");
        assert_eq!(
            lake.warehouse().root().as_str(),
            format!("s3://{}/lakes/one/", bucket.name())
        );
        let emitter = lake.emitter(quick()).await.expect("emitter");
        for chunk in first.chunks(40) {
            emitter.emit(chunk).await.expect("emit");
        }
        emitter.close().await.expect("close");
        assert_exactly(&lake, &first).await;
    }
    // Table files are in the bucket under the prefix; only the catalog
    // database is local.
    let keys = bucket.keys("lakes/one/").await;
    assert!(
        keys.iter()
            .any(|k| k.contains("/data/") && k.ends_with(".parquet")),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.ends_with(".metadata.json")),
        "{keys:?}"
    );
    assert!(!tmp.path().join("warehouse").exists());

    // A restarted process knows every watermark from the lake on S3.
    let lake = Lake::open_with(tmp.path(), &storage, TableFormat::Iceberg)
        .await
        .expect("reopen");
    let emitter = lake.emitter(quick()).await.expect("emitter");
    let all = events(0..4, 45, 3);
    let ack = emitter.emit(&all).await.expect("emit");
    assert_eq!((ack.accepted, ack.duplicates), (60, 120));
    emitter.close().await.expect("close");

    let report = lake
        .compact(&CompactionConfig {
            min_small_files: 2,
            ..CompactionConfig::default()
        })
        .await
        .expect("compact on s3");
    assert!(report.files_removed > 0, "{report:?}");
    assert_exactly(&lake, &all).await;
}

#[tokio::test]
async fn slow_down_answers_are_retried_and_nothing_doubles() {
    emit_through_a_faulty_proxy_exactly_once(Fault::SlowDownEvery(4)).await;
}

#[tokio::test]
async fn reset_connections_are_retried_and_nothing_doubles() {
    emit_through_a_faulty_proxy_exactly_once(Fault::ResetEvery(3)).await;
}

/// Emits and reads back through a proxy injecting `fault`: every batch is
/// retried to success, nothing doubles, and the fault really fired.
async fn emit_through_a_faulty_proxy_exactly_once(fault: Fault) {
    let bucket = moto().bucket().await;
    let proxy = FlakyS3::start(bucket.endpoint(), fault).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open_with(
        tmp.path(),
        &bucket.storage_via(proxy.endpoint(), "l"),
        TableFormat::Iceberg,
    )
    .await
    .expect("open through a faulty proxy");
    let emitter = lake.emitter(quick()).await.expect("emitter");
    let batch = events(0..3, 40, 2);
    for chunk in batch.chunks(30) {
        let ack = emitter.emit(chunk).await.expect("retried to success");
        assert!(ack.rejected.is_empty());
    }
    emitter.close().await.expect("close");
    // Reading back goes through the proxy too: failed GETs are retried.
    assert_exactly(&lake, &batch).await;
    assert!(
        proxy.injected() >= 5,
        "only {} of {} requests failed",
        proxy.injected(),
        proxy.requests()
    );
}

#[tokio::test]
async fn an_unreachable_store_fails_the_batch_in_bounded_time_and_loses_nothing() {
    let bucket = moto().bucket().await;
    let proxy = FlakyS3::start(bucket.endpoint(), Fault::None).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage = ObjectStorageConfig {
        retry: StorageRetryConfig {
            max_retries: 1,
            retry_timeout_ms: 2_000,
            initial_backoff_ms: 10,
            max_backoff_ms: 50,
            request_timeout_ms: 300,
            connect_timeout_ms: 300,
        },
        ..bucket.storage_via(proxy.endpoint(), "l")
    };
    let lake = Lake::open_with(tmp.path(), &storage, TableFormat::Iceberg)
        .await
        .expect("open");
    let emitter = lake
        .emitter(EmitterConfig {
            retry: RetryPolicy {
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(2),
                max_attempts: 2,
            },
            ..quick()
        })
        .await
        .expect("emitter");
    let batch = events(0..2, 10, 1);
    proxy.set_fault(Fault::Hang);
    // The guard is for a hang (the bug this tests for), not a speed check.
    let err = tokio::time::timeout(Duration::from_secs(60), emitter.emit(&batch))
        .await
        .expect("the emit hung instead of failing")
        .expect_err("storage is down");
    assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
    assert_eq!(emitter.health().status, HealthStatus::Degraded);

    proxy.set_fault(Fault::None);
    let ack = emitter.emit(&batch).await.expect("back up");
    assert_eq!((ack.accepted, ack.duplicates), (20, 0));
    assert_exactly(&lake, &batch).await;
    emitter.close().await.expect("close");
}

#[tokio::test]
async fn a_catalog_opened_with_another_store_is_refused() {
    let bucket = moto().bucket().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    Lake::open_local(tmp.path()).await.expect("local lake");
    let err = Lake::open_with(tmp.path(), &bucket.storage("x"), TableFormat::Iceberg)
        .await
        .expect_err("a local lake's catalog with s3 storage");
    assert_eq!(err.kind(), ErrorKind::DataInvalid);
    assert!(err.to_string().contains("storage location"), "{err}");
}
