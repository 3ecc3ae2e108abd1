//! `shardlake.toml`: every setting of `shardlake serve`, with defaults.
//!
//! Precedence, lowest first: built-in defaults, the TOML file, `SHARDLAKE_*`
//! environment variables (nested fields with `__`, e.g.
//! `SHARDLAKE_LIMITS__QUERY_TIMEOUT_MS=5000`), then command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use shardlake_lake::{EmitterConfig, ObjectStorageConfig, TableFormat};
use shardlake_query::{CacheConfig, QueryConfig};

/// The server's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Without tokens only loopback addresses are accepted.
    pub listen: SocketAddr,
    /// Data directory of the lake: the SQLite catalog, dead letters, and
    /// (unless `[storage]` puts them elsewhere) the table files.
    pub warehouse: PathBuf,
    /// Table format of a new lake: `iceberg` (default) or `parquet`. An
    /// existing lake opens in its own format; naming another is an error.
    pub format: Option<TableFormat>,
    /// Where table files live: local disk (the default) or
    /// `s3://bucket/prefix` with its endpoint, region and credentials.
    /// Credentials are best left to the standard `AWS_*` variables.
    pub storage: ObjectStorageConfig,
    /// Request and query limits.
    pub limits: Limits,
    /// Result cache (the engine's own `CacheConfig`, key for key).
    pub cache: CacheConfig,
    /// Where queries run and how fresh their snapshot is.
    pub query: QuerySettings,
    /// Ingestion batching.
    pub emitter: EmitterSettings,
    /// Background lake maintenance: compaction, manifest merging, snapshot
    /// expiry and cleanup.
    pub maintenance: MaintenanceSettings,
    /// How maintenance compacts small files.
    pub compaction: CompactionSettings,
    /// Bearer tokens. Empty: no authentication, loopback only.
    pub tokens: Vec<TokenConfig>,
    /// How `/v1/migrations` runs migrations.
    pub migration: MigrationSettings,
    /// The shards' HTTP endpoints (the shard protocol of
    /// `shardlake-migrate`), for migrations.
    pub shards: Vec<ShardEndpoint>,
}

/// How migrations started over HTTP run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrationSettings {
    /// A migration is cancelled (and rolled back) after this many seconds.
    pub timeout_secs: u64,
    /// Undo a failed migration; otherwise leave it open for resume or
    /// rollback.
    pub rollback_on_failure: bool,
    /// Events per apply request to a shard.
    pub batch_size: usize,
    /// Replay throughput used for plan estimates, events per second.
    pub replay_events_per_second: f64,
    /// Lease of a running migration, seconds: a migration whose process
    /// died can be resumed elsewhere once it ran out.
    pub lease_secs: u64,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        Self {
            timeout_secs: 3_600,
            rollback_on_failure: true,
            batch_size: 5_000,
            // Measured 363k events/s replaying a namespace of the 10M-event
            // benchmark lake on 2 cores, rounded down.
            replay_events_per_second: 300_000.0,
            lease_secs: 30,
        }
    }
}

/// One shard's endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEndpoint {
    /// The shard id (as routing names it).
    pub id: u32,
    /// Base URL of its shard protocol, e.g. `http://10.0.0.7:9000/shard`.
    pub url: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            warehouse: PathBuf::from("./shardlake-data"),
            storage: ObjectStorageConfig::default(),
            format: None,
            limits: Limits::default(),
            cache: CacheConfig::default(),
            query: QuerySettings::default(),
            emitter: EmitterSettings::default(),
            maintenance: MaintenanceSettings::default(),
            compaction: CompactionSettings::default(),
            tokens: Vec::new(),
            migration: MigrationSettings::default(),
            shards: Vec::new(),
        }
    }
}

