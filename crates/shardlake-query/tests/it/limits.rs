//! Timeouts cancel work; memory is bounded by the pool.

use std::future::IntoFuture;
use std::time::Duration;

use shardlake_lake::{ObjectStorageConfig, StorageRetryConfig, TableFormat, WriterConfig};
use shardlake_query::{ErrorKind, QueryConfig};
use shardlake_testkit::{Fault, FlakyS3, moto};

use crate::fixture::{Fixture, config};

/// Far too much work to finish, and it holds memory while it runs: a
/// distinct count over ten billion generated values. The distinct set is
/// capped at a million values so its hash table stays far below the pool
/// however fast the machine is: the query must end by its timeout, never by
/// running out of memory. (No join: a cross join would buffer the whole
/// generated side and hit the pool first.)
const ENDLESS: &str = "SELECT count(DISTINCT value % 1000000) FROM range(10000000000)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_stops_the_query_not_just_the_wait() {
    let fixture = Fixture::build(1).await;
    let engine = fixture.engine(config()).await;
    let running = tokio::spawn(
        engine
            .sql(ENDLESS)
            .with_timeout(Duration::from_millis(3000))
            .into_future(),
    );
    // While it runs, its hash table holds memory from the pool...
    let mut held = 0;
    while held == 0 && !running.is_finished() {
        held = engine.metrics().await.memory_reserved;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        held > 0,
        "the query never reserved memory; the check below would prove nothing"
    );
    // The guard catches a query the timeout did not stop; not a speed check.
    let err = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the timeout did not stop the query")
        .expect("task")
        .expect_err("times out");
    assert_eq!(err.kind(), ErrorKind::QueryTimeout, "{err}");
    // ...and once it is really stopped, its operators are dropped and the
    // pool is empty again. An abandoned query would keep growing it.
    // (Polled up to 30 s: dropping the operators is not instant on a
    // loaded machine, and this is not a speed check.)
    let mut released = false;
    for _ in 0..1500 {
        if engine.metrics().await.memory_reserved == 0 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        released,
        "operators still hold memory: the query kept running"
    );

    // Streams time out too.
    let mut stream = engine
        .sql(ENDLESS)
        .with_timeout(Duration::from_millis(300))
        .stream()
        .await
        .expect("stream starts");
    let item = futures::StreamExt::next(&mut stream)
        .await
        .expect("an item");
    assert_eq!(item.expect_err("timeout").kind(), ErrorKind::QueryTimeout);
}

#[tokio::test]
async fn a_query_over_its_memory_budget_fails_cleanly() {
    let fixture = Fixture::build(1).await;
    let engine = fixture
        .engine(QueryConfig {
            memory_limit: 64 * 1024,
            ..config()
        })
        .await;
    let err = engine
        .sql("SELECT partition_key, array_agg(payload) FROM events GROUP BY partition_key")
        .without_cache()
        .await
        .expect_err("over budget");
    assert_eq!(err.kind(), ErrorKind::ResourcesExhausted, "{err}");
    // The engine is fine afterwards.
    engine.sql("SELECT 1").await.expect("still serving");
}

#[tokio::test]
async fn a_result_over_its_limit_fails_for_collected_cached_and_streamed_queries() {
    use shardlake_query::ResultLimit;
    let fixture = Fixture::build(1).await;
    let engine = fixture.engine(config()).await;
    let rows = ResultLimit {
        max_rows: 10,
        max_bytes: u64::MAX,
    };
    let sql = "SELECT seq FROM events ORDER BY position LIMIT 11";
    // Fill the cache without a limit, then ask again with one: the cached
    // answer is held to the second caller's limit too.
    engine.sql(sql).await.expect("unlimited");
    let err = engine
        .sql(sql)
        .with_result_limit(rows)
        .await
        .expect_err("11 rows > 10");
    assert_eq!(err.kind(), ErrorKind::ResultTooLarge, "{err}");
    let ten = engine
        .sql("SELECT seq FROM events ORDER BY position LIMIT 10")
        .with_result_limit(rows)
        .await
        .expect("exactly at the limit");
    assert_eq!(ten.num_rows(), 10);

    let bytes = ResultLimit {
        max_rows: u64::MAX,
        max_bytes: 1024,
    };
    let err = engine
        .sql("SELECT payload FROM events")
        .without_cache()
        .with_result_limit(bytes)
        .await
        .expect_err("payloads are more than 1 KiB");
    assert_eq!(err.kind(), ErrorKind::ResultTooLarge);

    let mut stream = engine
        .sql("SELECT * FROM events")
        .with_result_limit(rows)
        .stream()
        .await
        .expect("stream starts");
    let mut seen = 0;
    let err = loop {
        match futures::StreamExt::next(&mut stream).await {
            Some(Ok(batch)) => seen += batch.num_rows(),
            Some(Err(e)) => break e,
            None => panic!("the stream ended without hitting the limit"),
        }
    };
    assert_eq!(err.kind(), ErrorKind::ResultTooLarge);
    assert!(seen <= 10, "{seen} rows passed the limit");
    assert!(futures::StreamExt::next(&mut stream).await.is_none());
}

