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
use figment::value::{Dict, Value};
use serde::{Deserialize, Serialize};
use shardlake_lake::{EmitterConfig, ObjectStorageConfig, TableFormat};
use shardlake_query::distributed::ClusterConfig;
use shardlake_query::{CacheConfig, QueryConfig};

/// The server's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Without tokens only loopback addresses are accepted.
    pub listen: SocketAddr,
    /// Data directory of the lake: the SQLite catalog (unless `[catalog]`
    /// names a database), dead letters, and (unless `[storage]` puts them
    /// elsewhere) the table files.
    pub warehouse: PathBuf,
    /// Where the catalog and the control state live: the SQLite file in
    /// the data directory (default) or a shared PostgreSQL database.
    pub catalog: CatalogSettings,
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
    /// Where queries run and how fresh their snapshot is (the engine's own
    /// `QueryConfig`; its memory limit and timeout are `[limits]`', its
    /// cache `[cache]`).
    pub query: QueryConfig,
    /// Ingestion batching and event limits (the emitter's own
    /// `EmitterConfig`, key for key).
    pub emitter: EmitterConfig,
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
    /// The Postgres wire protocol listener (off unless `listen` is set).
    pub postgres: PostgresSettings,
    /// Queries on a cluster of workers.
    pub distributed: DistributedSettings,
}

/// `[catalog]`: the database holding the Iceberg catalog and shardlake's
/// control state (pins, checkpoints, topologies, migrations, leases).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogSettings {
    /// `postgres://user:password@host:5432/lake` to share the lake between
    /// servers on several hosts (docs/scale-out.md), or a `sqlite://` file;
    /// none: `<warehouse>/catalog.db`. Also `SHARDLAKE_CATALOG__URL`, which
    /// keeps the password out of the file.
    pub url: Option<String>,
}

impl CatalogSettings {
    fn check(&self) -> Result<(), String> {
        match &self.url {
            Some(url) if shardlake_lake::db::Backend::of_url(url).is_none() => Err(format!(
                "`catalog.url` {} must be postgres://... or sqlite://...",
                shardlake_lake::db::redact(url)
            )),
            _ => Ok(()),
        }
    }
}

/// `[postgres]`: psql, BI tools and Postgres drivers on a second socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresSettings {
    /// Address of the Postgres listener, e.g. `127.0.0.1:5432`; none: off.
    /// Without tokens only loopback addresses are accepted, as for HTTP.
    pub listen: Option<SocketAddr>,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            listen: None,
            max_connections: 64,
        }
    }
}

/// `[distributed]`: queries on a cluster of workers
/// (docs/scale-out.md). A server with `workers` is a coordinator: a query
/// whose scans read at least `min_scan_bytes` runs its scans and
/// aggregations on the workers; `shardlake worker` reads `listen` and
/// `secret` from the same section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistributedSettings {
    /// The workers' URLs, e.g. `["http://10.0.0.7:7001"]`; none: every
    /// query runs in this process.
    pub workers: Vec<url::Url>,
    /// A query runs on the workers only when its scans read at least this
    /// many bytes (after pruning); smaller ones run here, where they are
    /// faster. 0 distributes every query that reads files.
    pub min_scan_bytes: u64,
    /// The cluster secret: coordinators send it, workers demand it (also
    /// `SHARDLAKE_DISTRIBUTED__SECRET`). Required as soon as a worker is
    /// not on loopback.
    pub secret: Option<String>,
    /// `shardlake worker`: the address to listen on.
    pub listen: SocketAddr,
}

impl Default for DistributedSettings {
    fn default() -> Self {
        Self {
            workers: Vec::new(),
            min_scan_bytes: 64 * 1024 * 1024,
            secret: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 7001)),
        }
    }
}

impl DistributedSettings {
    /// The engine's view of it.
    pub fn cluster(&self) -> ClusterConfig {
        ClusterConfig {
            workers: self.workers.clone(),
            min_scan_bytes: self.min_scan_bytes,
            secret: self.secret.clone(),
        }
    }

