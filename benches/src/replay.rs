//! `shardlake-bench replay`: the lake as a replay source, measured on the
//! shape of the replay benchmark: 10M events over 10,000 partition keys.
//!
//! - one key's replay: what fraction of the lake it reads, before and after
//!   compaction (ingest batches hold every key, so before compaction each
//!   file spans the whole key range and only page statistics prune);
//! - a whole namespace's replay throughput;
//! - a real migration (jump hash, 8 -> 9 shards, in-memory shards) and its
//!   copy throughput.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde_json::json;
use shardlake_core::Event;
use shardlake_lake::{EmitterConfig, Lake};
use shardlake_migrate::{
    ControlStore, InMemoryShard, MigrationConfig, Migrator, ShardSet, ShardStub, WriteGate,
    key_stats, plan_add_shard, publish_topology,
};
use shardlake_query::{CrossShardQuery, QueryConfig, ReplayQuery};
use shardlake_routing::{ShardRouter, SharedRouter, Strategy, Topology};

use crate::median;

/// What to build and measure.
pub struct ReplaySpec {
    /// Events in the lake.
    pub events: u64,
    /// Distinct partition keys.
    pub keys: u64,
    /// Namespaces (key `k` lives in namespace `k % namespaces`).
    pub namespaces: u64,
    /// Runs per timing (median reported).
    pub runs: usize,
}

fn key(k: u64) -> String {
    format!("Account:acc-{k:05}")
}

/// Writes the lake the way shards would: each key's events emitted by its
/// owner under jump hash over 8 shards, in commits of 250,000 events.
async fn build(dir: &Path, spec: &ReplaySpec, topology: &Topology) -> anyhow::Result<(Lake, f64)> {
    let lake = Lake::open_local(dir).await?;
    let router = ShardRouter::new(topology.clone())?;
    let emitter = lake
        .emitter(EmitterConfig {
            max_batch_events: 250_000,
            ..EmitterConfig::default()
        })
        .await?;
    let ts0 = chrono::DateTime::from_timestamp(1_767_225_600, 0).expect("ts");
    let mut seqs = [0i64; 64];
    let started = Instant::now();
    let batch = 250_000u64;
    let mut written = 0;
    while written < spec.events {
        let n = batch.min(spec.events - written);
        let mut events = Vec::with_capacity(n as usize);
        for i in written..written + n {
            let k = i % spec.keys;
            let version = (i / spec.keys + 1) as i64;
            let partition_key = key(k);
            let shard = router.shard_of(&partition_key)?;
            seqs[shard as usize] += 1;
            events.push(
                Event::new(
                    format!("tenant-{:03}", k % spec.namespaces),
                    shard as i32,
                    seqs[shard as usize],
                    partition_key,
                    "thing.updated",
                    ts0 + chrono::Duration::milliseconds(i as i64),
                )
                .with_entity("Account", format!("acc-{k:05}"), version)
                .with_payload(&json!({"balance": (i * 7919) % 100_000, "version": version})),
            );
        }
        emitter.emit(&events).await?;
        written += n;
    }
    emitter.close().await?;
    Ok((lake, started.elapsed().as_secs_f64()))
}

/// One key's replay: median time and the share of the lake it read.
async fn one_key(
    engine: &CrossShardQuery,
    k: u64,
    namespace: Option<String>,
    runs: usize,
) -> anyhow::Result<serde_json::Value> {
    let snapshot = engine.current_snapshot().await?;
    let lake_bytes: u64 = snapshot.files.iter().map(|f| f.size).sum();
    let lake_rows: u64 = snapshot.files.iter().map(|f| f.rows).sum();
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        let result = engine
            .replay(ReplayQuery {
                namespace: namespace.clone(),
                partition_keys: vec![key(k)],
                ..ReplayQuery::default()
            })
            .without_cache()
            .await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        last = Some(result.stats);
    }
    let stats = last.expect("runs > 0");
    Ok(json!({
        "key": key(k),
        "events": stats.rows_returned,
        "median_ms": median(times),
        "files_scanned": stats.files_scanned,
        "files_total": stats.files_total,
        "bytes_scanned": stats.bytes_scanned,
        "lake_bytes": lake_bytes,
        "bytes_fraction": stats.bytes_scanned as f64 / lake_bytes as f64,
        "rows_decoded": stats.rows_scanned,
        "rows_fraction": stats.rows_scanned as f64 / lake_rows as f64,
    }))
}

