//! `POST /v1/query`: read-only SQL over `events` and `things`.
//!
//! The caller's scope goes into the engine, which enforces it inside the
//! table scan (files of other namespaces are pruned, rows filtered), so it
//! holds for every SQL shape, the cache and the statistics alike. JSON
//! answers go through the result cache; NDJSON, CSV and Arrow stream batch
//! by batch as the engine produces them.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE, TRAILER};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::StreamBody;
use serde::Deserialize;
use shardlake_query::{QueryStream, ResultLimit, ScanStats, SqlQuery};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Span;

use crate::auth::Authenticated;
use crate::config::Permission;
use crate::encode::{ERROR_TRAILER, Format, STATS_TRAILER, StreamEncoder};
use crate::error::ApiError;
use crate::routes::read_body;
use crate::state::AppState;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    sql: String,
    #[serde(default)]
    format: Option<Format>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    cache: Option<bool>,
    /// Time travel: run against this retained snapshot (a string, or a
    /// number while it is exact).
    #[serde(default, with = "shardlake_core::json_id::option")]
    snapshot_id: Option<i64>,
    /// Time travel: run against the snapshot current at this RFC 3339 time.
    #[serde(default)]
    as_of: Option<String>,
}

/// Parses an `as_of` time (RFC 3339, e.g. `2026-12-01T10:00:00Z`).
pub(crate) fn parse_as_of(text: &str) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_request",
                format!("`as_of` must be an RFC 3339 time such as 2026-12-01T10:00:00Z: {e}"),
            )
        })
}

/// Runs one query.
pub async fn query(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Permission::Query)?;
    let limits = &state.config().limits;
    let body = read_body(body, limits.max_body_bytes).await?;
    let request: QueryRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!(
                "expected {{\"sql\": \"...\", \"format\"?, \"timeout_ms\"?, \"cache\"?, \
                 \"snapshot_id\"?, \"as_of\"?}}: {e}"
            ),
        )
    })?;
    if request.sql.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_request", "`sql` is empty"));
    }
    let format = match (request.format, headers.get(ACCEPT)) {
        (Some(format), _) => format,
        (None, Some(accept)) => Format::from_accept(accept)?.unwrap_or(Format::Json),
        (None, None) => Format::Json,
    };
    let longest = limits.query_timeout();
    let timeout = match request.timeout_ms {
        Some(0) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "`timeout_ms` must be positive",
            ));
        }
        Some(ms) => Duration::from_millis(ms).min(longest),
        None => longest,
    };
    Span::current().record("format", tracing::field::debug(format));

    let mut query = state
        .engine()
        .sql(request.sql)
        .with_scope(caller.scope.clone())
        .with_timeout(timeout)
        .with_result_limit(ResultLimit {
            max_rows: limits.max_rows as u64,
            max_bytes: limits.max_response_bytes as u64,
        });
    if request.cache == Some(false) {
        query = query.without_cache();
    }
    match (request.snapshot_id, request.as_of.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give `snapshot_id` or `as_of`, not both",
            ));
        }
        (Some(id), None) => query = query.at_snapshot(id),
        (None, Some(at)) => query = query.as_of(parse_as_of(at)?),
        (None, None) => {}
    }
    match format {
        Format::Json => {
            // A cache hit costs no query slot: it must not wait behind
            // running queries.
            let result = match query.cached().await? {
                Some(hit) => hit,
                None => {
                    let _slot = state.query_slot().await?;
                    query.await?
                }
            };
            record(&state, &result.stats);
            let body = result.to_json().map_err(ApiError::internal)?;
            Ok(Json(body).into_response())
        }
        _ => {
            let slot = state.query_slot().await?;
            stream(state, query, format, slot).await
        }
    }
}

/// Logs and counts a finished query.
fn record(state: &AppState, stats: &ScanStats) {
    let span = Span::current();
    span.record("rows", stats.rows_returned);
    span.record("bytes_scanned", stats.bytes_scanned);
    span.record("cache_hit", stats.cache_hit);
    let metrics = state.metrics();
    metrics.rows_returned.inc_by(stats.rows_returned);
    metrics.bytes_scanned.inc_by(stats.bytes_scanned);
    if stats.cache_hit {
        metrics.cached_queries.inc();
    }
}

