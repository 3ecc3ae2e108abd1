//! `shardlake generate`: deterministic synthetic events with realistic shape.
//!
//! Entities live through a lifecycle (`thing.created`, several
//! `thing.updated`, sometimes `thing.deleted`), events of different entities
//! interleave, namespace sizes are skewed (namespace i gets weight 1/(i+1)),
//! each entity belongs to the shard its partition key hashes to, and every
//! shard's `seq` increases in emission order. Every event carries the
//! entity's full state, so the latest event of an entity is its current state.

use std::io::Write;

use chrono::{DateTime, Duration, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use shardlake_core::Event;
use shardlake_core::hash::bucket_of;

/// Parameters of a synthetic event stream.
#[derive(Debug, Clone)]
pub struct GenerateSpec {
    /// Number of events.
    pub events: u64,
    /// Number of shards (events go to the shard their key hashes to).
    pub shards: u32,
    /// Number of namespaces (tenants), sizes skewed.
    pub namespaces: u32,
    /// Seed: the same spec always yields the same events.
    pub seed: u64,
}

const ENTITY_TYPES: [&str; 5] = ["Customer", "Order", "Product", "Invoice", "Subscription"];
const COUNTRIES: [&str; 8] = ["US", "DE", "FR", "JP", "BR", "IN", "GB", "CA"];
const TIERS: [&str; 3] = ["free", "pro", "enterprise"];
const ORDER_STATUS: [&str; 5] = ["pending", "paid", "shipped", "delivered", "refunded"];
const FIRST: [&str; 8] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Frances", "Donald",
];
const LAST: [&str; 8] = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Allen", "Knuth",
];

/// Start of generated time: 2026-01-01T00:00:00Z.
pub fn epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default()
}

/// Name of namespace `i`.
pub fn namespace_name(i: u32) -> String {
    format!("tenant-{i:03}")
}

struct Entity {
    namespace: u32,
    kind: usize,
    id: u64,
    version: i64,
    state: serde_json::Value,
}

/// Streams the events of `spec` to `sink`, one at a time, in emission order.
pub fn generate(
    spec: &GenerateSpec,
    mut sink: impl FnMut(Event) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut rng = SmallRng::seed_from_u64(spec.seed);
    let shards = spec.shards.max(1);
    let namespaces = spec.namespaces.max(1);
    // Zipf-like weights: namespace i gets 1/(i+1) of the traffic share.
    let weights: Vec<f64> = (0..namespaces).map(|i| 1.0 / f64::from(i + 1)).collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cumulative.push(acc);
    }
    let mut seqs = vec![0i64; shards as usize];
    let mut live: Vec<Entity> = Vec::new();
    let mut next_id = 1u64;
    let mut ts = epoch();
    for _ in 0..spec.events {
        ts += Duration::milliseconds(rng.random_range(1..100));
        // Keep a working set: create when it is small, otherwise mostly update.
        let create = live.len() < 64 || rng.random_bool(0.25);
        let (entity_index, event_type) = if create {
            let r: f64 = rng.random();
            let namespace = cumulative.iter().position(|c| r <= *c).unwrap_or(0) as u32;
            let kind = rng.random_range(0..ENTITY_TYPES.len());
            let id = next_id;
            next_id += 1;
            let state = initial_state(kind, id, &mut rng);
            live.push(Entity {
                namespace,
                kind,
                id,
                version: 1,
                state,
            });
            (live.len() - 1, "thing.created")
        } else {
            let i = rng.random_range(0..live.len());
            let e = &mut live[i];
            e.version += 1;
            if rng.random_bool(0.08) {
                (i, "thing.deleted")
            } else {
                update_state(e.kind, &mut e.state, &mut rng);
                (i, "thing.updated")
            }
        };
        let e = &live[entity_index];
        let entity_type = ENTITY_TYPES[e.kind];
        let entity_id = format!("{}-{:08}", &entity_type[..3].to_ascii_lowercase(), e.id);
        let partition_key = format!("{entity_type}:{entity_id}");
        let shard = bucket_of(&partition_key, shards);
        seqs[shard as usize] += 1;
        let mut event = Event::new(
            namespace_name(e.namespace),
            shard as i32,
            seqs[shard as usize],
            partition_key,
            event_type,
            ts,
        )
        .with_entity(entity_type, entity_id, e.version);
        if event_type != "thing.deleted" {
            event = event.with_payload(&e.state);
        }
        if event_type == "thing.deleted" {
            live.swap_remove(entity_index);
        }
        sink(event)?;
    }
    Ok(())
}

