//! `ShardAssigner`: which shard owns an entity, from the entity
//! itself (a JSON object or an event), with optional tracking of what each
//! shard holds and how hot it is, and rebalance hints.
//!
//! The assigner routes through a [`ShardRouter`], so a key lands on the
//! same shard through either.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use shardlake_core::Event;

use crate::error::{Error, invalid_key, missing_key};
use crate::key::RoutingKey;
use crate::router::ShardRouter;
use crate::topology::{RangeDef, ShardId, Strategy, Topology};

/// A custom key function.
pub type KeyFn = Arc<dyn Fn(&Value) -> Option<String> + Send + Sync>;

/// Where an entity's partition key comes from.
#[derive(Clone)]
pub enum KeySource {
    /// One field (dotted paths reach into objects: `payload.customer_id`).
    Field(String),
    /// Several fields, joined deterministically (in the given order).
    Composite(Vec<String>),
    /// A function of the whole entity.
    Function(KeyFn),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Field(x) => f.debug_tuple("Field").field(x).finish(),
            Self::Composite(x) => f.debug_tuple("Composite").field(x).finish(),
            Self::Function(_) => f.write_str("Function(..)"),
        }
    }
}

/// The assignment strategies.
#[derive(Debug, Clone, PartialEq)]
pub enum AssignStrategy {
    /// FNV-1a of the key modulo the shard count.
    Hash,
    /// Consistent hashing with this many virtual nodes per shard.
    Consistent {
        /// Points per shard.
        virtual_nodes: u32,
    },
    /// Ranges over the key.
    Range {
        /// The ranges.
        ranges: Vec<RangeDef>,
        /// Shard of keys outside every range.
        default_shard: ShardId,
    },
    /// Every entity of a tenant on one shard: the key is the tenant field
    /// (the event's `namespace`), hashed.
    Tenant {
        /// The tenant field of JSON entities.
        field: String,
    },
}

/// Limits that turn tracking into rebalance hints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackingLimits {
    /// Above this many entities a shard should split.
    pub max_entities_per_shard: Option<u64>,
    /// Above this many bytes a shard should split.
    pub max_bytes_per_shard: Option<u64>,
    /// Below this many entities a shard may merge with another.
    pub min_entities_per_shard: Option<u64>,
    /// Bytes per second a migration moves, for duration estimates.
    pub migration_bytes_per_second: u64,
}

impl Default for TrackingLimits {
    fn default() -> Self {
        Self {
            max_entities_per_shard: None,
            max_bytes_per_shard: None,
            min_entities_per_shard: None,
            migration_bytes_per_second: 50 * 1024 * 1024,
        }
    }
}

/// Configuration of a [`ShardAssigner`].
#[derive(Debug, Clone)]
pub struct AssignerConfig {
    /// Number of shards (ids `0..shard_count`).
    pub shard_count: u32,
    /// The strategy.
    pub strategy: AssignStrategy,
    /// Where the key comes from (default: the `partition_key` field).
    pub key: KeySource,
    /// Field used when the key is missing.
    pub fallback_field: Option<String>,
    /// Missing keys are errors instead of falling back.
    pub strict: bool,
    /// Track entities, bytes and accesses per shard.
    pub tracking: bool,
    /// Limits for rebalance hints.
    pub limits: TrackingLimits,
}

impl AssignerConfig {
    /// `shard_count` shards, `strategy`, key from `partition_key`, lenient.
    pub fn new(shard_count: u32, strategy: AssignStrategy) -> Self {
        Self {
            shard_count,
            strategy,
            key: KeySource::Field("partition_key".into()),
            fallback_field: None,
            strict: false,
            tracking: false,
            limits: TrackingLimits::default(),
        }
    }
}

/// The key an entity was assigned by, and how it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assignment {
    /// The shard.
    pub shard: ShardId,
    /// The key routed.
    pub key: String,
    /// How the key was found.
    pub source: KeyOrigin,
}

/// How an assignment's key was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyOrigin {
    /// The configured key.
    Primary,
    /// The fallback field.
    Fallback,
    /// Neither: the entity went to the default shard 0 (non-strict only).
    Default,
}

/// Assigns entities to shards.
pub struct ShardAssigner {
    config: AssignerConfig,
    router: ShardRouter,
    tracker: Option<Mutex<Tracker>>,
}

impl ShardAssigner {
    /// An assigner for `config`.
    pub fn new(config: AssignerConfig) -> Result<Self, Error> {
        let strategy = match &config.strategy {
            AssignStrategy::Hash | AssignStrategy::Tenant { .. } => Strategy::Hash,
            AssignStrategy::Consistent { virtual_nodes } => Strategy::ConsistentHash {
                virtual_nodes: *virtual_nodes,
            },
            AssignStrategy::Range {
                ranges,
                default_shard,
            } => Strategy::Range {
                ranges: ranges.clone(),
                default_shard: *default_shard,
                comparator: Default::default(),
            },
        };
        let router = ShardRouter::new(Topology::new(config.shard_count, strategy))?;
        let tracker = config.tracking.then(|| Mutex::new(Tracker::default()));
        Ok(Self {
            config,
            router,
            tracker,
        })
    }

