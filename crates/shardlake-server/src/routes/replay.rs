//! `GET /v1/replay`: events in `position` order, streamed.
//!
//! Parameters: `namespace`, `partition_key` (repeatable), `shard_id`,
//! `after_position` (the cursor), `after_seq`, `snapshot_id` (or
//! `snapshot`), `as_of` (RFC 3339), `since_snapshot`, `format` (`ndjson`,
//! the default, or `arrow`). NDJSON lines are events in their JSON form
//! (README, "The event"), nothing else, so a consumer can pipe them anywhere; the
//! pinned snapshot is in the `x-shardlake-snapshot` header (resume against
//! the same snapshot with `snapshot_id=`), the scan statistics in the
//! `x-shardlake-stats` trailer. The snapshot handed out is leased against
//! expiry for `maintenance.replay_cursor_lease_secs`, renewed by every
//! replay at it; an expired one is refused with 410 `snapshot_expired`.
//! Needs the `query` permission; a scoped caller replays only its
//! namespaces.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use shardlake_query::ReplayQuery;

use crate::auth::Authenticated;
use crate::config::Permission;
use crate::encode::{Format, StreamEncoder};
use crate::error::ApiError;
use crate::routes::stream_body::{StreamEnd, StreamedBody};
use crate::state::AppState;

/// The pin holder of snapshots handed out as replay cursors.
pub const REPLAY_CURSOR: &str = "replay-cursor";

/// Parses the query string (repeated `partition_key` allowed).
fn parse(raw: Option<&str>) -> Result<(ReplayQuery, Format, Option<String>), ApiError> {
    let mut q = ReplayQuery::default();
    let mut format = Format::Ndjson;
    let mut as_of = None;
    let bad = |m: String| ApiError::bad_request("invalid_request", m);
    let int = |k: &str, v: &str| {
        v.parse::<i64>()
            .map_err(|_| bad(format!("`{k}` must be an integer, got `{v}`")))
    };
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "namespace" => q.namespace = Some(v.into_owned()),
            "partition_key" => q.partition_keys.push(v.into_owned()),
            "shard_id" => {
                q.shard_id = Some(
                    i32::try_from(int(&k, &v)?)
                        .map_err(|_| bad(format!("`shard_id` {v} is out of range")))?,
                );
            }
            "after_position" => q.after_position = Some(int(&k, &v)?),
            "after_seq" => q.after_seq = Some(int(&k, &v)?),
            "snapshot" | "snapshot_id" => q.snapshot_id = Some(int(&k, &v)?),
            "as_of" => as_of = Some(v.into_owned()),
            "since_snapshot" => q.since_snapshot = Some(int(&k, &v)?),
            "format" => {
                format = match v.as_ref() {
                    "ndjson" => Format::Ndjson,
                    "arrow" => Format::Arrow,
                    other => {
                        return Err(bad(format!("`format` is ndjson or arrow, not `{other}`")));
                    }
                }
            }
            other => return Err(bad(format!("unknown parameter `{other}`"))),
        }
    }
    if q.snapshot_id.is_some() && as_of.is_some() {
        return Err(bad("give `snapshot_id` or `as_of`, not both".to_owned()));
    }
    Ok((q, format, as_of))
}

/// Streams the events of the request.
pub async fn replay(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(Permission::Query)?;
    let (query, format, as_of) = parse(raw.as_deref())?;
    if let Some(ns) = &query.namespace
        && !caller.scope.allows(ns)
    {
        return Err(ApiError::forbidden(format!(
            "token `{}` may not read namespace `{ns}`",
            caller.name
        )));
    }
    let slot = state.query_slot().await?;
    let mut replay = state
        .engine()
        .replay(query)
        .with_scope(caller.scope.clone())
        .with_timeout(state.config().limits.query_timeout());
    if let Some(at) = as_of {
        replay = replay.as_of(crate::routes::query::parse_as_of(&at)?);
    }
    let stream = replay.stream().await?;
    let snapshot = stream.snapshot_id();
    if let Some(id) = snapshot {
        // The client may resume at this snapshot: keep it for a while.
        state
            .lake()
            .pins()
            .lease(
                REPLAY_CURSOR,
                id,
                state.config().maintenance.replay_cursor_lease(),
            )
            .await?;
    }
    // NDJSON lines are events, nothing else: an error goes in no line, the
    // body is cut off so clients notice.
    let encoder = match format {
        Format::Arrow => {
            StreamEncoder::new(Format::Arrow, &stream.schema()).map_err(ApiError::internal)?
        }
        _ => StreamEncoder::Events,
    };
    // The slot is held by the body: free once the client has it all or
    // went away.
    let mut response = StreamedBody::new(stream, encoder, ReplayEnd)
        .holding(slot)
        .into_response();
    if let Some(id) = snapshot {
        response.headers_mut().insert(
            HeaderName::from_static("x-shardlake-snapshot"),
            HeaderValue::from(id),
        );
    }
    Ok(response)
}

/// Logs a replay that failed mid-stream.
struct ReplayEnd;

impl StreamEnd for ReplayEnd {
    fn failed(&mut self, error: &ApiError) {
        tracing::warn!(
            code = error.code(),
            message = error.message(),
            "replay failed"
        );
    }
}