/// Where a streamed response is.
enum Phase {
    Rows,
    Trailers(HeaderMap),
    Done,
}

struct Streaming {
    rows: QueryStream,
    encoder: StreamEncoder,
    phase: Phase,
    state: AppState,
    span: Span,
    /// Held until the last row is out; a dropped response frees it too.
    slot: Option<OwnedSemaphorePermit>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Streaming {
    /// The next frame of the body.
    async fn next_frame(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Done => None,
            Phase::Trailers(trailers) => Some(Ok(Frame::trailers(trailers))),
            Phase::Rows => match self.rows.next().await {
                Some(Ok(batch)) => match self.encoder.batch(&batch) {
                    Ok(bytes) => {
                        self.phase = Phase::Rows;
                        Some(Ok(Frame::data(bytes)))
                    }
                    Err(e) => self.fail(&ApiError::internal(e)),
                },
                Some(Err(e)) => self.fail(&ApiError::from(e)),
                None => {
                    self.slot = None;
                    let stats = self.rows.stats().cloned().unwrap_or_default();
                    self.span.in_scope(|| {
                        record(&self.state, &stats);
                        tracing::info!(
                            rows = stats.rows_returned,
                            bytes_scanned = stats.bytes_scanned,
                            elapsed_ms = stats.elapsed_ms,
                            "query stream finished"
                        );
                    });
                    let tail = match self.encoder.finish(&stats) {
                        Ok(tail) => tail,
                        Err(e) => return self.fail(&ApiError::internal(e)),
                    };
                    let mut trailers = HeaderMap::new();
                    if let Ok(v) = HeaderValue::from_str(&json_line(&stats)) {
                        trailers.insert(HeaderName::from_static(STATS_TRAILER), v);
                    }
                    self.phase = Phase::Trailers(trailers);
                    Some(Ok(Frame::data(tail)))
                }
            },
        }
    }

    /// Ends the stream after `error`: NDJSON gets a last line saying so and
    /// a trailer; CSV and Arrow have no place for it, so the response is cut
    /// off abnormally, which every client notices (no silent truncation).
    fn fail(&mut self, error: &ApiError) -> Option<Result<Frame<Bytes>, BoxError>> {
        self.slot = None;
        self.span.in_scope(|| {
            tracing::warn!(
                code = error.code(),
                message = error.message(),
                "query stream failed"
            );
        });
        match self.encoder.error_line(error) {
            Some(line) => {
                let mut trailers = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&error.body().to_string()) {
                    trailers.insert(HeaderName::from_static(ERROR_TRAILER), v);
                }
                self.phase = Phase::Trailers(trailers);
                Some(Ok(Frame::data(line)))
            }
            None => Some(Err(Box::new(std::io::Error::other(error.to_string())))),
        }
    }
}

fn json_line(stats: &ScanStats) -> String {
    serde_json::to_string(stats).unwrap_or_default()
}

/// Starts `query` and answers with a body that streams its batches.
async fn stream(
    state: AppState,
    query: SqlQuery,
    format: Format,
    slot: OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    // Errors found while planning still get a proper status and JSON body.
    let rows = query.stream().await?;
    let encoder = StreamEncoder::new(format, &rows.schema()).map_err(ApiError::internal)?;
    let streaming = Streaming {
        rows,
        encoder,
        phase: Phase::Rows,
        state,
        span: Span::current(),
        slot: Some(slot),
    };
    let frames = futures::stream::unfold(streaming, |mut s| async move {
        let frame = s.next_frame().await?;
        Some((frame, s))
    });
    let mut response = Response::new(Body::new(StreamBody::new(frames.boxed())));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(
        TRAILER,
        HeaderValue::from_static("x-shardlake-stats, x-shardlake-error"),
    );
    Ok(response)
}
