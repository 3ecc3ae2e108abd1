//! `shardlake-bench`: the Rust half of the side-by-side benchmarks.
//!
//! - `queries`: runs a fixed query set on shardlake's engine and on plain
//!   DataFusion (a `ListingTable` over the very same Parquet files), in one
//!   process, and prints per-query medians as JSON. `benches/query.py` adds
//!   DuckDB on the same files and prints the comparison.
//! - `commits`: builds one table from many small commits and one from a few
//!   large ones (same rows) and compares planning and query times.
//! - `load`: concurrent HTTP clients against a real server (see `load.rs`).
//! - `storage`: Iceberg and plain Parquet, local disk and S3 (see `storage.rs`).
//! - `aging`: a server fed thousands of small commits, measured as the lake
//!   ages, with maintenance (see `aging.rs`).
//! - `durability`: ingest with and without `fsync` (see `durability.rs`).

/// mimalloc instead of the system allocator: planning and scans allocate
/// many small objects (docs/benchmarks.md, "Queries").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod aging;
mod cluster;
mod durability;
mod load;
mod replay;
mod shared_catalog;
mod storage;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use serde::Serialize;
use shardlake_core::{Event, event_schema};
use shardlake_lake::{EmitterConfig, Lake, TableFormat};
use shardlake_query::{CrossShardQuery, QueryConfig, QueryResult, THINGS_SQL};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the query set on shardlake and on a plain ListingTable.
    Queries {
        /// Lake directory (from `shardlake ingest`).
        #[arg(long)]
        warehouse: std::path::PathBuf,
        /// A JSON file with `{"name": "sql", ...}` to run (placeholders already filled).
        #[arg(long)]
        queries: std::path::PathBuf,
        /// Runs per query and engine (median reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// The query set in this process and on `shardlake worker` processes
    /// over the same lake: the cost of distributing, per query.
    Cluster {
        /// Lake directory.
        #[arg(long)]
        warehouse: std::path::PathBuf,
        /// A JSON file with `{"name": "sql", ...}`.
        #[arg(long)]
        queries: std::path::PathBuf,
        /// Runs per query and engine (median reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Worker processes.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// The `shardlake` binary (default: next to this one).
        #[arg(long)]
        shardlake: Option<std::path::PathBuf>,
    },
    /// EXPLAIN ANALYZE one query on both engines (for investigating a gap).
    Explain {
        /// Lake directory.
        #[arg(long)]
        warehouse: std::path::PathBuf,
        /// The query.
        sql: String,
    },
    /// Concurrent HTTP clients against a real server on loopback.
    Load {
        /// Concurrent clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Duration, seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Then this many seconds of repeated queries only.
        #[arg(long, default_value_t = 10)]
        read_only_seconds: u64,
        /// Events loaded before the clients start.
        #[arg(long, default_value_t = 200_000)]
        preload_events: usize,
        /// The query memory pool, MiB.
        #[arg(long, default_value_t = 512)]
        memory_limit_mib: usize,
        /// Resident memory allowed above baseline plus pool, MiB.
        #[arg(long, default_value_t = 256)]
        margin_mib: u64,
    },
    /// The lake as a replay source: one key of 10,000 in 10M events,
    /// before and after compaction; a namespace; a migration 8 -> 9 shards.
    Replay {
        /// Scratch directory (the lake is rebuilt in it).
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Events.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Distinct partition keys.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Namespaces.
        #[arg(long, default_value_t = 4)]
        namespaces: u64,
        /// Runs per timing.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Ingest and queries on Iceberg and plain Parquet, on local disk and
    /// on S3 (moto), against a ListingTable on the same store.
    Storage {
        /// Events ingested into each lake.
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
        /// Events per emit (one commit each).
        #[arg(long, default_value_t = 250_000)]
        batch: usize,
        /// Runs per query timing.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// A server fed many small commits, measured as the lake ages.
    Aging {
        /// Scratch directory.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// The `shardlake` binary to serve with (default: next to this one).
        #[arg(long)]
        shardlake: Option<std::path::PathBuf>,
        /// Commits (one ingest request each).
        #[arg(long, default_value_t = 20_000)]
        commits: usize,
        /// Events per commit.
        #[arg(long, default_value_t = 20)]
        events_per_commit: usize,
        /// Commit counts at which to measure.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000,20000")]
        checkpoints: Vec<usize>,
        /// `[maintenance] interval_secs`.
        #[arg(long, default_value_t = 3)]
        interval_secs: u64,
        /// `[maintenance] snapshot_retention_secs`.
        #[arg(long, default_value_t = 30)]
        retention_secs: u64,
        /// `[maintenance] orphan_grace_secs`.
        #[arg(long, default_value_t = 10)]
        grace_secs: u64,
        /// A server without `[maintenance]` (a revision before it).
        #[arg(long)]
        baseline: bool,
        /// Runs per query timing.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Ingest with and without fsync, same events, same disk.
    Durability {
        /// Scratch directory.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Commits of 100 events.
        #[arg(long, default_value_t = 1000)]
        small_commits: usize,
        /// Commits of 100,000 events.
        #[arg(long, default_value_t = 10)]
        large_commits: usize,
    },
    /// Commits per second with two servers on one PostgreSQL catalog
    /// against one server on the SQLite catalog.
    SharedCatalog {
        /// Scratch directory.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// A PostgreSQL URL whose user may create databases
        /// (`postgres://user@host:port/postgres`).
        #[arg(long)]
        postgres: String,
        /// Commits per server.
        #[arg(long, default_value_t = 300)]
        commits: usize,
        /// Events per commit.
        #[arg(long, default_value_t = 100)]
        per: usize,
    },
    /// Many small commits against a few large ones.
    Commits {
        /// Scratch directory.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Number of small commits.
        #[arg(long, default_value_t = 1000)]
        commits: usize,
        /// Events per small commit.
        #[arg(long, default_value_t = 1000)]
        events_per_commit: usize,
        /// Runs per measurement.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

/// The `shardlake` binary a bench drives: `given`, else the one built next
/// to this bench.
fn shardlake_binary(given: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    Ok(match given {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary's directory")?
            .join("shardlake"),
    })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

async fn time<F, Fut, T>(runs: usize, mut f: F) -> anyhow::Result<(f64, T)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        last = Some(f().await?);
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(times), last.context("no runs")?))
}

#[derive(Serialize)]
struct QueryTiming {
    shardlake_ms: f64,
    listing_ms: f64,
    shardlake_cold_ms: f64,
    shardlake_cached_ms: f64,
    /// Of `shardlake_ms`, the part before the plan ran (last run).
    planning_ms: f64,
    /// The query's first run on a fresh engine (what warms caches, and
    /// builds the maintained fold of `things`).
    shardlake_first_ms: f64,
    /// Queries of `things`: the same with `things` derived from the events
    /// on every query (`things_state_bytes = 0`), as before it was
    /// maintained.
    #[serde(skip_serializing_if = "Option::is_none")]
    shardlake_derived_ms: Option<f64>,
    rows: usize,
    bytes_scanned: u64,
    files_scanned: usize,
    files_total: usize,
}

/// Plain DataFusion over the lake's data files: a ListingTable on the data
/// directory through the lake's own object store, default options, the
/// same schema.
async fn listing_context(lake: &Lake) -> anyhow::Result<SessionContext> {
    let ctx = SessionContext::new_with_config(SessionConfig::new());
    let warehouse = lake.warehouse();
    ctx.register_object_store(&warehouse.store_url(), warehouse.store());
    let dir = match lake.format() {
        TableFormat::Iceberg => "shardlake/events/data/",
        TableFormat::Parquet => "events/",
    };
    let data = warehouse.root().join(dir)?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new(ListingTableUrl::parse(data.as_str())?)
        .with_listing_options(options)
        .with_schema(event_schema());
    ctx.register_table("events", Arc::new(ListingTable::try_new(config)?))?;
    let things = ctx.sql(THINGS_SQL).await?.into_view();
    ctx.register_table("things", things)?;
    Ok(ctx)
}

/// One query on shardlake (uncached) and on the `ListingTable`, each warmed
/// once (file metadata caches, page cache) and then timed `runs` times:
/// the two medians in ms, shardlake's first (warming) run and its last
/// result.
async fn side_by_side(
    engine: &CrossShardQuery,
    listing: &SessionContext,
    sql: &str,
    runs: usize,
) -> anyhow::Result<(f64, f64, f64, QueryResult)> {
    let started = Instant::now();
    engine.sql(sql).without_cache().await?;
    let first = started.elapsed().as_secs_f64() * 1e3;
    listing.sql(sql).await?.collect().await?;
    let (ours, result) = time(runs, || async {
        Ok(engine.sql(sql).without_cache().await?)
    })
    .await?;
    let (theirs, _) = time(runs, || async {
        Ok(listing.sql(sql).await?.collect().await?)
    })
    .await?;
    Ok((ours, theirs, first, result))
}

async fn queries(
    warehouse: &std::path::Path,
    queries: &std::path::Path,
    runs: usize,
) -> anyhow::Result<()> {
    let set: BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(queries)?)?;
    let lake = Lake::open_local(warehouse).await?;
    let engine = CrossShardQuery::open(&lake, QueryConfig::default()).await?;
    let listing = listing_context(&lake).await?;
    let mut out = BTreeMap::new();
    for (name, sql) in &set {
        let (shardlake_ms, listing_ms, first, result) =
            side_by_side(&engine, &listing, sql, runs).await?;
        let derived = match sql.contains("things") {
            true => {
                let config = QueryConfig {
                    things_state_bytes: 0,
                    ..QueryConfig::default()
                };
                let derived = CrossShardQuery::open(&lake, config).await?;
                derived.sql(sql).without_cache().await?;
                let (ms, _) = time(runs, || async {
                    Ok(derived.sql(sql).without_cache().await?)
                })
                .await?;
                Some(ms)
            }
            false => None,
        };
        engine.clear_cache().await;
        let started = Instant::now();
        engine.sql(sql).await?;
        let cold = started.elapsed().as_secs_f64() * 1e3;
        let (cached, hit) = time(runs, || async {
            Ok(engine.sql(sql).await?.stats.cache_hit)
        })
        .await?;
        anyhow::ensure!(hit, "{name}: the repeat was not a cache hit");
        out.insert(
            name.clone(),
            QueryTiming {
                shardlake_ms,
                listing_ms,
                shardlake_cold_ms: cold,
                planning_ms: result.stats.planning_ms,
                shardlake_first_ms: first,
                shardlake_derived_ms: derived,
                shardlake_cached_ms: cached,
                rows: result.num_rows(),
                bytes_scanned: result.stats.bytes_scanned,
                files_scanned: result.stats.files_scanned,
                files_total: result.stats.files_total,
            },
        );
        eprintln!(
            "{name}: shardlake {shardlake_ms:.1} ms, listing {listing_ms:.1} ms, cached {cached:.3} ms"
        );
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn events(n: usize, offset: usize) -> Vec<Event> {
    let base = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default();
    (offset..offset + n)
        .map(|i| {
            let shard = (i % 16) as i32;
            let key = format!("Order:o-{}", i % 10_000);
            Event::new(
                format!("tenant-{}", i % 8),
                shard,
                (i / 16 + 1) as i64,
                key,
                "thing.updated",
                base + Duration::from_millis(i as u64),
            )
            .with_entity(
                "Order",
                format!("o-{}", i % 10_000),
                (i / 10_000 + 1) as i64,
            )
            .with_payload(&serde_json::json!({"n": i, "status": "paid"}))
        })
        .collect()
}

/// An emitter configuration that commits each `emit` call at once and
/// whole, whatever its size: one call, one commit.
fn commit_per_emit() -> EmitterConfig {
    EmitterConfig {
        flush_interval: Duration::from_millis(1),
        max_batch_events: usize::MAX,
        ..EmitterConfig::default()
    }
}

async fn commits(dir: &std::path::Path, n: usize, per: usize, runs: usize) -> anyhow::Result<()> {
    let total = n * per;
    let all = events(total, 0);
    let quick = commit_per_emit();
    let many = Lake::open_local(dir.join("many")).await?;
    let emitter = many.emitter(quick.clone()).await?;
    let started = Instant::now();
    for chunk in all.chunks(per) {
        emitter.emit(chunk).await?;
    }
    emitter.close().await?;
    let build_many = started.elapsed().as_secs_f64();
    let few = Lake::open_local(dir.join("few")).await?;
    let emitter = few.emitter(quick).await?;
    for chunk in all.chunks(total.div_ceil(4)) {
        emitter.emit(chunk).await?;
    }
    emitter.close().await?;

    let mut report = BTreeMap::new();
    report.insert("many_commits", measure(&many, runs).await?);
    report.insert("few_commits", measure(&few, runs).await?);
    // The remedy for many small commits: compaction, then the same queries.
    let started = Instant::now();
    let compaction = many
        .compact(&shardlake_lake::CompactionConfig::default())
        .await?;
    let mut compacted = measure(&many, runs).await?;
    compacted["compaction_seconds"] = serde_json::json!(started.elapsed().as_secs_f64());
    compacted["files_removed"] = serde_json::json!(compaction.files_removed);
    report.insert("many_commits_compacted", compacted);
    report.insert("build_many_seconds", serde_json::json!(build_many));
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Planning and query times of a lake's table, with a fresh engine: the
/// first query (loads manifests), `EXPLAIN` (planning once metadata is
/// cached), a one-namespace aggregate and a full scan.
async fn measure(lake: &Lake, runs: usize) -> anyhow::Result<serde_json::Value> {
    let engine = CrossShardQuery::open(lake, QueryConfig::default()).await?;
    let first = Instant::now();
    engine
        .sql("SELECT count(*) FROM events")
        .without_cache()
        .await?;
    let first_ms = first.elapsed().as_secs_f64() * 1e3;
    let timed = |sql: &'static str| {
        let engine = engine.clone();
        async move {
            time(runs, || async {
                Ok(engine.sql(sql).without_cache().await?)
            })
            .await
        }
    };
    let (plan_ms, _) =
        timed("EXPLAIN SELECT count(*) FROM events WHERE namespace = 'tenant-3' AND shard_id = 5")
            .await?;
    let (query_ms, result) = timed(
        "SELECT shard_id, count(*), max(seq) FROM events WHERE namespace = 'tenant-3' GROUP BY shard_id",
    )
    .await?;
    let (full_ms, _) =
        timed("SELECT event_type, count(DISTINCT entity_id) FROM events GROUP BY event_type")
            .await?;
    Ok(serde_json::json!({
        "files": result.stats.files_total,
        "first_query_ms": first_ms,
        "plan_ms": plan_ms,
        "namespace_query_ms": query_ms,
        "full_scan_ms": full_ms,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Queries {
            warehouse,
            queries: file,
            runs,
        } => queries(&warehouse, &file, runs).await,
        Command::Cluster {
            warehouse,
            queries,
            runs,
            workers,
            shardlake,
        } => {
            let shardlake = shardlake_binary(shardlake)?;
            cluster::run(&warehouse, &queries, runs, workers, shardlake).await
        }
        Command::Explain { warehouse, sql } => {
            let lake = Lake::open_local(&warehouse).await?;
            let engine = CrossShardQuery::open(&lake, QueryConfig::default()).await?;
            let listing = listing_context(&lake).await?;
            let analyze = format!("EXPLAIN ANALYZE {sql}");
            let ours = engine.sql(&analyze).without_cache().await?;
            println!(
                "== shardlake\n{}",
                datafusion::arrow::util::pretty::pretty_format_batches(&ours.batches)?
            );
            let theirs = listing.sql(&analyze).await?.collect().await?;
            println!(
                "== ListingTable\n{}",
                datafusion::arrow::util::pretty::pretty_format_batches(&theirs)?
            );
            Ok(())
        }
        Command::Commits {
            dir,
            commits: n,
            events_per_commit,
            runs,
        } => commits(&dir, n, events_per_commit, runs).await,
        Command::Aging {
            dir,
            shardlake,
            commits,
            events_per_commit,
            checkpoints,
            interval_secs,
            retention_secs,
            grace_secs,
            baseline,
            runs,
        } => {
            let shardlake = shardlake_binary(shardlake)?;
            aging::run(aging::AgingSpec {
                shardlake,
                dir,
                commits,
                events_per_commit,
                checkpoints,
                interval_secs,
                retention_secs,
                grace_secs,
                baseline,
                runs,
            })
            .await
        }
        Command::Durability {
            dir,
            small_commits,
            large_commits,
        } => durability::run(&dir, small_commits, large_commits).await,
        Command::SharedCatalog {
            dir,
            postgres,
            commits,
            per,
        } => shared_catalog::run(&dir, &postgres, commits, per).await,
        Command::Storage {
            events,
            batch,
            runs,
        } => storage::run(events, batch, runs).await,
        Command::Replay {
            dir,
            events,
            keys,
            namespaces,
            runs,
        } => {
            replay::run(
                &dir,
                replay::ReplaySpec {
                    events,
                    keys,
                    namespaces,
                    runs: runs.max(1),
                },
            )
            .await
        }
        Command::Load {
            clients,
            seconds,
            read_only_seconds,
            preload_events,
            memory_limit_mib,
            margin_mib,
        } => {
            load::run(load::LoadSpec {
                clients,
                seconds,
                read_only_seconds,
                preload_events,
                memory_limit_bytes: memory_limit_mib * 1024 * 1024,
                margin_bytes: margin_mib * 1024 * 1024,
            })
            .await
        }
    }
}
