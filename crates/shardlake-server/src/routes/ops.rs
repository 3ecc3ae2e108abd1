//! Operations: liveness, readiness, statistics and Prometheus metrics.

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use shardlake_lake::HealthStatus;

use crate::auth::Authenticated;
use crate::config::Permission;
use crate::error::ApiError;
use crate::state::AppState;

/// `GET /healthz`: the process is up and answering.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: ready for traffic: not shutting down, the emitter can
/// commit, the catalog answers. 503 otherwise, with the reason.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let emitter = state.emitter().health();
    let reason = if state.is_draining() {
        Some("shutting down".to_owned())
    } else if emitter.status == HealthStatus::Stopped {
        Some("the emitter is stopped".to_owned())
    } else {
        match state.engine().current_snapshot().await {
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "readiness: catalog unreachable");
                Some("the catalog is unreachable".to_owned())
            }
        }
    };
    match reason {
        None => Json(json!({"status": "ready", "emitter": emitter})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "not_ready", "message": reason, "emitter": emitter})),
        )
            .into_response(),
    }
}

/// `GET /v1/stats` (admin): engine, cache and emitter figures as JSON.
pub async fn stats(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Admin)?;
    let engine = state.engine().metrics().await;
    let limits = &state.config().limits;
    Ok(Json(json!({
        "engine": engine,
        "emitter": state.emitter().metrics(),
        "emitter_health": state.emitter().health(),
        "server": {
            "queries_running": state.queries_running(),
            "max_concurrent_queries": limits.max_concurrent_queries,
            "draining": state.is_draining(),
        },
        "maintenance": {
            "enabled": state.config().maintenance.enabled,
            "interval_secs": state.config().maintenance.interval_secs,
            "status": state.maintenance().status(),
        },
    })))
}

/// `GET /v1/maintenance` (admin): the background maintenance's settings,
/// counters and its last runs (newest first), failures included.
pub async fn maintenance(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::Admin)?;
    let status = state.maintenance().status();
    Ok(Json(json!({
        "enabled": state.config().maintenance.enabled,
        "interval_secs": state.config().maintenance.interval_secs,
        "runs": status.runs,
        "failures": status.failures,
        "last_error": status.last_error,
        "recent": state.maintenance().recent(),
    })))
}

/// `GET /v1/whoami` (any valid token): who the token is, what it may do and
/// which namespaces it sees, so a client (the console) can show what the
/// caller may use instead of probing for 403s.
pub async fn whoami(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Json<Value> {
    let namespaces = match &caller.scope {
        shardlake_query::Scope::All => json!("*"),
        shardlake_query::Scope::Namespaces(names) => json!(names),
    };
    Json(json!({
        "name": caller.name,
        "namespaces": namespaces,
        "permissions": caller.permissions(),
        "auth_enabled": state.auth().is_enabled(),
    }))
}

/// `GET /metrics` (admin): Prometheus / OpenMetrics text.
pub async fn metrics(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Response, ApiError> {
    caller.require(Permission::Admin)?;
    let engine = state.engine().metrics().await;
    let text = state
        .metrics()
        .render(&engine, &state.emitter().metrics(), state.queries_running())
        .map_err(ApiError::internal)?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}
