//! `ShardRouter`: key -> shard for one topology version, with metrics; and
//! `SharedRouter`, which swaps topology versions atomically.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::error::{Error, StaleTopology, invalid_key};
use crate::hash::{fnv1a_32, jump_bucket, jump_key, ring_position};
use crate::key::RoutingKey;
use crate::report::DistributionReport;
use crate::topology::{Comparator, RangeDef, RangeValue, ShardId, Strategy, Topology};

/// A custom range comparator: maps a key to the value ranges compare.
pub type RangeKeyFn = Arc<dyn Fn(&str) -> Option<RangeValue> + Send + Sync>;

/// Routes keys to shards for one [`Topology`]. Immutable; cheap to share.
pub struct ShardRouter {
    topology: Topology,
    /// Consistent hash ring: (position, shard, index of the shard in
    /// `topology.shards`), sorted by position then shard, so colliding
    /// points are all kept in a fixed order and a lookup needs no search.
    ring: Vec<(u32, ShardId, usize)>,
    ring_collisions: usize,
    range_key: Option<RangeKeyFn>,
    metrics: RouterMetrics,
}

impl std::fmt::Debug for ShardRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardRouter")
            .field("topology", &self.topology)
            .field("ring_points", &self.ring.len())
            .field("ring_collisions", &self.ring_collisions)
            .finish_non_exhaustive()
    }
}

/// Counters of a router.
#[derive(Debug, Default)]
struct RouterMetrics {
    operations: AtomicU64,
    errors: AtomicU64,
    /// Per shard, indexed like `topology.shards`.
    per_shard: Vec<AtomicU64>,
}

/// The counters of a router at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouterMetricsSnapshot {
    /// The topology version the counters belong to.
    pub topology_version: u64,
    /// Keys routed.
    pub routing_operations: u64,
    /// Keys that could not be routed (e.g. a range key that is not a number).
    pub errors: u64,
    /// Keys routed to each shard.
    pub shard_distribution: Vec<(ShardId, u64)>,
}

impl ShardRouter {
    /// A router for `topology` (validated).
    pub fn new(topology: Topology) -> Result<Self, Error> {
        topology.validate()?;
        let (ring, ring_collisions) = match &topology.strategy {
            Strategy::ConsistentHash { virtual_nodes } => {
                build_ring(&topology.shards, *virtual_nodes)
            }
            _ => (Vec::new(), 0),
        };
        let metrics = RouterMetrics {
            per_shard: topology.shards.iter().map(|_| AtomicU64::new(0)).collect(),
            ..RouterMetrics::default()
        };
        Ok(Self {
            topology,
            ring,
            ring_collisions,
            range_key: None,
            metrics,
        })
    }

    /// Uses `f` instead of the topology's [`Comparator`] for range routing
    /// (a `comparator` function, as a Rust trait).
    pub fn with_range_key(mut self, f: RangeKeyFn) -> Self {
        self.range_key = Some(f);
        self
    }

    /// The topology routed by.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Ring points that share a position with another (kept, not overwritten).
    pub fn ring_collisions(&self) -> usize {
        self.ring_collisions
    }

