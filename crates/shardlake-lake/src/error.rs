//! The lake speaks the workspace's one error type (`shardlake_core::Error`,
//! docs/adr/0004-one-error-model.md); its conversions from iceberg,
//! object_store, Parquet and sqlx errors live with it in core.

pub use shardlake_core::{ConcurrencyError, Error, ErrorKind, Result};
