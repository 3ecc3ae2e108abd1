//! Shard migration: moving keys between shards with no event lost or doubled.
//!
//! - [`plan`]: per-key statistics from the lake, and plans for adding,
//!   removing and rebalancing shards (keys to move, events and bytes,
//!   destinations, estimated duration), with validation that no key is
//!   skipped or owned twice;
//! - [`gate`]: the write path, which routes writes to owners and durably
//!   buffers writes to keys that are moving;
//! - [`execute`]: the phased migration (copy, catch up, fence, cut over,
//!   flush, verify, complete; or roll back), resumable after a crash;
//! - [`record`]: what a migration records about itself (its durable state
//!   and its result);
//! - [`setup`]: from a requested change to a plan and a migrator, the one
//!   way the CLI and the server both start a migration;
//! - [`store`]: the control store in the lake's database (topology
//!   versions, migration rows, key claims, the migration lease and the
//!   write buffer), opened with [`ControlStore::open`].
//!
//! The shards a migration drives speak the shard protocol of
//! `shardlake-shard` (the `ShardStub` trait, `InMemoryShard`, `HttpShard`
//! and `shard_service`); it is re-exported here under the same names.

mod error;
pub mod execute;
pub mod gate;
pub mod plan;
pub mod record;
pub mod setup;
pub mod store;

pub use error::{Error, ErrorKind, Result, migration_not_found};
pub use execute::{MigrationConfig, Migrator, PhaseHook};
pub use gate::{ShardSet, Submitted, WriteGate};
pub use plan::{
    KeyMove, KeyStats, MigrationPlan, analyze_balance, generate_rebalance_plan, key_stats,
    key_stats_at, plan_add_shard, plan_between, plan_remove_shard, validate_plan,
};
pub use record::{
    FailureSummary, MigrationReport, MigrationStatus, Phase, Progress, RollbackSummary,
    current_topology, cut_over_per_store, migration_id, migration_report, migration_reports,
    publish_topology,
};
pub use setup::{MigrationSetup, TopologyChange, plan_change, plan_shards};
pub use shardlake_shard::{
    ApplyAck, HttpShard, InMemoryShard, KeyDigest, ShardStub, digest_of, key_fenced, shard_failed,
    shard_service,
};
pub use store::{BufferedWrite, ControlStore, MigrationRow};
