//! `POST /v1/events`: events in, answered once their commit is durable.
//!
//! The body is a JSON array of events or NDJSON (by `Content-Type`, else by
//! its first byte). Invalid events are refused one by one and reported by
//! index; the rest are committed. A caller scoped to some namespaces may
//! write only those: one event elsewhere refuses the whole request with 403
//! before anything is queued. Duplicates of committed `(shard_id, seq)`
//! pairs (a shard retrying a request) are dropped and counted.

use std::collections::BTreeMap;

use arrow::array::AsArray;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use serde::Serialize;
use shardlake_core::{EventBatchBuilder, RejectedLine, push_json_array, push_ndjson, schema};
use shardlake_lake::{EmitInput, RejectedEvent};
use shardlake_query::Scope;
use tracing::Span;

use crate::auth::Authenticated;
use crate::config::Permission;
use crate::error::ApiError;
use crate::routes::read_body;
use crate::state::AppState;

/// The answer to an ingestion request.
#[derive(Debug, Serialize)]
pub struct IngestResponse {
    /// Events of this request made durable.
    pub accepted: usize,
    /// Events dropped because they were already committed.
    pub duplicates: usize,
    /// Of those, the ones whose content differs from the event they repeat
    /// (see docs/exactly-once.md, "Conflicting duplicates").
    pub conflicting_duplicates: usize,
    /// Invalid events: index (0-based in an array, 1-based line in NDJSON),
    /// stable code and reason.
    pub rejected: Vec<RejectedEvent>,
    /// Committed watermark of every shard in the request, after the commit.
    pub watermarks: BTreeMap<i32, i64>,
    /// The snapshot that made the events durable, if anything new was written.
    #[serde(with = "shardlake_core::json_id::option")]
    pub snapshot_id: Option<i64>,
}

/// Ingests one request's events.
pub async fn ingest(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestResponse>, ApiError> {
    caller.require(Permission::Ingest)?;
    let body = read_body(body, state.config().limits.max_body_bytes).await?;
    let limits = state.emitter().config().limits;
    let mut builder = EventBatchBuilder::with_capacity(limits, body.len() / 256 + 1, body.len());
    let rejected: Vec<RejectedLine> = if is_json_array(&headers, &body) {
        push_json_array(&mut builder, &body)
            .map_err(|e| ApiError::bad_request("invalid_events", e.message))?
    } else {
        push_ndjson(&mut builder, &body, 1)
    };
    let batch = builder.finish();
    if batch.is_empty() && rejected.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_events",
            "the body holds no events",
        ));
    }
    if let Scope::Namespaces(allowed) = &caller.scope {
        let namespaces = batch
            .record_batch()
            .column_by_name(schema::columns::NAMESPACE)
            .ok_or_else(|| ApiError::internal("event batch without a namespace column"))?
            .as_string::<i32>();
        if let Some(outside) = namespaces
            .iter()
            .flatten()
            .find(|ns| !allowed.contains(*ns))
        {
            return Err(ApiError::forbidden(format!(
                "token `{}` may not write to namespace `{outside}`; nothing of this request was written",
                caller.name
            )));
        }
    }
    if batch.is_empty() {
        let rejected: Vec<RejectedEvent> = rejected.iter().map(RejectedEvent::from).collect();
        return Err(ApiError::bad_request(
            "invalid_events",
            format!("all {} events are invalid", rejected.len()),
        )
        .with_details(
            "rejected",
            serde_json::to_value(&rejected).unwrap_or_default(),
        ));
    }

    let expected = expected_watermarks(&headers)?;
    // Wait for room in the emitter's queue, but not forever.
    let queued = tokio::time::timeout(
        state.config().limits.queue_wait(),
        state
            .emitter()
            .send_expecting(EmitInput::Validated(batch, rejected), expected),
    )
    .await
    .map_err(|_| {
        ApiError::overloaded(
            "ingest_queue_full",
            "the ingestion queue stayed full; nothing of this request was queued, retry later",
            1,
        )
    })??;
    let ack = queued.await?;
    Span::current().record("accepted", ack.accepted);
    Ok(Json(IngestResponse {
        accepted: ack.accepted,
        conflicting_duplicates: ack.conflicting_duplicates,
        duplicates: ack.duplicates,
        rejected: ack.rejected,
        watermarks: ack.watermarks,
        snapshot_id: ack.snapshot_id,
    }))
}

/// Header stating, per shard, the committed watermark the request expects
/// (optimistic concurrency): `x-shardlake-expect-watermarks: 5=3, 6=0`.
pub const EXPECT_WATERMARKS: &str = "x-shardlake-expect-watermarks";

fn expected_watermarks(headers: &HeaderMap) -> Result<BTreeMap<i32, i64>, ApiError> {
    let Some(value) = headers.get(EXPECT_WATERMARKS) else {
        return Ok(BTreeMap::new());
    };
    let bad = || {
        ApiError::bad_request(
            "invalid_request",
            format!("`{EXPECT_WATERMARKS}` must look like `5=3, 6=0` (shard=watermark)"),
        )
    };
    let text = value.to_str().map_err(|_| bad())?;
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (shard, watermark) = pair.split_once('=').ok_or_else(bad)?;
            Ok((
                shard.trim().parse().map_err(|_| bad())?,
                watermark.trim().parse().map_err(|_| bad())?,
            ))
        })
        .collect()
}

/// A JSON array by `Content-Type`, or (without one) by its first byte.
fn is_json_array(headers: &HeaderMap, body: &[u8]) -> bool {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.contains("ndjson") || content_type.contains("jsonl") {
        return false;
    }
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[')
}