/// Limits that protect the server from any one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body, bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Most rows in one response (JSON: error beyond it; streams: cut off).
    pub max_rows: usize,
    /// Most bytes of result in one response.
    pub max_response_bytes: usize,
    /// Default and longest query timeout, milliseconds.
    pub query_timeout_ms: u64,
    /// Queries running at once; more wait up to `queue_wait_ms`, then get 429.
    pub max_concurrent_queries: usize,
    /// How long an excess request (query or ingest) waits for room, milliseconds.
    pub queue_wait_ms: u64,
    /// Memory all queries may use together, bytes.
    pub memory_limit_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            max_rows: 1_000_000,
            max_response_bytes: 256 * 1024 * 1024,
            query_timeout_ms: 30_000,
            max_concurrent_queries: 2 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue_wait_ms: 2_000,
            memory_limit_bytes: 1024 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// The query timeout.
    pub fn query_timeout(&self) -> Duration {
        Duration::from_millis(self.query_timeout_ms)
    }

    /// How long excess requests wait.
    pub fn queue_wait(&self) -> Duration {
        Duration::from_millis(self.queue_wait_ms)
    }
}

/// Where queries run and how fresh the snapshot they pin is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySettings {
    /// How old the current snapshot a query pins may be, milliseconds:
    /// within it the server reuses its last look at the catalog (no lookup
    /// per request). Commits this server makes (its ingest, its
    /// maintenance) are seen at once whatever the value; another process's
    /// commit within this many milliseconds. 0 looks at the catalog for
    /// every query.
    pub freshness_ms: u64,
    /// Worker threads of the runtime queries plan and run on, apart from
    /// the one that serves HTTP: cache hits, health checks, ingest acks and
    /// timeouts keep their latency while queries use every core. Default:
    /// one per core. 0 runs queries on the HTTP runtime.
    pub cpu_threads: Option<usize>,
}

impl Default for QuerySettings {
    fn default() -> Self {
        Self {
            freshness_ms: 100,
            cpu_threads: None,
        }
    }
}

/// Ingestion batching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmitterSettings {
    /// Longest wait before a partial batch is committed, milliseconds: the
    /// bound on how long a lone request waits for its ack.
    pub flush_interval_ms: u64,
    /// Commit once this many events wait.
    pub max_batch_events: usize,
    /// Commit at once, without waiting for `flush_interval_ms`, once this
    /// many events wait: large requests commit as fast as commits go
    /// (concurrent requests share one), small ones are still gathered.
    pub eager_commit_events: usize,
    /// Bytes of events that may wait for a commit; beyond it requests wait
    /// up to `limits.queue_wait_ms`, then get 429.
    pub max_queued_bytes: usize,
    /// Largest payload of one event, bytes.
    pub max_payload_bytes: usize,
}

impl Default for EmitterSettings {
    fn default() -> Self {
        let e = EmitterConfig::default();
        Self {
            flush_interval_ms: e.flush_interval.as_millis() as u64,
            max_batch_events: e.max_batch_events,
            eager_commit_events: e.eager_commit_events,
            max_queued_bytes: e.max_queued_bytes,
            max_payload_bytes: e.limits.max_payload_bytes,
        }
    }
}

/// Lake maintenance, run in the background while the server serves:
/// compaction (`[compaction]`), manifest merging, snapshot expiry and
/// cleanup of unreachable files, so the lake's cost is bounded by these
/// settings instead of growing with its age (see docs/operations.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaintenanceSettings {
    /// Run maintenance in the background at all.
    pub enabled: bool,
    /// Seconds between runs.
    pub interval_secs: u64,
    /// Snapshots replaced longer ago than this are expired (time travel
    /// reaches back this far).
    pub snapshot_retention_secs: u64,
    /// The newest snapshots always kept, whatever their age.
    pub min_snapshots_to_keep: usize,
    /// Files younger than this are never deleted (protects commits other
    /// processes are making).
    pub orphan_grace_secs: u64,
    /// How long a snapshot handed out by `/v1/replay` (its
    /// `x-shardlake-snapshot`) stays pinned against expiry; each replay at
    /// it renews the lease.
    pub replay_cursor_lease_secs: u64,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        let d = shardlake_lake::MaintenanceConfig::default();
        Self {
            enabled: true,
            interval_secs: 60,
            snapshot_retention_secs: d.retention.retention.as_secs(),
            min_snapshots_to_keep: d.retention.min_snapshots_to_keep,
            orphan_grace_secs: d.orphan_grace.as_secs(),
            replay_cursor_lease_secs: 600,
        }
    }
}