    /// The shard of `key`.
    pub fn route(&self, key: &str) -> Result<ShardId, Error> {
        self.metrics.operations.fetch_add(1, Ordering::Relaxed);
        match self.locate(key) {
            Ok(index) => {
                if let Some(c) = self.metrics.per_shard.get(index) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                Ok(self.topology.shards[index])
            }
            Err(e) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// The shard of a composite key (its parts joined deterministically).
    pub fn route_key(&self, key: &RoutingKey) -> Result<ShardId, Error> {
        self.route(key.as_str())
    }

    /// The shard of `key` without touching the metrics (for reports and plans).
    pub fn shard_of(&self, key: &str) -> Result<ShardId, Error> {
        self.locate(key).map(|i| self.topology.shards[i])
    }

    /// Index into `topology.shards` of `key`'s shard.
    fn locate(&self, key: &str) -> Result<usize, Error> {
        let n = self.topology.shards.len();
        match &self.topology.strategy {
            Strategy::Hash => Ok((fnv1a_32(key.as_bytes()) % n as u32) as usize),
            Strategy::Jump => Ok(jump_bucket(jump_key(key.as_bytes()), n as u32) as usize),
            Strategy::ConsistentHash { .. } => {
                let p = ring_position(key.as_bytes());
                // First point at or after p, wrapping around.
                let i = self.ring.partition_point(|(pos, _, _)| *pos < p);
                let (_, _, index) = self.ring[if i == self.ring.len() { 0 } else { i }];
                Ok(index)
            }
            Strategy::Range {
                ranges,
                default_shard,
                comparator,
            } => {
                let value = match &self.range_key {
                    Some(f) => f(key),
                    None => compare_value(key, comparator, ranges)?,
                };
                let shard = value
                    .and_then(|v| ranges.iter().find(|r| r.contains(&v)).map(|r| r.shard))
                    .unwrap_or(*default_shard);
                Ok(self.index_of(shard))
            }
        }
    }

    fn index_of(&self, shard: ShardId) -> usize {
        // Validated: every ring and range shard is in `shards`.
        self.topology
            .shards
            .iter()
            .position(|s| *s == shard)
            .unwrap_or(0)
    }

    /// Current counters.
    pub fn metrics(&self) -> RouterMetricsSnapshot {
        RouterMetricsSnapshot {
            topology_version: self.topology.version,
            routing_operations: self.metrics.operations.load(Ordering::Relaxed),
            errors: self.metrics.errors.load(Ordering::Relaxed),
            shard_distribution: self
                .topology
                .shards
                .iter()
                .zip(&self.metrics.per_shard)
                .map(|(s, c)| (*s, c.load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// How `keys` spread over the shards (keys that cannot be routed are
    /// counted as errors).
    pub fn distribution<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> DistributionReport {
        let mut counts = vec![0u64; self.topology.shards.len()];
        let mut errors = 0;
        for key in keys {
            match self.locate(key) {
                Ok(i) => counts[i] += 1,
                Err(_) => errors += 1,
            }
        }
        DistributionReport::new(
            self.topology.shards.iter().copied().zip(counts).collect(),
            errors,
        )
    }
}

/// The ring of `shards` with `vnodes` points each. Point `v` of shard `s`
/// sits at `ring_position("shard-{s}#{v}")`, so a shard's points do not
/// depend on the other shards: adding one only adds points.
fn build_ring(shards: &[ShardId], vnodes: u32) -> (Vec<(u32, ShardId, usize)>, usize) {
    let mut ring = Vec::with_capacity(shards.len() * vnodes as usize);
    for (index, &s) in shards.iter().enumerate() {
        for v in 0..vnodes {
            ring.push((ring_position(format!("shard-{s}#{v}").as_bytes()), s, index));
        }
    }
    ring.sort_unstable();
    let collisions = ring.windows(2).filter(|w| w[0].0 == w[1].0).count();
    (ring, collisions)
}

/// The value of `key` a range strategy compares.
fn compare_value(
    key: &str,
    comparator: &Comparator,
    ranges: &[RangeDef],
) -> Result<Option<RangeValue>, Error> {
    let numeric = ranges
        .iter()
        .flat_map(|r| [&r.start, &r.end])
        .flatten()
        .any(|v| matches!(v, RangeValue::Num(_)));
    let part = match comparator {
        Comparator::Whole => key.to_owned(),
        Comparator::FirstChar => key
            .chars()
            .next()
            .map(|c| c.to_uppercase().collect())
            .unwrap_or_default(),
        Comparator::Part { separator, index } => match key.split(separator.as_str()).nth(*index) {
            Some(p) => p.to_owned(),
            None => return Ok(None),
        },
    };
    if numeric {
        part.trim()
            .parse::<f64>()
            .map(|n| Some(RangeValue::Num(n)))
            .map_err(|_| invalid_key(format_args!("`{part}` (from key `{key}`) is not a number")))
    } else {
        Ok(Some(RangeValue::Str(part)))
    }
}

/// A router whose topology can be replaced atomically while other threads
/// route: readers never block and always see one whole version.
pub struct SharedRouter {
    current: ArcSwap<ShardRouter>,
}

impl SharedRouter {
    /// Starts with `router`.
    pub fn new(router: ShardRouter) -> Self {
        Self {
            current: ArcSwap::from_pointee(router),
        }
    }

    /// The router of the current version.
    pub fn current(&self) -> Arc<ShardRouter> {
        self.current.load_full()
    }

    /// The shard of `key` under the current version.
    pub fn route(&self, key: &str) -> Result<ShardId, Error> {
        self.current.load().route(key)
    }

    /// Switches to `next`, which must have a higher version than the
    /// current one (a stale topology never replaces a newer one).
    pub fn swap(&self, next: ShardRouter) -> Result<Arc<ShardRouter>, Error> {
        let next = Arc::new(next);
        let mut refused = None;
        let previous = self.current.rcu(|current| {
            if next.topology.version > current.topology.version {
                refused = None;
                Arc::clone(&next)
            } else {
                refused = Some(current.topology.version);
                Arc::clone(current)
            }
        });
        match refused {
            Some(current) => Err(StaleTopology {
                current,
                offered: next.topology.version,
            }
            .into()),
            None => Ok(previous),
        }
    }
}
