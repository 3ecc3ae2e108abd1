//! Plans from the lake's per-key statistics.

use shardlake_core::Event;
use shardlake_lake::Lake;
use shardlake_migrate::{
    KeyStats, analyze_balance, generate_rebalance_plan, key_stats, plan_add_shard,
    plan_remove_shard, validate_plan,
};
use shardlake_query::{CrossShardQuery, QueryConfig};
use shardlake_routing::{ShardRouter, Strategy, Topology};

/// 2,000 keys over 3 namespaces, 1 to 4 events each.
pub async fn lake_with_keys(dir: &std::path::Path) -> (Lake, Vec<Event>) {
    shardlake_testkit::lake_with_keys(dir, 2000).await
}

async fn stats(lake: &Lake) -> Vec<KeyStats> {
    let engine = CrossShardQuery::open(lake, QueryConfig::default())
        .await
        .expect("engine");
    key_stats(&engine).await.expect("stats")
}

#[tokio::test]
async fn key_statistics_come_from_the_lake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (lake, events) = lake_with_keys(dir.path()).await;
    let keys = stats(&lake).await;
    assert_eq!(keys.len(), 2000);
    assert_eq!(
        keys.iter().map(|k| k.events).sum::<u64>(),
        events.len() as u64
    );
    let k7 = keys.iter().find(|k| k.key == "Order:o-7").expect("a key");
    assert_eq!(
        (k7.events, k7.namespaces.clone()),
        (4, vec!["ns-1".to_owned()])
    );
    assert!(k7.bytes > 4 * 64);
}

#[tokio::test]
async fn adding_and_removing_shards_moves_only_what_must_move() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (lake, _) = lake_with_keys(dir.path()).await;
    let keys = stats(&lake).await;
    let from = Topology::new(8, Strategy::ConsistentHash { virtual_nodes: 150 });

    let add = plan_add_shard(&from, 8, &keys, 100_000.0).expect("plan");
    assert_eq!(add.to.version, from.version + 1);
    assert!(
        add.moves.iter().all(|m| m.to == 8),
        "keys only move to the new shard"
    );
    let fraction = add.moves.len() as f64 / keys.len() as f64;
    assert!((0.05..0.2).contains(&fraction), "moved {fraction}");
    assert_eq!(
        add.destinations.keys().copied().collect::<Vec<_>>(),
        vec![8]
    );
    assert_eq!(
        add.events_to_move,
        add.moves.iter().map(|m| m.events).sum::<u64>()
    );
    assert_eq!(
        add.estimated_duration_ms,
        (add.events_to_move as f64 / 100.0).ceil() as u64
    );
    validate_plan(&add, &keys).expect("valid");

    // Removing shard 3: exactly its keys move, none is skipped.
    let remove = plan_remove_shard(&from, 3, &keys, 100_000.0).expect("plan");
    let router = ShardRouter::new(from.clone()).expect("router");
    let on_3 = keys
        .iter()
        .filter(|k| router.shard_of(&k.key) == Ok(3))
        .count();
    assert_eq!(remove.moves.len(), on_3);
    assert!(remove.moves.iter().all(|m| m.from == 3 && m.to != 3));

    // A tampered plan is caught, with every problem named.
    let mut broken = add.clone();
    let dropped = broken.moves.pop().expect("a move");
    broken.moves[0].to = 42;
    let err = validate_plan(&broken, &keys)
        .expect_err("invalid")
        .to_string();
    assert!(
        err.contains(&dropped.key) && err.contains("not moved"),
        "{err}"
    );
    assert!(err.contains("shard 42"), "{err}");

    assert!(
        plan_add_shard(&from, 3, &keys, 1.0).is_err(),
        "shard 3 exists"
    );
    assert!(plan_remove_shard(&from, 99, &keys, 1.0).is_err());
    assert!(plan_remove_shard(&Topology::new(1, Strategy::Hash), 0, &keys, 1.0).is_err());
}

#[tokio::test]
async fn balance_is_weighted_by_events_and_rebalance_plans_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (lake, events) = lake_with_keys(dir.path()).await;
    let keys = stats(&lake).await;
    let from = Topology::new(4, Strategy::Hash);
    let report = analyze_balance(&from, &keys).expect("report");
    assert_eq!(report.keys, events.len() as u64);
    assert!(report.balance_score > 0.8, "{}", report.render());
    // Hash -> jump over the same shards: a rebalance with a new strategy.
    let to = Topology {
        version: 2,
        shards: from.shards.clone(),
        strategy: Strategy::Jump,
    };
    let plan = generate_rebalance_plan(&from, &to, &keys, 1000.0).expect("plan");
    assert!(!plan.moves.is_empty());
    let stale = Topology { version: 1, ..to };
    assert!(generate_rebalance_plan(&from, &stale, &keys, 1000.0).is_err());
}
