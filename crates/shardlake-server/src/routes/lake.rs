//! `GET /v1/lake`: what the lake holds now, summed for people (the console's
//! lake page): events, files and bytes per namespace from the current
//! snapshot's file list, and events and keys per emitting shard from a query
//! pinned to that same snapshot. A scoped caller's figures cover only its
//! own namespaces.

use std::collections::BTreeMap;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::auth::Authenticated;
use crate::config::Permission;
use crate::error::ApiError;
use crate::state::AppState;

/// Summarizes the current snapshot.
pub async fn lake(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Query)?;
    let _slot = state.query_slot().await?;
    let snapshot = state.engine().current_snapshot().await?;

    let mut namespaces: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for file in snapshot
        .files
        .iter()
        .filter(|f| caller.scope.allows(&f.namespace))
    {
        let entry = namespaces.entry(&file.namespace).or_default();
        entry.0 += file.rows;
        entry.1 += 1;
        entry.2 += file.size;
    }
    let (events, files, bytes) = namespaces
        .values()
        .fold((0, 0, 0), |t, n| (t.0 + n.0, t.1 + n.1, t.2 + n.2));

    let mut query = state
        .engine()
        .sql(
            "SELECT CAST(shard_id AS BIGINT) AS shard, count(*) AS events, \
             count(DISTINCT partition_key) AS keys FROM events GROUP BY 1 ORDER BY 1",
        )
        .with_scope(caller.scope.clone())
        .with_timeout(state.config().limits.query_timeout());
    if let Some(id) = snapshot.snapshot_id {
        query = query.at_snapshot(id);
    }
    let shards: Vec<Value> = int64_rows(&query.await?.batches, 3)?
        .into_iter()
        .map(|r| json!({"shard_id": r[0], "events": r[1], "keys": r[2]}))
        .collect();

    Ok(Json(json!({
        "snapshot_id": snapshot.snapshot_id.map(|id| id.to_string()),
        "format": state.lake().format().as_str(),
        "totals": {"events": events, "files": files, "bytes": bytes, "namespaces": namespaces.len()},
        "namespaces": namespaces
            .iter()
            .map(|(ns, (events, files, bytes))| {
                json!({"namespace": ns, "events": events, "files": files, "bytes": bytes})
            })
            .collect::<Vec<_>>(),
        "shards": shards,
    })))
}

/// The rows of `batches` whose first `width` columns are all non-null
/// Int64 (a query of the server's own, whose types it chose).
pub(crate) fn int64_rows(batches: &[RecordBatch], width: usize) -> Result<Vec<Vec<i64>>, ApiError> {
    let mut rows = Vec::new();
    for batch in batches {
        let columns = (0..width)
            .map(|i| {
                batch
                    .columns()
                    .get(i)
                    .and_then(|c| c.as_primitive_opt::<Int64Type>())
                    .ok_or_else(|| ApiError::internal(format!("column {i} is not Int64")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            rows.push(columns.iter().map(|c| c.value(row)).collect());
        }
    }
    Ok(rows)
}
