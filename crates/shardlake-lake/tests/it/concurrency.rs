//! Optimistic concurrency: a request can state the watermark each shard
//! must have; a stale expectation is refused with the actual value, read
//! from the table.

use std::collections::BTreeMap;

use shardlake_core::Event;
use shardlake_lake::{EmitterConfig, ErrorKind, Lake};

use crate::common::{assert_exactly, ts};

fn shard_events(shard: i32, seqs: std::ops::RangeInclusive<i64>, tag: &str) -> Vec<Event> {
    seqs.map(|seq| {
        Event::new(
            "acme",
            shard,
            seq,
            format!("Order:{tag}-{seq}"),
            "thing.updated",
            ts(seq),
        )
    })
    .collect()
}

fn expect(shard: i32, watermark: i64) -> BTreeMap<i32, i64> {
    BTreeMap::from([(shard, watermark)])
}

#[tokio::test]
async fn a_stale_expectation_is_refused_with_the_committed_watermark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open_local(dir.path()).await.expect("lake");
    let emitter = lake
        .emitter(EmitterConfig::default())
        .await
        .expect("emitter");
    let first = shard_events(5, 1..=3, "a");
    let ack = emitter
        .emit(&first)
        .expecting(expect(5, 0))
        .await
        .expect("fresh shard");
    assert_eq!(ack.accepted, 3);
    let ack = emitter
        .emit(&shard_events(5, 4..=4, "a"))
        .expecting(expect(5, 3))
        .await
        .expect("right expectation");
    assert_eq!(ack.watermarks.get(&5), Some(&4));

    let err = emitter
        .emit(&shard_events(5, 5..=6, "a"))
        .expecting(expect(5, 3))
        .await
        .expect_err("stale expectation");
    assert_eq!(err.kind(), ErrorKind::ConcurrencyConflict);
    let detail = err.concurrency_detail().expect("detail");
    assert_eq!((detail.shard_id, detail.expected, detail.actual), (5, 3, 4));
    // Nothing of the refused request was written; other requests go on.
    emitter
        .emit(&shard_events(6, 1..=2, "b"))
        .await
        .expect("unrelated");
    emitter.close().await.expect("close");
    let mut all = first;
    all.extend(shard_events(5, 4..=4, "a"));
    all.extend(shard_events(6, 1..=2, "b"));
    assert_exactly(&lake, &all).await;
}

#[tokio::test]
async fn the_expectation_is_checked_against_the_table_not_a_cached_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open_local(dir.path()).await.expect("lake");
    let a = lake.emitter(EmitterConfig::default()).await.expect("a");
    let b = lake.emitter(EmitterConfig::default()).await.expect("b");
    // A's cached state has never seen shard 7.
    a.emit(&shard_events(1, 1..=1, "x")).await.expect("warm a");
    b.emit(&shard_events(7, 1..=3, "b"))
        .await
        .expect("b commits shard 7");
    // A is told (say, by B's ack) that shard 7 is at 3: accepted.
    let ack = a
        .emit(&shard_events(7, 4..=5, "a"))
        .expecting(expect(7, 3))
        .await
        .expect("fresh read agrees");
    assert_eq!(ack.accepted, 2);
    // And a wrong expectation reports the real watermark, 5.
    let err = a
        .emit(&shard_events(7, 6..=6, "a"))
        .expecting(expect(7, 0))
        .await
        .expect_err("refused");
    assert_eq!(err.concurrency_detail().map(|d| d.actual), Some(5));
    a.close().await.expect("close");
    b.close().await.expect("close");
}

#[tokio::test]
async fn of_two_racing_emitters_with_the_same_expectation_exactly_one_wins() {
    for round in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open_local(dir.path()).await.expect("lake");
        let a = lake.emitter(EmitterConfig::default()).await.expect("a");
        let b = lake.emitter(EmitterConfig::default()).await.expect("b");
        // Both think they own shard 9 at watermark 0 (an old and a new owner).
        let (ea, eb) = (shard_events(9, 1..=4, "old"), shard_events(9, 1..=4, "new"));
        let (ra, rb) = tokio::join!(
            a.emit(&ea).expecting(expect(9, 0)),
            b.emit(&eb).expecting(expect(9, 0))
        );
        let won = [ra.is_ok(), rb.is_ok()];
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: {won:?}"
        );
        let (winner, loser) = if won[0] { (ra, rb) } else { (rb, ra) };
        assert_eq!(winner.expect("won").accepted, 4);
        let detail = loser
            .expect_err("lost")
            .concurrency_detail()
            .expect("detail");
        assert_eq!((detail.expected, detail.actual), (0, 4));
        a.close().await.expect("close");
        b.close().await.expect("close");
        let rows = crate::common::all_rows(&lake).await;
        let tags: std::collections::HashSet<String> = rows
            .iter()
            .map(|(_, e)| e.partition_key.split('-').next().unwrap_or("").to_owned())
            .collect();
        assert_eq!(tags.len(), 1, "rows of both owners: {tags:?}");
    }
}
