//! Distribution and movement properties over 100,000 random keys.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use shardlake_routing::{
    Comparator, ErrorKind, RangeDef, RangeValue, RoutingKey, ShardRouter, SharedRouter,
    StaleTopology, Strategy, Topology,
};

fn random_keys(n: usize, seed: u64) -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(8..32);
            (0..len)
                .map(|_| char::from(rng.random_range(b'!'..=b'~')))
                .collect()
        })
        .collect()
}

fn router(shards: u32, strategy: Strategy) -> ShardRouter {
    ShardRouter::new(Topology::new(shards, strategy)).expect("valid topology")
}

fn consistent() -> Strategy {
    Strategy::ConsistentHash { virtual_nodes: 150 }
}

#[test]
fn hash_and_jump_spread_within_5_percent_and_consistent_within_15() {
    let keys = random_keys(100_000, 7);
    for (strategy, bound) in [
        (Strategy::Hash, 5.0),
        (Strategy::Jump, 5.0),
        (consistent(), 15.0),
    ] {
        let report = router(16, strategy.clone()).distribution(keys.iter().map(String::as_str));
        assert_eq!(report.keys, 100_000);
        assert!(
            report.max_deviation_pct <= bound,
            "{strategy:?}: {:.2}% > {bound}%\n{}",
            report.max_deviation_pct,
            report.render()
        );
        println!(
            "{strategy:?}: max deviation {:.2}%, cv {:.4}",
            report.max_deviation_pct, report.coefficient_of_variation
        );
    }
}

#[test]
fn growing_16_to_17_moves_about_a_seventeenth_and_only_to_the_new_shard() {
    let keys = random_keys(100_000, 11);
    for strategy in [consistent(), Strategy::Jump] {
        let before = router(16, strategy.clone());
        let after =
            ShardRouter::new(before.topology().with_shards((0..17).collect())).expect("valid");
        let mut moved = 0usize;
        for key in &keys {
            let (a, b) = (
                before.shard_of(key).expect("routes"),
                after.shard_of(key).expect("routes"),
            );
            if a != b {
                assert_eq!(
                    b, 16,
                    "{strategy:?}: `{key}` moved {a} -> {b}, not to the new shard"
                );
                moved += 1;
            }
        }
        let fraction = moved as f64 / keys.len() as f64;
        let ideal = 1.0 / 17.0;
        assert!(
            fraction > ideal * 0.5 && fraction <= ideal * 1.5,
            "{strategy:?} moved {fraction:.4}, ideal {ideal:.4}"
        );
        println!(
            "{strategy:?}: moved {:.2}% (ideal {:.2}%)",
            fraction * 100.0,
            ideal * 100.0
        );
    }
    // Plain modulo hashing moves most keys: why the other two exist.
    let (a, b) = (router(16, Strategy::Hash), router(17, Strategy::Hash));
    let moved = keys
        .iter()
        .filter(|k| a.shard_of(k).ok() != b.shard_of(k).ok())
        .count();
    assert!(moved as f64 / keys.len() as f64 > 0.85);
}

#[test]
fn removing_a_shard_from_the_ring_moves_only_its_keys() {
    let keys = random_keys(20_000, 3);
    let before = router(8, consistent());
    let after =
        ShardRouter::new(before.topology().with_shards(vec![0, 1, 2, 4, 5, 6, 7])).expect("valid");
    for key in &keys {
        let (a, b) = (
            before.shard_of(key).expect("a"),
            after.shard_of(key).expect("b"),
        );
        if a != 3 {
            assert_eq!(a, b, "`{key}` was not on shard 3 but moved");
        } else {
            assert_ne!(b, 3);
        }
    }
}

