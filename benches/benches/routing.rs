//! Routing and lane dispatch costs (criterion):
//! `cargo bench -p shardlake-bench --bench routing`.
//!
//! Targets: hash and jump routing of a 16-byte key under 50 ns;
//! consistent-hash with 150 virtual nodes x 64 shards under 200 ns; lane
//! dispatch overhead under 2 µs per item.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use shardlake_routing::{KeyedLanes, LaneItem, ShardRouter, Strategy, Topology};

const KEY: &str = "Order:o-12345678"; // 16 bytes

fn routing(c: &mut Criterion) {
    assert_eq!(KEY.len(), 16);
    for (name, topology) in [
        ("hash_16_shards", Topology::new(16, Strategy::Hash)),
        ("jump_16_shards", Topology::new(16, Strategy::Jump)),
        (
            "consistent_hash_64_shards_150_vnodes",
            Topology::new(64, Strategy::ConsistentHash { virtual_nodes: 150 }),
        ),
    ] {
        let router = ShardRouter::new(topology).expect("valid");
        c.bench_function(&format!("route/{name}"), |b| {
            b.iter(|| router.route(black_box(KEY)))
        });
    }
}

struct Item(u64);

impl LaneItem for Item {
    fn shard_key(&self) -> Option<&str> {
        Some(KEY)
    }
}

fn lanes(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Submit 1,000 no-op items and wait for the last: the executor's own
    // cost per item (channel, lane task, completion signal).
    c.bench_function("lanes/dispatch_1000_items_10_lanes", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let lanes = KeyedLanes::new(10, |item: Item| async move { item.0 });
                let mut last = None;
                for i in 0..1000 {
                    last = Some(lanes.submit(Item(i)).expect("open"));
                }
                let out = last.expect("submitted").outcome().await.expect("ran");
                lanes.close().await;
                black_box(out)
            })
        })
    });
}

criterion_group!(benches, routing, lanes);
criterion_main!(benches);
