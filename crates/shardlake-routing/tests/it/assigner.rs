//! ShardAssigner: key extraction, strategies, tracking, hints.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use shardlake_core::Event;
use shardlake_routing::assigner::{HintKind, Priority};
use shardlake_routing::{
    AssignStrategy, AssignerConfig, KeyOrigin, KeySource, RoutingKey, ShardAssigner, ShardRouter,
    Strategy, Topology, TrackingLimits,
};

#[test]
fn the_assigner_and_the_router_agree_on_every_key() {
    for (assign, route) in [
        (AssignStrategy::Hash, Strategy::Hash),
        (
            AssignStrategy::Consistent { virtual_nodes: 150 },
            Strategy::ConsistentHash { virtual_nodes: 150 },
        ),
    ] {
        let assigner = ShardAssigner::new(AssignerConfig::new(16, assign)).expect("assigner");
        let router = ShardRouter::new(Topology::new(16, route)).expect("router");
        for i in 0..2000 {
            let key = format!("Order:o-{i}");
            let got = assigner
                .assign(&json!({ "partition_key": key }))
                .expect("assigns");
            assert_eq!(got.shard, router.shard_of(&key).expect("routes"), "{key}");
            assert_eq!(got.source, KeyOrigin::Primary);
        }
    }
}

#[test]
fn keys_come_from_fields_composites_functions_and_fallbacks() {
    let mut config = AssignerConfig::new(32, AssignStrategy::Hash);
    config.key = KeySource::Composite(vec!["tenant".into(), "region".into()]);
    let composite = ShardAssigner::new(config).expect("assigner");
    let a = composite
        .assign(&json!({"tenant": "acme", "region": "eu"}))
        .expect("ok");
    assert_eq!(a.key, RoutingKey::composite(["acme", "eu"]).as_str());
    assert_eq!(
        a.shard,
        composite.router().shard_of(&a.key).expect("routes")
    );
    // A missing part is a missing key (lenient: default shard 0).
    let missing = composite
        .assign(&json!({"tenant": "acme"}))
        .expect("lenient");
    assert_eq!((missing.shard, missing.source), (0, KeyOrigin::Default));

    let mut config = AssignerConfig::new(16, AssignStrategy::Hash);
    config.key = KeySource::Function(Arc::new(|thing| {
        if thing["type"] == "OrderItem" {
            thing["order_id"].as_str().map(str::to_owned)
        } else {
            thing["id"].as_str().map(str::to_owned)
        }
    }));
    let function = ShardAssigner::new(config).expect("assigner");
    let item = function
        .assign(&json!({"type": "OrderItem", "id": "i-1", "order_id": "o-9"}))
        .expect("ok");
    let order = function
        .assign(&json!({"type": "Order", "id": "o-9"}))
        .expect("ok");
    assert_eq!(
        item.shard, order.shard,
        "an order's items live with the order"
    );

    let mut config = AssignerConfig::new(8, AssignStrategy::Hash);
    config.key = KeySource::Field("customer_id".into());
    config.fallback_field = Some("id".into());
    let fallback = ShardAssigner::new(config.clone()).expect("assigner");
    let got = fallback.assign(&json!({"id": "x-1"})).expect("falls back");
    assert_eq!((got.key.as_str(), got.source), ("x-1", KeyOrigin::Fallback));
    let got = fallback
        .assign(&json!({"customer_id": "", "id": "x-2"}))
        .expect("empty is missing");
    assert_eq!(got.source, KeyOrigin::Fallback);

    config.strict = true;
    let strict = ShardAssigner::new(config).expect("assigner");
    let refused = strict.assign(&json!({"id": "x-1"})).expect_err("no key");
    assert_eq!(
        refused.context_value("refused"),
        Some("missing_key"),
        "{refused}"
    );
    assert!(
        strict.assign(&json!({"customer_id": 17})).is_ok(),
        "numbers are keys too"
    );
}