fn initial_state(kind: usize, id: u64, rng: &mut SmallRng) -> serde_json::Value {
    let name = format!(
        "{} {}",
        FIRST[rng.random_range(0..FIRST.len())],
        LAST[rng.random_range(0..LAST.len())]
    );
    match ENTITY_TYPES[kind] {
        "Customer" => json!({
            "name": name,
            "email": format!("user{id}@example.com"),
            "tier": TIERS[rng.random_range(0..TIERS.len())],
            "country": COUNTRIES[rng.random_range(0..COUNTRIES.len())],
            "lifetime_value": 0.0,
        }),
        "Order" => json!({
            "customer_id": format!("cus-{:08}", rng.random_range(1..=id.max(1))),
            "status": "pending",
            "currency": "USD",
            "total": (rng.random_range(500..50_000) as f64) / 100.0,
            "items": rng.random_range(1..8),
        }),
        "Product" => json!({
            "sku": format!("SKU-{id:06}"),
            "title": format!("{} edition", LAST[rng.random_range(0..LAST.len())]),
            "price": (rng.random_range(199..99_999) as f64) / 100.0,
            "stock": rng.random_range(0..1000),
        }),
        "Invoice" => json!({
            "order_id": format!("ord-{:08}", rng.random_range(1..=id.max(1))),
            "amount": (rng.random_range(500..50_000) as f64) / 100.0,
            "paid": false,
        }),
        _ => json!({
            "plan": TIERS[rng.random_range(0..TIERS.len())],
            "seats": rng.random_range(1..200),
            "active": true,
        }),
    }
}

fn update_state(kind: usize, state: &mut serde_json::Value, rng: &mut SmallRng) {
    let Some(obj) = state.as_object_mut() else {
        return;
    };
    match ENTITY_TYPES[kind] {
        "Customer" => {
            let ltv = obj
                .get("lifetime_value")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0);
            obj.insert(
                "lifetime_value".into(),
                json!(ltv + rng.random_range(1..500) as f64),
            );
            if rng.random_bool(0.1) {
                obj.insert(
                    "tier".into(),
                    json!(TIERS[rng.random_range(0..TIERS.len())]),
                );
            }
        }
        "Order" => {
            obj.insert(
                "status".into(),
                json!(ORDER_STATUS[rng.random_range(0..ORDER_STATUS.len())]),
            );
        }
        "Product" => {
            obj.insert("stock".into(), json!(rng.random_range(0..1000)));
        }
        "Invoice" => {
            obj.insert("paid".into(), json!(true));
        }
        _ => {
            obj.insert("seats".into(), json!(rng.random_range(1..200)));
        }
    }
}

/// Writes the events of `spec` as NDJSON.
pub fn write_ndjson(spec: &GenerateSpec, out: impl Write) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    generate(spec, |event| {
        serde_json::to_writer(&mut out, &event)?;
        out.write_all(b"\n")
    })?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn collect(spec: &GenerateSpec) -> Vec<Event> {
        let mut v = Vec::new();
        generate(spec, |e| {
            v.push(e);
            Ok(())
        })
        .expect("in-memory sink");
        v
    }

    #[test]
    fn deterministic_valid_and_per_shard_increasing() {
        let spec = GenerateSpec {
            events: 5000,
            shards: 4,
            namespaces: 3,
            seed: 7,
        };
        let a = collect(&spec);
        assert_eq!(a, collect(&spec));
        assert_ne!(
            a,
            collect(&GenerateSpec {
                seed: 8,
                ..spec.clone()
            })
        );
        let mut last: HashMap<i32, i64> = HashMap::new();
        let mut per_ns: HashMap<String, usize> = HashMap::new();
        for e in &a {
            e.validate(&shardlake_core::EventLimits::default())
                .expect("valid");
            let prev = last.insert(e.shard_id, e.seq).unwrap_or(0);
            assert!(e.seq > prev);
            assert_eq!(bucket_of(&e.partition_key, 4) as i32, e.shard_id);
            *per_ns.entry(e.namespace.clone()).or_default() += 1;
        }
        // Skew: the first namespace is the largest.
        assert!(per_ns["tenant-000"] > per_ns["tenant-002"]);
        let types: std::collections::HashSet<&str> =
            a.iter().map(|e| e.event_type.as_str()).collect();
        assert!(
            types.contains("thing.created")
                && types.contains("thing.updated")
                && types.contains("thing.deleted")
        );
    }
}
