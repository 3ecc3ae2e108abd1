//! Prometheus metrics (`GET /metrics`), through `prometheus-client`.
//!
//! Two kinds: what the server counts itself (requests by route and status,
//! latency histograms, rows and bytes of queries), kept in a registry that
//! lives as long as the server; and what the engine and the emitter already
//! count, read at scrape time into a fresh registry of constant metrics, so
//! there is one source of truth for each figure.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use shardlake_lake::EmitterMetricsSnapshot;
use shardlake_query::EngineMetrics;

/// Labels of a finished request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route pattern (`/v1/query`), never the raw path.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Status code.
    pub status: u16,
}

/// Labels of a latency observation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route pattern.
    pub route: String,
}

/// Labels of a failed query, by shardlake's stable error code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error code (`statement_not_allowed`, `query_timeout`, ...).
    pub code: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// The server's own counters.
#[derive(Debug)]
pub struct ServerMetrics {
    registry: Registry,
    /// Requests answered, by route, method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency, seconds, by route (to the end of the body).
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Rows returned by queries.
    pub rows_returned: Counter,
    /// Bytes scanned by queries.
    pub bytes_scanned: Counter,
    /// Queries answered from the result cache.
    pub cached_queries: Counter,
    /// Queries answered `304 Not Modified` (the caller's copy is current).
    pub not_modified: Counter,
    /// Requests refused because every query slot was busy.
    pub overloaded: Counter,
    /// Background compactions that replaced files.
    pub compactions: Counter,
    /// Background maintenance runs completed.
    pub maintenance_runs: Counter,
    /// Runs skipped because another process held the maintenance lease.
    pub maintenance_skipped: Counter,
    /// Runs that failed.
    pub maintenance_failures: Counter,
    /// Files deleted by maintenance (unreachable, expired).
    pub maintenance_files_removed: Counter,
    /// Bytes deleted by cleanup.
    pub maintenance_bytes_removed: Counter,
    /// Snapshots expired.
    pub maintenance_snapshots_expired: Counter,
    /// How long the last run took, seconds.
    pub maintenance_last_duration: Gauge<f64, AtomicU64>,
    /// When the last run finished, Unix seconds.
    pub maintenance_last_run: Gauge<f64, AtomicU64>,
    /// Postgres connections open now.
    pub pg_connections: Gauge,
    /// Postgres connections accepted.
    pub pg_connections_total: Counter,
    /// Postgres connections closed at once: `max_connections` reached.
    pub pg_refused: Counter,
    /// Queries run over the Postgres protocol.
    pub pg_queries: Counter,
    /// Postgres queries that failed before sending rows, by error code.
    pub pg_errors: Family<ErrorLabels, Counter>,
}

