//! Routing speaks the workspace's one error type (`shardlake_core::Error`,
//! docs/adr/0004-one-error-model.md): every refusal here is
//! [`ErrorKind::InvalidTopology`] (code `routing_error`), with a typed
//! [`StaleTopology`] source when a topology swap lost the race.

use std::fmt;

pub use shardlake_core::{Error, ErrorKind, Result};

/// A topology cannot route (no shards, overlapping ranges...).
pub(crate) fn invalid_topology(message: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidTopology,
        format!("invalid topology: {message}"),
    )
}

/// A key this strategy cannot route (e.g. not a number for a range).
pub(crate) fn invalid_key(message: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidTopology,
        format!("invalid key: {message}"),
    )
    .with_context("refused", "key")
}

/// Strict key extraction found no key.
pub(crate) fn missing_key(message: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidTopology,
        format!("missing partition key: {message}"),
    )
    .with_context("refused", "missing_key")
}

/// A topology offered to a [`crate::SharedRouter`] that is not newer than
/// the one in use: the source of the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleTopology {
    /// Version in use.
    pub current: u64,
    /// Version offered.
    pub offered: u64,
}

impl fmt::Display for StaleTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "topology version {} is not newer than the current version {}",
            self.offered, self.current
        )
    }
}

impl std::error::Error for StaleTopology {}

impl From<StaleTopology> for Error {
    fn from(stale: StaleTopology) -> Self {
        Error::new(ErrorKind::InvalidTopology, stale.to_string()).with_source(stale)
    }
}