/// A whole namespace's replay, streamed and counted.
async fn namespace(engine: &CrossShardQuery) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let mut stream = engine
        .replay(ReplayQuery {
            namespace: Some("tenant-000".into()),
            ..ReplayQuery::default()
        })
        .without_cache()
        .stream()
        .await?;
    let mut events = 0u64;
    while let Some(batch) = stream.next().await {
        events += batch?.num_rows() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(json!({"events": events, "seconds": seconds, "events_per_second": events as f64 / seconds}))
}

/// Adds a 9th shard to the lake's 8 (in-memory shards), timed.
async fn migration(
    lake: &Lake,
    engine: &CrossShardQuery,
    from: &Topology,
) -> anyhow::Result<serde_json::Value> {
    let control = ControlStore::open(lake).await?;
    publish_topology(&control, from).await?;
    let shards = Arc::new(ShardSet::new());
    for id in 0..=8 {
        shards.insert(Arc::new(InMemoryShard::new(id)) as Arc<dyn ShardStub>);
    }
    let started = Instant::now();
    let keys = key_stats(engine).await?;
    let plan = plan_add_shard(from, 8, &keys, 300_000.0)?;
    let plan_ms = started.elapsed().as_secs_f64() * 1e3;
    let router = Arc::new(SharedRouter::new(ShardRouter::new(from.clone())?));
    let gate = Arc::new(WriteGate::new(router, shards, control));
    let migrator = Migrator::open(lake, engine.clone(), gate, MigrationConfig::default()).await?;
    let started = Instant::now();
    let report = migrator.execute(plan).await?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(report.succeeded(), "migration failed: {:?}", report.error);
    Ok(json!({
        "plan_ms": plan_ms,
        "keys_moved": report.plan.moves.len(),
        "events_copied": report.events_copied,
        "seconds": seconds,
        "events_per_second": report.events_copied as f64 / seconds,
        "phase_ms": report.phase_ms,
    }))
}

/// Builds the lake in a fresh directory under `dir` and prints the figures
/// as JSON.
pub async fn run(dir: &Path, spec: ReplaySpec) -> anyhow::Result<()> {
    let lake_dir = dir.join(format!("replay-{}-{}", spec.events, spec.keys));
    if lake_dir.exists() {
        std::fs::remove_dir_all(&lake_dir)?;
    }
    let topology = Topology::new(8, Strategy::Jump);
    let (lake, ingest_s) = build(&lake_dir, &spec, &topology).await?;
    let engine = CrossShardQuery::open(&lake, QueryConfig::default()).await?;
    // A key from the middle of the key range, and its namespace.
    let k = spec.keys * 4242 / 10_000;
    let ns = format!("tenant-{:03}", k % spec.namespaces);
    let one_key_both = |engine: CrossShardQuery, ns: String| async move {
        anyhow::Ok(json!({
            "files": engine.current_snapshot().await?.files.len(),
            "one_key_with_namespace": one_key(&engine, k, Some(ns), spec.runs).await?,
            "one_key_any_namespace": one_key(&engine, k, None, spec.runs).await?,
        }))
    };
    let as_ingested = one_key_both(engine.clone(), ns.clone()).await?;
    let compaction = lake.compact(&Default::default()).await?;
    let compacted = one_key_both(engine.clone(), ns).await?;
    let out = json!({
        "events": spec.events,
        "keys": spec.keys,
        "ingest_events_per_second": spec.events as f64 / ingest_s,
        "as_ingested": as_ingested,
        "compaction": compaction,
        "compacted": compacted,
        "namespace_replay": namespace(&engine).await?,
        "migration_8_to_9": migration(&lake, &engine, &topology).await?,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
