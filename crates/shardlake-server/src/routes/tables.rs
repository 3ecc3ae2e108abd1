//! `GET /v1/tables`: the tables a caller can query, with their columns,
//! pinned snapshot and sizes. A scoped caller's counts cover only its own
//! namespaces.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use shardlake_query::format::columns_json;

use crate::auth::Authenticated;
use crate::config::Permission;
use crate::error::ApiError;
use crate::state::AppState;

/// Describes `events` and `things`.
pub async fn tables(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Query)?;
    let _slot = state.query_slot().await?;
    let snapshot = state.engine().current_snapshot().await?;
    let visible: Vec<_> = snapshot
        .files
        .iter()
        .filter(|f| caller.scope.allows(&f.namespace))
        .collect();
    let rows: u64 = visible.iter().map(|f| f.rows).sum();
    let bytes: u64 = visible.iter().map(|f| f.size).sum();
    let namespaces = snapshot
        .namespaces
        .iter()
        .filter(|ns| caller.scope.allows(ns))
        .count();

    // Schemas come from the engine itself, so they are exactly what SQL
    // sees; `things` is counted by a query (cached per snapshot and scope).
    let run = |sql: &'static str| {
        state
            .engine()
            .sql(sql)
            .with_scope(caller.scope.clone())
            .with_timeout(state.config().limits.query_timeout())
    };
    let events_schema = run("SELECT * FROM events LIMIT 0").await?.schema;
    let things_schema = run("SELECT * FROM things LIMIT 0").await?.schema;
    let things = run("SELECT count(*) FROM things").await?;
    let things_rows = things
        .batches
        .first()
        .filter(|b| b.num_rows() == 1)
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .map(|a| a.value(0))
        })
        .ok_or_else(|| ApiError::internal("count(*) of things did not return one Int64"))?;

    Ok(Json(json!({
        "tables": [
            {
                "name": "events",
                "kind": state.lake().format().as_str(),
                "description": "every committed event, partitioned by namespace",
                "columns": columns_json(&events_schema),
                "snapshot_id": snapshot.snapshot_id.map(|id| id.to_string()),
                "rows": rows,
                "files": visible.len(),
                "bytes": bytes,
                "namespaces": namespaces,
            },
            {
                "name": "things",
                "kind": "view",
                "description": "latest state of every live entity, derived from events",
                "columns": columns_json(&things_schema),
                "snapshot_id": snapshot.snapshot_id.map(|id| id.to_string()),
                "rows": things_rows,
                "files": visible.len(),
                "bytes": bytes,
                "namespaces": namespaces,
            }
        ]
    })))
}