#[test]
fn range_routing_over_strings_and_numbers() {
    let alpha = ShardRouter::new(Topology::new(
        3,
        Strategy::Range {
            ranges: vec![
                RangeDef {
                    start: Some(RangeValue::Str("A".into())),
                    end: Some(RangeValue::Str("H".into())),
                    shard: 0,
                },
                RangeDef {
                    start: Some(RangeValue::Str("H".into())),
                    end: Some(RangeValue::Str("P".into())),
                    shard: 1,
                },
                RangeDef {
                    start: Some(RangeValue::Str("P".into())),
                    end: Some(RangeValue::Str("[".into())),
                    shard: 2,
                },
            ],
            default_shard: 0,
            comparator: Comparator::FirstChar,
        },
    ))
    .expect("valid");
    for (key, shard) in [
        ("alice", 0),
        ("Gus", 0),
        ("harry", 1),
        ("oscar", 1),
        ("peter", 2),
        ("zoe", 2),
        ("42", 0),
        ("", 0),
    ] {
        assert_eq!(alpha.route(key), Ok(shard), "{key}");
    }

    let time = ShardRouter::new(Topology::new(
        3,
        Strategy::Range {
            ranges: vec![
                RangeDef {
                    start: None,
                    end: Some(RangeValue::Num(1_704_067_200_000.0)),
                    shard: 0,
                },
                RangeDef {
                    start: Some(RangeValue::Num(1_704_067_200_000.0)),
                    end: Some(RangeValue::Num(1_711_929_600_000.0)),
                    shard: 1,
                },
                RangeDef {
                    start: Some(RangeValue::Num(1_711_929_600_000.0)),
                    end: None,
                    shard: 2,
                },
            ],
            default_shard: 0,
            comparator: Comparator::Part {
                separator: "-".into(),
                index: 1,
            },
        },
    ))
    .expect("valid");
    assert_eq!(time.route("evt-1700000000000"), Ok(0));
    assert_eq!(time.route("evt-1704067200000"), Ok(1), "start is inclusive");
    assert_eq!(time.route("evt-1711929600000"), Ok(2), "end is exclusive");
    assert_eq!(time.route("evt"), Ok(0), "no such part: the default shard");
    let refused = time.route("evt-soon").expect_err("not a number");
    assert_eq!(refused.kind(), ErrorKind::InvalidTopology);
    assert_eq!(refused.context_value("refused"), Some("key"), "{refused}");
    let m = time.metrics();
    assert_eq!((m.routing_operations, m.errors), (5, 1));
    assert_eq!(m.shard_distribution, vec![(0, 2), (1, 1), (2, 1)]);

    // A custom comparator replaces the built-in one.
    let custom = ShardRouter::new(time.topology().clone())
        .expect("valid")
        .with_range_key(std::sync::Arc::new(|k: &str| {
            Some(RangeValue::Num(k.len() as f64 * 1e12))
        }));
    assert_eq!(custom.route("xx"), Ok(2));

    // Overlaps and unknown shards are refused.
    let overlapping = Topology::new(
        2,
        Strategy::Range {
            ranges: vec![
                RangeDef {
                    start: Some(RangeValue::Num(0.0)),
                    end: Some(RangeValue::Num(10.0)),
                    shard: 0,
                },
                RangeDef {
                    start: Some(RangeValue::Num(5.0)),
                    end: None,
                    shard: 1,
                },
            ],
            default_shard: 0,
            comparator: Comparator::Whole,
        },
    );
    assert_eq!(
        ShardRouter::new(overlapping).err().map(|e| e.kind()),
        Some(ErrorKind::InvalidTopology)
    );
    let unknown = Topology::new(
        2,
        Strategy::Range {
            ranges: vec![],
            default_shard: 9,
            comparator: Comparator::Whole,
        },
    );
    assert!(ShardRouter::new(unknown).is_err());
}

#[test]
fn topologies_round_trip_through_json_and_toml() {
    let topology = Topology {
        version: 7,
        shards: vec![0, 1, 5],
        strategy: Strategy::Range {
            ranges: vec![
                RangeDef {
                    start: None,
                    end: Some(RangeValue::Str("m".into())),
                    shard: 1,
                },
                RangeDef {
                    start: Some(RangeValue::Str("m".into())),
                    end: None,
                    shard: 5,
                },
            ],
            default_shard: 0,
            comparator: Comparator::Whole,
        },
    };
    assert_eq!(Topology::parse(&topology.to_json()), Ok(topology.clone()));
    let toml = topology.to_toml().expect("toml");
    assert_eq!(Topology::parse(&toml), Ok(topology));
    let ring = Topology::new(4, consistent());
    assert_eq!(Topology::parse(&ring.to_toml().expect("toml")), Ok(ring));
    assert!(
        Topology::parse(r#"{"version": 1, "shards": [], "strategy": {"kind": "hash"}}"#).is_err()
    );
}

#[test]
fn composite_keys_are_unambiguous() {
    let r = router(1024, Strategy::Hash);
    let a = RoutingKey::composite(["a:b", "c"]);
    let b = RoutingKey::composite(["a", "b:c"]);
    assert_ne!(a, b);
    assert_eq!(r.route_key(&a), r.route(a.as_str()));
    assert_eq!(a.to_string(), "a:b|c");
}

#[test]
fn a_shared_router_swaps_versions_atomically_and_never_back() {
    let shared = std::sync::Arc::new(SharedRouter::new(router(4, consistent())));
    let v2 =
        ShardRouter::new(shared.current().topology().with_shards((0..8).collect())).expect("v2");
    let keys = random_keys(1000, 5);
    let expected_v1: Vec<u32> = keys
        .iter()
        .map(|k| shared.current().shard_of(k).expect("v1"))
        .collect();
    let expected_v2: Vec<u32> = keys.iter().map(|k| v2.shard_of(k).expect("v2")).collect();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let shared = std::sync::Arc::clone(&shared);
            let (keys, v1, v2) = (keys.clone(), expected_v1.clone(), expected_v2.clone());
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let current = shared.current();
                    let expected = if current.topology().version == 1 {
                        &v1
                    } else {
                        &v2
                    };
                    for (k, want) in keys.iter().zip(expected) {
                        assert_eq!(current.shard_of(k).expect("routes"), *want);
                    }
                }
            })
        })
        .collect();
    shared.swap(v2).expect("newer version");
    for r in readers {
        r.join().expect("reader");
    }
    assert_eq!(shared.current().topology().version, 2);
    let stale = router(4, consistent());
    assert_eq!(
        shared
            .swap(stale)
            .err()
            .and_then(|e| e.source_as::<StaleTopology>().copied()),
        Some(StaleTopology {
            current: 2,
            offered: 1
        })
    );
}