    /// Refuses a cluster whose plans would travel without the secret beyond
    /// loopback: a worker runs any plan it is sent and reads any object in
    /// the store.
    pub fn check(&self) -> Result<(), String> {
        if self.secret.as_deref().is_some_and(|s| s.len() < 16) {
            return Err("`distributed.secret` must be at least 16 characters".to_owned());
        }
        if self.secret.is_none()
            && let Some(remote) = self.workers.iter().find(|u| !is_loopback_url(u))
        {
            return Err(format!(
                "worker {remote} is not on loopback: set `distributed.secret` \
                 (or SHARDLAKE_DISTRIBUTED__SECRET) on the coordinators and the workers"
            ));
        }
        if let Some(bad) = self
            .workers
            .iter()
            .find(|u| !matches!(u.scheme(), "http" | "https") || u.host().is_none())
        {
            return Err(format!(
                "worker URL {bad} must be http://host:port (or https://)"
            ));
        }
        Ok(())
    }
}

/// Whether `url` names this machine (`localhost` or a loopback address).
fn is_loopback_url(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
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
            catalog: CatalogSettings::default(),
            storage: ObjectStorageConfig::default(),
            format: None,
            limits: Limits::default(),
            cache: CacheConfig::default(),
            query: QueryConfig {
                // A server answers health checks, cache hits and acks on
                // its HTTP runtime while queries use every core on theirs.
                cpu_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
                freshness: Duration::from_millis(100),
                ..QueryConfig::default()
            },
            emitter: EmitterConfig::default(),
            maintenance: MaintenanceSettings::default(),
            compaction: CompactionSettings::default(),
            tokens: Vec::new(),
            migration: MigrationSettings::default(),
            shards: Vec::new(),
            postgres: PostgresSettings::default(),
            distributed: DistributedSettings::default(),
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

/// Lake maintenance, run in the background while the server serves:
/// compaction (`[compaction]`), manifest merging, snapshot expiry and
/// cleanup of unreachable files, so the lake's cost is bounded by these
/// settings instead of growing with its age (see docs/operations.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Unknown keys are refused by `ServerConfig::load` (serde cannot refuse
// them and flatten too).
#[serde(default)]
pub struct MaintenanceSettings {
    /// Run maintenance in the background at all.
    pub enabled: bool,
    /// Seconds between runs.
    pub interval_secs: u64,
    /// How long a snapshot handed out by `/v1/replay` (its
    /// `x-shardlake-snapshot`) stays pinned against expiry; each replay at
    /// it renews the lease.
    pub replay_cursor_lease_secs: u64,
    /// What maintenance keeps (`snapshot_retention_secs`,
    /// `min_snapshots_to_keep`, `orphan_grace_secs`): the lake's own
    /// `MaintenanceConfig`.
    #[serde(flatten)]
    pub lake: shardlake_lake::MaintenanceConfig,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: 60,
            replay_cursor_lease_secs: 600,
            lake: shardlake_lake::MaintenanceConfig::default(),
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
// Unknown keys are refused by `ServerConfig::load` (see above).
#[serde(default)]
pub struct CompactionSettings {
    /// Compact at all (as part of maintenance).
    pub enabled: bool,
    /// Replaced by `maintenance.interval_secs`: compaction runs with the
    /// rest of maintenance. Refused with that message when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    /// Which files are small and when a namespace is compacted
    /// (`small_file_bytes`, `min_small_files`, `max_attempts`): the lake's
    /// own `CompactionConfig`.
    #[serde(flatten)]
    pub lake: shardlake_lake::CompactionConfig,
}

impl Default for CompactionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: None,
            lake: shardlake_lake::CompactionConfig::default(),
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

/// The first key of `given` (dotted path) that `known` lacks, looking into
/// sections (arrays of tables refuse unknown keys themselves).
fn unknown_key(given: &Dict, known: &Dict) -> Option<String> {
    for (key, value) in given {
        match (value, known.get(key)) {
            (_, None) => return Some(key.clone()),
            (Value::Dict(_, inner), Some(Value::Dict(_, known_inner))) => {
                if let Some(sub) = unknown_key(inner, known_inner) {
                    return Some(format!("{key}.{sub}"));
                }
            }
            _ => {}
        }
    }
    None
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
        let figment = figment.merge(
            Env::prefixed("SHARDLAKE_")
                .split("__")
                // Variables the CLI reads itself, not settings.
                .ignore(&["LOG", "LOG_FORMAT", "CRASH_AT", "CONFIG"])
                // Test and bench knobs (`SHARDLAKE_TEST_*`) are never
                // settings: a spawned server must not refuse them.
                .filter(|key| !is_test_knob(key.as_str())),
        );
        let config: ServerConfig = figment.extract().map_err(Box::new)?;
        // Sections that nest a library config flatten it (`[emitter]` is
        // `EmitterConfig` plus its event limits), and serde cannot refuse
        // unknown keys of flattened structs: a key is known if it lands in
        // a setting, i.e. if it is still there when the result is written
        // out again.
        let given: Dict = figment.extract().map_err(Box::new)?;
        let known: Dict = Figment::from(Serialized::defaults(&config))
            .extract()
            .map_err(Box::new)?;
        if let Some(key) = unknown_key(&given, &known) {
            return Err(Box::new(figment::Error::from(format!(
                "unknown setting `{key}`"
            ))));
        }
        Ok(config)
    }

    /// The engine configuration these settings describe: `[query]` with
    /// the limits of `[limits]` and the cache of `[cache]`.
    pub fn query_config(&self) -> QueryConfig {
        QueryConfig {
            memory_limit: self.limits.memory_limit_bytes,
            default_timeout: Some(self.limits.query_timeout()),
            cache: self.cache.clone(),
            cluster: self.distributed.cluster(),
            ..self.query.clone()
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
        self.catalog.check()?;
        self.distributed.check()
    }

    /// The lake maintenance these settings describe: `[maintenance]` with
    /// `[compaction]`, unless compaction is off.
    pub fn maintenance_config(&self) -> shardlake_lake::MaintenanceConfig {
        let mut config = shardlake_lake::MaintenanceConfig {
            compaction: self.compaction.enabled.then_some(self.compaction.lake),
            ..self.maintenance.lake.clone()
        };
        // The current snapshot is always kept.
        config.retention.min_snapshots_to_keep = config.retention.min_snapshots_to_keep.max(1);
        config
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
        let defaults = ServerConfig::default().maintenance_config();
        assert_eq!(ServerConfig::default().maintenance.interval_secs, 60);
        assert_eq!(defaults.retention.retention, Duration::from_secs(3600));
        assert_eq!(defaults.retention.min_snapshots_to_keep, 10);
        assert_eq!(defaults.orphan_grace, Duration::from_secs(3600));

        // Typos in the sections the library configs make are refused too.
        for typo in [
            "[maintenance]\norphan_grace_sec = 1\n",
            "[compaction]\nmin_small_file = 1\n",
            "[emitter]\nflush_interval = 1\n",
            "[query]\nfreshness = 1\n",
        ] {
            std::fs::write(&file, typo).expect("write");
            let err = ServerConfig::load(Some(&file)).expect_err(typo);
            let key = typo
                .lines()
                .nth(1)
                .and_then(|l| l.split(' ').next())
                .unwrap_or("");
            assert!(err.to_string().contains(key), "{typo}: {err}");
        }

        std::fs::write(&file, "[compaction]\ninterval_secs = 300\n").expect("write");
        let old = ServerConfig::load(Some(&file)).expect("parses");
        let err = old.check().expect_err("refused");
        assert!(err.contains("maintenance.interval_secs"), "{err}");

        // [catalog] url: PostgreSQL or SQLite; anything else is refused,
        // its password never repeated.
        std::fs::write(
            &file,
            "[catalog]\nurl = \"postgres://lake:pw@db:5432/lake\"\n",
        )
        .expect("write");
        let shared = ServerConfig::load(Some(&file)).expect("parses");
        assert_eq!(
            shared.catalog.url.as_deref(),
            Some("postgres://lake:pw@db:5432/lake")
        );
        shared.check().expect("a postgres catalog");
        std::fs::write(&file, "[catalog]\nurl = \"mysql://lake:pw@db/lake\"\n").expect("write");
        let err = ServerConfig::load(Some(&file))
            .expect("parses")
            .check()
            .expect_err("refused");
        assert!(err.contains("catalog.url") && err.contains("***"), "{err}");
        assert!(!err.contains("pw@"), "{err}");
    }
}
