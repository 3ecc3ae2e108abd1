//! The workspace's one error type (see docs/adr/0004-one-error-model.md),
//! shaped like iceberg-rust's: a kind callers branch on, a message, context
//! pairs that locate the problem, the source, and a backtrace when
//! `RUST_BACKTRACE` asks for one. Every shardlake crate re-exports it, so
//! an error crosses crates with `?` and keeps everything it carries.

use std::backtrace::{Backtrace, BacktraceStatus};
use std::fmt;
use std::sync::Arc;

mod convert;

/// What went wrong, grouped by whose problem it is. Each kind has a stable
/// [`code`](Self::code); only the server maps kinds to HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    // The caller's input.
    /// Invalid input: an event, a batch, a config value, a request field.
    DataInvalid,
    /// SQL that does not parse or plan (syntax, unknown column, type error),
    /// or that fails on the data it asked for (a bad cast).
    InvalidQuery,
    /// A valid statement that is not allowed here (DDL, DML, COPY, SET...).
    NotAllowed,
    /// A result with more rows or bytes than the caller's limit.
    ResultTooLarge,
    /// A migration plan that does not fit the topology or the lake.
    InvalidPlan,
    /// A topology, key or routing request that is not valid.
    InvalidTopology,
    /// A write that cannot be routed (no key, no owner).
    InvalidWrite,
    /// Something named does not exist (a lake where one was expected).
    NotFound,
    /// No migration with that id.
    MigrationNotFound,
    /// A snapshot that is not retained (expired, or never existed).
    SnapshotExpired,

    // State the caller raced with.
    /// A shard's committed watermark is not the one the caller expected
    /// (the source is a [`ConcurrencyError`]).
    ConcurrencyConflict,
    /// A key is fenced by a migration: write it again after cutover.
    KeyFenced,
    /// Keys are claimed by another migration.
    KeysBusy,
    /// Another migration (or another runner of this one) is in progress.
    MigrationBusy,
    /// A migration's copy does not match the lake.
    VerificationFailed,

    // Load: retry later.
    /// The emitter's queue is full (backpressure).
    QueueFull,
    /// A query needed more memory than its pool allows.
    ResourcesExhausted,
    /// The emitter or server is shutting down.
    Closed,
    /// Storage or catalog failed in a way that may succeed if retried.
    Storage,
    /// Another committer changed the table since it was read.
    CommitConflict,
    /// A shard (the target of a migration) did not answer as it should.
    ShardUnavailable,
    /// A query worker (`shardlake worker`) failed or could not be reached
    /// while running part of a distributed query; nothing partial was
    /// answered, and the query may succeed again.
    WorkerUnavailable,

    // Time.
    /// A query ran past its timeout and was cancelled.
    QueryTimeout,
    /// A migration phase ran past its timeout.
    MigrationTimeout,

    // Ours.
    /// The table exists with a schema other than the event schema.
    SchemaMismatch,
    /// A bug or an impossible state on our side.
    Unexpected,
}

