//! The engine speaks the workspace's one error type (`shardlake_core::Error`,
//! docs/adr/0004-one-error-model.md). Its conversion from DataFusion's errors
//! lives with it in core: it tells the caller's mistakes (bad SQL, a failing
//! cast) from resource limits, storage and our bugs, and hands back one of
//! ours that travelled through DataFusion as it was.

use datafusion::error::DataFusionError;

pub use shardlake_core::{Error, ErrorKind, Result};

/// Wraps an error of ours so it can travel through DataFusion (and come back
/// as it was).
pub(crate) fn to_df(e: impl Into<Error>) -> DataFusionError {
    DataFusionError::from(e.into())
}
