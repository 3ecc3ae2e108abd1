//! shardlake's errors as Postgres errors: the SQLSTATE a Postgres client
//! acts on, the message, and shardlake's stable error code in the detail
//! (the same code an HTTP error body carries).

use pgwire::error::{ErrorInfo, PgWireError};

use crate::error::ApiError;

/// A Postgres `ERROR` with `sqlstate`, `message` and shardlake's `code`.
pub(super) fn error(sqlstate: &str, code: &str, message: impl Into<String>) -> PgWireError {
    let mut info = ErrorInfo::new("ERROR".to_owned(), sqlstate.to_owned(), message.into());
    info.detail = Some(format!("shardlake error code: {code}"));
    PgWireError::UserError(Box::new(info))
}

/// The Postgres form of an error the HTTP endpoint would answer with.
pub(super) fn from_api(e: &ApiError) -> PgWireError {
    error(sqlstate(e.code(), e.message()), e.code(), e.message())
}

/// The SQLSTATE of shardlake error `code`
/// (<https://www.postgresql.org/docs/current/errcodes-appendix.html>).
pub(super) fn sqlstate(code: &str, message: &str) -> &'static str {
    match code {
        // A statement that may not run here: DDL, DML, SET of engine
        // options (insufficient_privilege), or a token without the right.
        "statement_not_allowed" | "forbidden" => "42501",
        "invalid_query" if is_syntax(message) => "42601",
        "invalid_query" if message.contains("not found") && message.contains("table") => "42P01",
        "invalid_query" if message.contains("No field named") => "42703",
        "invalid_query" => "42000",
        "invalid_request" => "22023",
        "unauthorized" => "28000",
        "result_too_large" => "54000",
        "query_timeout" => "57014",
        "too_many_queries" => "53300",
        "resources_exhausted" => "53200",
        "snapshot_expired" => "55000",
        "storage_unavailable" => "58030",
        // connection_failure: a worker of a distributed query.
        "worker_unavailable" => "08006",
        "shutting_down" => "57P01",
        _ => "XX000",
    }
}

fn is_syntax(message: &str) -> bool {
    message.contains("ParserError") || message.contains("syntax") || message.contains("Expected")
}

/// The error of a query stopped by a cancel request (57014, as Postgres).
pub(super) fn cancelled() -> PgWireError {
    error(
        "57014",
        "query_cancelled",
        "canceling statement due to user request",
    )
}
