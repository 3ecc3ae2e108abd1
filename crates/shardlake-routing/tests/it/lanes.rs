//! Keyed lanes: 20 keys x 10 items on 10 lanes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardlake_routing::{KeyedLanes, LaneItem};

struct Item {
    key: Option<String>,
    id: Option<String>,
    seq: usize,
    /// The lane the executor put it on (recorded for the overlap check).
    lane: usize,
}

impl LaneItem for Item {
    fn shard_key(&self) -> Option<&str> {
        self.key.as_deref()
    }
    fn identifier(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

#[derive(Debug, Clone)]
struct Run {
    key: String,
    seq: usize,
    lane: usize,
    start: Instant,
    end: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_key_in_order_every_item_once_lanes_overlap() {
    let runs = Arc::new(Mutex::new(Vec::<Run>::new()));
    let lanes_count = 10;
    let log = Arc::clone(&runs);
    let lanes = KeyedLanes::new(lanes_count, move |item: Item| {
        let log = Arc::clone(&log);
        async move {
            let lane = item.lane;
            let start = Instant::now();
            // Vary the work so a broken executor would reorder.
            tokio::time::sleep(Duration::from_millis(1 + (item.seq * 7 % 5) as u64)).await;
            log.lock().expect("log").push(Run {
                key: item.key.clone().unwrap_or_default(),
                seq: item.seq,
                lane,
                start,
                end: Instant::now(),
            });
            item.seq
        }
    });
    // Submit interleaved: item 0 of every key, then item 1, ...
    let mut pending = Vec::new();
    for seq in 0..10 {
        for k in 0..20 {
            let mut item = Item {
                key: Some(format!("user-{k}")),
                id: None,
                seq,
                lane: 0,
            };
            item.lane = lanes.lane_of(&item);
            pending.push(lanes.submit(item).expect("open"));
        }
    }
    for (i, p) in pending.into_iter().enumerate() {
        assert_eq!(p.outcome().await.expect("ran"), i / 20);
    }
    lanes.close().await;

    let runs = runs.lock().expect("log").clone();
    assert_eq!(runs.len(), 200, "every item exactly once");
    for k in 0..20 {
        let key = format!("user-{k}");
        let mine: Vec<&Run> = runs.iter().filter(|r| r.key == key).collect();
        let seqs: Vec<usize> = mine.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (0..10).collect::<Vec<_>>(), "{key} out of order");
        for w in mine.windows(2) {
            assert!(w[0].end <= w[1].start, "{key}: items overlapped");
        }
    }
    let overlapping = runs.iter().any(|a| {
        runs.iter()
            .any(|b| a.lane != b.lane && a.start < b.end && b.start < a.end)
    });
    assert!(overlapping, "different lanes never ran at the same time");
    let used: std::collections::HashSet<usize> = runs.iter().map(|r| r.lane).collect();
    assert!(used.len() > 1);
}

#[tokio::test]
async fn keys_fall_back_to_the_identifier_then_lane_zero() {
    let lanes = KeyedLanes::new(8, |_item: Item| async {});
    let keyed = Item {
        key: Some("k".into()),
        id: Some("other".into()),
        seq: 0,
        lane: 0,
    };
    let by_id = Item {
        key: None,
        id: Some("k".into()),
        seq: 0,
        lane: 0,
    };
    let neither = Item {
        key: None,
        id: None,
        seq: 0,
        lane: 0,
    };
    assert_eq!(lanes.lane_of(&keyed), lanes.lane_of(&by_id));
    assert_eq!(lanes.lane_of(&neither), 0);
    assert_eq!(lanes.lanes(), 8);
    lanes.close().await;
}
