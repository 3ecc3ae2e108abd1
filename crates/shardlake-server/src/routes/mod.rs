//! The HTTP API: one module per endpoint family, assembled by [`app`].
//!
//! | Route | Permission | Module |
//! |---|---|---|
//! | `POST /v1/query` | query | [`query`] |
//! | `POST /v1/events` | ingest | [`events`] |
//! | `GET /v1/replay` | query | [`replay`] |
//! | `GET /v1/tables` | query | [`tables`] |
//! | `GET /v1/snapshots` | query | [`snapshots`] |
//! | `GET /v1/stats`, `GET /metrics` | admin | [`ops`] |
//! | `GET, POST /v1/migrations`, `POST /v1/migrations/plan`, `GET /v1/migrations/{id}`, `POST /v1/migrations/{id}/{resume,rollback}` | admin | [`migrations`] |
//! | `GET /healthz`, `GET /readyz` | none | [`ops`] |

pub mod events;
pub mod migrations;
pub mod ops;
pub mod query;
pub mod replay;
pub mod snapshots;
pub mod tables;

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
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
        .route("/v1/query", post(query::query))
        .route("/v1/events", post(events::ingest))
        .route("/v1/replay", get(replay::replay))
        .route("/v1/tables", get(tables::tables))
        .route("/v1/snapshots", get(snapshots::snapshots))
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
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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
