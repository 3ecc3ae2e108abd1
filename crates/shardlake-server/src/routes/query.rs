//! `POST /v1/query`: read-only SQL over `events` and `things`.
//!
//! The caller's scope goes into the engine, which enforces it inside the
//! table scan (files of other namespaces are pruned, rows filtered), so it
//! holds for every SQL shape, the cache and the statistics alike. JSON
//! answers go through the result cache; NDJSON, CSV and Arrow stream batch
//! by batch as the engine produces them.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shardlake_query::{PreparedQuery, ResultLimit, ScanStats};
use tracing::Span;

use crate::auth::{Authenticated, Caller};
use crate::config::Permission;
use crate::encode::{Format, StreamEncoder};
use crate::error::ApiError;
use crate::routes::read_body;
use crate::routes::stream_body::{StreamEnd, StreamedBody};
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
    /// At most this many rows (lowers, never raises, `[limits] max_rows`):
    /// beyond it the query fails with `result_too_large` instead of sending
    /// a result the client cannot hold (the console asks for 100,000).
    #[serde(default)]
    max_rows: Option<u64>,
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

/// Runs one query sent as a JSON body.
pub async fn query(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Permission::Query)?;
    let body = read_body(body, state.config().limits.max_body_bytes).await?;
    let request: QueryRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!(
                "expected {{\"sql\": \"...\", \"format\"?, \"timeout_ms\"?, \"max_rows\"?, \
                 \"cache\"?, \"snapshot_id\"?, \"as_of\"?}}: {e}"
            ),
        )
    })?;
    answer(state, &caller, &headers, request).await
}

/// Runs one query sent as a URL (`GET /v1/query?sql=...`): the same
/// parameters as the JSON body. A URL names its answer, so browsers,
/// proxies and CDNs can revalidate it with `If-None-Match`.
pub async fn query_get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(Permission::Query)?;
    let request = parse_query_string(raw.as_deref().unwrap_or(""))?;
    answer(state, &caller, &headers, request).await
}

/// The parameters of `GET /v1/query`.
fn parse_query_string(raw: &str) -> Result<QueryRequest, ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_request", m);
    let mut request = QueryRequest {
        sql: String::new(),
        format: None,
        timeout_ms: None,
        max_rows: None,
        cache: None,
        snapshot_id: None,
        as_of: None,
    };
    let mut sql = None;
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "sql" => sql = Some(v.into_owned()),
            "format" => {
                request.format = Some(
                    serde_json::from_value(serde_json::Value::String(v.to_string())).map_err(
                        |_| bad(format!("`format` is json, ndjson, csv or arrow, not `{v}`")),
                    )?,
                );
            }
            "timeout_ms" => {
                request.timeout_ms = Some(v.parse().map_err(|_| {
                    bad(format!(
                        "`timeout_ms` must be a positive integer, got `{v}`"
                    ))
                })?);
            }
            "max_rows" => {
                request.max_rows = Some(v.parse().map_err(|_| {
                    bad(format!("`max_rows` must be a positive integer, got `{v}`"))
                })?);
            }
            "cache" => {
                request.cache = Some(
                    v.parse()
                        .map_err(|_| bad(format!("`cache` is true or false, not `{v}`")))?,
                );
            }
            "snapshot_id" => {
                request.snapshot_id =
                    Some(v.parse().map_err(|_| {
                        bad(format!("`snapshot_id` must be an integer, got `{v}`"))
                    })?);
            }
            "as_of" => request.as_of = Some(v.into_owned()),
            other => return Err(bad(format!("unknown parameter `{other}`"))),
        }
    }
    request.sql = sql.ok_or_else(|| bad("`sql` is missing: GET /v1/query?sql=...".to_owned()))?;
    Ok(request)
}

