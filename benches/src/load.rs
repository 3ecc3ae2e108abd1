//! `shardlake-bench load`: many concurrent HTTP clients against a real
//! server on loopback, mixing cached queries, uncached queries and ingest.
//!
//! Checks what an operator cares about under load: no 5xx, no lost or
//! doubled events (every acknowledged event is in the lake exactly once),
//! and resident memory staying under the query pool plus a fixed margin.
//! Reports throughput and p50/p99 latency per kind of request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shardlake_server::{Server, ServerConfig};

/// Settings of one run.
pub struct LoadSpec {
    pub clients: usize,
    pub seconds: u64,
    /// A second phase of repeated queries only (no commits, so the cache holds).
    pub read_only_seconds: u64,
    pub preload_events: usize,
    pub memory_limit_bytes: usize,
    pub margin_bytes: u64,
}

#[derive(Default)]
struct Samples {
    latencies_ms: BTreeMap<&'static str, Vec<f64>>,
    statuses: BTreeMap<u16, u64>,
    accepted: u64,
    transport_errors: u64,
    cache_hits: BTreeMap<&'static str, u64>,
    /// Latencies by kind and by how the answer was made: `hit` (the cache
    /// held it), `shared` (waited for an identical query's run), `ran`.
    by_answer_ms: BTreeMap<(&'static str, &'static str), Vec<f64>>,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        for (k, v) in other.latencies_ms {
            self.latencies_ms.entry(k).or_default().extend(v);
        }
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.cache_hits {
            *self.cache_hits.entry(k).or_default() += v;
        }
        for (k, v) in other.by_answer_ms {
            self.by_answer_ms.entry(k).or_default().extend(v);
        }
        self.accepted += other.accepted;
        self.transport_errors += other.transport_errors;
    }

    fn by_kind(&mut self, elapsed: f64) -> BTreeMap<&'static str, Value> {
        let mut kinds = BTreeMap::new();
        for (kind, v) in &mut self.latencies_ms {
            v.sort_by(f64::total_cmp);
            let mut answers = serde_json::Map::new();
            for ((k, how), v) in &mut self.by_answer_ms {
                if k != kind {
                    continue;
                }
                v.sort_by(f64::total_cmp);
                answers.insert(
                    (*how).to_owned(),
                    json!({
                        "requests": v.len(),
                        "p50_ms": percentile(v, 0.5),
                        "p99_ms": percentile(v, 0.99),
                    }),
                );
            }
            kinds.insert(
                *kind,
                json!({
                    "requests": v.len(),
                    "per_second": v.len() as f64 / elapsed,
                    "p50_ms": percentile(v, 0.5),
                    "p99_ms": percentile(v, 0.99),
                    "cache_hits": self.cache_hits.get(kind).copied().unwrap_or(0),
                    "by_answer": answers,
                }),
            );
        }
        kinds
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn event(namespace: &str, shard: i64, seq: i64, key: u64) -> Value {
    json!({
        "namespace": namespace, "shard_id": shard, "seq": seq,
        "partition_key": format!("Order:o-{key}"), "entity_type": "Order",
        "entity_id": format!("o-{key}"), "event_type": "thing.updated", "version": seq,
        "ts": "2026-01-01T00:00:00Z", "payload": {"amount": key % 1000, "status": "paid"}
    })
}

const CACHED: [&str; 4] = [
    "SELECT namespace, count(*) FROM events GROUP BY namespace ORDER BY namespace",
    "SELECT count(*) FROM events WHERE namespace = 'tenant-1'",
    "SELECT event_type, count(*) FROM events WHERE namespace = 'tenant-2' GROUP BY 1",
    "SELECT \"type\", count(*) FROM things WHERE namespace = 'tenant-3' GROUP BY 1",
];

