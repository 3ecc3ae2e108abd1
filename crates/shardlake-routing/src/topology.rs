//! A topology: which shards exist and how keys map to them, as a versioned
//! value. Migrations produce the next version; routers swap to it
//! atomically ([`crate::SharedRouter`]). Serializes to JSON and TOML.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::error::{Error, invalid_topology};

/// A shard's id. Ids are stable: a shard keeps its id when others come and
/// go, which is what lets consistent hashing move only the keys it must.
pub type ShardId = u32;

/// How keys map to shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Strategy {
    /// `fnv1a_32(key) % shards`: even and fast; changing the shard count
    /// moves about (n-1)/n of the keys.
    Hash,
    /// A hash ring with `virtual_nodes` points per shard: adding a shard
    /// moves about 1/(n+1) of the keys, all to the new shard.
    ConsistentHash {
        /// Points per shard on the ring.
        #[serde(default = "default_virtual_nodes")]
        virtual_nodes: u32,
    },
    /// Jump consistent hash: minimal movement when shards are appended, no
    /// memory; removing a shard other than the last moves more keys.
    Jump,
    /// Half-open ranges `[start, end)` over the key (or a part of it).
    Range {
        /// The ranges, in any order; they must not overlap.
        ranges: Vec<RangeDef>,
        /// Shard of keys outside every range.
        default_shard: ShardId,
        /// What of the key is compared.
        #[serde(default)]
        comparator: Comparator,
    },
}

fn default_virtual_nodes() -> u32 {
    150
}

/// One bound of a range: a string (compared as UTF-8 bytes) or a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RangeValue {
    /// A number; the compared part of the key must parse as one.
    Num(f64),
    /// A string.
    Str(String),
}

impl RangeValue {
    /// Orders `self` against `other` (numbers before strings when mixed).
    pub fn cmp_to(&self, other: &RangeValue) -> Ordering {
        match (self, other) {
            (RangeValue::Num(a), RangeValue::Num(b)) => a.total_cmp(b),
            (RangeValue::Str(a), RangeValue::Str(b)) => a.as_bytes().cmp(b.as_bytes()),
            (RangeValue::Num(_), RangeValue::Str(_)) => Ordering::Less,
            (RangeValue::Str(_), RangeValue::Num(_)) => Ordering::Greater,
        }
    }
}

/// A range `[start, end)` owned by `shard`; a missing bound is unbounded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeDef {
    /// Inclusive lower bound (`None`: from the start).
    #[serde(default)]
    pub start: Option<RangeValue>,
    /// Exclusive upper bound (`None`: to the end).
    #[serde(default)]
    pub end: Option<RangeValue>,
    /// The owning shard.
    pub shard: ShardId,
}

impl RangeDef {
    /// Whether `v` falls in `[start, end)`.
    pub fn contains(&self, v: &RangeValue) -> bool {
        self.start
            .as_ref()
            .is_none_or(|s| v.cmp_to(s) != Ordering::Less)
            && self
                .end
                .as_ref()
                .is_none_or(|e| v.cmp_to(e) == Ordering::Less)
    }
}

/// What part of a key a range strategy compares, and as what.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Comparator {
    /// The whole key; as a number when the ranges are numeric.
    #[default]
    Whole,
    /// The first character, upper-cased (alphabetic partitioning).
    FirstChar,
    /// Part `index` of the key split by `separator` (e.g. the timestamp in
    /// `evt-1704067200000`); as a number when the ranges are numeric.
    Part {
        /// Separator.
        separator: String,
        /// 0-based part index.
        index: usize,
    },
}

/// Which shards exist and how keys find them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    /// Increases with every change; routers refuse to go back.
    pub version: u64,
    /// Shard ids, in order (the hash and jump strategies index into it).
    pub shards: Vec<ShardId>,
    /// The strategy.
    pub strategy: Strategy,
}

impl Topology {
    /// Shards `0..count` with `strategy`, version 1.
    pub fn new(count: u32, strategy: Strategy) -> Self {
        Self {
            version: 1,
            shards: (0..count).collect(),
            strategy,
        }
    }

    /// The same strategy over `shards`, one version later.
    pub fn with_shards(&self, shards: Vec<ShardId>) -> Self {
        Self {
            version: self.version + 1,
            shards,
            strategy: self.strategy.clone(),
        }
    }

    /// The strategy's name as the CLI and docs spell it.
    pub fn strategy_name(&self) -> &'static str {
        match self.strategy {
            Strategy::Hash => "hash",
            Strategy::ConsistentHash { .. } => "consistent-hash",
            Strategy::Jump => "jump",
            Strategy::Range { .. } => "range",
        }
    }

    /// Checks the topology can route: shards present and unique, ranges
    /// non-overlapping and pointing at known shards.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |m: String| Err(invalid_topology(m));
        if self.shards.is_empty() {
            return invalid("no shards".into());
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.shards.iter().find(|s| !seen.insert(**s)) {
            return invalid(format!("shard {dup} is listed twice"));
        }
        match &self.strategy {
            Strategy::ConsistentHash { virtual_nodes } if *virtual_nodes == 0 => {
                invalid("consistent-hash needs at least one virtual node".into())
            }
            Strategy::Range {
                ranges,
                default_shard,
                ..
            } => {
                for shard in ranges.iter().map(|r| r.shard).chain([*default_shard]) {
                    if !self.shards.contains(&shard) {
                        return invalid(format!("range shard {shard} is not in `shards`"));
                    }
                }
                for (i, a) in ranges.iter().enumerate() {
                    if let (Some(s), Some(e)) = (&a.start, &a.end)
                        && s.cmp_to(e) != Ordering::Less
                    {
                        return invalid(format!("range {i} is empty or reversed"));
                    }
                    for b in &ranges[i + 1..] {
                        if overlaps(a, b) {
                            return invalid(format!(
                                "ranges for shards {} and {} overlap",
                                a.shard, b.shard
                            ));
                        }
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The topology as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The topology as TOML.
    pub fn to_toml(&self) -> Result<String, Error> {
        toml::to_string(self).map_err(invalid_topology)
    }

    /// Parses JSON or TOML (by the first non-blank character) and validates.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let parsed: Self = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(invalid_topology)?
        } else {
            toml::from_str(text).map_err(invalid_topology)?
        };
        parsed.validate()?;
        Ok(parsed)
    }
}

fn overlaps(a: &RangeDef, b: &RangeDef) -> bool {
    // [a.start, a.end) and [b.start, b.end) overlap iff each starts before the other ends.
    let starts_before_end =
        |start: &Option<RangeValue>, end: &Option<RangeValue>| match (start, end) {
            (Some(s), Some(e)) => s.cmp_to(e) == Ordering::Less,
            _ => true,
        };
    starts_before_end(&a.start, &b.end) && starts_before_end(&b.start, &a.end)
}