#[test]
fn tenant_strategy_keeps_a_tenant_on_one_shard_and_events_work() {
    let assigner = ShardAssigner::new(AssignerConfig::new(
        16,
        AssignStrategy::Tenant {
            field: "namespace".into(),
        },
    ))
    .expect("assigner");
    let ts = chrono::Utc::now();
    let shards: std::collections::HashSet<u32> = (0..200)
        .map(|i| {
            let e = Event::new(
                "acme",
                i % 7,
                i64::from(i) + 1,
                format!("Order:o-{i}"),
                "thing.created",
                ts,
            );
            assigner.assign_event(&e).expect("assigns").shard
        })
        .collect();
    assert_eq!(shards.len(), 1);

    // Dotted paths reach into an event's payload.
    let mut config = AssignerConfig::new(16, AssignStrategy::Hash);
    config.key = KeySource::Field("payload.customer_id".into());
    config.strict = true;
    let by_payload = ShardAssigner::new(config).expect("assigner");
    let e = Event::new("acme", 1, 1, "Order:o-1", "thing.created", ts)
        .with_payload(&json!({"customer_id": "cus-7"}));
    let got = by_payload.assign_event(&e).expect("found in payload");
    assert_eq!(got.key, "cus-7");
}

#[test]
fn tracking_finds_hot_shards_and_suggests_splits_and_merges() {
    let mut config = AssignerConfig::new(4, AssignStrategy::Hash);
    config.tracking = true;
    config.limits = TrackingLimits {
        max_entities_per_shard: Some(100),
        max_bytes_per_shard: None,
        min_entities_per_shard: Some(10),
        migration_bytes_per_second: 1000,
    };
    let assigner = ShardAssigner::new(config).expect("assigner");
    let router = assigner.router();
    // Fill one shard far past its limit; leave two others nearly empty.
    let mut per_shard = [0u32; 4];
    let mut i = 0;
    while per_shard[0] < 200 || per_shard[1] < 50 || per_shard[2] < 3 || per_shard[3] < 5 {
        let key = format!("k-{i}");
        i += 1;
        let shard = router.shard_of(&key).expect("routes") as usize;
        let cap = [200, 50, 3, 5][shard];
        if per_shard[shard] < cap {
            assigner.record_entity(&key, 10).expect("records");
            per_shard[shard] += 1;
        }
    }
    let usage = assigner.shard_utilization();
    let entities: Vec<u64> = usage.iter().map(|u| u.entities).collect();
    assert_eq!(entities, vec![200, 50, 3, 5]);
    assert_eq!(usage[0].relative_load, 1.0);

    let hints = assigner.rebalance_hints();
    assert_eq!(hints.len(), 2, "{hints:?}");
    assert_eq!(
        (hints[0].kind, hints[0].priority, hints[0].source_shard),
        (HintKind::Split, Priority::High, 0)
    );
    assert_eq!(hints[0].plan.entities_to_move, 100);
    assert_eq!(
        hints[0].plan.estimated_duration_ms, 1000,
        "1000 bytes at 1000 B/s"
    );
    assert_eq!(
        (hints[1].kind, hints[1].source_shard, hints[1].target_shard),
        (HintKind::Merge, 2, Some(3))
    );

    // Accesses in a sliding window.
    let now = Instant::now();
    let hot_key = (0..)
        .map(|i| format!("h-{i}"))
        .find(|k| router.shard_of(k) == Ok(1))
        .expect("a key");
    for s in 0..30 {
        assigner
            .record_access_at(&hot_key, now - Duration::from_secs(s))
            .expect("records");
    }
    assert_eq!(
        assigner.hot_shards_at(20, Duration::from_secs(60), now),
        vec![1]
    );
    assert_eq!(
        assigner.hot_shards_at(20, Duration::from_secs(10), now),
        Vec::<u32>::new()
    );
}
