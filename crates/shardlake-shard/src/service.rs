//! The HTTP shard protocol, server side: exposes any [`ShardStub`] so that
//! an [`HttpShard`](crate::HttpShard) (and so a migration in another
//! process) can drive it.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /apply` | events (JSON array, with positions) | `{applied, skipped}` |
//! | `POST /digests` | keys | `{key: {events, last_position, content_hash}}` (hash as 32 hex digits) |
//! | `POST /drop`, `/fence`, `/unfence` | keys | `{}` |
//! | `GET /accepts?key=` | | `true` or `false` |
//! | `POST /drain` | | `{}` |
//! | `POST /write` | events (the shard stamps its id and seq) | `{}` |
//!
//! Errors are `{error, message}`: 409 `key_fenced` (with `key`) for a write
//! to a fenced key, 400 for a body that is not what the route takes, 503 for a shard
//! that failed (the client retries those).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use shardlake_core::Event;

use crate::error::{Error, ErrorKind};
use crate::stub::ShardStub;

type Shard = State<Arc<dyn ShardStub>>;

/// An error answer.
struct Failure(Error);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let kind = self.0.kind();
        let status = match kind {
            ErrorKind::KeyFenced => StatusCode::CONFLICT,
            kind if kind.is_retryable() || kind.is_internal() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut body = serde_json::json!({"error": kind.code(), "message": self.0.message()});
        if let Some(key) = self
            .0
            .context_value("key")
            .filter(|_| kind == ErrorKind::KeyFenced)
        {
            body["key"] = serde_json::json!(key);
        }
        (status, Json(body)).into_response()
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

type Answer = Result<Json<serde_json::Value>, Failure>;

fn done() -> Answer {
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
struct KeyParam {
    key: String,
}

/// The routes of the protocol for `shard` (nest them under a prefix, e.g.
/// `/shard`).
pub fn shard_service(shard: Arc<dyn ShardStub>) -> Router {
    Router::new()
        .route(
            "/apply",
            post(
                |State(s): Shard, Json(events): Json<Vec<Event>>| async move {
                    let ack = s.apply(&events).await?;
                    Ok::<_, Failure>(Json(
                        serde_json::json!({"applied": ack.applied, "skipped": ack.skipped}),
                    ))
                },
            ),
        )
        .route(
            "/digests",
            post(
                |State(s): Shard, Json(keys): Json<Vec<String>>| async move {
                    let digests: BTreeMap<String, serde_json::Value> = s
                        .digests(&keys)
                        .await?
                        .into_iter()
                        .map(|(k, d)| {
                            let d = serde_json::json!({
                                "events": d.events,
                                "last_position": d.last_position,
                                "content_hash": format!("{:032x}", d.content_hash),
                            });
                            (k, d)
                        })
                        .collect();
                    Ok::<_, Failure>(Json(serde_json::json!(digests)))
                },
            ),
        )
        .route(
            "/drop",
            post(
                |State(s): Shard, Json(keys): Json<Vec<String>>| async move {
                    s.drop_keys(&keys).await?;
                    done()
                },
            ),
        )
        .route(
            "/fence",
            post(
                |State(s): Shard, Json(keys): Json<Vec<String>>| async move {
                    s.set_accepting(&keys, false).await?;
                    done()
                },
            ),
        )
        .route(
            "/unfence",
            post(
                |State(s): Shard, Json(keys): Json<Vec<String>>| async move {
                    s.set_accepting(&keys, true).await?;
                    done()
                },
            ),
        )
        .route(
            "/accepts",
            get(|State(s): Shard, Query(q): Query<KeyParam>| async move {
                Ok::<_, Failure>(Json(serde_json::json!(s.accepts(&q.key).await?)))
            }),
        )
        .route(
            "/drain",
            post(|State(s): Shard| async move {
                s.drain().await?;
                done()
            }),
        )
        .route(
            "/write",
            post(
                |State(s): Shard, Json(events): Json<Vec<Event>>| async move {
                    s.write(&events).await?;
                    done()
                },
            ),
        )
        .with_state(shard)
}
