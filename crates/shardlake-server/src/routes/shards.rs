//! `GET /v1/shards` (admin): how events and keys spread over shards, and
//! which shards are hot (the routing crate's balance analysis). Two views
//! of the current snapshot: by the shard that *emitted* each event (its
//! `shard_id` column, history) and by the shard that *owns* its key under
//! the recorded topology (where the key's events go next, what a migration
//! would move). Hot shards are judged on ownership when a topology is
//! recorded, on emission otherwise. Both queries are pinned to one snapshot
//! and go through the result cache, so polling costs a scan only once per
//! commit.

use std::collections::BTreeMap;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use axum::Json;
use axum::extract::{RawQuery, State};
use serde_json::{Value, json};
use shardlake_migrate::{ControlStore, current_topology};
use shardlake_routing::{DistributionReport, ShardId, ShardRouter};

use crate::auth::Authenticated;
use crate::config::Permission;
use crate::error::ApiError;
use crate::routes::lake::int64_rows;
use crate::state::AppState;

/// A shard is hot above the mean by this many percent, unless the request
/// says otherwise (`?hot_pct=`).
const DEFAULT_HOT_PCT: f64 = 25.0;

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    emitted_events: u64,
    emitted_keys: u64,
    owned_events: u64,
    owned_keys: u64,
}

/// The distribution report.
pub async fn shards(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Admin)?;
    let mut hot_pct = DEFAULT_HOT_PCT;
    for (k, v) in url::form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "hot_pct" => {
                hot_pct = v
                    .parse::<f64>()
                    .ok()
                    .filter(|p| p.is_finite() && *p >= 0.0)
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_request",
                            format!("`hot_pct` must be a number >= 0, got `{v}`"),
                        )
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!("unknown parameter `{other}`"),
                ));
            }
        }
    }

    let control = ControlStore::open(state.lake()).await?;
    let topology = current_topology(&control).await?;
    let _slot = state.query_slot().await?;
    let snapshot = state.engine().current_snapshot().await?;
    let run = |sql: &'static str| {
        let query = state
            .engine()
            .sql(sql)
            .with_timeout(state.config().limits.query_timeout());
        match snapshot.snapshot_id {
            Some(id) => query.at_snapshot(id),
            None => query,
        }
    };

    let mut tally: BTreeMap<ShardId, Tally> = BTreeMap::new();
    let emitted = run(
        "SELECT CAST(shard_id AS BIGINT) AS shard, count(*) AS events, \
         count(DISTINCT partition_key) AS keys FROM events GROUP BY 1",
    )
    .await?;
    for row in int64_rows(&emitted.batches, 3)? {
        let t = tally.entry(row[0] as ShardId).or_default();
        t.emitted_events = row[1] as u64;
        t.emitted_keys = row[2] as u64;
    }

    let mut unroutable = 0;
    if let Some(topology) = &topology {
        for shard in &topology.shards {
            tally.entry(*shard).or_default();
        }
        let router = ShardRouter::new(topology.clone())?;
        let keys = run("SELECT partition_key, count(*) FROM events GROUP BY partition_key").await?;
        for batch in &keys.batches {
            let (Some(key), Some(events)) = (
                batch.column(0).as_string_opt::<i32>(),
                batch.column(1).as_primitive_opt::<Int64Type>(),
            ) else {
                return Err(ApiError::internal("the key tally is not (Utf8, Int64)"));
            };
            for i in 0..batch.num_rows() {
                match router.shard_of(key.value(i)) {
                    Ok(shard) => {
                        let t = tally.entry(shard).or_default();
                        t.owned_events += events.value(i) as u64;
                        t.owned_keys += 1;
                    }
                    Err(_) => unroutable += 1,
                }
            }
        }
    }

    // Balance is judged where the next events go when a topology says so.
    let owned = topology.is_some();
    let balance = DistributionReport::new(
        tally
            .iter()
            .filter(|(shard, _)| {
                !owned || topology.as_ref().is_some_and(|t| t.shards.contains(shard))
            })
            .map(|(shard, t)| {
                (
                    *shard,
                    if owned {
                        t.owned_events
                    } else {
                        t.emitted_events
                    },
                )
            })
            .collect(),
        unroutable,
    );
    let hot = balance.hot_shards(hot_pct);
    Ok(Json(json!({
        "snapshot_id": snapshot.snapshot_id.map(|id| id.to_string()),
        "topology": topology,
        "basis": if owned { "owned" } else { "emitted" },
        "hot_threshold_pct": hot_pct,
        "hot": hot,
        "balance": balance,
        "shards": tally
            .iter()
            .map(|(shard, t)| json!({
                "shard_id": shard,
                "in_topology": topology.as_ref().map(|tp| tp.shards.contains(shard)),
                "emitted_events": t.emitted_events,
                "emitted_keys": t.emitted_keys,
                "owned_events": owned.then_some(t.owned_events),
                "owned_keys": owned.then_some(t.owned_keys),
                "hot": hot.contains(shard),
            }))
            .collect::<Vec<_>>(),
    })))
}
