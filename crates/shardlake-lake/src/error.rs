//! The lake crate's error type: a kind callers can branch on, a message,
//! context pairs and the underlying source.

use std::fmt;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller's input is invalid (an event, a config value, a path).
    DataInvalid,
    /// The table exists with a schema other than the event schema.
    SchemaMismatch,
    /// Another committer changed the table since we read it.
    CommitConflict,
    /// A shard's committed watermark is not the one the caller expected.
    ConcurrencyConflict,
    /// The emitter's queue is full; retry later (backpressure).
    QueueFull,
    /// The emitter is closed or its committer stopped.
    Closed,
    /// Storage or catalog failed in a way that may succeed if retried.
    Storage,
    /// The operation ran out of time.
    Timeout,
    /// The snapshot asked for is not retained (it expired, or never
    /// existed).
    SnapshotExpired,
    /// There is no lake where one was expected (see [`crate::LakeDir`]).
    NotFound,
    /// A bug or an impossible state on our side.
    Unexpected,
}

impl ErrorKind {
    /// Stable name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DataInvalid => "DataInvalid",
            Self::SchemaMismatch => "SchemaMismatch",
            Self::CommitConflict => "CommitConflict",
            Self::ConcurrencyConflict => "ConcurrencyConflict",
            Self::QueueFull => "QueueFull",
            Self::Closed => "Closed",
            Self::Storage => "Storage",
            Self::Timeout => "Timeout",
            Self::SnapshotExpired => "SnapshotExpired",
            Self::NotFound => "NotFound",
            Self::Unexpected => "Unexpected",
        }
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

/// Error of the lake crate.
pub struct Error {
    kind: ErrorKind,
    message: String,
    context: Vec<(&'static str, String)>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Result alias of the lake crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            context: Vec::new(),
            source: None,
        }
    }

    /// Adds a key/value pair that helps locate the problem.
    pub fn with_context(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.context.push((key, value.into()));
        self
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without context or source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A [`ErrorKind::ConcurrencyConflict`] carrying `detail`.
    pub fn concurrency(detail: ConcurrencyError) -> Self {
        Self::new(ErrorKind::ConcurrencyConflict, detail.to_string()).with_source(detail)
    }

    /// The refused expectation, for a concurrency conflict.
    pub fn concurrency_detail(&self) -> Option<ConcurrencyError> {
        self.source
            .as_ref()
            .and_then(|s| s.downcast_ref::<ConcurrencyError>())
            .copied()
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Storage
                | ErrorKind::CommitConflict
                | ErrorKind::QueueFull
                | ErrorKind::Timeout
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)?;
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
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl From<iceberg::Error> for Error {
    fn from(e: iceberg::Error) -> Self {
        let kind = match e.kind() {
            iceberg::ErrorKind::CatalogCommitConflicts => ErrorKind::CommitConflict,
            iceberg::ErrorKind::DataInvalid | iceberg::ErrorKind::FeatureUnsupported => {
                ErrorKind::Unexpected
            }
            _ => ErrorKind::Storage,
        };
        Error::new(kind, format!("iceberg: {}", e.message())).with_source(e)
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        Error::new(ErrorKind::Storage, "object store operation failed").with_source(e)
    }
}

impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Error::new(ErrorKind::Storage, "parquet encoding or decoding failed").with_source(e)
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::new(ErrorKind::Unexpected, "arrow operation failed").with_source(e)
    }
}

impl From<shardlake_core::Error> for Error {
    fn from(e: shardlake_core::Error) -> Self {
        let kind = match e.kind() {
            shardlake_core::ErrorKind::DataInvalid => ErrorKind::DataInvalid,
            _ => ErrorKind::Unexpected,
        };
        Error::new(kind, e.message().to_owned()).with_source(e)
    }
}
