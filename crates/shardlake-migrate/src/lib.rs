//! Shard migration (seed 001's ShardMigration, done properly).
//!
//! This crate holds the parts a migration is built from:
//! - [`plan`]: per-key statistics from the lake, and plans for adding,
//!   removing and rebalancing shards (keys to move, events and bytes,
//!   destinations, estimated duration), with validation that no key is
//!   skipped or owned twice;
//! - [`stub`]: the `ShardStub` interface a migration drives (apply events
//!   idempotently, count, drop keys, fence writes, drain), with an
//!   in-memory shard that materializes entity state and an HTTP shard.
//!
//! The phased executor (copy, catch-up, fence, cutover, flush, verify,
//! rollback) is the next step and builds on these.

mod error;
pub mod plan;
pub mod stub;

pub use error::{MigrateError, Result};
pub use plan::{
    KeyMove, KeyStats, MigrationPlan, analyze_balance, generate_rebalance_plan, key_stats,
    plan_add_shard, plan_between, plan_remove_shard, validate_plan,
};
pub use stub::{ApplyAck, HttpShard, InMemoryShard, KeyDigest, ShardStub, digest_of};
