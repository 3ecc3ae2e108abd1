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
    /// A shard refused a write because its key is fenced (migrating).
    Fenced {
        /// The shard.
        shard: shardlake_routing::ShardId,
        /// The fenced key.
        key: String,
    },
    /// Another migration holds some of the keys (one migration per key at
    /// a time).
    KeysBusy {
        /// `(key, migration)` pairs, at most a few.
        conflicts: Vec<(String, String)>,
        /// How many keys conflict in all.
        total: usize,
    },
    /// The control store (topologies, migration records) failed.
    Store(shardlake_lake::Error),
    /// The migration ran out of time (its work was cancelled).
    Timeout {
        /// The phase it was in.
        phase: String,
    },
    /// A copy does not match the lake.
    VerificationFailed(String),
    /// No such migration.
    Unknown(String),
    /// A write that would never be accepted (not buffered, not delivered).
    InvalidWrite(String),
    /// Stored state that cannot be read back (a bug or a damaged catalog).
    Internal(String),
    /// Another process runs this migration now.
    Busy(String),
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
            Self::Fenced { shard, key } => {
                write!(
                    f,
                    "shard {shard}: `{key}` is migrating; its writes are fenced"
                )
            }
            Self::KeysBusy { conflicts, total } => {
                write!(f, "{total} key(s) are already migrating:")?;
                for (key, migration) in conflicts {
                    write!(f, " `{key}` (migration {migration})")?;
                }
                Ok(())
            }
            Self::Store(e) => write!(f, "control store: {e}"),
            Self::Timeout { phase } => {
                write!(
                    f,
                    "migration timed out in phase {phase}; its work was cancelled"
                )
            }
            Self::VerificationFailed(m) => write!(f, "verification failed: {m}"),
            Self::Unknown(m) => write!(f, "{m}"),
            Self::InvalidWrite(m) => write!(f, "invalid write: {m}"),
            Self::Internal(m) => write!(f, "internal: {m}"),
            Self::Busy(m) => write!(f, "{m}"),
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

impl From<shardlake_lake::Error> for MigrateError {
    fn from(e: shardlake_lake::Error) -> Self {
        Self::Store(e)
    }
}

impl MigrateError {
    /// A stable code for the error (HTTP answers, CLI exit messages).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidPlan(_) => "invalid_plan",
            Self::Routing(_) => "routing_error",
            Self::Query(_) => "lake_error",
            Self::Shard { .. } => "shard_error",
            Self::Fenced { .. } => "key_fenced",
            Self::KeysBusy { .. } => "keys_busy",
            Self::Store(_) => "control_store_error",
            Self::Timeout { .. } => "migration_timeout",
            Self::VerificationFailed(_) => "verification_failed",
            Self::Unknown(_) => "migration_not_found",
            Self::InvalidWrite(_) => "invalid_write",
            Self::Internal(_) => "internal_error",
            Self::Busy(_) => "migration_in_progress",
        }
    }
}
