//! `shardlake-bench aging`: what a lake costs as it ages.
//!
//! A real `shardlake serve` (the binary given, so a build of another
//! revision can be measured the same way) with a 2 ms flush interval is fed
//! one small ingest request at a time, each its own commit, by one client
//! on loopback. At each checkpoint (say 1k, 5k, 10k and 20k commits) the
//! run measures, between requests:
//!
//! - commit latency (the ingest request, which returns once its commit is
//!   durable): p50 and p99 over the commits since the last checkpoint;
//! - three queries with the result cache off, median of `runs`: `count(*)`,
//!   a one-namespace aggregate, and the replay shape (one key of one
//!   namespace over `GET /v1/replay`);
//! - the size of the latest metadata file, how many metadata files exist,
//!   every file under the warehouse, and the live data files.
//!
//! Unless `--baseline` (a server without the `[maintenance]` section, for
//! revisions that predate it), the server maintains the lake every
//! `interval_secs` with a short retention, and while it ingests, a
//! partitioned subscription consumes the table and a migration (16 -> 17
//! shards, in-memory shards) runs in this process against the same lake:
//! both must finish correctly. At the end, once the grace period has
//! passed, the files on disk are compared with the live set, and the lake
//! is checked to hold every acknowledged event exactly once.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use shardlake_lake::Lake;
use shardlake_migrate::{
    ControlStore, InMemoryShard, MigrationConfig, Migrator, ShardSet, ShardStub, WriteGate,
    key_stats, plan_add_shard, publish_topology,
};
use shardlake_query::{
    CrossShardQuery, PartitionOf, QueryConfig, Subscription, SubscriptionConfig,
};
use shardlake_routing::{ShardRouter, SharedRouter, Strategy, Topology};

/// What one aging run does.
#[derive(Debug, Clone)]
pub struct AgingSpec {
    /// The `shardlake` binary to serve with.
    pub shardlake: PathBuf,
    /// Scratch directory (the lake is rebuilt in it).
    pub dir: PathBuf,
    /// Commits (ingest requests) in all.
    pub commits: usize,
    /// Events per commit.
    pub events_per_commit: usize,
    /// Commit counts at which to measure.
    pub checkpoints: Vec<usize>,
    /// `[maintenance] interval_secs`.
    pub interval_secs: u64,
    /// `[maintenance] snapshot_retention_secs`.
    pub retention_secs: u64,
    /// `[maintenance] orphan_grace_secs`.
    pub grace_secs: u64,
    /// A server without `[maintenance]` (revisions before it), and no
    /// subscription or migration alongside.
    pub baseline: bool,
    /// Runs per query timing.
    pub runs: usize,
}

const SHARDS: usize = 16;
const NAMESPACES: usize = 8;
const KEYS: usize = 10_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// The `n`th event of the run (0-based): shard, seq and key follow from `n`,
/// so every event is distinct and the sent set is known without keeping it.
/// The client writes as shards 100..116 (emitters outside the migration's
/// topology) and only keys that keep their owner when the migration adds a
/// shard: a migration's moving keys must be written through its write gate,
/// which this client is not.
fn event(n: usize, keys: &[String]) -> Value {
    let shard = 100 + n % SHARDS;
    let seq = n / SHARDS + 1;
    let index = (n * 7919) % keys.len();
    let key = &keys[index];
    json!({
        "namespace": format!("tenant-{:03}", index % NAMESPACES),
        "shard_id": shard,
        "seq": seq,
        "partition_key": key,
        "entity_type": "Order",
        "entity_id": key.trim_start_matches("Order:"),
        "event_type": "thing.updated",
        "version": n / keys.len() + 1,
        "ts": "2026-12-01T00:00:00Z",
        "payload": {"n": n, "amount": (n * 31) % 1000},
    })
}

