//! Shard routing and assignment: which shard owns a key, how topologies
//! change, and how work for one key stays in order.
//!
//! - [`ShardRouter`] maps keys to shards for one versioned [`Topology`]
//!   (`hash`, `consistent-hash`, `jump`, `range`); [`SharedRouter`] swaps
//!   versions atomically.
//! - [`ShardAssigner`] finds an entity's key (field, composite, function,
//!   fallback, strict) and routes it through the same router, with optional
//!   tracking, hot-shard detection and rebalance hints.
//! - [`partition`]: seed 002's partition-key shapes and start-up validation.
//! - [`KeyedLanes`]: per-key ordered, cross-key parallel execution (seed 000).
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
pub use error::RoutingError;
pub use key::{COMPOSITE_SEPARATOR, RoutingKey};
pub use lanes::{KeyedLanes, LaneItem, LanesClosed};
pub use report::DistributionReport;
pub use router::{RangeKeyFn, RouterMetricsSnapshot, ShardRouter, SharedRouter};
pub use topology::{Comparator, RangeDef, RangeValue, ShardId, Strategy, Topology};
