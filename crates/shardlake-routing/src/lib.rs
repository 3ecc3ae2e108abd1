//! Shard routing and assignment: which shard owns a key, how topologies
//! change, and how work for one key stays in order.
//!
//! - [`ShardRouter`] maps keys to shards for one versioned [`Topology`]
//!   (`hash`, `consistent-hash`, `jump`, `range`); [`SharedRouter`] swaps
//!   versions atomically.
//! - [`ShardAssigner`] finds an entity's key (field, composite, function,
//!   fallback, strict) and routes it through the same router, with optional
//!   tracking, hot-shard detection and rebalance hints.
//! - [`partition`]: partition-key shapes and start-up validation.
//! - [`KeyedLanes`]: per-key ordered, cross-key parallel execution.
//!
//! Who uses what: the router and topologies are the product's (migration
//! plans, the write gate, `shardlake route`, subscriptions' partitions);
//! `KeyedLanes` runs partitioned subscriptions. [`ShardAssigner`] and
//! [`partition`] are a library for the *producers*: a shard that must
//! derive `partition_key` and `shard_id` for the events it emits links this
//! crate alone (it depends only on core) and routes exactly as the lake's
//! tools do. Nothing in shardlake's own write path calls them, on purpose:
//! events arrive with their `shard_id` and `partition_key` already set.
//!
//! ```
//! use shardlake_routing::{ShardRouter, Strategy, Topology};
//!
//! let router = ShardRouter::new(Topology::new(16, Strategy::Hash)).unwrap();
//! let shard = router.route("Order:o-1").unwrap();
//! assert!(shard < 16);
//! ```

pub mod assigner;
mod error;
pub mod hash;
mod key;
pub mod lanes;
pub mod partition;
mod report;
mod router;
mod topology;

pub use assigner::{
    AssignStrategy, AssignerConfig, Assignment, KeyOrigin, KeySource, RebalanceHint, ShardAssigner,
    ShardUtilization, TrackingLimits,
};
pub use error::{Error, ErrorKind, Result, StaleTopology};
pub use key::{COMPOSITE_SEPARATOR, RoutingKey};
pub use lanes::{KeyedLanes, LaneItem, LanesClosed};
pub use report::DistributionReport;
pub use router::{RangeKeyFn, RouterMetricsSnapshot, ShardRouter, SharedRouter};
pub use topology::{Comparator, RangeDef, RangeValue, ShardId, Strategy, Topology};
