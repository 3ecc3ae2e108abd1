//! The HTTP API: one module per endpoint family, assembled by [`app`].
//!
//! | Route | Permission | Module |
//! |---|---|---|
//! | `POST, GET /v1/query` | query | [`query`] |
//! | `POST /v1/events` | ingest | [`events`] |
//! | `GET /v1/replay` | query | [`replay`] |
//! | `GET /v1/tables` | query | [`tables`] |
//! | `GET /v1/snapshots` | query | [`snapshots`] |
//! | `GET /v1/files` | query | [`files`] |
//! | `GET /v1/lake` | query | [`lake`] |
//! | `GET /v1/whoami` | any token | [`ops`] |
//! | `GET /v1/stats`, `GET /v1/maintenance`, `GET /metrics` | admin | [`ops`] |
//! | `GET /v1/shards` | admin | [`shards`] |
//! | `GET, POST /v1/migrations`, `POST /v1/migrations/plan`, `GET /v1/migrations/{id}`, `POST /v1/migrations/{id}/{resume,rollback}` | admin | [`migrations`] |
//! | `GET /healthz`, `GET /readyz` | none | [`ops`] |
//! | `GET /`, `GET /console/`, `GET /console/assets/{file}` | none (static) | [`console`] |
//!
//! Every streamed answer (query NDJSON, CSV, Arrow; replay) is one body,
//! `stream_body::StreamedBody`.

pub mod console;
pub mod events;
pub mod files;
pub mod lake;
pub mod migrations;
pub mod ops;
pub mod query;
pub mod replay;
pub mod shards;
pub mod snapshots;
pub(crate) mod stream_body;
pub mod tables;

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::error::ApiError;
use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole API over `state`, with request ids, request logs and metrics.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/query", post(query::query).get(query::query_get))
        .route("/v1/events", post(events::ingest))
        .route("/v1/replay", get(replay::replay))
        .route("/v1/tables", get(tables::tables))
        .route("/v1/snapshots", get(snapshots::snapshots))
        .route("/v1/files", get(files::files))
        .route("/v1/lake", get(lake::lake))
        .route("/v1/shards", get(shards::shards))
        .route("/v1/whoami", get(ops::whoami))
        .route("/v1/maintenance", get(ops::maintenance))
        .route(
            "/v1/migrations",
            get(migrations::list).post(migrations::start),
        )
        .route("/v1/migrations/plan", post(migrations::dry_run))
        .route("/v1/migrations/{id}", get(migrations::get))
        .route("/v1/migrations/{id}/{action}", post(migrations::act))
        .route("/v1/stats", get(ops::stats))
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .merge(console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let id = request
                        .headers()
                        .get(&REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "request",
                        request_id = %id,
                        method = %request.method(),
                        path = %request.uri().path(),
                        caller = tracing::field::Empty,
                        scope = tracing::field::Empty,
                        format = tracing::field::Empty,
                        rows = tracing::field::Empty,
                        bytes_scanned = tracing::field::Empty,
                        cache_hit = tracing::field::Empty,
                        accepted = tracing::field::Empty,
                    )
                })
                .on_response(|response: &Response, latency: Duration, _span: &Span| {
                    tracing::info!(
                        status = response.status().as_u16(),
                        duration_ms = latency.as_secs_f64() * 1e3,
                        "request answered"
                    );
                })
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// Counts every answered request by route pattern and status.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics().observe(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/http-api.md",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

/// Reads a whole request body of at most `limit` bytes (413 beyond).
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        if inner
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is larger than {limit} bytes"),
            )
        } else {
            ApiError::bad_request(
                "invalid_request",
                format!("could not read the request body: {inner}"),
            )
        }
    })
}

/// Largest JSON body a control route reads (migrations, plans).
const CONTROL_BODY_LIMIT: usize = 1024 * 1024;

/// A JSON request body, whatever `Content-Type` says (`curl -d` sends a
/// form type): bad JSON is a 400 `invalid_request` with the parser's
/// reason, in the API's JSON error shape like every other error.
pub struct JsonBody<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let body = read_body(request.into_body(), CONTROL_BODY_LIMIT).await?;
        serde_json::from_slice(&body).map(JsonBody).map_err(|e| {
            ApiError::bad_request("invalid_request", format!("the body is not valid: {e}"))
        })
    }
}

/// Turns any error answer that is not JSON yet (an extractor's plain-text
/// rejection, say) into the API's `{error, message}` shape, so that every
/// route and status speaks one error contract.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        s if s.is_client_error() => "invalid_request",
        _ => "internal_error",
    };
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_owned();
    if message.is_empty() {
        message = status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned();
    }
    let mut response = ApiError::new(status, code, message).into_response();
    // Keep what the original answer said besides its body (Retry-After,
    // Allow, request id).
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    response
}
