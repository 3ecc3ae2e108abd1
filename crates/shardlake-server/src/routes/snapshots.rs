//! `GET /v1/snapshots`: the snapshots time travel can reach (`snapshot_id`
//! or `as_of` on `/v1/query` and `/v1/replay`), oldest first, with time,
//! operation and what pins them. Row and file totals are table-wide, so
//! only callers that see every namespace get them.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::auth::Authenticated;
use crate::config::Permission;
use crate::error::ApiError;
use crate::state::AppState;

/// Lists the retained snapshots.
pub async fn snapshots(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Query)?;
    let mut snapshots = state.lake().snapshots().await?;
    if !matches!(caller.scope, shardlake_query::Scope::All) {
        for s in &mut snapshots {
            s.total_rows = None;
            s.total_files = None;
            s.added_rows = None;
        }
    }
    let m = &state.config().maintenance;
    Ok(Json(json!({
        "snapshots": snapshots,
        "retention": {
            "snapshot_retention_secs": m.lake.retention.retention.as_secs(),
            "min_snapshots_to_keep": m.lake.retention.min_snapshots_to_keep,
        },
    })))
}
