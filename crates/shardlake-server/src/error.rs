//! Every failure a client can see: an HTTP status and a JSON body
//! `{"error": "<stable_snake_case_code>", "message": "..."}`.
//!
//! Codes are part of the API (docs/http-api.md lists them). 500 is kept for
//! our own bugs: its message says only that, and the details go to the log
//! under the request id.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
    details: Option<(&'static str, serde_json::Value)>,
}

impl ApiError {
    /// An error with `status`, stable `code` and a message for the caller.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            details: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: no or unknown credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: known caller, not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 429 with a `Retry-After` hint.
    pub fn overloaded(
        code: &'static str,
        message: impl Into<String>,
        retry_after_secs: u64,
    ) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    /// 500: a bug on our side. `detail` is logged, never sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; the server log has the details under this request's x-request-id",
        )
    }

    /// 503: storage or catalog unreachable. `detail` is logged, never sent.
    pub fn unavailable(code: &'static str, detail: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %detail, code, "service unavailable");
        Self {
            retry_after_secs: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                "storage is unavailable; retry later",
            )
        }
    }

    /// Adds a field `key` to the body next to `error` and `message`.
    pub fn with_details(mut self, key: &'static str, value: serde_json::Value) -> Self {
        self.details = Some((key, value));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The body as JSON.
    pub fn body(&self) -> serde_json::Value {
        let mut body = json!({"error": self.code, "message": self.message});
        if let (Some((key, value)), Some(map)) = (&self.details, body.as_object_mut()) {
            map.insert((*key).to_owned(), value.clone());
        }
        body
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"shardlake\""),
            );
        }
        response
    }
}

/// The one table from error kinds to HTTP answers (the kinds and their
/// codes are in `shardlake_core::ErrorKind`; docs/adr/0004-one-error-model.md
/// has the table). Messages of our own failures (`Unexpected`) and of storage
/// are logged, never sent.
impl From<shardlake_core::Error> for ApiError {
    fn from(e: shardlake_core::Error) -> Self {
        use shardlake_core::ErrorKind as K;
        let code = e.code();
        match e.kind() {
            K::DataInvalid
            | K::InvalidQuery
            | K::NotAllowed
            | K::ResultTooLarge
            | K::InvalidPlan
            | K::InvalidTopology
            | K::InvalidWrite => Self::bad_request(code, e.message()),
            K::NotFound | K::MigrationNotFound => {
                Self::new(StatusCode::NOT_FOUND, code, e.message())
            }
            K::SnapshotExpired => Self::new(StatusCode::GONE, code, e.message()),
            K::ConcurrencyConflict => Self::new(StatusCode::CONFLICT, code, e.message())
                .with_details(
                    "conflict",
                    serde_json::to_value(e.concurrency_detail()).unwrap_or_default(),
                ),
            K::KeyFenced | K::KeysBusy | K::MigrationBusy | K::VerificationFailed => {
                Self::new(StatusCode::CONFLICT, code, e.message())
            }
            // The queue and the pool are shared by all requests: less
            // concurrent work (or a smaller query) gets through.
            K::QueueFull | K::ResourcesExhausted => Self::overloaded(code, e.message(), 1),
            K::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                "the server is shutting down; nothing of this request was committed",
            ),
            K::ShardUnavailable | K::WorkerUnavailable => Self {
                retry_after_secs: Some(1),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, e.message())
            },
            K::Storage | K::CommitConflict | K::SchemaMismatch => Self::unavailable(code, &e),
            K::QueryTimeout | K::MigrationTimeout => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, code, e.message())
            }
            _ => Self::internal(&e),
        }
    }
}
