//! `shardlake-bench durability`: what `fsync` costs on ingest.
//!
//! The same events are committed into two fresh lakes on the same disk, one
//! with durable writes (the default: every data file, manifest and
//! metadata file and their directories are synced before the catalog swap)
//! and one without (`[storage] fsync = false`), in small commits (where the
//! fixed cost per commit shows) and in large ones (where throughput does).
//! Events per second and commit latency, side by side, in one run.

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};
use shardlake_lake::{Lake, ObjectStorageConfig, TableFormat};

use crate::events;

async fn ingest(dir: &Path, fsync: bool, commits: usize, per: usize) -> anyhow::Result<Value> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let storage = ObjectStorageConfig {
        fsync,
        ..ObjectStorageConfig::default()
    };
    let lake = Lake::open_with(dir, &storage, TableFormat::Iceberg).await?;
    let emitter = lake.emitter(crate::commit_per_emit()).await?;
    let all = events(commits * per, 0);
    let mut latencies = Vec::with_capacity(commits);
    let started = Instant::now();
    for chunk in all.chunks(per) {
        let t = Instant::now();
        emitter.emit(chunk).await?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let seconds = started.elapsed().as_secs_f64();
    emitter.close().await?;
    latencies.sort_by(f64::total_cmp);
    Ok(json!({
        "events_per_second": (commits * per) as f64 / seconds,
        "commit_p50_ms": latencies[latencies.len() / 2],
        "commit_p99_ms": latencies[(latencies.len() - 1) * 99 / 100],
    }))
}

/// Runs both shapes with and without fsync, alternating, and prints JSON.
pub async fn run(dir: &Path, small_commits: usize, large_commits: usize) -> anyhow::Result<()> {
    let mut out = serde_json::Map::new();
    for (name, commits, per) in [
        ("small_commits_of_100", small_commits, 100),
        ("large_commits_of_100000", large_commits, 100_000),
    ] {
        let durable = ingest(&dir.join(format!("{name}-fsync")), true, commits, per).await?;
        let fast = ingest(&dir.join(format!("{name}-nofsync")), false, commits, per).await?;
        let ratio = durable["events_per_second"].as_f64().unwrap_or(0.0)
            / fast["events_per_second"].as_f64().unwrap_or(1.0);
        eprintln!("{name}: fsync {durable}, no fsync {fast}");
        out.insert(
            name.to_owned(),
            json!({"commits": commits, "fsync": durable, "no_fsync": fast,
                   "throughput_ratio_fsync_to_none": ratio}),
        );
    }
    println!("{}", serde_json::to_string_pretty(&Value::Object(out))?);
    Ok(())
}