    /// The router the assigner routes through.
    pub fn router(&self) -> &ShardRouter {
        &self.router
    }

    /// The partition key of a JSON entity.
    pub fn extract_key(&self, entity: &Value) -> Result<(String, KeyOrigin), Error> {
        let primary = match (&self.config.strategy, &self.config.key) {
            (AssignStrategy::Tenant { field }, _) => field_str(entity, field),
            (_, KeySource::Field(f)) => field_str(entity, f),
            (_, KeySource::Composite(fields)) => fields
                .iter()
                .map(|f| field_str(entity, f))
                .collect::<Option<Vec<_>>>()
                .map(|parts| RoutingKey::composite(parts).as_str().to_owned()),
            (_, KeySource::Function(f)) => f(entity).filter(|k| !k.is_empty()),
        };
        if let Some(key) = primary {
            return Ok((key, KeyOrigin::Primary));
        }
        if self.config.strict {
            return Err(missing_key(format_args!(
                "no {:?} in the entity (strict mode)",
                self.config.key
            )));
        }
        if let Some(key) = self
            .config
            .fallback_field
            .as_deref()
            .and_then(|f| field_str(entity, f))
        {
            return Ok((key, KeyOrigin::Fallback));
        }
        Ok((String::new(), KeyOrigin::Default))
    }

    /// The shard of a JSON entity.
    pub fn assign(&self, entity: &Value) -> Result<Assignment, Error> {
        let (key, source) = self.extract_key(entity)?;
        let shard = match source {
            KeyOrigin::Default => 0,
            _ => self.router.route(&key)?,
        };
        Ok(Assignment { shard, key, source })
    }

    /// The shard of an event (its JSON form: `namespace`, `partition_key`,
    /// `entity_id`, `payload.<field>`...).
    pub fn assign_event(&self, event: &Event) -> Result<Assignment, Error> {
        let mut value = serde_json::to_value(event)
            .map_err(|e| invalid_key(format_args!("event is not JSON: {e}")))?;
        // The payload travels as JSON text; expose it as an object for dotted paths.
        if let Some(Value::String(text)) = value.get("payload")
            && let Ok(parsed) = serde_json::from_str::<Value>(text)
        {
            value["payload"] = parsed;
        }
        self.assign(&value)
    }

    /// Records that the entity `key` (assigned to `shard`) holds `bytes`.
    /// Recording the same key again replaces its size.
    pub fn record_entity(&self, key: &str, bytes: u64) -> Result<ShardId, Error> {
        let shard = self.router.shard_of(key)?;
        if let Some(t) = &self.tracker {
            lock(t).entity(key, shard, bytes);
        }
        Ok(shard)
    }

    /// Records an access to `key` now.
    pub fn record_access(&self, key: &str) -> Result<ShardId, Error> {
        self.record_access_at(key, Instant::now())
    }

    /// Records an access to `key` at `at` (for replaying logs and tests).
    pub fn record_access_at(&self, key: &str, at: Instant) -> Result<ShardId, Error> {
        let shard = self.router.shard_of(key)?;
        if let Some(t) = &self.tracker {
            lock(t).access(shard, at);
        }
        Ok(shard)
    }

    /// Shards with at least `threshold` accesses in the `window` before now.
    pub fn hot_shards(&self, threshold: u64, window: Duration) -> Vec<ShardId> {
        self.hot_shards_at(threshold, window, Instant::now())
    }

    /// [`Self::hot_shards`] as seen at `now`.
    pub fn hot_shards_at(&self, threshold: u64, window: Duration, now: Instant) -> Vec<ShardId> {
        let Some(t) = &self.tracker else {
            return Vec::new();
        };
        let since = now.checked_sub(window);
        let t = lock(t);
        let mut hot: Vec<ShardId> = t
            .accesses
            .iter()
            .filter(|(_, times)| {
                times
                    .iter()
                    .filter(|at| since.is_none_or(|s| **at >= s) && **at <= now)
                    .count() as u64
                    >= threshold
            })
            .map(|(s, _)| *s)
            .collect();
        hot.sort_unstable();
        hot
    }

    /// Entities and bytes per shard, and each shard's share of the busiest.
    pub fn shard_utilization(&self) -> Vec<ShardUtilization> {
        let Some(t) = &self.tracker else {
            return Vec::new();
        };
        let t = lock(t);
        let per_shard = t.per_shard(self.config.shard_count);
        let max_entities = per_shard.iter().map(|(e, _)| *e).max().unwrap_or(0).max(1);
        per_shard
            .iter()
            .enumerate()
            .map(|(shard, (entities, bytes))| ShardUtilization {
                shard: shard as ShardId,
                entities: *entities,
                bytes: *bytes,
                relative_load: *entities as f64 / max_entities as f64,
            })
            .collect()
    }

