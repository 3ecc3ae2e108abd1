//! Migration plans: which keys move where when the topology changes, and
//! what that costs, from the lake's own per-key statistics.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use serde::{Deserialize, Serialize};
use shardlake_query::CrossShardQuery;
use shardlake_routing::{DistributionReport, ShardId, ShardRouter, Topology};

use crate::error::{Result, invalid_plan};

/// Events and bytes of one partition key in the lake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyStats {
    /// The partition key (what routing routes).
    pub key: String,
    /// Namespaces the key has events in (replay reads these partitions).
    pub namespaces: Vec<String>,
    /// Events of the key.
    pub events: u64,
    /// Approximate bytes of the key's events (key, payload and fixed fields).
    pub bytes: u64,
}

/// Fixed per-event bytes besides key and payload (ids, numbers, times).
const EVENT_OVERHEAD_BYTES: i64 = 64;

/// Per-key statistics of the lake's current snapshot, by key.
pub async fn key_stats(engine: &CrossShardQuery) -> Result<Vec<KeyStats>> {
    key_stats_at(engine, None).await
}

/// Per-key statistics of `snapshot` (the current one if `None`), by key.
pub async fn key_stats_at(
    engine: &CrossShardQuery,
    snapshot: Option<i64>,
) -> Result<Vec<KeyStats>> {
    let sql = format!(
        "SELECT partition_key, array_to_string(array_agg(DISTINCT namespace), ','), count(*), \
         sum(octet_length(partition_key) + coalesce(octet_length(payload), 0) + {EVENT_OVERHEAD_BYTES}) \
         FROM events GROUP BY partition_key ORDER BY partition_key"
    );
    let mut query = engine.sql(sql).without_cache();
    if let Some(snapshot) = snapshot {
        query = query.at_snapshot(snapshot);
    }
    let result = query.await?;
    let mut stats = Vec::new();
    for batch in &result.batches {
        let keys = batch.column(0).as_string::<i32>();
        let namespaces = batch.column(1).as_string::<i32>();
        let events = batch.column(2).as_primitive::<Int64Type>();
        let bytes = batch.column(3).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            let mut ns: Vec<String> = namespaces.value(i).split(',').map(str::to_owned).collect();
            ns.sort();
            stats.push(KeyStats {
                key: keys.value(i).to_owned(),
                namespaces: ns,
                events: events.value(i).max(0) as u64,
                bytes: if bytes.is_null(i) {
                    0
                } else {
                    bytes.value(i).max(0) as u64
                },
            });
        }
    }
    Ok(stats)
}

/// One key changing owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMove {
    /// The key.
    pub key: String,
    /// Its namespaces.
    pub namespaces: Vec<String>,
    /// Owner in the current topology.
    pub from: ShardId,
    /// Owner in the next topology.
    pub to: ShardId,
    /// Events to copy.
    pub events: u64,
    /// Bytes to copy.
    pub bytes: u64,
}

/// What a topology change moves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationPlan {
    /// The topology in use.
    pub from: Topology,
    /// The topology after cutover (a higher version).
    pub to: Topology,
    /// Keys that change owner, by key.
    pub moves: Vec<KeyMove>,
    /// Keys in the lake.
    pub keys_total: usize,
    /// Events to copy.
    pub events_to_move: u64,
    /// Bytes to copy.
    pub bytes_to_move: u64,
    /// Keys each destination receives.
    pub destinations: BTreeMap<ShardId, usize>,
    /// At the given replay throughput (events per second).
    pub estimated_duration_ms: u64,
}

/// The moves between `from` and `to` for `keys`.
pub fn plan_between(
    from: &Topology,
    to: &Topology,
    keys: &[KeyStats],
    replay_events_per_second: f64,
) -> Result<MigrationPlan> {
    if to.version <= from.version {
        return Err(invalid_plan(format!(
            "the next topology's version {} must be higher than {}",
            to.version, from.version
        )));
    }
    let (before, after) = (
        ShardRouter::new(from.clone())?,
        ShardRouter::new(to.clone())?,
    );
    let mut moves = Vec::new();
    for k in keys {
        let (a, b) = (before.shard_of(&k.key)?, after.shard_of(&k.key)?);
        if a != b {
            moves.push(KeyMove {
                key: k.key.clone(),
                namespaces: k.namespaces.clone(),
                from: a,
                to: b,
                events: k.events,
                bytes: k.bytes,
            });
        }
    }
    let events_to_move = moves.iter().map(|m| m.events).sum();
    let mut destinations = BTreeMap::new();
    for m in &moves {
        *destinations.entry(m.to).or_insert(0) += 1;
    }
    Ok(MigrationPlan {
        from: from.clone(),
        to: to.clone(),
        keys_total: keys.len(),
        bytes_to_move: moves.iter().map(|m| m.bytes).sum(),
        events_to_move,
        destinations,
        estimated_duration_ms: if replay_events_per_second > 0.0 {
            (events_to_move as f64 / replay_events_per_second * 1000.0).ceil() as u64
        } else {
            0
        },
        moves,
    })
}

