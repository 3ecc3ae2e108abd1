//! `shardlake-bench shared-catalog`: commits per second with the catalog on
//! PostgreSQL and two servers committing to one table, against one server
//! on the embedded SQLite catalog, in one run.
//!
//! Each "server" is a [`Lake`] opened from its own data directory with its
//! own database pools and committer, as a `shardlake serve` on another host
//! would be (all of them share this machine's cores here). The servers
//! emit disjoint shards in small commits, so every commit is real work and
//! the figure is the rate at which the table's commit point (the
//! compare-and-swap on the catalog row) lets commits through.

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};
use shardlake_lake::{Lake, ObjectStorageConfig, TableFormat};

use crate::events;

/// One server's run: `commits` commits of `per` events of its own shards;
/// the commit latencies and how many commits were re-planned.
async fn commit_loop(
    lake: Lake,
    server: usize,
    commits: usize,
    per: usize,
) -> anyhow::Result<(Vec<f64>, u64)> {
    let emitter = lake.emitter(crate::commit_per_emit()).await?;
    let mut all = events(commits * per, 0);
    // Disjoint shards per server: no event is another's duplicate.
    for e in &mut all {
        e.shard_id += (server * 100) as i32;
    }
    let mut latencies = Vec::with_capacity(commits);
    for chunk in all.chunks(per) {
        let t = Instant::now();
        let ack = emitter.emit(chunk).await?;
        anyhow::ensure!(ack.accepted == chunk.len(), "server {server}: {ack:?}");
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // Commits that lost the race to the other server and were re-planned
    // (new positions, so their files are written again).
    let conflicts = emitter.metrics().commit_conflicts;
    emitter.close().await?;
    Ok((latencies, conflicts))
}

/// `servers` lakes on the catalog at `catalog` (None: the SQLite file of
/// the first data directory, for one server) committing at once.
async fn run_servers(
    dir: &Path,
    catalog: Option<&str>,
    servers: usize,
    commits: usize,
    per: usize,
) -> anyhow::Result<Value> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    // One table-file location for every server (S3 in production).
    let storage = ObjectStorageConfig {
        location: Some(format!("file://{}/files", dir.canonicalize()?.display())),
        ..ObjectStorageConfig::default()
    };
    let mut lakes = Vec::new();
    for s in 0..servers {
        let (lake, _) = Lake::open_or_create_in(
            dir.join(format!("server-{s}")),
            &storage,
            catalog,
            Some(TableFormat::Iceberg),
        )
        .await?;
        lakes.push(lake);
    }
    let started = Instant::now();
    let tasks: Vec<_> = lakes
        .into_iter()
        .enumerate()
        .map(|(s, lake)| tokio::spawn(commit_loop(lake, s, commits, per)))
        .collect();
    let (mut latencies, mut conflicts) = (Vec::new(), 0);
    for task in tasks {
        let (l, c) = task.await??;
        latencies.extend(l);
        conflicts += c;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let total = (servers * commits) as f64;
    Ok(json!({
        "servers": servers,
        "commits": servers * commits,
        "commits_per_second": total / seconds,
        "events_per_second": total * per as f64 / seconds,
        "commit_p50_ms": latencies[latencies.len() / 2],
        "commit_p99_ms": latencies[(latencies.len() - 1) * 99 / 100],
        "conflicts_replanned": conflicts,
    }))
}

/// The three set-ups side by side; prints JSON.
pub async fn run(dir: &Path, postgres: &str, commits: usize, per: usize) -> anyhow::Result<()> {
    let sqlite = run_servers(&dir.join("sqlite-1"), None, 1, commits, per).await?;
    eprintln!("sqlite, 1 server: {sqlite}");
    let pg_db = |name: &str| -> anyhow::Result<String> {
        let mut url = url::Url::parse(postgres)?;
        url.set_path(name);
        Ok(url.to_string())
    };
    let admin = shardlake_lake::db::Database::connect(postgres).await?;
    let mut out = serde_json::Map::new();
    out.insert("sqlite_1_server".to_owned(), sqlite);
    // Two servers on one SQLite file: the most one machine can share.
    std::fs::create_dir_all(dir)?;
    let shared = format!(
        "sqlite://{}/shared-catalog.db?mode=rwc",
        dir.canonicalize()?.display()
    );
    let _ = std::fs::remove_file(dir.join("shared-catalog.db"));
    let sqlite2 = run_servers(&dir.join("sqlite-2"), Some(&shared), 2, commits, per).await?;
    eprintln!("sqlite, 2 servers on one file: {sqlite2}");
    out.insert("sqlite_2_servers_one_file".to_owned(), sqlite2);
    for servers in [1, 2] {
        let name = format!("shardlake_bench_{servers}_{}", std::process::id());
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(admin.pool())
            .await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(admin.pool())
            .await?;
        let figures = run_servers(
            &dir.join(format!("pg-{servers}")),
            Some(&pg_db(&name)?),
            servers,
            commits,
            per,
        )
        .await?;
        eprintln!("postgres, {servers} server(s): {figures}");
        out.insert(format!("postgres_{servers}_servers"), figures);
    }
    let rate = |k: &str| out[k]["commits_per_second"].as_f64().unwrap_or(0.0);
    let ratio = rate("postgres_2_servers") / rate("sqlite_1_server");
    out.insert(
        "ratio_postgres_2_servers_to_sqlite_1".to_owned(),
        json!(ratio),
    );
    println!("{}", serde_json::to_string_pretty(&Value::Object(out))?);
    Ok(())
}