pub async fn run(spec: LoadSpec) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        warehouse: dir.path().join("lake"),
        ..ServerConfig::default()
    };
    config.limits.memory_limit_bytes = spec.memory_limit_bytes;
    config.emitter.flush_interval = Duration::from_millis(50);
    let server = Server::bind(config).await?;
    let base = format!("http://{}", server.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(spec.clients)
        .build()?;

    // Preload through the API: shard 0, 8 namespaces.
    let mut seq = 0i64;
    for chunk in 0..spec.preload_events.div_ceil(10_000) {
        let n = 10_000.min(spec.preload_events - chunk * 10_000);
        let body: Vec<Value> = (0..n)
            .map(|i| {
                seq += 1;
                event(&format!("tenant-{}", i % 8), 0, seq, (seq as u64) % 50_000)
            })
            .collect();
        let r = client
            .post(format!("{base}/v1/events"))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "preload: {}", r.text().await?);
    }
    let baseline_rss = rss_bytes();

    let peak_rss = Arc::new(AtomicU64::new(baseline_rss));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak_rss), Arc::clone(&done));
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let started = Instant::now();
    let mut all = mixed_phase(&client, &base, spec.clients, spec.seconds).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let read_started = Instant::now();
    let mut read_only =
        read_only_phase(&client, &base, spec.clients, spec.read_only_seconds).await?;
    let read_elapsed = read_started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    sampler.await?;

    // Every acknowledged event is in the lake exactly once.
    let check: Value = client
        .post(format!("{base}/v1/query"))
        .json(&json!({"sql": "SELECT count(*), count(DISTINCT shard_id * 1000000000 + seq) FROM events", "cache": false}))
        .send()
        .await?
        .json()
        .await?;
    let stored = check["rows"][0][0].as_u64().unwrap_or(0);
    let distinct = check["rows"][0][1].as_u64().unwrap_or(0);
    let expected = spec.preload_events as u64 + all.accepted;
    let _ = stop_tx.send(());
    serving.await??;

    let errors = |s: &Samples| -> u64 {
        s.statuses
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, n)| n)
            .sum()
    };
    let server_errors = errors(&all) + errors(&read_only);
    let transport_errors = all.transport_errors + read_only.transport_errors;
    let requests: u64 = all.statuses.values().sum();
    let peak = peak_rss.load(Ordering::Relaxed);
    let budget = baseline_rss + spec.memory_limit_bytes as u64 + spec.margin_bytes;
    let report = json!({
        "clients": spec.clients,
        "mixed": {
            "seconds": elapsed,
            "requests": requests,
            "requests_per_second": requests as f64 / elapsed,
            "statuses": all.statuses,
            "by_kind": all.by_kind(elapsed),
        },
        "read_only": {
            "seconds": read_elapsed,
            "requests_per_second": read_only.statuses.values().sum::<u64>() as f64 / read_elapsed,
            "statuses": read_only.statuses,
            "by_kind": read_only.by_kind(read_elapsed),
        },
        "server_errors": server_errors,
        "transport_errors": transport_errors,
        "events_acknowledged": all.accepted,
        "events_expected": expected,
        "events_stored": stored,
        "events_distinct": distinct,
        "rss_baseline_mb": baseline_rss as f64 / 1e6,
        "rss_peak_mb": peak as f64 / 1e6,
        "rss_budget_mb": budget as f64 / 1e6,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    anyhow::ensure!(server_errors == 0, "{server_errors} responses were 5xx");
    anyhow::ensure!(transport_errors == 0, "{transport_errors} transport errors");
    anyhow::ensure!(
        stored == expected && distinct == expected,
        "lost or doubled events: expected {expected}, stored {stored}, distinct {distinct}"
    );
    anyhow::ensure!(peak <= budget, "peak RSS {peak} over budget {budget}");
    Ok(())
}

/// Records one answered request.
async fn observe(
    samples: &mut Samples,
    kind: &'static str,
    started: Instant,
    response: reqwest::Response,
) -> Value {
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    *samples.statuses.entry(status).or_default() += 1;
    samples
        .latencies_ms
        .entry(kind)
        .or_default()
        .push(started.elapsed().as_secs_f64() * 1e3);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let stats = &body["stats"];
    if stats["cache_hit"] == true && stats["shared_run"] != true {
        *samples.cache_hits.entry(kind).or_default() += 1;
    }
    if !stats.is_null() {
        let how = match (stats["cache_hit"] == true, stats["shared_run"] == true) {
            (_, true) => "shared",
            (true, false) => "hit",
            (false, false) => "ran",
        };
        samples
            .by_answer_ms
            .entry((kind, how))
            .or_default()
            .push(elapsed_ms);
    }
    body
}

/// Only the repeatable queries, no ingest: the cache holds between commits.
async fn read_only_phase(
    client: &reqwest::Client,
    base: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Samples> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, base) = (client.clone(), base.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut i = c;
            while Instant::now() < deadline {
                i += 1;
                let t = Instant::now();
                let request = client
                    .post(format!("{base}/v1/query"))
                    .json(&json!({"sql": CACHED[i % CACHED.len()]}));
                match request.send().await {
                    Ok(response) => {
                        observe(&mut samples, "query_repeated", t, response).await;
                    }
                    Err(_) => samples.transport_errors += 1,
                }
            }
            samples
        }));
    }
    let mut all = Samples::default();
    for task in tasks {
        all.merge(task.await?);
    }
    Ok(all)
}

/// Repeated queries, ad-hoc queries and ingest, interleaved per client.
async fn mixed_phase(
    client: &reqwest::Client,
    base: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Samples> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        let base = base.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let shard = 100 + c as i64;
            let mut seq = 0i64;
            let mut i = c;
            while Instant::now() < deadline {
                i += 1;
                let (kind, request) = match i % 4 {
                    0 | 1 => (
                        "query_repeated",
                        client
                            .post(format!("{base}/v1/query"))
                            .json(&json!({"sql": CACHED[i % CACHED.len()]})),
                    ),
                    2 => (
                        "query_uncached",
                        client.post(format!("{base}/v1/query")).json(&json!({
                            "sql": format!(
                                "SELECT count(*), max(seq) FROM events WHERE namespace = 'tenant-{}' AND seq > {}",
                                i % 8, i % 1000),
                            "cache": false
                        })),
                    ),
                    _ => {
                        let batch: Vec<Value> = (0..100)
                            .map(|k| {
                                seq += 1;
                                event(&format!("tenant-{}", k % 8), shard, seq, (c * 1000 + k) as u64)
                            })
                            .collect();
                        ("ingest_100", client.post(format!("{base}/v1/events")).json(&batch))
                    }
                };
                let t = Instant::now();
                match request.send().await {
                    Ok(response) => {
                        let ok = response.status() == 200;
                        let body = observe(&mut samples, kind, t, response).await;
                        if kind == "ingest_100" {
                            if ok {
                                samples.accepted += body["accepted"].as_u64().unwrap_or(0);
                            } else {
                                // Not acknowledged: resend the same events next time (exactly once).
                                seq -= 100;
                            }
                        }
                    }
                    Err(_) => samples.transport_errors += 1,
                }
            }
            samples
        }));
    }
    let mut all = Samples::default();
    for task in tasks {
        all.merge(task.await?);
    }
    Ok(all)
}
