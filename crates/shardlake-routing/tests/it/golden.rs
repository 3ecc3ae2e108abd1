//! Golden vectors: the key -> shard mapping of every strategy, pinned.
//!
//! `testdata/routing-golden.json` records where fixed keys land. If this
//! test fails, a change moved keys between shards: every deployed lake and
//! every running shard would disagree with the new code. Changing the
//! vectors requires a migration (see docs/routing.md), never just
//! regenerating the file. (To write the file for a brand-new strategy:
//! `SHARDLAKE_TEST_GOLDEN_WRITE=1 cargo test -p shardlake-routing golden`.)

use serde_json::{Value, json};
use shardlake_routing::hash::{fnv1a_32, jump_key, ring_position};
use shardlake_routing::{ShardRouter, Strategy, Topology};

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/routing-golden.json"
);

const KEYS: &[&str] = &[
    "",
    "a",
    "foobar",
    "Order:ord-123",
    "Customer:cus-00000002",
    "cust-123",
    "corr-123",
    "global",
    "dcb:tenant:T:entity:Order:ord-123",
    "tenant-001",
    "user-42",
    "ünïcødé-ключ",
    "0123456789abcdef",
    "Invoice:inv-00000001",
    "evt-1704067200000",
];

fn current() -> Value {
    let strategies = [
        ("hash_16", Topology::new(16, Strategy::Hash)),
        ("hash_7", Topology::new(7, Strategy::Hash)),
        (
            "consistent_hash_16x150",
            Topology::new(16, Strategy::ConsistentHash { virtual_nodes: 150 }),
        ),
        (
            "consistent_hash_64x150",
            Topology::new(64, Strategy::ConsistentHash { virtual_nodes: 150 }),
        ),
        ("jump_16", Topology::new(16, Strategy::Jump)),
        ("jump_1000", Topology::new(1000, Strategy::Jump)),
    ];
    let keys: Vec<Value> = KEYS
        .iter()
        .map(|key| {
            let mut entry = json!({
                "key": key,
                "fnv1a_32": fnv1a_32(key.as_bytes()),
                "ring_position": ring_position(key.as_bytes()),
                "jump_key": jump_key(key.as_bytes()).to_string(),
            });
            for (name, topology) in &strategies {
                let router = ShardRouter::new(topology.clone()).expect("valid");
                entry[*name] = json!(router.shard_of(key).expect("routes"));
            }
            entry
        })
        .collect();
    json!({
        "_comment": "Where fixed keys land under each strategy. Changing any value moves keys between shards and needs a migration (docs/routing.md); never regenerate this file to make a test pass.",
        "keys": keys,
    })
}

#[test]
fn golden_vectors_pin_every_strategy() {
    let now = current();
    if std::env::var_os("SHARDLAKE_TEST_GOLDEN_WRITE").is_some() {
        std::fs::write(
            GOLDEN,
            serde_json::to_string_pretty(&now).expect("json") + "\n",
        )
        .expect("write golden");
    }
    let pinned: Value =
        serde_json::from_slice(&std::fs::read(GOLDEN).expect("testdata/routing-golden.json"))
            .expect("golden JSON");
    for (want, got) in pinned["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .zip(now["keys"].as_array().expect("keys"))
    {
        assert_eq!(want, got, "the mapping of `{}` changed", want["key"]);
    }
    assert_eq!(pinned["keys"].as_array().map(Vec::len), Some(KEYS.len()));
    // The published FNV-1a values anchor the file to the algorithm itself.
    assert_eq!(pinned["keys"][1]["fnv1a_32"], 0xe40c_292c_u32);
    assert_eq!(pinned["keys"][2]["fnv1a_32"], 0xbf9c_f968_u32);
}
