//! The lake as replay source: keys, namespaces and shards in position
//! order, pinned to a snapshot, resumable, incremental, pruned.

use futures::StreamExt;
use shardlake_core::{Event, events_from_batch};
use shardlake_query::{CrossShardQuery, ErrorKind, ReplayQuery, SqlQuery};

use crate::fixture::{Fixture, config};

async fn collect(query: SqlQuery) -> (Vec<Event>, shardlake_query::ScanStats, Option<i64>) {
    let mut stream = query.stream().await.expect("replay starts");
    let snapshot = stream.snapshot_id();
    let mut events = Vec::new();
    while let Some(batch) = stream.next().await {
        events.extend(events_from_batch(&batch.expect("batch")).expect("events"));
    }
    (events, stream.stats().cloned().expect("stats"), snapshot)
}

fn ids(events: &[Event]) -> Vec<(i32, i64)> {
    events.iter().map(|e| (e.shard_id, e.seq)).collect()
}

#[tokio::test]
async fn a_key_replays_in_commit_order_and_reads_a_fraction_of_its_namespace() {
    // Small pages so that the fixture spans many: page-index pruning at work.
    let fixture = Fixture::small_pages(1).await;
    let engine = fixture.engine(config()).await;
    // The key of tenant-000 with the most events.
    let ns = fixture.in_namespace("tenant-000");
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for e in &ns {
        *counts.entry(e.partition_key.as_str()).or_default() += 1;
    }
    let (key, n) = counts
        .iter()
        .max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k)))
        .expect("a key");
    assert!(*n >= 3, "the fixture's busiest key has {n} events");
    let expected: Vec<&Event> = ns
        .iter()
        .copied()
        .filter(|e| e.partition_key == *key)
        .collect();

    let (events, stats, _) = collect(engine.replay(ReplayQuery {
        namespace: Some("tenant-000".into()),
        partition_keys: vec![key.to_string()],
        ..ReplayQuery::default()
    }))
    .await;
    assert_eq!(
        ids(&events),
        expected
            .iter()
            .map(|e| (e.shard_id, e.seq))
            .collect::<Vec<_>>()
    );
    let positions: Vec<i64> = events
        .iter()
        .map(|e| e.position.expect("position"))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "not in position order"
    );
    assert_eq!(stats.partitions_scanned, 1);
    assert_eq!(stats.rows_returned, *n as u64);
    // Sorted files let key statistics and page indexes skip most rows.
    assert!(
        stats.rows_scanned < ns.len() as u64 / 2,
        "read {} rows of the namespace's {}",
        stats.rows_scanned,
        ns.len()
    );
}

#[tokio::test]
async fn replay_resumes_after_a_cursor_and_merges_keys_by_position() {
    resumes_and_merges(Fixture::build(3).await).await;
}

#[tokio::test]
async fn replay_on_s3_resumes_after_a_cursor_and_merges_keys_by_position() {
    resumes_and_merges(Fixture::on_s3(3).await).await;
}

#[tokio::test]
async fn parquet_replay_resumes_after_a_cursor_and_merges_keys_by_position() {
    resumes_and_merges(Fixture::parquet(3).await).await;
}

async fn resumes_and_merges(fixture: Fixture) {
    let engine = fixture.engine(config()).await;
    let all = |q: ReplayQuery| collect(engine.replay(q));
    let (full, _, _) = all(ReplayQuery {
        namespace: Some("tenant-002".into()),
        ..ReplayQuery::default()
    })
    .await;
    assert_eq!(full.len(), fixture.in_namespace("tenant-002").len());
    let cursor = full[99].position.expect("position");
    let (rest, _, _) = all(ReplayQuery {
        namespace: Some("tenant-002".into()),
        after_position: Some(cursor),
        ..ReplayQuery::default()
    })
    .await;
    assert_eq!(ids(&rest), ids(&full[100..]));

    // Several keys come back interleaved in position order.
    let keys: Vec<String> = full
        .iter()
        .take(3)
        .map(|e| e.partition_key.clone())
        .collect();
    let (merged, _, _) = all(ReplayQuery {
        namespace: Some("tenant-002".into()),
        partition_keys: keys.clone(),
        ..ReplayQuery::default()
    })
    .await;
    let expected: Vec<&Event> = full
        .iter()
        .filter(|e| keys.contains(&e.partition_key))
        .collect();
    assert_eq!(
        ids(&merged),
        expected
            .iter()
            .map(|e| (e.shard_id, e.seq))
            .collect::<Vec<_>>()
    );

    // A shard's own cursor: its events after a seq.
    let (shard, _, _) = all(ReplayQuery {
        shard_id: Some(3),
        after_seq: Some(100),
        ..ReplayQuery::default()
    })
    .await;
    let want: Vec<(i32, i64)> = {
        let mut v: Vec<&Event> = fixture
            .events
            .iter()
            .filter(|e| e.shard_id == 3 && e.seq > 100)
            .collect();
        v.sort_by_key(|e| e.seq);
        v.iter().map(|e| (e.shard_id, e.seq)).collect()
    };
    assert_eq!(ids(&shard), want);
}

async fn current(engine: &CrossShardQuery) -> i64 {
    engine
        .current_snapshot()
        .await
        .expect("snapshot")
        .snapshot_id
        .expect("an id")
}

#[tokio::test]
async fn replay_pins_a_snapshot_and_catches_up_incrementally() {
    pins_and_catches_up(Fixture::build(2).await).await;
}

#[tokio::test]
async fn replay_on_s3_pins_a_snapshot_and_catches_up_incrementally() {
    pins_and_catches_up(Fixture::on_s3(2).await).await;
}

#[tokio::test]
async fn parquet_replay_pins_a_snapshot_and_catches_up_incrementally() {
    pins_and_catches_up(Fixture::parquet(2).await).await;
}

async fn pins_and_catches_up(fixture: Fixture) {
    let engine = fixture.engine(config()).await;
    let s1 = current(&engine).await;
    let before = fixture.in_namespace("tenant-001").len();

    // Ten more events for tenant-001 in a later commit.
    let emitter = fixture
        .lake
        .emitter(Default::default())
        .await
        .expect("emitter");
    let more: Vec<Event> = (1..=10)
        .map(|seq| {
            Event::new(
                "tenant-001",
                99,
                seq,
                "Order:late",
                "thing.updated",
                chrono::Utc::now(),
            )
        })
        .collect();
    emitter.emit(&more).await.expect("commit");
    emitter.close().await.expect("close");
    let s2 = current(&engine).await;
    assert_ne!(s1, s2);

    let ns = || ReplayQuery {
        namespace: Some("tenant-001".into()),
        ..ReplayQuery::default()
    };
    let (at_s1, _, pinned) = collect(engine.replay(ReplayQuery {
        snapshot_id: Some(s1),
        ..ns()
    }))
    .await;
    assert_eq!((at_s1.len(), pinned), (before, Some(s1)));
    let (now, _, pinned) = collect(engine.replay(ns())).await;
    assert_eq!((now.len(), pinned), (before + 10, Some(s2)));
    // Catch-up: what S2 added after S1, exactly.
    let (caught_up, _, _) = collect(engine.replay(ReplayQuery {
        since_snapshot: Some(s1),
        snapshot_id: Some(s2),
        ..ns()
    }))
    .await;
    assert_eq!(ids(&caught_up), ids(&more));

    let err = engine
        .replay(ReplayQuery {
            snapshot_id: Some(42),
            ..ns()
        })
        .stream()
        .await
        .err()
        .expect("no such snapshot");
    assert_eq!(err.kind(), ErrorKind::SnapshotExpired);
}