/// Answers cut off mid-body (connection resets) are retried: queries over
/// a flaky store return the same rows as over a sound one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_survive_connection_resets() {
    let bucket = moto().bucket().await;
    let proxy = FlakyS3::start(bucket.endpoint(), Fault::None).await;
    let storage = bucket.storage_via(proxy.endpoint(), "lake");
    let fixture =
        Fixture::build_in(&storage, TableFormat::Iceberg, 3, WriterConfig::default()).await;
    let engine = fixture.engine(config()).await;
    let sql = "SELECT namespace, count(*) AS n, sum(seq), max(position) FROM events \
               GROUP BY namespace ORDER BY namespace";
    let sound = engine.sql(sql).without_cache().await.expect("sound");
    proxy.set_fault(Fault::ResetEvery(2));
    // A fresh engine: nothing cached, every footer and page read again.
    let engine = fixture.engine(config()).await;
    let flaky = engine.sql(sql).without_cache().await.expect("retried");
    assert_eq!(flaky.batches, sound.batches);
    assert!(proxy.injected() > 0, "no reset was injected");
}

/// Storage that stops answering fails a query with `storage_unavailable`
/// once the store's retries give up; it does not hang, and it answers
/// again when storage is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_fails_clearly_when_object_storage_is_down() {
    let bucket = moto().bucket().await;
    let proxy = FlakyS3::start(bucket.endpoint(), Fault::None).await;
    let storage = ObjectStorageConfig {
        retry: StorageRetryConfig {
            max_retries: 2,
            retry_timeout_ms: 3_000,
            initial_backoff_ms: 10,
            max_backoff_ms: 100,
            request_timeout_ms: 500,
            connect_timeout_ms: 500,
        },
        ..bucket.storage_via(proxy.endpoint(), "lake")
    };
    let fixture =
        Fixture::build_in(&storage, TableFormat::Iceberg, 2, WriterConfig::default()).await;
    let engine = fixture.engine(config()).await;
    // A query that must read column data (a count by namespace alone is
    // answered from the cached manifests, storage down or not).
    let sql = "SELECT namespace, count(DISTINCT partition_key) AS n FROM events \
               GROUP BY namespace ORDER BY namespace";
    let before = engine
        .sql(sql)
        .without_cache()
        .await
        .expect("storage is up");
    assert_eq!(
        before.stats.answered_from,
        shardlake_query::AnsweredFrom::Scan
    );

    proxy.set_fault(Fault::Hang);
    // The guard catches a hang, the bug under test; it is not a speed check.
    let err = tokio::time::timeout(
        Duration::from_secs(120),
        engine.sql(sql).without_cache().into_future(),
    )
    .await
    .expect("the query hung instead of failing")
    .expect_err("storage is down");
    assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
    assert!(proxy.injected() > 0);

    proxy.set_fault(Fault::None);
    let after = engine
        .sql(sql)
        .without_cache()
        .await
        .expect("storage is back");
    assert_eq!(
        arrow::util::pretty::pretty_format_batches(&after.batches)
            .expect("format")
            .to_string(),
        arrow::util::pretty::pretty_format_batches(&before.batches)
            .expect("format")
            .to_string()
    );
}
