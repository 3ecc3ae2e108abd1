//! Partitioned subscriptions with durable checkpoints.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use shardlake_core::Event;
use shardlake_core::hash::fnv1a_32;
use shardlake_query::{PartitionOf, Subscription, SubscriptionConfig};

use crate::fixture::{Fixture, config};

type Seen = Arc<Mutex<Vec<(u32, Event)>>>;

fn consumer_config(name: &str, index: u32, count: u32, batch: usize) -> SubscriptionConfig {
    SubscriptionConfig {
        name: name.into(),
        partition: PartitionOf { index, count },
        namespace: None,
        batch_size: batch,
    }
}

/// Processes one batch, recording what the handler saw as partition `index`.
async fn step(sub: &mut Subscription, seen: &Seen, index: u32) -> usize {
    let seen = Arc::clone(seen);
    sub.process(4, move |e: Event| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().expect("seen").push((index, e));
            Ok::<(), String>(())
        }
    })
    .await
    .expect("batch")
}

#[tokio::test]
async fn partitions_get_every_event_once_in_key_order_and_resume_after_restart() {
    let fixture = Fixture::build(3).await;
    let engine = fixture.engine(config()).await;
    let seen: Seen = Arc::default();
    for index in 0..4 {
        let mut sub = Subscription::open(
            &engine,
            &fixture.lake,
            consumer_config("proj", index, 4, 200),
        )
        .await
        .expect("open");
        assert_eq!(sub.position(), 0);
        assert!(step(&mut sub, &seen, index).await > 0);
        let acknowledged = sub.position();
        drop(sub);
        // Restart: resumes after the acknowledged batch.
        let mut sub = Subscription::open(
            &engine,
            &fixture.lake,
            consumer_config("proj", index, 4, 200),
        )
        .await
        .expect("reopen");
        assert_eq!(sub.position(), acknowledged);
        while step(&mut sub, &seen, index).await > 0 {}
    }
    let seen = seen.lock().expect("seen").clone();
    // Every event exactly once.
    let ids: Vec<(i32, i64)> = seen.iter().map(|(_, e)| (e.shard_id, e.seq)).collect();
    let unique: HashSet<(i32, i64)> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event was delivered twice");
    assert_eq!(unique.len(), fixture.events.len(), "an event was lost");
    // Each key in exactly its partition, and in position order.
    let mut per_key: HashMap<&str, Vec<i64>> = HashMap::new();
    for (index, e) in &seen {
        assert_eq!(fnv1a_32(e.partition_key.as_bytes()) % 4, *index);
        per_key
            .entry(&e.partition_key)
            .or_default()
            .push(e.position.expect("position"));
    }
    for (key, positions) in per_key {
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order"
        );
    }
}

#[tokio::test]
async fn scaling_from_one_to_three_workers_and_back_loses_nothing() {
    let fixture = Fixture::build(2).await;
    let engine = fixture.engine(config()).await;
    let seen: Seen = Arc::default();
    // One worker gets through part of the stream.
    let mut one = Subscription::open(&engine, &fixture.lake, consumer_config("p", 0, 1, 500))
        .await
        .expect("open");
    step(&mut one, &seen, 0).await;
    step(&mut one, &seen, 0).await;
    let done_by_one = one.position();
    assert!(done_by_one > 0);
    drop(one);
    // Three workers take over from what the complete 1-worker layout did.
    for index in 0..3 {
        let mut w = Subscription::open(&engine, &fixture.lake, consumer_config("p", index, 3, 300))
            .await
            .expect("open");
        assert_eq!(w.position(), done_by_one);
        while step(&mut w, &seen, index).await > 0 {}
    }
    // More events arrive; back to one worker, which resumes from its own
    // checkpoint: it may see some events again, but misses none.
    let emitter = fixture
        .lake
        .emitter(Default::default())
        .await
        .expect("emitter");
    let late: Vec<Event> = (1..=20)
        .map(|seq| {
            Event::new(
                "tenant-002",
                77,
                seq,
                format!("Order:late-{}", seq % 3),
                "thing.updated",
                chrono::Utc::now(),
            )
        })
        .collect();
    emitter.emit(&late).await.expect("commit");
    emitter.close().await.expect("close");
    let mut one = Subscription::open(&engine, &fixture.lake, consumer_config("p", 0, 1, 500))
        .await
        .expect("reopen");
    assert_eq!(one.position(), done_by_one);
    while step(&mut one, &seen, 0).await > 0 {}

    let seen = seen.lock().expect("seen").clone();
    let got: HashSet<(i32, i64)> = seen.iter().map(|(_, e)| (e.shard_id, e.seq)).collect();
    let want: HashSet<(i32, i64)> = fixture
        .events
        .iter()
        .chain(&late)
        .map(|e| (e.shard_id, e.seq))
        .collect();
    assert_eq!(got, want, "something was lost across re-partitioning");
}

#[tokio::test]
async fn a_failed_batch_is_not_acknowledged_and_comes_again() {
    let fixture = Fixture::build(1).await;
    let engine = fixture.engine(config()).await;
    let mut sub = Subscription::open(&engine, &fixture.lake, consumer_config("f", 0, 2, 50))
        .await
        .expect("open");
    let err = sub
        .process(2, |e: Event| async move {
            if e.seq % 2 == 0 { Err("boom") } else { Ok(()) }
        })
        .await
        .expect_err("a handler failed");
    assert!(err.to_string().contains("unacknowledged"), "{err}");
    assert_eq!(sub.position(), 0);
    let first: BTreeMap<i64, (i32, i64)> = sub
        .poll()
        .await
        .expect("poll")
        .iter()
        .map(|e| (e.position.expect("p"), (e.shard_id, e.seq)))
        .collect();
    assert_eq!(first.len(), 50, "the same batch is delivered again");
}
