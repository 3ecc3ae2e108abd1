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
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use futures::StreamExt;
use shardlake_core::{
    BodyForm, BodyParser, EventBatch, EventBatchBuilder, EventError, EventLimits, RejectedLine,
    schema,
};
use shardlake_lake::{EmitAck, EmitInput};
use shardlake_query::Scope;
use tracing::Span;

use crate::auth::Authenticated;
use crate::config::Permission;
use crate::error::ApiError;
use crate::routes::read_body;
use crate::state::AppState;

/// Ingests one request's events.
pub async fn ingest(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<EmitAck>, ApiError> {
    // The answer is the emitter's ack as it is: one shape for every door.
    caller.require(Permission::Ingest)?;
    let limits = state.emitter().config().limits;
    let (batch, rejected) =
        parse_body(body, &headers, state.config().limits.max_body_bytes, limits).await?;
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
    // Even a request with nothing valid goes through the emitter: it counts
    // and dead-letters every refused event, whichever door it came in by.
    let all_invalid = batch.is_empty();

    let expected = expected_watermarks(&headers)?;
    // Wait for room in the emitter's queue, but not forever.
    let queued = tokio::time::timeout(
        state.config().limits.queue_wait(),
        state
            .emitter()
            .send(EmitInput::Validated(batch, rejected))
            .expecting(expected),
    )
    .await
    .map_err(|_| {
        ApiError::overloaded(
            "ingest_queue_full",
            "the ingestion queue stayed full; nothing of this request was queued, retry later",
            1,
        )
    })?
    .map_err(ingest_error)?;
    let ack = queued.await.map_err(ingest_error)?;
    if all_invalid {
        return Err(ApiError::bad_request(
            "invalid_events",
            format!("all {} events are invalid", ack.rejected.len()),
        )
        .with_details(
            "rejected",
            serde_json::to_value(&ack.rejected).unwrap_or_default(),
        ));
    }
    Span::current().record("accepted", ack.accepted);
    Ok(Json(ack))
}

/// An emitter's error as this route answers it: invalid input is
/// `invalid_events` here, as the API documents; the rest as everywhere.
fn ingest_error(e: shardlake_core::Error) -> ApiError {
    if e.kind() == shardlake_core::ErrorKind::DataInvalid {
        ApiError::bad_request("invalid_events", e.message())
    } else {
        ApiError::from(e)
    }
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

/// The form a `Content-Type` declares: NDJSON for `ndjson`/`jsonl` types;
/// anything else is told by the body's first byte.
fn declared_form(headers: &HeaderMap) -> Option<BodyForm> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    (content_type.contains("ndjson") || content_type.contains("jsonl")).then_some(BodyForm::Ndjson)
}

/// Bodies up to this size (by `Content-Length`) are read whole and parsed
/// in place: a parser thread would cost more than the parse.
const SMALL_BODY_BYTES: usize = 64 * 1024;

/// Reads and parses a body of at most `limit` bytes. A large body is
/// parsed as it arrives, on a thread of the blocking pool that takes each
/// frame as the connection delivers it: parsing overlaps receiving, stays
/// off the runtime that answers requests, and never waits for that
/// runtime between frames.
async fn parse_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    limits: EventLimits,
) -> Result<(EventBatch, Vec<RejectedLine>), ApiError> {
    let declared = declared_form(headers);
    let length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if length.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    if length.is_some_and(|n| n <= SMALL_BODY_BYTES) {
        let body = read_body(body, limit).await?;
        return parse_frames(
            std::iter::once(body),
            declared,
            limits,
            body_len_hint(length),
        )
        .map_err(invalid);
    }
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let parser = tokio::task::spawn_blocking(move || {
        parse_frames(
            std::iter::from_fn(|| frames_rx.blocking_recv()),
            declared,
            limits,
            body_len_hint(length),
        )
    });
    let mut frames = body.into_data_stream();
    let mut received = 0usize;
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(
                "invalid_request",
                format!("could not read the request body: {e}"),
            )
        })?;
        received += frame.len();
        if received > limit {
            return Err(too_large(limit));
        }
        if frames_tx.send(frame).await.is_err() {
            break; // the parser gave up: its error says why
        }
    }
    drop(frames_tx);
    parser
        .await
        .map_err(|e| ApiError::internal(format!("the body parser failed: {e}")))?
        .map_err(invalid)
}

/// Parses a body from its frames, its form declared or sniffed from its
/// first bytes.
fn parse_frames(
    frames: impl Iterator<Item = Bytes>,
    declared: Option<BodyForm>,
    limits: EventLimits,
    size_hint: usize,
) -> Result<(EventBatch, Vec<RejectedLine>), EventError> {
    let builder = || EventBatchBuilder::with_capacity(limits, size_hint / 256 + 1, size_hint);
    let mut parser = declared.map(|form| BodyParser::new(form, builder()));
    // Blanks before the first byte that tells the form.
    let mut head = Vec::new();
    for frame in frames {
        match parser.as_mut() {
            Some(parser) => parser.push(&frame)?,
            None => {
                head.extend_from_slice(&frame);
                if let Some(form) = BodyForm::sniff(&head) {
                    let mut started = BodyParser::new(form, builder());
                    started.push(&head)?;
                    parser = Some(started);
                }
            }
        }
    }
    parser
        .unwrap_or_else(|| BodyParser::new(BodyForm::Ndjson, builder()))
        .finish()
}

fn body_len_hint(length: Option<usize>) -> usize {
    // A declared length sizes the columns once; without one, start small.
    length.unwrap_or(64 * 1024).min(64 * 1024 * 1024)
}

fn invalid(e: EventError) -> ApiError {
    ApiError::bad_request("invalid_events", e.message)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is larger than {limit} bytes"),
    )
}
