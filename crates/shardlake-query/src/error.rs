//! The query crate's error type. Kinds separate the caller's mistakes (bad
//! SQL, a statement that is not allowed) from resource limits and from our
//! bugs, so the server can map them to status codes.

use std::fmt;

use datafusion::error::DataFusionError;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The SQL does not parse or plan (unknown column, syntax, type error).
    InvalidQuery,
    /// The statement is valid but not allowed here (DDL, DML, COPY, SET...).
    NotAllowed,
    /// The query ran past its timeout and was cancelled.
    Timeout,
    /// The query needed more memory than its pool allows.
    ResourcesExhausted,
    /// The result has more rows or bytes than the caller's limit.
    ResultTooLarge,
    /// The snapshot asked for (time travel, a replay cursor) is not
    /// retained: it expired, or never existed.
    SnapshotExpired,
    /// Reading the lake failed (storage, catalog).
    Storage,
    /// A bug or an impossible state on our side.
    Unexpected,
}

impl ErrorKind {
    /// Stable snake_case code, the one HTTP error bodies carry.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidQuery => "invalid_query",
            Self::NotAllowed => "statement_not_allowed",
            Self::Timeout => "query_timeout",
            Self::ResourcesExhausted => "resources_exhausted",
            Self::ResultTooLarge => "result_too_large",
            Self::SnapshotExpired => "snapshot_expired",
            Self::Storage => "storage_unavailable",
            Self::Unexpected => "internal_error",
        }
    }
}

/// Error of the query crate.
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Result alias of the query crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
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

    /// The message, safe to show to the caller for every kind but
    /// `Unexpected` and `Storage` (whose details belong in logs).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)?;
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

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        // Our own errors travel through DataFusion wrapped as External.
        if let DataFusionError::External(inner) = e.find_root()
            && let Some(ours) = inner.downcast_ref::<Error>()
        {
            return Error::new(ours.kind, ours.message.clone());
        }
        let kind = match e.find_root() {
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => ErrorKind::InvalidQuery,
            DataFusionError::ResourcesExhausted(_) => ErrorKind::ResourcesExhausted,
            // Files that cannot be fetched or decoded: storage, not our bug.
            DataFusionError::ObjectStore(_)
            | DataFusionError::IoError(_)
            | DataFusionError::ParquetError(_) => ErrorKind::Storage,
            DataFusionError::External(inner)
                if inner.is::<object_store::Error>()
                    || inner.is::<std::io::Error>()
                    || inner.is::<parquet::errors::ParquetError>() =>
            {
                ErrorKind::Storage
            }
            DataFusionError::Execution(_) | DataFusionError::ArrowError(..) => {
                // Runtime errors caused by the data a query asked for (a cast
                // that fails, division by zero) are the query's problem.
                ErrorKind::InvalidQuery
            }
            _ => ErrorKind::Unexpected,
        };
        let message = match e.find_root() {
            // The parser's own words, not DataFusion's Debug rendering of
            // them (`SQL error: ParserError("...")`).
            DataFusionError::SQL(parser, _) => match parser.as_ref() {
                datafusion::sql::sqlparser::parser::ParserError::ParserError(m)
                | datafusion::sql::sqlparser::parser::ParserError::TokenizerError(m) => {
                    format!("syntax error: {m}")
                }
                other => other.to_string(),
            },
            root => root.message().into_owned(),
        };
        Error::new(kind, message).with_source(e)
    }
}

impl From<shardlake_lake::Error> for Error {
    fn from(e: shardlake_lake::Error) -> Self {
        let kind = match e.kind() {
            shardlake_lake::ErrorKind::Storage | shardlake_lake::ErrorKind::SchemaMismatch => {
                ErrorKind::Storage
            }
            shardlake_lake::ErrorKind::SnapshotExpired => ErrorKind::SnapshotExpired,
            _ => ErrorKind::Unexpected,
        };
        Error::new(kind, e.message().to_owned()).with_source(e)
    }
}

impl From<shardlake_core::Error> for Error {
    fn from(e: shardlake_core::Error) -> Self {
        Error::new(ErrorKind::Unexpected, e.message().to_owned()).with_source(e)
    }
}

impl From<iceberg::Error> for Error {
    fn from(e: iceberg::Error) -> Self {
        Error::new(ErrorKind::Storage, format!("iceberg: {}", e.message())).with_source(e)
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::new(ErrorKind::Unexpected, e.to_string()).with_source(e)
    }
}

/// Wraps an error of ours so it can travel through DataFusion.
pub(crate) fn to_df(e: impl Into<Error>) -> DataFusionError {
    DataFusionError::External(Box::new(e.into()))
}
