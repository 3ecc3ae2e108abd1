//! `shardlake-bench cluster`: the query set run in this process and on
//! `shardlake worker` processes over the same lake (issue 19). One machine
//! cannot show a speed-up, so this measures the cost of distributing: the
//! ratio of the distributed median to the local one per query (and their
//! geometric mean), and how evenly the workers' scans split the bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use serde::Serialize;
use shardlake_lake::Lake;
use shardlake_query::distributed::ClusterConfig;
use shardlake_query::{CacheConfig, CrossShardQuery, QueryConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::time;

const SECRET: &str = "bench-cluster-secret-0123456789";

#[derive(Serialize)]
struct ClusterTiming {
    local_ms: f64,
    distributed_ms: f64,
    /// `distributed_ms / local_ms`.
    overhead: f64,
    workers: usize,
    tasks: usize,
    bytes_scanned: u64,
    /// Bytes each worker's scans fetched.
    worker_bytes_scanned: BTreeMap<String, u64>,
    /// Largest deviation of one worker's bytes from the mean, percent.
    max_split_deviation_pct: f64,
}

/// Starts `n` workers (the `shardlake` binary) over `warehouse`.
async fn workers(
    shardlake: &Path,
    warehouse: &Path,
    n: usize,
) -> anyhow::Result<(Vec<tokio::process::Child>, Vec<url::Url>)> {
    let (mut children, mut urls) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let mut child = tokio::process::Command::new(shardlake)
            .arg("--warehouse")
            .arg(warehouse)
            .args(["worker", "--listen", "127.0.0.1:0"])
            .env("SHARDLAKE_DISTRIBUTED__SECRET", SECRET)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", shardlake.display()))?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let banner = lines.next_line().await?.context("the worker's banner")?;
        let url = banner
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .context("an address in the banner")?
            .parse()?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        children.push(child);
        urls.push(url);
    }
    Ok((children, urls))
}

pub async fn run(
    warehouse: &Path,
    queries: &Path,
    runs: usize,
    n: usize,
    shardlake: PathBuf,
) -> anyhow::Result<()> {
    let set: BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(queries)?)?;
    let lake = Lake::open_local(warehouse).await?;
    let (_children, urls) = workers(&shardlake, warehouse, n).await?;
    let config = |cluster: ClusterConfig| QueryConfig {
        cache: CacheConfig {
            enabled: false,
            ..CacheConfig::default()
        },
        cluster,
        ..QueryConfig::default()
    };
    let local = CrossShardQuery::open(&lake, config(ClusterConfig::default())).await?;
    let distributed = CrossShardQuery::open(
        &lake,
        config(ClusterConfig {
            workers: urls,
            min_scan_bytes: 0,
            secret: Some(SECRET.to_owned()),
        }),
    )
    .await?;
    let mut out = BTreeMap::new();
    let mut logs = Vec::new();
    for (name, sql) in &set {
        // One warm-up each: footers and page indexes cached on both sides.
        local.sql(sql).await?;
        distributed.sql(sql).await?;
        let (local_ms, _) = time(runs, || async { Ok(local.sql(sql).await?) }).await?;
        let (distributed_ms, result) =
            time(runs, || async { Ok(distributed.sql(sql).await?) }).await?;
        let s = &result.stats;
        let bytes: Vec<f64> = s.worker_bytes_scanned.values().map(|b| *b as f64).collect();
        let mean = bytes.iter().sum::<f64>() / bytes.len().max(1) as f64;
        let deviation = bytes
            .iter()
            .map(|b| {
                if mean > 0.0 {
                    (b - mean).abs() / mean * 100.0
                } else {
                    0.0
                }
            })
            .fold(0.0, f64::max);
        let overhead = distributed_ms / local_ms;
        logs.push(overhead);
        eprintln!(
            "{name}: local {local_ms:.1} ms, {} workers {distributed_ms:.1} ms ({overhead:.2}x), {} tasks, split +-{deviation:.1}%",
            s.workers, s.tasks
        );
        out.insert(
            name.clone(),
            ClusterTiming {
                local_ms,
                distributed_ms,
                overhead,
                workers: s.workers,
                tasks: s.tasks,
                bytes_scanned: s.bytes_scanned,
                worker_bytes_scanned: s.worker_bytes_scanned.clone(),
                max_split_deviation_pct: deviation,
            },
        );
    }
    let geomean = (logs.iter().map(|r| r.ln()).sum::<f64>() / logs.len().max(1) as f64).exp();
    eprintln!("geometric mean of the overhead: {geomean:.2}x");
    println!(
        "{}",
        serde_json::to_string_pretty(
            &serde_json::json!({"queries": out, "overhead_geomean": geomean})
        )?
    );
    Ok(())
}