impl MaintenanceSettings {
    /// How long a replay cursor's snapshot is leased.
    pub fn replay_cursor_lease(&self) -> Duration {
        Duration::from_secs(self.replay_cursor_lease_secs)
    }
}

/// How maintenance compacts: every commit adds small files (one per
/// namespace touched), which compaction rewrites into large ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompactionSettings {
    /// Compact at all (as part of maintenance).
    pub enabled: bool,
    /// Replaced by `maintenance.interval_secs`: compaction runs with the
    /// rest of maintenance. Refused with that message when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    /// Files smaller than this are candidates.
    pub small_file_bytes: u64,
    /// A namespace is compacted once it has this many small files.
    pub min_small_files: usize,
}

impl Default for CompactionSettings {
    fn default() -> Self {
        let c = shardlake_lake::CompactionConfig::default();
        Self {
            enabled: true,
            interval_secs: None,
            small_file_bytes: c.small_file_bytes,
            min_small_files: c.min_small_files,
        }
    }
}

impl CompactionSettings {
    /// The lake's compaction configuration.
    pub fn config(&self) -> shardlake_lake::CompactionConfig {
        shardlake_lake::CompactionConfig {
            small_file_bytes: self.small_file_bytes,
            min_small_files: self.min_small_files,
            ..Default::default()
        }
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Run SQL (`/v1/query`) and list tables.
    Query,
    /// Send events (`/v1/events`).
    Ingest,
    /// Server statistics and metrics, migrations.
    Admin,
}

/// One bearer token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs (never the token itself).
    pub name: String,
    /// The token, in clear. Prefer `token_sha256`.
    #[serde(default)]
    pub token: Option<String>,
    /// Hex SHA-256 of the token.
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// Namespaces the token sees; `["*"]` for all.
    pub namespaces: Vec<String>,
    /// What the token may do.
    pub permissions: Vec<Permission>,
}

/// `SHARDLAKE_TEST_*` (after the prefix): knobs of the test kit and the
/// benches, which share the environment of any server they spawn.
fn is_test_knob(key: &str) -> bool {
    key.get(..5)
        .is_some_and(|head| head.eq_ignore_ascii_case("test_"))
}

