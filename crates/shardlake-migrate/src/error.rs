//! Migration speaks the workspace's one error type (`shardlake_core::Error`,
//! docs/adr/0004-one-error-model.md). These constructors give each refusal
//! its kind and the context a caller needs (the key, the migration, the
//! phase); a shard's own (`shard_failed`, `key_fenced`) are the shard
//! protocol's, in `shardlake-shard`.

use std::fmt;

pub use shardlake_core::{Error, ErrorKind, Result};

/// The plan is inconsistent (the message lists every problem).
pub(crate) fn invalid_plan(message: impl fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidPlan, format!("invalid plan: {message}"))
}

/// A write that would never be accepted (not buffered, not delivered).
pub(crate) fn invalid_write(message: impl fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidWrite, format!("invalid write: {message}"))
}

/// Stored state that cannot be read back (a bug or a damaged catalog).
pub(crate) fn internal(message: impl fmt::Display) -> Error {
    Error::new(ErrorKind::Unexpected, message.to_string())
}

/// Another process runs this migration now.
pub(crate) fn migration_busy(message: impl fmt::Display) -> Error {
    Error::new(ErrorKind::MigrationBusy, message.to_string())
}

/// No migration with id `id`.
pub fn migration_not_found(id: &str) -> Error {
    Error::new(ErrorKind::MigrationNotFound, format!("no migration `{id}`"))
        .with_context("migration", id)
}

/// A copy does not match the lake.
pub(crate) fn verification_failed(message: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::VerificationFailed,
        format!("verification failed: {message}"),
    )
}

/// The migration ran out of time in `phase` (its work was cancelled).
pub(crate) fn timed_out(phase: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::MigrationTimeout,
        format!("migration timed out in phase {phase}; its work was cancelled"),
    )
    .with_context("phase", phase.to_string())
}

/// Another migration holds some of the keys: `conflicts` are `(key,
/// migration)` pairs (the first few), `total` how many conflict in all.
pub(crate) fn keys_busy(conflicts: &[(String, String)], total: usize) -> Error {
    let mut message = format!("{total} key(s) are already migrating:");
    for (key, migration) in conflicts {
        message.push_str(&format!(" `{key}` (migration {migration})"));
    }
    Error::new(ErrorKind::KeysBusy, message).with_context("total", total.to_string())
}
