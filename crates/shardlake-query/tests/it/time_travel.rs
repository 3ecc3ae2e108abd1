//! Time travel and the lake lifecycle, as the engine sees them: every
//! retained snapshot answers with its own rows (by id or by time), an open
//! query keeps its snapshot through maintenance, an expired snapshot is a
//! clear error, and subscriptions resume across compaction and expiry.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use shardlake_core::Event;
use shardlake_lake::maintenance::Progress;
use shardlake_lake::{
    Action, CompactionConfig, Lake, MaintenanceConfig, RetentionConfig, TableFormat,
};
use shardlake_query::{
    CrossShardQuery, ErrorKind, PartitionOf, ReplayQuery, Subscription, SubscriptionConfig,
};

use crate::fixture::{Fixture, config};

fn quiet(_: Progress) {}

/// Maintenance that drops everything it may: all small files compacted,
/// every unpinned snapshot but the current one expired, no grace.
async fn maintain_everything(lake: &Lake) {
    let config = MaintenanceConfig {
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
    };
    let report = lake
        .maintain(&config, &Action::ALL, false, &quiet)
        .await
        .expect("maintenance");
    assert_eq!(report.skipped, None);
}

async fn count(engine: &CrossShardQuery, snapshot: Option<i64>) -> (i64, Vec<i64>) {
    let mut q = engine.sql("SELECT count(*) FROM events").without_cache();
    if let Some(id) = snapshot {
        q = q.at_snapshot(id);
    }
    let result = q.await.expect("count");
    let n = result.batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("count is Int64")
        .value(0);
    (n, result.stats.snapshot_ids)
}

async fn time_travel(format: TableFormat) {
    let fixture = match format {
        TableFormat::Iceberg => Fixture::build(4).await,
        TableFormat::Parquet => Fixture::parquet(4).await,
    };
    let engine = fixture.engine(config()).await;
    let snapshots = fixture.lake.snapshots().await.expect("snapshots");
    assert_eq!(snapshots.len(), 4, "{format}: one per commit");
    assert!(snapshots.last().is_some_and(|s| s.current));
    // Each retained snapshot answers with its own rows, and says so.
    for s in &snapshots {
        let (n, pinned) = count(&engine, Some(s.snapshot_id)).await;
        assert_eq!(Some(n as u64), s.total_rows, "{format}: {s:?}");
        assert_eq!(pinned, vec![s.snapshot_id]);
    }
    // By time: the snapshot current then.
    let second = &snapshots[1];
    let at = chrono::DateTime::from_timestamp_millis(second.committed_at_ms).expect("time");
    assert_eq!(
        engine.snapshot_as_of(at).await.expect("as of"),
        second.snapshot_id
    );
    let by_time = engine
        .sql("SELECT count(*) FROM events")
        .as_of(at)
        .await
        .expect("as of");
    assert_eq!(by_time.stats.snapshot_ids, vec![second.snapshot_id]);
    let before_everything = at - chrono::Duration::days(1);
    let err = engine
        .sql("SELECT count(*) FROM events")
        .as_of(before_everything)
        .await
        .expect_err("nothing that old");
    assert_eq!(err.kind(), ErrorKind::SnapshotExpired, "{err}");

    // An open query at the first snapshot keeps it through maintenance
    // that expires everything else.
    let first = snapshots[0].snapshot_id;
    let mut open = engine
        .replay(ReplayQuery {
            snapshot_id: Some(first),
            ..ReplayQuery::default()
        })
        .without_cache()
        .stream()
        .await
        .expect("open replay");
    maintain_everything(&fixture.lake).await;
    let retained: BTreeSet<i64> = fixture
        .lake
        .snapshots()
        .await
        .expect("snapshots")
        .iter()
        .map(|s| s.snapshot_id)
        .collect();
    assert!(
        retained.contains(&first),
        "{format}: the open query's snapshot is kept"
    );
    let mut rows = 0;
    while let Some(batch) = open.next().await {
        rows += batch
            .expect("the pinned snapshot's files are all there")
            .num_rows();
    }
    assert_eq!(Some(rows as u64), snapshots[0].total_rows);
    drop(open);

    // Once nothing needs it, it expires, and asking for it is an error.
    maintain_everything(&fixture.lake).await;
    let err = engine
        .sql("SELECT count(*) FROM events")
        .at_snapshot(first)
        .await
        .expect_err("expired");
    assert_eq!(err.kind(), ErrorKind::SnapshotExpired, "{format}: {err}");
    let err = engine
        .replay(ReplayQuery {
            snapshot_id: Some(first),
            ..ReplayQuery::default()
        })
        .stream()
        .await
        .err()
        .expect("expired");
    assert_eq!(err.kind(), ErrorKind::SnapshotExpired);
    // The current snapshot holds everything, read from compacted files.
    let (n, _) = count(&engine, None).await;
    assert_eq!(n as usize, fixture.events.len());
}

#[tokio::test]
async fn iceberg_time_travel_reaches_every_retained_snapshot_and_refuses_expired_ones() {
    time_travel(TableFormat::Iceberg).await;
}

#[tokio::test]
async fn parquet_time_travel_reaches_every_retained_snapshot_and_refuses_expired_ones() {
    time_travel(TableFormat::Parquet).await;
}

#[tokio::test]
async fn a_subscription_resumes_exactly_across_compaction_expiry_and_cleanup() {
    let fixture = Fixture::build(4).await;
    let engine = fixture.engine(config()).await;
    let seen: Arc<Mutex<Vec<Event>>> = Arc::default();
    let subscription = || {
        Subscription::open(
            &engine,
            &fixture.lake,
            SubscriptionConfig {
                name: "projection".into(),
                partition: PartitionOf { index: 0, count: 1 },
                namespace: None,
                batch_size: fixture.events.len() / 3,
            },
        )
    };
    let handle = |seen: &Arc<Mutex<Vec<Event>>>| {
        let seen = Arc::clone(seen);
        move |e: Event| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().expect("seen").push(e);
                Ok::<(), String>(())
            }
        }
    };
    let mut sub = subscription().await.expect("open");
    assert!(sub.process(2, handle(&seen)).await.expect("batch") > 0);
    drop(sub);
    // The checkpoint is a position: every snapshot left after this answers it.
    maintain_everything(&fixture.lake).await;
    let mut sub = subscription().await.expect("reopen");
    while sub.process(2, handle(&seen)).await.expect("batch") > 0 {}
    let seen = seen.lock().expect("seen");
    // Keys are handled in parallel, each key's events in order.
    let mut per_key: std::collections::BTreeMap<&str, Vec<i64>> = Default::default();
    for e in seen.iter() {
        per_key
            .entry(e.partition_key.as_str())
            .or_default()
            .push(e.position.expect("position"));
    }
    for (key, positions) in &per_key {
        assert!(positions.is_sorted(), "{key} out of order: {positions:?}");
    }
    let all: BTreeSet<i64> = seen.iter().map(|e| e.position.expect("position")).collect();
    assert_eq!(all.len(), seen.len(), "an event was delivered twice");
    assert_eq!(all.len(), fixture.events.len(), "an event was skipped");
}
