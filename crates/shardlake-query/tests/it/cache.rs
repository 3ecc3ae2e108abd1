//! The result cache: hits, invalidation by commit, single flight, limits.

use std::future::IntoFuture;
use std::time::Duration;

use futures::future::join_all;
use shardlake_core::Event;
use shardlake_query::{CacheConfig, QueryConfig, Scope};

use crate::fixture::{Fixture, config};

const SQL: &str =
    "SELECT namespace, count(*) AS n FROM events GROUP BY namespace ORDER BY namespace";

#[tokio::test]
async fn a_repeat_is_served_from_cache_until_a_commit() {
    cached_until_a_commit(Fixture::build(2).await).await;
}

/// In a Parquet lake a new file (a commit's last) is what invalidates.
#[tokio::test]
async fn parquet_a_repeat_is_served_from_cache_until_a_file_is_published() {
    cached_until_a_commit(Fixture::parquet(2).await).await;
}

async fn cached_until_a_commit(fixture: Fixture) {
    let engine = fixture.engine(config()).await;
    let cold = engine.sql(SQL).await.expect("cold");
    assert!(!cold.stats.cache_hit);
    // Whitespace and keyword case do not matter: the query is normalized.
    let warm = engine
        .sql("select namespace, COUNT(*) as n\n FROM events  GROUP BY namespace ORDER BY namespace")
        .await
        .expect("warm");
    assert!(warm.stats.cache_hit);
    assert_eq!(warm.batches, cold.batches);
    assert_eq!(warm.stats.snapshot_ids, cold.stats.snapshot_ids);
    assert_eq!(warm.stats.bytes_scanned, 0);

    // Another scope never sees the cached answer.
    let scoped = engine
        .sql(SQL)
        .with_scope(Scope::namespaces(["tenant-000"]))
        .await
        .expect("scoped");
    assert!(!scoped.stats.cache_hit);
    assert_eq!(scoped.num_rows(), 1);

    // A commit moves the snapshot: the next identical query misses.
    let emitter = shardlake_testkit::quick_emitter(&fixture.lake).await;
    let event = Event::new(
        "tenant-009",
        99,
        1,
        "k",
        "thing.created",
        chrono::Utc::now(),
    );
    emitter.emit(event).await.expect("emit");
    let after = engine.sql(SQL).await.expect("after commit");
    assert!(!after.stats.cache_hit);
    assert_ne!(after.stats.snapshot_ids, cold.stats.snapshot_ids);
    assert_eq!(after.num_rows(), 5, "the new namespace is visible");

    let m = engine.metrics().await.cache;
    assert_eq!((m.hits, m.misses), (1, 3));
    assert!(m.entries >= 2 && m.bytes > 0);
    engine.clear_cache().await;
    assert_eq!(engine.metrics().await.cache.entries, 0);
}

#[tokio::test]
async fn identical_concurrent_queries_execute_once() {
    let fixture = Fixture::build(2).await;
    let engine = fixture.engine(config()).await;
    let results = join_all((0..8).map(|_| engine.sql(SQL).into_future())).await;
    let first = results[0].as_ref().expect("ok");
    for r in &results {
        assert_eq!(r.as_ref().expect("ok").batches, first.batches);
    }
    let shared = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.stats.shared_run))
        .count();
    let m = engine.metrics().await.cache;
    assert_eq!(m.misses, 1, "one execution");
    // The others either waited for that run or (arriving after it ended)
    // found its answer; each says which in its stats.
    assert_eq!(m.shared + m.hits, 7, "{m:?}");
    assert_eq!(
        shared as u64, m.shared,
        "the waiters' stats say they shared a run"
    );
    let again = engine.sql(SQL).await.expect("hit");
    assert!(again.stats.cache_hit && !again.stats.shared_run);
    assert_eq!(engine.metrics().await.cache.hits, m.hits + 1);
}

#[tokio::test]
async fn large_results_are_not_cached_and_without_cache_skips_it() {
    let fixture = Fixture::build(1).await;
    let engine = fixture
        .engine(QueryConfig {
            cache: CacheConfig {
                max_result_bytes: 1024,
                ..CacheConfig::default()
            },
            ..config()
        })
        .await;
    let big = "SELECT * FROM events";
    assert!(!engine.sql(big).await.expect("1").stats.cache_hit);
    assert!(!engine.sql(big).await.expect("2").stats.cache_hit);
    assert_eq!(engine.metrics().await.cache.oversize, 2);

    let small = "SELECT count(*) FROM events WHERE shard_id = 1";
    assert!(
        !engine
            .sql(small)
            .without_cache()
            .await
            .expect("a")
            .stats
            .cache_hit
    );
    assert!(!engine.sql(small).await.expect("b").stats.cache_hit);
    assert!(engine.sql(small).await.expect("c").stats.cache_hit);
}

#[tokio::test]
async fn capacity_bounds_bytes_and_entries() {
    let fixture = Fixture::build(1).await;
    let engine = fixture
        .engine(QueryConfig {
            cache: CacheConfig {
                max_entries: 3,
                ..CacheConfig::default()
            },
            ..config()
        })
        .await;
    for shard in 0..6 {
        engine
            .sql(format!(
                "SELECT count(*) FROM events WHERE shard_id = {shard}"
            ))
            .await
            .expect("query");
    }
    let m = engine.metrics().await.cache;
    assert!(m.entries <= 3, "{m:?}");
    assert!(m.evictions >= 3, "{m:?}");
}

