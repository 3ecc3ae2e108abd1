//! Conversions from the errors of the libraries shardlake builds on, each
//! behind the cargo feature of core that the crate using the library turns
//! on (orphan rules put them here). Each classifies by the library's own
//! typed kinds, never by message text, and finds a shardlake [`Error`] that
//! travelled through the library (as DataFusion's `External`, say) and
//! hands it back as it was.

use super::{Error, ErrorKind};

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        if let Some(ours) = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
            return ours.clone();
        }
        Error::new(ErrorKind::Storage, "I/O failed").with_source(e)
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        use arrow::error::ArrowError as A;
        match e {
            A::ExternalError(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::new(ErrorKind::Unexpected, "arrow operation failed")
                    .with_source(A::ExternalError(other)),
            },
            A::IoError(..) => Error::new(ErrorKind::Storage, "arrow I/O failed").with_source(e),
            // Computing on values (a cast, an overflow) and encoding are
            // deterministic: retrying cannot help.
            _ => Error::new(ErrorKind::Unexpected, "arrow operation failed").with_source(e),
        }
    }
}

#[cfg(feature = "parquet")]
impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        use parquet::errors::ParquetError as P;
        match e {
            P::External(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::new(ErrorKind::Storage, "reading a Parquet file failed")
                    .with_source(P::External(other)),
            },
            // A file that ends early or does not decode: what the store
            // handed back is not what was written (retrying may help), or
            // the file is not ours.
            P::EOF(_) | P::NeedMoreData(_) | P::NeedMoreDataRange(_) => {
                Error::new(ErrorKind::Storage, "a Parquet file is truncated").with_source(e)
            }
            P::ArrowError(_) | P::General(_) | P::NYI(_) | P::IndexOutOfBound(..) => {
                Error::new(ErrorKind::Unexpected, "Parquet encoding or decoding failed")
                    .with_source(e)
            }
            _ => Error::new(ErrorKind::Storage, "Parquet I/O failed").with_source(e),
        }
    }
}

#[cfg(feature = "object_store")]
impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        use object_store::Error as O;
        let kind = match &e {
            // Our own names: a missing object the metadata points at, a
            // path we built wrong, a precondition we asked for.
            O::NotFound { .. } | O::AlreadyExists { .. } | O::Precondition { .. } => {
                ErrorKind::Storage
            }
            O::InvalidPath { .. } | O::NotSupported { .. } | O::NotImplemented { .. } => {
                ErrorKind::Unexpected
            }
            _ => ErrorKind::Storage,
        };
        Error::new(kind, "object store operation failed").with_source(e)
    }
}

#[cfg(feature = "iceberg")]
impl From<iceberg::Error> for Error {
    fn from(e: iceberg::Error) -> Self {
        use std::error::Error as _;
        if let Some(ours) = e.source().and_then(|s| s.downcast_ref::<Error>()) {
            return ours.clone();
        }
        let kind = match e.kind() {
            iceberg::ErrorKind::CatalogCommitConflicts => ErrorKind::CommitConflict,
            iceberg::ErrorKind::TableNotFound | iceberg::ErrorKind::NamespaceNotFound => {
                ErrorKind::NotFound
            }
            iceberg::ErrorKind::DataInvalid | iceberg::ErrorKind::FeatureUnsupported => {
                ErrorKind::Unexpected
            }
            _ => ErrorKind::Storage,
        };
        Error::new(kind, format!("iceberg: {}", e.message())).with_source(e)
    }
}

#[cfg(feature = "sqlx")]
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        let kind = match &e {
            sqlx::Error::RowNotFound => ErrorKind::NotFound,
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::TypeNotFound { .. }
            | sqlx::Error::Decode(_) => ErrorKind::Unexpected,
            _ => ErrorKind::Storage,
        };
        Error::new(kind, "the catalog database failed").with_source(e)
    }
}

#[cfg(feature = "datafusion")]
impl From<datafusion_common::DataFusionError> for Error {
    fn from(e: datafusion_common::DataFusionError) -> Self {
        use datafusion_common::DataFusionError as D;
        let root = e.find_root();
        // Ours, wrapped to travel through DataFusion: as it was.
        if let D::External(inner) = root
            && let Some(ours) = inner.downcast_ref::<Error>()
        {
            return ours.clone();
        }
        let kind = match root {
            D::SQL(..) | D::Plan(_) | D::SchemaError(..) | D::NotImplemented(_) => {
                ErrorKind::InvalidQuery
            }
            D::ResourcesExhausted(_) => ErrorKind::ResourcesExhausted,
            // Files that cannot be fetched: storage, not our bug.
            D::ObjectStore(_) | D::IoError(_) | D::ParquetError(_) => ErrorKind::Storage,
            D::External(inner) if inner.is::<std::io::Error>() => ErrorKind::Storage,
            D::External(inner) if inner.is::<object_store::Error>() => ErrorKind::Storage,
            D::External(inner) if inner.is::<parquet::errors::ParquetError>() => ErrorKind::Storage,
            // Runtime errors caused by the data a query asked for (a cast
            // that fails, a division by zero) are the query's problem.
            D::Execution(_) | D::ArrowError(..) => ErrorKind::InvalidQuery,
            _ => ErrorKind::Unexpected,
        };
        let message = match root {
            // The parser's own words, not the Debug form of them.
            D::SQL(parser, _) => {
                let words = parser.to_string();
                let words = words.strip_prefix("sql parser error: ").unwrap_or(&words);
                format!("syntax error: {words}")
            }
            root => root.message().into_owned(),
        };
        Error::new(kind, message).with_source(e)
    }
}

#[cfg(feature = "datafusion")]
impl From<Error> for datafusion_common::DataFusionError {
    /// Ours, wrapped to travel through DataFusion (and come back as it was).
    fn from(e: Error) -> Self {
        datafusion_common::DataFusionError::External(Box::new(e))
    }
}
