//! The result cache: moka's future cache keyed by who asked, what they
//! asked (normalized) and which snapshots the answer was computed from.
//!
//! - A commit changes the snapshot id, so the next identical query misses:
//!   stale results are never served, whatever the TTL.
//! - Entries are weighted by their bytes; each entry weighs at least
//!   `max_bytes / max_entries`, which bounds bytes and entry count at once.
//! - Identical concurrent queries run once (`try_get_with`); the others wait
//!   for the same result and are counted apart from hits (`shared`): they
//!   waited for a run, they did not find an answer.
//! - An entry weighs its Arrow bytes plus its rendered JSON, which the
//!   query renders before the entry is inserted when its caller asked for it.
//! - A result larger than `max_result_bytes` is handed to everyone waiting
//!   for it but not kept.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use moka::notification::RemovalCause;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::scope::Scope;
use crate::stats::ScanStats;

/// Result cache settings: also the `[cache]` section of the server's
/// configuration file, key for key (`ttl` is `ttl_secs` there).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Whether results are cached at all.
    pub enabled: bool,
    /// Total bytes of cached results.
    pub max_bytes: u64,
    /// Most results kept at once.
    pub max_entries: u64,
    /// Longest time a result is kept (commits invalidate sooner).
    #[serde(rename = "ttl_secs", with = "shardlake_core::serde_duration::secs")]
    pub ttl: Duration,
    /// Results larger than this are not cached.
    pub max_result_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: 256 * 1024 * 1024,
            max_entries: 10_000,
            ttl: Duration::from_secs(300),
            max_result_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Cache key: scope, normalized query, pinned snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Who may see the result.
    pub scope: Scope,
    /// The normalized query text (or a typed query's canonical form).
    pub query: Arc<str>,
    /// The snapshots the result was computed from.
    pub snapshot_ids: Vec<i64>,
}

/// A computed result, as cached.
#[derive(Debug)]
pub struct CachedResult {
    /// Result schema.
    pub schema: SchemaRef,
    /// Result rows.
    pub batches: Vec<RecordBatch>,
    /// Statistics of the run that computed it.
    pub stats: ScanStats,
    /// Bytes the batches occupy in memory.
    pub bytes: u64,
    /// The JSON answer's columns and rows, rendered on the query runtime
    /// before the entry is inserted (when the caller asked for JSON), and
    /// served as bytes to every later caller. Weighed with the entry.
    pub(crate) json: Arc<OnceLock<Bytes>>,
}

impl CachedResult {
    pub(crate) fn new(
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        stats: ScanStats,
        bytes: u64,
    ) -> Self {
        Self {
            schema,
            batches,
            stats,
            bytes,
            json: Arc::default(),
        }
    }

    /// What the entry weighs: its batches and its rendered JSON.
    fn weight(&self) -> u64 {
        self.bytes + self.json.get().map_or(0, |json| json.len() as u64)
    }
}

/// Cache counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CacheMetrics {
    /// Lookups answered by an entry the cache held.
    pub hits: u64,
    /// Lookups that found an identical query running and waited for its
    /// answer instead of running it again.
    pub shared: u64,
    /// Lookups that ran the query.
    pub misses: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// Results too large to keep.
    pub oversize: u64,
    /// Entries held.
    pub entries: u64,
    /// Bytes held.
    pub bytes: u64,
}

/// How a lookup got its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The cache held it.
    Hit,
    /// An identical query was running; this caller waited for its answer.
    Shared,
    /// This caller ran the query.
    Ran,
}

enum Fill {
    Failed(Error),
    Oversize(Arc<CachedResult>),
}

/// The result cache.
pub struct ResultCache {
    config: CacheConfig,
    cache: moka::future::Cache<CacheKey, Arc<CachedResult>>,
    hits: AtomicU64,
    shared: AtomicU64,
    misses: AtomicU64,
    oversize: AtomicU64,
    evictions: Arc<AtomicU64>,
}

impl ResultCache {
    /// A cache with `config`.
    pub fn new(config: CacheConfig) -> Self {
        let floor = (config.max_bytes / config.max_entries.max(1)).max(1);
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&evictions);
        let cache = moka::future::Cache::builder()
            .max_capacity(config.max_bytes)
            .time_to_live(config.ttl)
            .weigher(move |_k: &CacheKey, v: &Arc<CachedResult>| {
                u32::try_from(v.weight().max(floor)).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_k, _v, cause| {
                if cause == RemovalCause::Size {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Self {
            config,
            cache,
            hits: AtomicU64::new(0),
            shared: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            oversize: AtomicU64::new(0),
            evictions,
        }
    }

    /// Whether caching is on.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// The cached result for `key`, or runs `compute` once for all
    /// concurrent callers with the same key. Returns the result and how
    /// this caller got it.
    pub async fn get_or_compute<F>(
        &self,
        key: CacheKey,
        compute: F,
    ) -> Result<(Arc<CachedResult>, Lookup)>
    where
        F: Future<Output = Result<CachedResult>>,
    {
        if let Some(found) = self.cache.get(&key).await {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((found, Lookup::Hit));
        }
        let ran = AtomicBool::new(false);
        let max = self.config.max_result_bytes;
        let result = self
            .cache
            .try_get_with(key, async {
                ran.store(true, Ordering::Relaxed);
                let computed = compute.await.map_err(Fill::Failed)?;
                if computed.weight() > max {
                    return Err(Fill::Oversize(Arc::new(computed)));
                }
                Ok(Arc::new(computed))
            })
            .await;
        // Not run by this caller: another one was running it (or finished
        // it between the lookup above and this one).
        let lookup = match ran.load(Ordering::Relaxed) {
            true => Lookup::Ran,
            false => Lookup::Shared,
        };
        let counter = match lookup {
            Lookup::Ran => &self.misses,
            _ => &self.shared,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(v) => Ok((v, lookup)),
            Err(fill) => match fill.as_ref() {
                Fill::Oversize(v) => {
                    if lookup == Lookup::Ran {
                        self.oversize.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((Arc::clone(v), lookup))
                }
                // Every waiter gets the same error, source and all.
                Fill::Failed(e) => Err(e.clone()),
            },
        }
    }

    /// Keeps `result`, computed by a query that streamed its answer (a
    /// miss), unless it weighs more than an entry may.
    pub(crate) async fn fill(&self, key: CacheKey, result: CachedResult) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        if result.weight() > self.config.max_result_bytes {
            self.oversize.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.cache.insert(key, Arc::new(result)).await;
    }

    /// The largest result an entry may hold.
    pub(crate) fn max_result_bytes(&self) -> u64 {
        self.config.max_result_bytes
    }

    /// The cached result for `key`, if there is one (counted as a hit);
    /// never runs anything.
    pub async fn peek(&self, key: &CacheKey) -> Option<Arc<CachedResult>> {
        let found = self.cache.get(key).await;
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Drops every entry.
    pub async fn clear(&self) {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks().await;
    }

    /// Current counters.
    pub async fn metrics(&self) -> CacheMetrics {
        self.cache.run_pending_tasks().await;
        CacheMetrics {
            hits: self.hits.load(Ordering::Relaxed),
            shared: self.shared.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            oversize: self.oversize.load(Ordering::Relaxed),
            entries: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
        }
    }
}
