//! Errors of the migration crate.

use std::fmt;

/// What went wrong while planning or migrating.
#[derive(Debug)]
pub enum MigrateError {
    /// The plan is inconsistent (the message lists every problem).
    InvalidPlan(String),
    /// Routing refused a topology.
    Routing(shardlake_routing::RoutingError),
    /// Reading the lake failed.
    Query(shardlake_query::Error),
    /// A shard stub failed.
    Shard {
        /// The shard.
        shard: shardlake_routing::ShardId,
        /// What happened.
        message: String,
    },
}

/// Result alias of the migration crate.
pub type Result<T> = std::result::Result<T, MigrateError>;

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidPlan(m) => write!(f, "invalid plan: {m}"),
            Self::Routing(e) => write!(f, "routing: {e}"),
            Self::Query(e) => write!(f, "lake: {e}"),
            Self::Shard { shard, message } => write!(f, "shard {shard}: {message}"),
        }
    }
}

impl std::error::Error for MigrateError {}

impl From<shardlake_routing::RoutingError> for MigrateError {
    fn from(e: shardlake_routing::RoutingError) -> Self {
        Self::Routing(e)
    }
}

impl From<shardlake_query::Error> for MigrateError {
    fn from(e: shardlake_query::Error) -> Self {
        Self::Query(e)
    }
}