    /// Splits for over-full shards and merges for under-used ones, most
    /// urgent first.
    pub fn rebalance_hints(&self) -> Vec<RebalanceHint> {
        let limits = self.config.limits;
        let usage = self.shard_utilization();
        let mut hints = Vec::new();
        for u in &usage {
            let over_entities = limits.max_entities_per_shard.filter(|m| u.entities > *m);
            let over_bytes = limits.max_bytes_per_shard.filter(|m| u.bytes > *m);
            if over_entities.is_none() && over_bytes.is_none() {
                continue;
            }
            // Move half of what the shard holds to a new shard.
            let ratio = over_entities
                .map(|m| u.entities as f64 / m as f64)
                .into_iter()
                .chain(over_bytes.map(|m| u.bytes as f64 / m as f64))
                .fold(0.0, f64::max);
            let bytes = u.bytes / 2;
            hints.push(RebalanceHint {
                kind: HintKind::Split,
                priority: if ratio >= 1.5 {
                    Priority::High
                } else {
                    Priority::Medium
                },
                source_shard: u.shard,
                target_shard: None,
                reason: format!(
                    "shard {} holds {} entities and {} bytes, {:.0}% of its limit",
                    u.shard,
                    u.entities,
                    u.bytes,
                    ratio * 100.0
                ),
                plan: MigrationSketch {
                    entities_to_move: u.entities / 2,
                    bytes_to_move: bytes,
                    estimated_duration_ms: bytes * 1000 / limits.migration_bytes_per_second.max(1),
                },
            });
        }
        if let Some(min) = limits.min_entities_per_shard {
            let mut small: Vec<&ShardUtilization> =
                usage.iter().filter(|u| u.entities < min).collect();
            small.sort_by_key(|u| (u.entities, u.shard));
            for pair in small.chunks_exact(2) {
                let (from, into) = (pair[0], pair[1]);
                hints.push(RebalanceHint {
                    kind: HintKind::Merge,
                    priority: Priority::Low,
                    source_shard: from.shard,
                    target_shard: Some(into.shard),
                    reason: format!(
                        "shards {} and {} hold {} and {} entities, under the minimum {min}",
                        from.shard, into.shard, from.entities, into.entities
                    ),
                    plan: MigrationSketch {
                        entities_to_move: from.entities,
                        bytes_to_move: from.bytes,
                        estimated_duration_ms: from.bytes * 1000
                            / limits.migration_bytes_per_second.max(1),
                    },
                });
            }
        }
        hints.sort_by_key(|h| (std::cmp::Reverse(h.priority), h.source_shard));
        hints
    }
}

fn lock(t: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A string field of `entity` by dotted path; numbers count as strings;
/// empty strings count as missing.
fn field_str(entity: &Value, path: &str) -> Option<String> {
    let mut v = entity;
    for part in path.split('.') {
        v = v.get(part)?;
    }
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[derive(Default)]
struct Tracker {
    entities: HashMap<String, (ShardId, u64)>,
    accesses: HashMap<ShardId, VecDeque<Instant>>,
}

/// Accesses kept per shard; older ones are dropped (a window never needs
/// more than a threshold's worth to decide).
const MAX_ACCESSES_PER_SHARD: usize = 100_000;

impl Tracker {
    fn entity(&mut self, key: &str, shard: ShardId, bytes: u64) {
        self.entities.insert(key.to_owned(), (shard, bytes));
    }

    fn access(&mut self, shard: ShardId, at: Instant) {
        let q = self.accesses.entry(shard).or_default();
        q.push_back(at);
        if q.len() > MAX_ACCESSES_PER_SHARD {
            q.pop_front();
        }
    }

    fn per_shard(&self, shards: u32) -> Vec<(u64, u64)> {
        let mut out = vec![(0u64, 0u64); shards as usize];
        for (shard, bytes) in self.entities.values() {
            if let Some(slot) = out.get_mut(*shard as usize) {
                slot.0 += 1;
                slot.1 += bytes;
            }
        }
        out
    }
}

/// What one shard holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardUtilization {
    /// The shard.
    pub shard: ShardId,
    /// Entities recorded on it.
    pub entities: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Entities relative to the fullest shard (1.0 = the fullest).
    pub relative_load: f64,
}

/// Split or merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HintKind {
    /// Move part of an over-full shard to a new one.
    Split,
    /// Fold an under-used shard into another.
    Merge,
}

/// How urgent a hint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Whenever convenient.
    Low,
    /// Soon.
    Medium,
    /// Now: well past a limit.
    High,
}

/// A suggested rebalance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebalanceHint {
    /// Split or merge.
    pub kind: HintKind,
    /// Urgency.
    pub priority: Priority,
    /// The shard to act on.
    pub source_shard: ShardId,
    /// Where a merge goes.
    pub target_shard: Option<ShardId>,
    /// Why.
    pub reason: String,
    /// What it would take.
    pub plan: MigrationSketch,
}

/// The size of a suggested migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationSketch {
    /// Entities to move.
    pub entities_to_move: u64,
    /// Bytes to move.
    pub bytes_to_move: u64,
    /// At the configured migration throughput.
    pub estimated_duration_ms: u64,
}
