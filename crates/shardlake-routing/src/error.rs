//! Errors of the routing crate.

use std::fmt;

/// What went wrong while routing or assigning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutingError {
    /// The topology cannot route (no shards, overlapping ranges...).
    InvalidTopology(String),
    /// A newer topology is already in use.
    StaleTopology {
        /// Version in use.
        current: u64,
        /// Version offered.
        offered: u64,
    },
    /// The key cannot be routed by this strategy (e.g. not a number).
    InvalidKey(String),
    /// Strict key extraction found no key.
    MissingKey(String),
}

impl fmt::Display for RoutingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidTopology(m) => write!(f, "invalid topology: {m}"),
            Self::StaleTopology { current, offered } => write!(
                f,
                "topology version {offered} is not newer than the current version {current}"
            ),
            Self::InvalidKey(m) => write!(f, "invalid key: {m}"),
            Self::MissingKey(m) => write!(f, "missing partition key: {m}"),
        }
    }
}

impl std::error::Error for RoutingError {}