/// Answers `request` for `caller`: from the result cache, with a 304 when
/// the caller's copy is current, or by running it.
async fn answer(
    state: AppState,
    caller: &Caller,
    headers: &HeaderMap,
    request: QueryRequest,
) -> Result<Response, ApiError> {
    let limits = &state.config().limits;
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
    let max_rows = match request.max_rows {
        Some(0) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "`max_rows` must be positive",
            ));
        }
        Some(rows) => rows.min(limits.max_rows as u64),
        None => limits.max_rows as u64,
    };
    Span::current().record("format", tracing::field::debug(format));

    let limit = ResultLimit {
        max_rows,
        max_bytes: limits.max_response_bytes as u64,
    };
    let mut query = state
        .engine()
        .sql(request.sql)
        .with_scope(caller.scope.clone())
        .with_timeout(timeout)
        .with_result_limit(limit);
    if request.cache == Some(false) {
        query = query.without_cache();
    }
    if format == Format::Json {
        // Rendered with the rows on the query runtime, and kept (weighed)
        // with the cached answer: a hit serves the bytes.
        query = query.rendering_json();
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
    // Pinned and identified before anything runs: the ETag is known, and a
    // caller whose copy is current gets 304 without the query running.
    let prepared = query.prepare().await?;
    let validators = Validators::of(&prepared, format, state.auth().is_enabled());
    if validators.matches(headers) {
        state.metrics().not_modified.inc();
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        validators.apply(response.headers_mut());
        return Ok(response);
    }
    let mut response = match format {
        Format::Json => {
            // A cache hit costs no query slot: it must not wait behind
            // running queries.
            let result = match prepared.cached().await? {
                // The cached answer was made under the server's limit; a
                // request may ask for less.
                Some(hit) if hit.stats.rows_returned > max_rows => {
                    return Err(limit.too_many_rows().into());
                }
                Some(hit) => hit,
                None => {
                    let slot = state.query_slot().await?;
                    prepared.holding(slot).execute().await?
                }
            };
            record(&state, &result.stats);
            let body = result.to_json_bytes().map_err(ApiError::internal)?;
            let mut response = Response::new(Body::from(body));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(Format::Json.content_type()),
            );
            response
        }
        _ => {
            let slot = state.query_slot().await?;
            stream(state, prepared.holding(slot), format).await?
        }
    };
    validators.apply(response.headers_mut());
    Ok(response)
}

/// What lets a client (or a proxy) reuse an answer: its ETag and the
/// caching rules that go with it.
struct Validators {
    etag: HeaderValue,
    cache_control: HeaderValue,
}

impl Validators {
    /// The validators of `prepared`'s answer in `format`.
    ///
    /// The ETag is weak (`W/`): two answers with the same tag have the same
    /// columns and rows, while their statistics (time, cache hit) differ.
    /// It digests the caller's scope with the query and snapshot, so a
    /// caller never matches another scope's answer. An answer of the current
    /// snapshot may change with the next commit: caches must revalidate
    /// (`no-cache`). A time-travel answer never changes. With tokens,
    /// answers are per caller (`private`).
    fn of(prepared: &PreparedQuery, format: Format, authenticated: bool) -> Self {
        let tag = format!(
            "W/\"{:032x}.{}\"",
            prepared.fingerprint(),
            format.extension()
        );
        let who = if authenticated { "private" } else { "public" };
        let rule = if prepared.is_pinned() {
            format!("{who}, max-age=31536000, immutable")
        } else {
            format!("{who}, no-cache")
        };
        Self {
            etag: HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("")),
            cache_control: HeaderValue::from_str(&rule)
                .unwrap_or_else(|_| HeaderValue::from_static("no-cache")),
        }
    }

    /// Whether `If-None-Match` names this answer (weak comparison, as RFC
    /// 9110 has it for `If-None-Match`; `*` matches any answer).
    fn matches(&self, headers: &HeaderMap) -> bool {
        let ours = opaque(self.etag.to_str().unwrap_or(""));
        headers.get_all(IF_NONE_MATCH).iter().any(|value| {
            value.to_str().unwrap_or("").split(',').any(|tag| {
                let tag = tag.trim();
                tag == "*" || (!tag.is_empty() && opaque(tag) == ours)
            })
        })
    }

    fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(ETAG, self.etag.clone());
        headers.insert(CACHE_CONTROL, self.cache_control.clone());
        // The answer depends on who asks and in which format.
        headers.insert(VARY, HeaderValue::from_static("authorization, accept"));
    }
}

/// An entity tag without its weakness prefix.
fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// Logs and counts a finished query (over HTTP or the Postgres protocol).
pub(crate) fn record(state: &AppState, stats: &ScanStats) {
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

/// Counts and logs the end of a query's stream.
struct QueryEnd(AppState);

impl StreamEnd for QueryEnd {
    fn finished(&mut self, stats: &ScanStats) {
        record(&self.0, stats);
        tracing::info!(
            rows = stats.rows_returned,
            bytes_scanned = stats.bytes_scanned,
            elapsed_ms = stats.elapsed_ms,
            "query stream finished"
        );
    }

    fn failed(&mut self, error: &ApiError) {
        tracing::warn!(
            code = error.code(),
            message = error.message(),
            "query stream failed"
        );
    }
}

/// Starts `query` and answers with a body that streams its batches. The
/// query's slot (which it holds) is free once its work has ended.
async fn stream(
    state: AppState,
    query: PreparedQuery,
    format: Format,
) -> Result<Response, ApiError> {
    // Errors found while planning still get a proper status and JSON body.
    let rows = query.stream().await?;
    let encoder = StreamEncoder::new(format, &rows.schema()).map_err(ApiError::internal)?;
    Ok(StreamedBody::new(rows, encoder, QueryEnd(state)).into_response())
}