/// The keys the client writes: those whose owner stays the same when the
/// migration goes from 16 to 17 shards (jump hash).
fn stable_keys() -> anyhow::Result<Vec<String>> {
    let before = ShardRouter::new(Topology::new(SHARDS as u32, Strategy::Jump))?;
    let after = ShardRouter::new(Topology::new(SHARDS as u32 + 1, Strategy::Jump))?;
    let mut keys = Vec::with_capacity(KEYS);
    for k in 0..KEYS * 2 {
        let key = format!("Order:o-{k}");
        if before.shard_of(&key)? == after.shard_of(&key)? {
            keys.push(key);
        }
        if keys.len() == KEYS {
            break;
        }
    }
    Ok(keys)
}

/// Keys the migration moves, with a few events each written by their owner
/// under the 16-shard topology, before the run: one commit.
fn seed(router: &ShardRouter) -> anyhow::Result<Vec<Value>> {
    let mut seqs = [0u64; SHARDS];
    let mut events = Vec::new();
    for k in 0..2_000 {
        let key = format!("Account:a-{k}");
        let owner = router.shard_of(&key)? as usize;
        for _ in 0..3 {
            seqs[owner] += 1;
            events.push(json!({
                "namespace": format!("tenant-{:03}", k % NAMESPACES),
                "shard_id": owner,
                "seq": seqs[owner],
                "partition_key": key,
                "event_type": "thing.updated",
                "ts": "2026-12-01T00:00:00Z",
            }));
        }
    }
    Ok(events)
}

/// A server process and its address.
struct Serving {
    child: Child,
    base: String,
}

impl Serving {
    fn start(shardlake: &Path, config: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(shardlake)
            .args(["serve", "--config"])
            .arg(config)
            .env("SHARDLAKE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", shardlake.display()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("no address in {line:?}"))?;
        Ok(Self {
            base: format!("http://{addr}"),
            child,
        })
    }