/// Adding shard `shard` to `from`'s shards.
pub fn plan_add_shard(
    from: &Topology,
    shard: ShardId,
    keys: &[KeyStats],
    replay_events_per_second: f64,
) -> Result<MigrationPlan> {
    if from.shards.contains(&shard) {
        return Err(invalid_plan(format!("shard {shard} already exists")));
    }
    let mut shards = from.shards.clone();
    shards.push(shard);
    plan_between(
        from,
        &from.with_shards(shards),
        keys,
        replay_events_per_second,
    )
}

/// Removing shard `shard`: every one of its keys gets a new owner (none is
/// skipped, whatever the strategy).
pub fn plan_remove_shard(
    from: &Topology,
    shard: ShardId,
    keys: &[KeyStats],
    replay_events_per_second: f64,
) -> Result<MigrationPlan> {
    if !from.shards.contains(&shard) {
        return Err(invalid_plan(format!("shard {shard} does not exist")));
    }
    if from.shards.len() == 1 {
        return Err(invalid_plan("cannot remove the last shard"));
    }
    let shards = from
        .shards
        .iter()
        .copied()
        .filter(|s| *s != shard)
        .collect();
    let plan = plan_between(
        from,
        &from.with_shards(shards),
        keys,
        replay_events_per_second,
    )?;
    validate_plan(&plan, keys)?;
    Ok(plan)
}

/// How evenly the lake's events spread over `topology`'s shards.
pub fn analyze_balance(topology: &Topology, keys: &[KeyStats]) -> Result<DistributionReport> {
    let router = ShardRouter::new(topology.clone())?;
    let mut per_shard: BTreeMap<ShardId, u64> = topology.shards.iter().map(|s| (*s, 0)).collect();
    for k in keys {
        *per_shard.entry(router.shard_of(&k.key)?).or_insert(0) += k.events;
    }
    Ok(DistributionReport::new(per_shard.into_iter().collect(), 0))
}

/// Checks a plan against the keys it was made for: versions increase, every
/// key has exactly one owner before and after, every key whose owner
/// changes is moved (and only those), and no key moves to a shard outside
/// the next topology. Returns every problem at once.
pub fn validate_plan(plan: &MigrationPlan, keys: &[KeyStats]) -> Result<()> {
    let mut problems = Vec::new();
    if plan.to.version <= plan.from.version {
        problems.push("the next topology's version is not higher".to_owned());
    }
    let (before, after) = (
        ShardRouter::new(plan.from.clone())?,
        ShardRouter::new(plan.to.clone())?,
    );
    let moved: BTreeMap<&str, &KeyMove> = plan.moves.iter().map(|m| (m.key.as_str(), m)).collect();
    if moved.len() != plan.moves.len() {
        problems.push("a key is moved twice".to_owned());
    }
    let known: BTreeSet<&str> = keys.iter().map(|k| k.key.as_str()).collect();
    for m in &plan.moves {
        if !known.contains(m.key.as_str()) {
            problems.push(format!("`{}` is not a key of the lake", m.key));
        }
        if !plan.to.shards.contains(&m.to) {
            problems.push(format!(
                "`{}` moves to shard {}, which is not in the next topology",
                m.key, m.to
            ));
        }
    }
    for k in keys {
        let (a, b) = (before.shard_of(&k.key)?, after.shard_of(&k.key)?);
        match (moved.get(k.key.as_str()), a == b) {
            (None, false) => problems.push(format!(
                "`{}` changes owner {a} -> {b} but is not moved",
                k.key
            )),
            (Some(m), _) if (m.from, m.to) != (a, b) => problems.push(format!(
                "`{}` is planned {} -> {} but routes {a} -> {b}",
                k.key, m.from, m.to
            )),
            (Some(_), true) => problems.push(format!("`{}` is moved but keeps its owner", k.key)),
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(invalid_plan(problems.join("; ")))
    }
}

/// Rebalancing to an explicit next topology (new ranges, more virtual
/// nodes, a different strategy): the moves, validated.
pub fn generate_rebalance_plan(
    from: &Topology,
    to: &Topology,
    keys: &[KeyStats],
    replay_events_per_second: f64,
) -> Result<MigrationPlan> {
    let plan = plan_between(from, to, keys, replay_events_per_second)?;
    validate_plan(&plan, keys)?;
    Ok(plan)
}
