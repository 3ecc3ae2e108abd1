//! The freshness bound: the current snapshot is reused within it, this
//! process's own commits are seen at once, another writer's only once the
//! bound has passed (or when the latest snapshot is asked for).

use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use shardlake_core::Event;
use shardlake_lake::{Lake, ObjectStorageConfig, TableFormat};
use shardlake_query::{CrossShardQuery, QueryConfig, SqlQuery};

use crate::fixture::{Fixture, config};

async fn count(query: SqlQuery) -> i64 {
    let result = query.without_cache().await.expect("count");
    result.batches[0]
        .column(0)
        .as_primitive::<Int64Type>()
        .value(0)
}

fn events(shard: i32, n: i64) -> Vec<Event> {
    (1..=n)
        .map(|seq| {
            Event::new(
                "tenant-fresh",
                shard,
                seq,
                "Order:o-fresh",
                "order.placed",
                chrono::Utc::now(),
            )
        })
        .collect()
}

async fn emit(lake: &Lake, shard: i32, n: i64) {
    let emitter = shardlake_testkit::quick_emitter(lake).await;
    let ack = emitter.emit(&events(shard, n)).await.expect("emit");
    assert_eq!(ack.accepted, n as usize);
    emitter.close().await.expect("close");
}

#[tokio::test]
async fn iceberg_freshness_reuses_the_snapshot_and_sees_its_own_commits_at_once() {
    freshness(Fixture::build(1).await, TableFormat::Iceberg).await;
}

#[tokio::test]
async fn parquet_freshness_reuses_the_snapshot_and_sees_its_own_commits_at_once() {
    freshness(Fixture::parquet(1).await, TableFormat::Parquet).await;
}

async fn freshness(fixture: Fixture, format: TableFormat) {
    let base = fixture.events.len() as i64;
    // A bound no test outlives: every reuse below is the bound at work.
    let engine = CrossShardQuery::open(
        &fixture.lake,
        QueryConfig {
            freshness: Duration::from_secs(3_600),
            ..config()
        },
    )
    .await
    .expect("engine");
    let sql = "SELECT count(*) FROM events";
    assert_eq!(count(engine.sql(sql)).await, base);

    // This process commits (through the engine's own lake handle): the
    // next query sees it, whatever the bound.
    emit(&fixture.lake, 900, 5).await;
    assert_eq!(count(engine.sql(sql)).await, base + 5, "{format:?}");

    // Another writer (its own handle on the lake, as another process has):
    // within the bound the engine keeps the snapshot it looked up...
    let other = Lake::open_with(fixture.dir.path(), &ObjectStorageConfig::default(), format)
        .await
        .expect("second handle");
    emit(&other, 901, 7).await;
    assert_eq!(
        count(engine.sql(sql)).await,
        base + 5,
        "{format:?}: within the bound"
    );
    // ...while asking for the latest snapshot looks, and sees it.
    assert_eq!(count(engine.sql(sql).latest()).await, base + 12);
    let latest = engine.current_snapshot().await.expect("current");
    assert_eq!(
        latest.files.iter().map(|f| f.rows).sum::<u64>() as i64,
        base + 12
    );
    // That look is the one later queries reuse.
    assert_eq!(count(engine.sql(sql)).await, base + 12);

    // Without a bound every query looks.
    let strict = fixture.engine(config()).await;
    emit(&other, 902, 3).await;
    assert_eq!(count(strict.sql(sql)).await, base + 15);
}