/// A query's optimized plan is reused by the next identical text (scope
/// and snapshot reach the scan later), but never when the optimizer folded
/// the time of the query into it.
#[tokio::test]
async fn plans_are_reused_but_never_with_the_time_folded_in() {
    let fixture = Fixture::build(1).await;
    let engine = fixture.engine(config()).await;
    let now = |r: &shardlake_query::QueryResult| {
        use arrow::array::AsArray;
        r.batches[0]
            .column(0)
            .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
            .value(0)
    };
    let sql = "SELECT now() AS t, count(*) FROM events";
    let first = engine.sql(sql).without_cache().await.expect("first");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = engine.sql(sql).without_cache().await.expect("second");
    assert!(
        now(&second) > now(&first),
        "now() is the time of each query"
    );

    // A reused plan answers for each caller's scope.
    let sql = "SELECT count(*) FROM events";
    let all = engine.sql(sql).without_cache().await.expect("all");
    let one = engine
        .sql(sql)
        .with_scope(Scope::namespaces(["tenant-001"]))
        .without_cache()
        .await
        .expect("scoped");
    let count = |r: &shardlake_query::QueryResult| {
        use arrow::array::AsArray;
        r.batches[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
    };
    assert_eq!(count(&all), fixture.events.len() as i64);
    assert_eq!(count(&one), fixture.in_namespace("tenant-001").len() as i64);
}

/// A streamed answer is left in the cache when it ends complete and fits
/// (the Postgres listener streams every query); one read partly, or too
/// large, is not.
#[tokio::test]
async fn a_complete_stream_that_fits_fills_the_cache() {
    use futures::StreamExt;
    let fixture = Fixture::build(2).await;
    let engine = fixture
        .engine(QueryConfig {
            cache: CacheConfig {
                max_result_bytes: 64 * 1024,
                ..CacheConfig::default()
            },
            ..config()
        })
        .await;
    async fn drain(engine: &shardlake_query::CrossShardQuery, sql: &str) -> usize {
        let prepared = engine.sql(sql).prepare().await.expect("prepare");
        assert!(
            prepared.cached().await.expect("look").is_none(),
            "{sql}: a hit before"
        );
        let mut stream = prepared.stream().await.expect("stream");
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            rows += batch.expect("batch").num_rows();
        }
        rows
    }
    let streamed = drain(&engine, SQL).await;
    // The insert runs off the reader's path: wait for it.
    let mut hit = None;
    for _ in 0..100 {
        let prepared = engine.sql(SQL).prepare().await.expect("prepare");
        hit = prepared.cached().await.expect("look");
        if hit.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hit = hit.expect("the streamed answer was cached");
    assert!(hit.stats.cache_hit);
    assert_eq!(hit.num_rows(), streamed);
    assert_eq!(
        hit.batches,
        engine.sql(SQL).without_cache().await.expect("run").batches
    );

    // Too large for an entry: streamed whole, never cached.
    let big = "SELECT * FROM events";
    assert!(drain(&engine, big).await > 1000);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let prepared = engine.sql(big).prepare().await.expect("prepare");
    assert!(prepared.cached().await.expect("look").is_none());

    // Dropped after its first batch: nothing cached.
    let partial = "SELECT namespace, seq FROM events WHERE shard_id = 2";
    let mut stream = engine
        .sql(partial)
        .prepare()
        .await
        .expect("p")
        .stream()
        .await
        .expect("s");
    stream.next().await.expect("a batch").expect("ok");
    drop(stream);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let prepared = engine.sql(partial).prepare().await.expect("prepare");
    assert!(prepared.cached().await.expect("look").is_none());
}

/// A query in one dialect is never answered from the other's memos or
/// cache entries, whatever its text looks like.
#[tokio::test]
async fn a_dialect_never_answers_for_the_other() {
    use shardlake_query::SqlDialect;
    let fixture = Fixture::build(1).await;
    let engine = fixture.engine(config()).await;
    let catalog = "SELECT relname FROM pg_catalog.pg_class WHERE relname = 'events'";
    let listed = engine
        .sql(catalog)
        .in_dialect(SqlDialect::Postgres)
        .await
        .expect("pg_catalog in the Postgres dialect");
    assert_eq!(listed.num_rows(), 1);
    // The engine's own SQL has no pg_catalog, even for a text that looks
    // like the Postgres dialect's memo key or cache key.
    assert!(engine.sql(catalog).await.is_err());
    assert!(engine.sql(format!("postgres\n{catalog}")).await.is_err());
    // A text both can answer: one entry each, the same rows.
    let sql = "SELECT count(*) FROM events";
    let ours = engine.sql(sql).await.expect("datafusion");
    let theirs = engine
        .sql(sql)
        .in_dialect(SqlDialect::Postgres)
        .await
        .expect("postgres");
    assert!(!theirs.stats.cache_hit);
    assert_eq!(ours.batches, theirs.batches);
}