impl ServerConfig {
    /// Loads the configuration: defaults, then `file` (if given), then
    /// `SHARDLAKE_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(ServerConfig::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(
                Env::prefixed("SHARDLAKE_")
                    .split("__")
                    // Variables the CLI reads itself, not settings.
                    .ignore(&["LOG", "LOG_FORMAT", "CRASH_AT", "CONFIG"])
                    // Test and bench knobs (`SHARDLAKE_TEST_*`) are never
                    // settings: a spawned server must not refuse them.
                    .filter(|key| !is_test_knob(key.as_str())),
            )
            .extract()
            .map_err(Box::new)
    }

    /// The engine configuration these settings describe.
    pub fn query_config(&self) -> QueryConfig {
        QueryConfig {
            memory_limit: self.limits.memory_limit_bytes,
            default_timeout: Some(self.limits.query_timeout()),
            cache: self.cache.clone(),
            freshness: Duration::from_millis(self.query.freshness_ms),
            cpu_threads: self
                .query
                .cpu_threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            ..QueryConfig::default()
        }
    }

    /// Refuses settings that parse but cannot work together, with what to
    /// write instead.
    pub fn check(&self) -> Result<(), String> {
        if self.compaction.interval_secs.is_some() {
            return Err(
                "`compaction.interval_secs` is gone: compaction runs as part of \
                        maintenance; set `maintenance.interval_secs` instead"
                    .to_owned(),
            );
        }
        if self.maintenance.enabled && self.maintenance.interval_secs == 0 {
            return Err("`maintenance.interval_secs` must be positive (or set \
                        `maintenance.enabled = false`)"
                .to_owned());
        }
        Ok(())
    }

    /// The lake maintenance these settings describe.
    pub fn maintenance_config(&self) -> shardlake_lake::MaintenanceConfig {
        let m = &self.maintenance;
        shardlake_lake::MaintenanceConfig {
            compaction: self.compaction.enabled.then(|| self.compaction.config()),
            retention: shardlake_lake::RetentionConfig {
                retention: Duration::from_secs(m.snapshot_retention_secs),
                min_snapshots_to_keep: m.min_snapshots_to_keep.max(1),
            },
            orphan_grace: Duration::from_secs(m.orphan_grace_secs),
        }
    }

    /// The emitter configuration these settings describe.
    pub fn emitter_config(&self) -> EmitterConfig {
        let mut c = EmitterConfig {
            flush_interval: Duration::from_millis(self.emitter.flush_interval_ms),
            max_batch_events: self.emitter.max_batch_events,
            eager_commit_events: self.emitter.eager_commit_events,
            max_queued_bytes: self.emitter.max_queued_bytes,
            ..EmitterConfig::default()
        };
        c.limits.max_payload_bytes = self.emitter.max_payload_bytes;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_unknown_fields_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("shardlake.toml");
        std::fs::write(
            &file,
            r#"
listen = "127.0.0.1:9999"
[limits]
query_timeout_ms = 1234
[[tokens]]
name = "acme"
token = "secret"
namespaces = ["acme"]
permissions = ["query", "ingest"]
"#,
        )
        .expect("write");
        let c = ServerConfig::load(Some(&file)).expect("loads");
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.limits.query_timeout_ms, 1234);
        assert_eq!(c.limits.max_rows, Limits::default().max_rows);
        assert_eq!(
            c.tokens[0].permissions,
            vec![Permission::Query, Permission::Ingest]
        );

        std::fs::write(&file, "[limits]\nquery_timeot_ms = 1\n").expect("write");
        let err = ServerConfig::load(Some(&file)).expect_err("typo");
        assert!(err.to_string().contains("query_timeot_ms"), "{err}");
    }

    #[test]
    fn test_knobs_are_not_settings_but_look_alikes_are() {
        assert!(is_test_knob("TEST_PYTHON") && is_test_knob("test_moto_server"));
        assert!(!is_test_knob("TESTING") && !is_test_knob("LIMITS__QUERY_TIMEOUT_MS"));
    }

    #[test]
    fn the_maintenance_section_has_the_documented_keys_and_the_old_interval_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("shardlake.toml");
        std::fs::write(
            &file,
            r#"
[maintenance]
enabled = true
interval_secs = 5
snapshot_retention_secs = 120
min_snapshots_to_keep = 3
orphan_grace_secs = 30
[compaction]
min_small_files = 4
"#,
        )
        .expect("write");
        let c = ServerConfig::load(Some(&file)).expect("loads");
        c.check().expect("consistent");
        let m = c.maintenance_config();
        assert_eq!(m.retention.retention, Duration::from_secs(120));
        assert_eq!(m.retention.min_snapshots_to_keep, 3);
        assert_eq!(m.orphan_grace, Duration::from_secs(30));
        assert_eq!(m.compaction.map(|c| c.min_small_files), Some(4));
        let defaults = ServerConfig::default();
        assert_eq!(defaults.maintenance.interval_secs, 60);
        assert_eq!(defaults.maintenance.snapshot_retention_secs, 3600);
        assert_eq!(defaults.maintenance.min_snapshots_to_keep, 10);
        assert_eq!(defaults.maintenance.orphan_grace_secs, 3600);

        std::fs::write(&file, "[compaction]\ninterval_secs = 300\n").expect("write");
        let old = ServerConfig::load(Some(&file)).expect("parses");
        let err = old.check().expect_err("refused");
        assert!(err.contains("maintenance.interval_secs"), "{err}");
    }
}