    fn stop(mut self) -> anyhow::Result<()> {
        // SIGTERM: the server commits what it holds and exits.
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
        Ok(())
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Sizes and counts of the lake's files, from the filesystem alone (works
/// for any revision's lake).
fn file_figures(lake_dir: &Path) -> Value {
    let table = lake_dir.join("warehouse/shardlake/events");
    let metadata: Vec<PathBuf> = files_under(&table.join("metadata"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".metadata.json"))
        .collect();
    let version = |p: &PathBuf| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let latest = metadata.iter().max_by_key(|p| version(p));
    let latest_bytes = latest
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    json!({
        "latest_metadata_bytes": latest_bytes,
        "metadata_files": metadata.len(),
        "manifest_and_list_files": files_under(&table.join("metadata")).len() - metadata.len(),
        "data_files_on_disk": files_under(&table.join("data")).len(),
        "files_in_warehouse": files_under(&lake_dir.join("warehouse")).len(),
    })
}

/// A small client of the server.
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// Posts `body` to `/v1/events`; an error answer fails the run, named `what`.
    async fn ingest(&self, body: &[Value], what: &str) -> anyhow::Result<reqwest::Response> {
        let response = self
            .http
            .post(format!("{}/v1/events", self.base))
            .json(body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "{what}: {}",
            response.status()
        );
        Ok(response)
    }

    async fn query(&self, sql: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!("{}/v1/query", self.base))
            .json(&json!({"sql": sql, "cache": false}))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "{sql}: {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    /// Median milliseconds of `runs` runs of `sql`.
    async fn time_query(&self, sql: &str, runs: usize) -> anyhow::Result<f64> {
        let mut times = Vec::new();
        for _ in 0..runs {
            let started = Instant::now();
            self.query(sql).await?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(percentile(&times, 0.5))
    }

    async fn time_replay(&self, query: &str, runs: usize) -> anyhow::Result<(f64, usize)> {
        let mut times = Vec::new();
        let mut lines = 0;
        for _ in 0..runs {
            let started = Instant::now();
            let body = self
                .http
                .get(format!("{}/v1/replay?{query}", self.base))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
            lines = body.lines().count();
        }
        times.sort_by(f64::total_cmp);
        Ok((percentile(&times, 0.5), lines))
    }

    /// Maintenance runs the server completed so far.
    async fn maintenance_runs(&self) -> anyhow::Result<u64> {
        let stats: Value = self
            .http
            .get(format!("{}/v1/stats", self.base))
            .send()
            .await?
            .json()
            .await?;
        Ok(stats["maintenance"]["status"]["runs"].as_u64().unwrap_or(0))
    }

    /// Waits until a maintenance run has started and finished after now.
    async fn after_next_maintenance(&self) -> anyhow::Result<()> {
        let now = self.maintenance_runs().await?;
        while self.maintenance_runs().await? < now + 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The three query timings (count, one-namespace aggregate, replay).
    async fn timings(&self, runs: usize, keys: &[String]) -> anyhow::Result<Value> {
        let index = 4242 % keys.len();
        let (key, ns) = (&keys[index], format!("tenant-{:03}", index % NAMESPACES));
        let count_ms = self.time_query("SELECT count(*) FROM events", runs).await?;
        let aggregate_ms = self
            .time_query(
                &format!(
                    "SELECT event_type, count(*), max(seq), sum(version) FROM events \
                     WHERE namespace = '{ns}' GROUP BY 1"
                ),
                runs,
            )
            .await?;
        let (replay_ms, replayed) = self
            .time_replay(&format!("namespace={ns}&partition_key={key}"), runs)
            .await?;
        Ok(json!({
            "count_ms": count_ms,
            "namespace_aggregate_ms": aggregate_ms,
            "replay_ms": replay_ms,
            "replay_events": replayed,
            "live_data_files": self.live_files().await?,
        }))
    }

    async fn live_files(&self) -> anyhow::Result<u64> {
        let tables: Value = self
            .http
            .get(format!("{}/v1/tables", self.base))
            .send()
            .await?
            .json()
            .await?;
        tables["tables"][0]["files"]
            .as_u64()
            .context("files in /v1/tables")
    }
}

fn write_config(spec: &AgingSpec, lake_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut toml = format!(
        "listen = \"127.0.0.1:0\"\nwarehouse = \"{}\"\n\n[emitter]\nflush_interval_ms = 2\n\n\
         [cache]\nenabled = false\n",
        lake_dir.display()
    );
    if !spec.baseline {
        toml.push_str(&format!(
            "\n[maintenance]\nenabled = true\ninterval_secs = {}\nsnapshot_retention_secs = {}\n\
             min_snapshots_to_keep = 10\norphan_grace_secs = {}\n\
             replay_cursor_lease_secs = {}\n",
            spec.interval_secs, spec.retention_secs, spec.grace_secs, spec.retention_secs
        ));
    }
    let path = lake_dir.with_extension("toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

/// A partitioned subscription (one partition of one) consuming the table
/// until told to stop and caught up; the positions it acknowledged.
async fn subscribe(
    lake: Lake,
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
) -> anyhow::Result<Value> {
    let engine = CrossShardQuery::open(&lake, QueryConfig::default()).await?;
    let mut sub = Subscription::open(
        &engine,
        &lake,
        SubscriptionConfig {
            name: "aging".into(),
            partition: PartitionOf { index: 0, count: 1 },
            namespace: None,
            batch_size: 20_000,
        },
    )
    .await?;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let mut batches = 0u64;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let seen_in = Arc::clone(&seen);
        let n = sub
            .process(4, move |e: shardlake_core::Event| {
                let seen = Arc::clone(&seen_in);
                async move {
                    seen.lock()
                        .map_err(|_| "poisoned".to_owned())?
                        .push(e.position.unwrap_or(0));
                    Ok::<(), String>(())
                }
            })
            .await?;
        batches += u64::from(n > 0);
        if n == 0 {
            if stopping && sub.position() as u64 >= total.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut positions = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let delivered = positions.len();
    positions.sort_unstable();
    positions.dedup();
    let expected = total.load(Ordering::SeqCst) as usize;
    let exact = positions.len() == delivered
        && delivered == expected
        && positions.first() == Some(&1)
        && positions.last() == Some(&(expected as i64));
    Ok(json!({
        "batches": batches,
        "events": delivered,
        "each_position_once_none_missing": exact,
    }))
}

/// Adds a 17th shard (in-memory shards) to a published 16-shard topology
/// while the lake is being written and maintained.
async fn migrate(lake: Lake) -> anyhow::Result<Value> {
    let engine = CrossShardQuery::open(&lake, QueryConfig::default()).await?;
    let control = ControlStore::open(&lake).await?;
    let from = Topology::new(SHARDS as u32, Strategy::Jump);
    publish_topology(&control, &from).await?;
    let shards = Arc::new(ShardSet::new());
    for id in 0..=SHARDS as u32 {
        shards.insert(Arc::new(InMemoryShard::new(id)) as Arc<dyn ShardStub>);
    }
    let keys = key_stats(&engine).await?;
    let plan = plan_add_shard(&from, SHARDS as u32, &keys, 300_000.0)?;
    let router = Arc::new(SharedRouter::new(ShardRouter::new(from.clone())?));
    let gate = Arc::new(WriteGate::new(router, shards, control));
    let migrator = Migrator::open(&lake, engine, gate, MigrationConfig::default()).await?;
    let started = Instant::now();
    let report = migrator.execute(plan).await?;
    Ok(json!({
        "status": report.status.as_str(),
        "keys_moved": report.plan.moves.len(),
        "events_copied": report.events_copied,
        "seconds": started.elapsed().as_secs_f64(),
        "error": report.error.map(|e| e.message),
    }))
}

/// Runs the aging benchmark and prints its figures as JSON.
pub async fn run(spec: AgingSpec) -> anyhow::Result<()> {
    std::fs::create_dir_all(&spec.dir)?;
    let lake_dir = spec.dir.join(format!(
        "aging-{}x{}{}",
        spec.commits,
        spec.events_per_commit,
        if spec.baseline { "-baseline" } else { "" }
    ));
    if lake_dir.exists() {
        std::fs::remove_dir_all(&lake_dir)?;
    }
    std::fs::create_dir_all(&lake_dir)?;
    let config = write_config(&spec, &lake_dir)?;
    let server = Serving::start(&spec.shardlake, &config)?;
    let client = Client {
        http: reqwest::Client::new(),
        base: server.base.clone(),
    };

    // Alongside: a subscription from the start, a migration once the lake
    // has some history.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut side: Option<(Lake, tokio::task::JoinHandle<anyhow::Result<Value>>)> = None;
    let mut migration: Option<tokio::task::JoinHandle<anyhow::Result<Value>>> = None;
    if !spec.baseline {
        // The server created the table; open it as a second process would.
        let lake = Lake::open_local(&lake_dir).await?;
        let task = tokio::spawn(subscribe(
            lake.clone(),
            Arc::clone(&stop),
            Arc::clone(&acked),
        ));
        side = Some((lake, task));
    }

    let keys = stable_keys()?;
    let mut seeded = 0usize;
    if !spec.baseline {
        let router = ShardRouter::new(Topology::new(SHARDS as u32, Strategy::Jump))?;
        let body = seed(&router)?;
        seeded = body.len();
        client.ingest(&body, "seed").await?;
        acked.store(seeded as u64, Ordering::SeqCst);
    }
    let mut rows = Vec::new();
    let mut latencies: Vec<f64> = Vec::new();
    let started = Instant::now();
    let mut sent = 0usize;
    for commit in 1..=spec.commits {
        let body: Vec<Value> = (sent..sent + spec.events_per_commit)
            .map(|n| event(n, &keys))
            .collect();
        let t = Instant::now();
        let response = client.ingest(&body, "ingest").await?;
        let ack: Value = response.json().await?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            ack["accepted"].as_u64() == Some(spec.events_per_commit as u64),
            "ingest: {ack}"
        );
        sent += spec.events_per_commit;
        acked.store((seeded + sent) as u64, Ordering::SeqCst);
        if commit == spec.commits / 10
            && let Some((lake, _)) = &side
        {
            migration = Some(tokio::spawn(migrate(lake.clone())));
        }
        if spec.checkpoints.contains(&commit) {
            let mut sorted = latencies.clone();
            sorted.sort_by(f64::total_cmp);
            latencies.clear();
            // As the requests meet it, then once the next maintenance run
            // has folded in what the last interval added.
            let now = client.timings(spec.runs, &keys).await?;
            let files_now = file_figures(&lake_dir);
            let after = if spec.baseline {
                Value::Null
            } else {
                client.after_next_maintenance().await?;
                let mut t = client.timings(spec.runs, &keys).await?;
                t["files"] = file_figures(&lake_dir);
                t
            };
            let row = json!({
                "commits": commit,
                "events": sent,
                "elapsed_s": started.elapsed().as_secs_f64(),
                "commit_p50_ms": percentile(&sorted, 0.5),
                "commit_p99_ms": percentile(&sorted, 0.99),
                "at_checkpoint": now,
                "files": files_now,
                "after_maintenance": after,
            });
            eprintln!("{row}");
            rows.push(row);
        }
    }

    // Settle: once the grace period and two runs have passed, what is on
    // disk is what maintenance leaves.
    let migration = match migration {
        Some(task) => Some(task.await??),
        None => None,
    };
    let settle = if spec.baseline {
        Duration::ZERO
    } else {
        Duration::from_secs(spec.grace_secs.max(spec.retention_secs) + 2 * spec.interval_secs + 1)
    };
    tokio::time::sleep(settle).await;
    let live = client.live_files().await?;
    let settled = file_figures(&lake_dir);
    // What retained snapshots reference, from a dry-run cleanup: listed
    // minus what it would delete (with no grace at all).
    let referenced = match &side {
        Some((lake, _)) => {
            let config = shardlake_lake::MaintenanceConfig {
                orphan_grace: Duration::ZERO,
                ..shardlake_lake::MaintenanceConfig::default()
            };
            let report = lake
                .maintain(&config, &[shardlake_lake::Action::Cleanup], true, &|_| {})
                .await?;
            report.cleanup.map(|c| {
                json!({
                    "files_in_table": c.files_listed,
                    "referenced_by_retained_snapshots": c.files_listed - c.files_deleted,
                    "ratio_on_disk_to_referenced":
                        c.files_listed as f64 / (c.files_listed - c.files_deleted).max(1) as f64,
                })
            })
        }
        None => None,
    };
    let check = client
        .query(
            "SELECT count(*), count(DISTINCT shard_id * 1000000000 + seq), \
             count(DISTINCT position), min(position), max(position) FROM events",
        )
        .await?;
    let row = &check["rows"][0];
    let n = (seeded + sent) as u64;
    let exactly_once = (0..5).all(|i| {
        let want = if i == 3 { 1 } else { n };
        row[i].as_u64() == Some(want)
    });
    stop.store(true, Ordering::SeqCst);
    let subscription = match side {
        Some((_, task)) => Some(task.await??),
        None => None,
    };
    let snapshots: Value = client
        .http
        .get(format!("{}/v1/snapshots", client.base))
        .send()
        .await?
        .json()
        .await
        .unwrap_or(Value::Null);
    let stats: Value = client
        .http
        .get(format!("{}/v1/stats", client.base))
        .send()
        .await?
        .json()
        .await
        .unwrap_or(Value::Null);
    server.stop()?;
    let out = json!({
        "spec": {
            "commits": spec.commits,
            "events_per_commit": spec.events_per_commit,
            "interval_secs": spec.interval_secs,
            "retention_secs": spec.retention_secs,
            "grace_secs": spec.grace_secs,
            "baseline": spec.baseline,
            "shardlake": spec.shardlake,
        },
        "checkpoints": rows,
        "settled": {
            "live_data_files": live,
            "files": settled,
            "retained_snapshots": snapshots["snapshots"].as_array().map(Vec::len),
            "referenced": referenced,
        },
        "exactly_once": exactly_once,
        "lake_check": row,
        "events_sent": sent,
        "events_seeded": seeded,
        "subscription": subscription,
        "migration": migration,
        "maintenance": stats["maintenance"],
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
