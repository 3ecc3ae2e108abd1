//! `GET /v1/files`: the live data files of the current snapshot (or of
//! `snapshot_id`, or the one current at `as_of`), optionally of one
//! `namespace`, within the caller's scope. This is the list an outside
//! reader (DuckDB, pyarrow) must read for the engine's answer: a table's
//! directory also holds files compaction replaced, kept for time travel
//! until expiry and cleanup remove them. Snapshot ids are strings (they
//! pass 2^53, where JSON numbers stop being exact in JavaScript and jq).

use axum::Json;
use axum::extract::{RawQuery, State};
use serde_json::Value;
use shardlake_query::Scope;
use shardlake_query::format::live_files_json;

use crate::auth::Authenticated;
use crate::config::Permission;
use crate::error::ApiError;
use crate::state::AppState;

/// Lists the live data files.
pub async fn files(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Query)?;
    let bad = |m: String| ApiError::bad_request("invalid_request", m);
    let (mut snapshot_id, mut as_of, mut namespace) = (None, None, None);
    for (k, v) in url::form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "snapshot" | "snapshot_id" => {
                snapshot_id =
                    Some(v.parse::<i64>().map_err(|_| {
                        bad(format!("`snapshot_id` must be an integer, got `{v}`"))
                    })?);
            }
            "as_of" => as_of = Some(crate::routes::query::parse_as_of(&v)?),
            "namespace" => namespace = Some(v.into_owned()),
            other => return Err(bad(format!("unknown parameter `{other}`"))),
        }
    }
    if snapshot_id.is_some() && as_of.is_some() {
        return Err(bad("give `snapshot_id` or `as_of`, not both".to_owned()));
    }
    let scope = match namespace {
        Some(ns) if !caller.scope.allows(&ns) => {
            return Err(ApiError::forbidden(format!(
                "token `{}` may not read namespace `{ns}`",
                caller.name
            )));
        }
        Some(ns) => Scope::namespaces([ns]),
        None => caller.scope.clone(),
    };
    let live = state
        .engine()
        .live_files(snapshot_id, as_of, &scope)
        .await?;
    Ok(Json(live_files_json(&live, str::to_owned)))
}