impl ServerMetrics {
    /// Metrics registered and at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let rows_returned = Counter::default();
        let bytes_scanned = Counter::default();
        let cached_queries = Counter::default();
        let not_modified = Counter::default();
        let overloaded = Counter::default();
        let compactions = Counter::default();
        let maintenance_runs = Counter::default();
        let maintenance_skipped = Counter::default();
        let maintenance_failures = Counter::default();
        let maintenance_files_removed = Counter::default();
        let maintenance_bytes_removed = Counter::default();
        let maintenance_snapshots_expired = Counter::default();
        let maintenance_last_duration = Gauge::<f64, AtomicU64>::default();
        let maintenance_last_run = Gauge::<f64, AtomicU64>::default();
        let pg_connections = Gauge::default();
        let pg_connections_total = Counter::default();
        let pg_refused = Counter::default();
        let pg_queries = Counter::default();
        let pg_errors = Family::<ErrorLabels, Counter>::default();
        let r = registry.sub_registry_with_prefix("shardlake");
        r.register("http_requests", "HTTP requests answered", requests.clone());
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency to the last byte of the body",
            latency.clone(),
        );
        r.register(
            "query_rows_returned",
            "Rows returned by queries",
            rows_returned.clone(),
        );
        r.register(
            "query_bytes_scanned",
            "Bytes read from storage by queries",
            bytes_scanned.clone(),
        );
        r.register(
            "query_cache_served",
            "Queries answered from the result cache",
            cached_queries.clone(),
        );
        r.register(
            "query_not_modified",
            "Queries answered 304 Not Modified: the caller's ETag matched",
            not_modified.clone(),
        );
        r.register(
            "query_slots_exhausted",
            "Queries refused with 429 because every slot stayed busy",
            overloaded.clone(),
        );
        r.register(
            "compactions",
            "Background compactions that replaced small files",
            compactions.clone(),
        );
        r.register(
            "maintenance_runs",
            "Background maintenance runs completed",
            maintenance_runs.clone(),
        );
        r.register(
            "maintenance_skipped",
            "Maintenance runs skipped: another process held the lake's maintenance lease",
            maintenance_skipped.clone(),
        );
        r.register(
            "maintenance_failures",
            "Maintenance runs that failed",
            maintenance_failures.clone(),
        );
        r.register(
            "maintenance_files_removed",
            "Files deleted by maintenance (unreachable or expired)",
            maintenance_files_removed.clone(),
        );
        r.register(
            "maintenance_bytes_removed",
            "Bytes of files deleted by cleanup",
            maintenance_bytes_removed.clone(),
        );
        r.register(
            "maintenance_snapshots_expired",
            "Snapshots expired by maintenance",
            maintenance_snapshots_expired.clone(),
        );
        r.register(
            "maintenance_last_duration_seconds",
            "Duration of the last maintenance run",
            maintenance_last_duration.clone(),
        );
        r.register(
            "maintenance_last_run_timestamp_seconds",
            "When the last maintenance run finished (Unix time)",
            maintenance_last_run.clone(),
        );
        r.register(
            "pg_connections_open",
            "Postgres protocol connections open now",
            pg_connections.clone(),
        );
        r.register(
            "pg_connections",
            "Postgres protocol connections accepted",
            pg_connections_total.clone(),
        );
        r.register(
            "pg_connections_refused",
            "Postgres protocol connections closed at once: [postgres] max_connections reached",
            pg_refused.clone(),
        );
        r.register(
            "pg_queries",
            "Queries run over the Postgres protocol",
            pg_queries.clone(),
        );
        r.register(
            "pg_errors",
            "Postgres protocol queries that failed before sending rows, by error code",
            pg_errors.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            rows_returned,
            bytes_scanned,
            cached_queries,
            not_modified,
            overloaded,
            compactions,
            maintenance_runs,
            maintenance_skipped,
            maintenance_failures,
            maintenance_files_removed,
            maintenance_bytes_removed,
            maintenance_snapshots_expired,
            maintenance_last_duration,
            maintenance_last_run,
            pg_connections,
            pg_connections_total,
            pg_refused,
            pg_queries,
            pg_errors,
        }
    }

    /// Records a finished request.
    pub fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// The OpenMetrics text of everything: the server's counters plus the
    /// engine's and emitter's at this moment.
    pub fn render(
        &self,
        engine: &EngineMetrics,
        emitter: &EmitterMetricsSnapshot,
        queries_running: usize,
    ) -> Result<String, std::fmt::Error> {
        let mut scrape = Registry::with_prefix("shardlake");
        let counters: [(&str, &str, u64); 14] = [
            ("cache_hits", "Result cache hits", engine.cache.hits),
            (
                "cache_shared",
                "Queries that waited for an identical running query's answer",
                engine.cache.shared,
            ),
            ("cache_misses", "Result cache misses", engine.cache.misses),
            (
                "cache_evictions",
                "Result cache evictions",
                engine.cache.evictions,
            ),
            (
                "cache_oversize",
                "Results too large to cache",
                engine.cache.oversize,
            ),
            (
                "emitter_events_emitted",
                "Valid events accepted into the queue",
                emitter.events_emitted,
            ),
            (
                "emitter_events_committed",
                "Events made durable",
                emitter.events_committed,
            ),
            (
                "emitter_events_duplicate",
                "Events dropped as already committed",
                emitter.events_duplicate,
            ),
            (
                "emitter_events_rejected",
                "Invalid events refused",
                emitter.events_rejected,
            ),
            (
                "emitter_events_failed",
                "Valid events whose commit failed after all retries",
                emitter.events_failed,
            ),
            ("emitter_commits", "Snapshots committed", emitter.commits),
            (
                "emitter_commit_conflicts",
                "Commits re-planned after losing a race",
                emitter.commit_conflicts,
            ),
            (
                "emitter_commit_retries",
                "Commit retries after transient errors",
                emitter.commit_retries,
            ),
            (
                "emitter_commit_failures",
                "Batches given up after all retries",
                emitter.commit_failures,
            ),
        ];
        for (name, help, value) in counters {
            scrape.register(name, help, ConstCounter::new(value));
        }
        let gauges: [(&str, &str, i64); 9] = [
            (
                "cache_entries",
                "Results held in the cache",
                engine.cache.entries as i64,
            ),
            (
                "cache_bytes",
                "Bytes held in the result cache",
                engine.cache.bytes as i64,
            ),
            (
                "memory_reserved_bytes",
                "Bytes reserved in the query memory pool",
                engine.memory_reserved as i64,
            ),
            (
                "memory_limit_bytes",
                "The query memory pool's limit",
                engine.memory_limit as i64,
            ),
            (
                "things_state_bytes",
                "Bytes the maintained state of `things` holds (estimated)",
                engine.things_state_bytes as i64,
            ),
            (
                "things_state_namespaces",
                "Namespaces whose `things` state is kept",
                engine.things_state_namespaces as i64,
            ),
            (
                "emitter_queued_bytes",
                "Bytes waiting for a commit",
                emitter.queued_bytes as i64,
            ),
            (
                "emitter_queued_events",
                "Events waiting for a commit",
                emitter.queued_events as i64,
            ),
            (
                "queries_running",
                "Queries holding a slot now",
                queries_running as i64,
            ),
        ];
        for (name, help, value) in gauges {
            scrape.register(name, help, ConstGauge::new(value));
        }
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        encode_registry(&mut out, &scrape)?;
        encode_eof(&mut out)?;
        // Some scrapers still want a trailing newline after `# EOF`.
        if !out.ends_with('\n') {
            out.write_char('\n')?;
        }
        Ok(out)
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