impl ErrorKind {
    /// The stable snake_case code: what HTTP error bodies and the CLI say.
    pub fn code(self) -> &'static str {
        match self {
            Self::DataInvalid => "invalid_request",
            Self::InvalidQuery => "invalid_query",
            Self::NotAllowed => "statement_not_allowed",
            Self::ResultTooLarge => "result_too_large",
            Self::InvalidPlan => "invalid_plan",
            Self::InvalidTopology => "routing_error",
            Self::InvalidWrite => "invalid_write",
            Self::NotFound => "not_found",
            Self::MigrationNotFound => "migration_not_found",
            Self::SnapshotExpired => "snapshot_expired",
            Self::ConcurrencyConflict => "concurrency_conflict",
            Self::KeyFenced => "key_fenced",
            Self::KeysBusy => "keys_busy",
            Self::MigrationBusy => "migration_in_progress",
            Self::VerificationFailed => "verification_failed",
            Self::QueueFull => "ingest_queue_full",
            Self::ResourcesExhausted => "resources_exhausted",
            Self::Closed => "shutting_down",
            Self::Storage | Self::CommitConflict | Self::SchemaMismatch => "storage_unavailable",
            Self::ShardUnavailable => "shard_error",
            Self::WorkerUnavailable => "worker_unavailable",
            Self::QueryTimeout => "query_timeout",
            Self::MigrationTimeout => "migration_timeout",
            Self::Unexpected => "internal_error",
        }
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Storage
                | Self::CommitConflict
                | Self::QueueFull
                | Self::ResourcesExhausted
                | Self::ShardUnavailable
                | Self::WorkerUnavailable
                | Self::QueryTimeout
                | Self::MigrationTimeout
        )
    }

    /// Whether the problem is on shardlake's side (a bug, or a lake it
    /// cannot read as its own): its message belongs in logs, not answers.
    pub fn is_internal(self) -> bool {
        matches!(self, Self::Unexpected | Self::SchemaMismatch)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The error of every shardlake crate. Cheap to clone (an error handed to
/// many waiters is shared, not rebuilt).
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    context: Vec<(&'static str, String)>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    backtrace: Option<Arc<Backtrace>>,
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind`. A backtrace is captured when the environment
    /// asks for one (`RUST_BACKTRACE`/`RUST_LIB_BACKTRACE`).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let backtrace = Backtrace::capture();
        Self {
            kind,
            message: message.into(),
            context: Vec::new(),
            source: None,
            backtrace: (backtrace.status() == BacktraceStatus::Captured)
                .then(|| Arc::new(backtrace)),
        }
    }

    /// Adds a key/value pair that helps locate the problem.
    pub fn with_context(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.context.push((key, value.into()));
        self
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The same error with another kind (a caller that knows better, say a
    /// storage failure that is in fact the caller's bad path).
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The kind's stable code ([`ErrorKind::code`]).
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// The message, without context or source. Safe to show a caller for
    /// every kind that is not [`ErrorKind::is_internal`].
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The context pairs, in the order they were added.
    pub fn context(&self) -> &[(&'static str, String)] {
        &self.context
    }

    /// The value of context `key`, if set.
    pub fn context_value(&self, key: &str) -> Option<&str> {
        self.context
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The source, downcast to `T`, if it is one.
    pub fn source_as<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.source.as_deref().and_then(|s| s.downcast_ref::<T>())
    }

    /// The backtrace, if one was captured.
    pub fn backtrace(&self) -> Option<&Backtrace> {
        self.backtrace.as_deref()
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// A [`ErrorKind::ConcurrencyConflict`] carrying `detail`.
    pub fn concurrency(detail: ConcurrencyError) -> Self {
        Self::new(ErrorKind::ConcurrencyConflict, detail.to_string()).with_source(detail)
    }

    /// The refused expectation, for a concurrency conflict.
    pub fn concurrency_detail(&self) -> Option<ConcurrencyError> {
        self.source_as::<ConcurrencyError>().copied()
    }
}

/// A refused optimistic-concurrency expectation: the shard's committed
/// watermark was not the one the caller expected. `actual` is read from the
/// committed table at refusal time, never a cached value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ConcurrencyError {
    /// The shard.
    pub shard_id: i32,
    /// The watermark the caller expected.
    pub expected: i64,
    /// The committed watermark.
    pub actual: i64,
}

impl fmt::Display for ConcurrencyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shard {} was expected at watermark {} but is committed at {}",
            self.shard_id, self.expected, self.actual
        )
    }
}

impl std::error::Error for ConcurrencyError {}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)?;
        for (k, v) in &self.context {
            write!(f, ", {k}: {v}")?;
        }
        if let Some(source) = &self.source {
            write!(f, ", source: {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)?;
        if let Some(backtrace) = &self.backtrace {
            write!(f, "\nbacktrace:\n{backtrace}")?;
        }
        Ok(())
    }
}

/// Equal when kind, message and context are (sources and backtraces are
/// not compared): what a test or a caller comparing answers means.
impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message && self.context == other.context
    }
}

impl Eq for Error {}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_source_and_display_says_kind_message_context_source() {
        let io = std::io::Error::other("disk on fire");
        let e = Error::new(ErrorKind::Storage, "writing a manifest")
            .with_context("path", "metadata/m1.avro")
            .with_source(io);
        let copy = e.clone();
        assert_eq!(
            copy.to_string(),
            "storage_unavailable: writing a manifest, path: metadata/m1.avro, source: disk on fire"
        );
        assert!(copy.source_as::<std::io::Error>().is_some());
        assert_eq!(copy.context_value("path"), Some("metadata/m1.avro"));
        assert!(copy.is_retryable());
        assert!(!Error::new(ErrorKind::Unexpected, "bug").is_retryable());
    }
}
