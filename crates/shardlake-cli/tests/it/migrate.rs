//! `shardlake migrate` against shards that are real processes
//! (`shardlake shard serve`): plan, add a shard, SIGKILL the migration in
//! the middle, refuse a second one, resume, status, remove a shard.

use std::path::Path;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::{generate, query_json, run_ok, shardlake, shardlake_at, spawn_server};

/// `shardlake shard serve --id ID --hydrate` on a free port; its URL.
async fn shard(warehouse: &Path, id: u32) -> (Child, String) {
    let mut cmd = shardlake_at(warehouse);
    cmd.args([
        "shard",
        "serve",
        "--hydrate",
        "--listen",
        "127.0.0.1:0",
        "--id",
    ])
    .arg(id.to_string());
    let (child, _, url) = spawn_server(cmd).await;
    (child, url)
}

/// Stops `migration` with Ctrl-C (SIGINT); its output once it exited.
async fn interrupt(migration: Child) -> std::process::Output {
    let pid = migration.id().expect("pid").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    tokio::time::timeout(Duration::from_secs(30), migration.wait_with_output())
        .await
        .expect("it stops promptly")
        .expect("reaped")
}

fn status(warehouse: &Path) -> serde_json::Value {
    let out = run_ok(warehouse, &["migrate", "status", "--json"]);
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `--shard-url ID=URL` for each shard, ids in order.
fn shard_url_args(shards: &[(Child, String)]) -> Vec<String> {
    shards
        .iter()
        .enumerate()
        .flat_map(|(id, (_, url))| ["--shard-url".to_owned(), format!("{id}={url}")])
        .collect()
}

/// `migrate add-shard 3`, one event per apply request (a copy slow enough
/// to interrupt), with `extra` arguments.
fn spawn_add_shard(warehouse: &Path, urls: &[String], extra: &[&str]) -> Child {
    Command::from(shardlake_at(warehouse))
        .args(["migrate", "add-shard", "3", "--quiet", "--batch-size", "1"])
        .args(extra)
        .args(urls)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn migrate")
}

/// Waits until the migration copies, while `migration` runs; its id.
async fn copying(warehouse: &Path, migration: &mut Child) -> String {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = status(warehouse);
        if let Some(m) = s["migrations"].as_array().and_then(|m| m.first())
            && m["phase"] == "copying"
            && m["events_copied"].as_u64().unwrap_or(0) > 0
        {
            return m["id"].as_str().expect("id").to_owned();
        }
        assert!(
            migration.try_wait().expect("wait").is_none(),
            "still running"
        );
    }
}

/// A lake of 20,000 generated events from 3 shards in `dir`.
fn lake_of_three_shards(dir: &Path, seed: u64) -> std::path::PathBuf {
    let warehouse = dir.join("lake");
    ingest_three_shards(dir, &warehouse, seed);
    warehouse
}

/// Ingests 20,000 generated events from 3 shards into `warehouse`.
fn ingest_three_shards(dir: &Path, warehouse: &Path, seed: u64) {
    let events = generate(dir, 20_000, 3, 3, seed);
    run_ok(
        warehouse,
        &["ingest", events.to_str().expect("path"), "--quiet"],
    );
}

/// `migrate resume ID --json` with the endpoints, expecting success; its report.
fn resume(warehouse: &Path, id: &str, urls: &[String]) -> serde_json::Value {
    let mut args = vec!["migrate", "resume", id, "--json"];
    args.extend(urls.iter().map(String::as_str));
    let out = run_ok(warehouse, &args);
    serde_json::from_slice(&out.stdout).expect("report")
}

/// What shard `url` holds for `keys` (its digests).
async fn digests(url: &str, keys: &[String]) -> serde_json::Value {
    reqwest::Client::new()
        .post(format!("{url}/digests"))
        .json(keys)
        .send()
        .await
        .expect("digests")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_adds_a_shard_survives_sigkill_and_removes_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = lake_of_three_shards(dir.path(), 7);

    // No recorded topology: plan needs to be told, init records it.
    let out = shardlake()
        .arg("--warehouse")
        .arg(&warehouse)
        .args(["migrate", "plan", "--add-shard", "3"])
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no recorded topology"));
    run_ok(
        &warehouse,
        &["migrate", "init", "--shards", "3", "--strategy", "jump"],
    );
    let plan = run_ok(
        &warehouse,
        &["migrate", "plan", "--add-shard", "3", "--json"],
    );
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("plan");
    let moved: Vec<String> = plan["moves"]
        .as_array()
        .expect("moves")
        .iter()
        .map(|m| m["key"].as_str().expect("key").to_owned())
        .collect();
    assert!(moved.len() > 100, "{} keys move", moved.len());
    assert!(
        plan["moves"]
            .as_array()
            .expect("moves")
            .iter()
            .all(|m| m["to"] == 3)
    );

    let mut shards = Vec::new();
    for id in 0..4 {
        shards.push(shard(&warehouse, id).await);
    }
    let urls = shard_url_args(&shards);
    // A wrong endpoint (nothing listens there) is found before anything is
    // planned or claimed: no migration to roll back against a shard that
    // never existed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let mut wrong = urls.clone();
    let last = wrong.len() - 1;
    wrong[last] = format!("3=http://127.0.0.1:{closed}/shard");
    let out = shardlake()
        .arg("--warehouse")
        .arg(&warehouse)
        .args(["migrate", "add-shard", "3", "--quiet"])
        .args(&wrong)
        .output()
        .expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("shard 3 at http://127.0.0.1:") && stderr.contains("nothing was planned"),
        "{stderr}"
    );
    let before = status(&warehouse);
    assert_eq!(before["migrations"], serde_json::json!([]), "{before}");

    // One event per apply request keeps the copy slow enough to kill.
    let mut migration = spawn_add_shard(&warehouse, &urls, &["--lease-secs", "1"]);
    let id = copying(&warehouse, &mut migration).await;
    // SIGKILL: no cleanup of any kind.
    migration.start_kill().expect("kill");
    migration.wait().await.expect("reaped");
    let s = status(&warehouse);
    assert_eq!(s["migrations"][0]["status"], "running", "{s}");
    assert_eq!(s["topology"]["version"], 1);

    // Another migration is refused while this one is open.
    let out = shardlake()
        .arg("--warehouse")
        .arg(&warehouse)
        .args(["migrate", "remove-shard", "0"])
        .args(&urls)
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unfinished") && err.contains(&id), "{err}");

    // Resume completes it, once the dead run's lease has run out.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let report = resume(&warehouse, &id, &urls);
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(report["attempts"], 2);
    assert_eq!(report["keys_verified"].as_u64(), Some(moved.len() as u64));
    // The dead run's copies are found, not applied again, and no event is
    // counted by both attempts.
    let (copied, skipped) = (
        report["events_copied"].as_u64().expect("copied"),
        report["events_skipped"].as_u64().expect("skipped"),
    );
    assert_eq!(
        copied + skipped,
        report["plan"]["events_to_move"].as_u64().expect("to move"),
        "{report}"
    );
    assert_eq!(status(&warehouse)["topology"]["version"], 2);

    // The new shard holds exactly the moved keys; the old owners forgot them.
    let held = digests(&shards[3].1, &moved).await;
    assert_eq!(held.as_object().expect("map").len(), moved.len());
    for (_, url) in &shards[..3] {
        assert!(
            digests(url, &moved)
                .await
                .as_object()
                .expect("map")
                .is_empty()
        );
    }
    // Each moved key's event count on the new shard equals the lake's.
    let lake = query_json(
        &warehouse,
        &format!(
            "SELECT partition_key, count(*) FROM events WHERE partition_key IN ({}) GROUP BY partition_key",
            moved
                .iter()
                .map(|k| format!("'{k}'"))
                .collect::<Vec<_>>()
                .join(",")
        ),
    );
    for row in lake["rows"].as_array().expect("rows") {
        let key = row[0].as_str().expect("key");
        assert_eq!(held[key]["events"], row[1], "{key}");
    }

    // Removing shard 0 moves all its keys; the human report says so.
    let mut args = vec!["migrate", "remove-shard", "0"];
    args.extend(urls.iter().map(String::as_str));
    let out = run_ok(&warehouse, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("completed") && text.contains("v2 -> v3"),
        "{text}"
    );
    let s = status(&warehouse);
    assert_eq!(s["topology"]["shards"], serde_json::json!([1, 2, 3]), "{s}");
    assert_eq!(s["migrations"].as_array().expect("list").len(), 2);
}

/// Ctrl-C (SIGINT) stops a migration, releases its lease and says how to
/// go on: a resume right away (well inside the 30 s lease) completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_a_migration_releases_its_lease_and_says_how_to_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = lake_of_three_shards(dir.path(), 11);
    run_ok(
        &warehouse,
        &["migrate", "init", "--shards", "3", "--strategy", "jump"],
    );
    let mut shards = Vec::new();
    for id in 0..4 {
        shards.push(shard(&warehouse, id).await);
    }
    let urls = shard_url_args(&shards);
    let mut migration = spawn_add_shard(&warehouse, &urls, &[]);
    let id = copying(&warehouse, &mut migration).await;
    let out = interrupt(migration).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!("shardlake migrate resume {id} --shard-url 0=")),
        "{stderr}"
    );
    assert_eq!(status(&warehouse)["migrations"][0]["status"], "running");

    // No waiting for the lease: it was released.
    let report = resume(&warehouse, &id, &urls);
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(report["attempts"], 2);
}

/// Several servers on one lake: a migration started from host A (its
/// control state in the shared PostgreSQL catalog) and stopped there is
/// resumed from host B, which finds its claims, fence, copy progress and
/// lease where A left them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_stopped_on_one_host_is_resumed_from_another_through_postgres() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = crate::shared_lake::two_hosts(dir.path()).await;
    ingest_three_shards(dir.path(), &a, 17);
    run_ok(
        &a,
        &["migrate", "init", "--shards", "3", "--strategy", "jump"],
    );
    let mut shards = Vec::new();
    for id in 0..4 {
        // The shards hydrate from the lake through either host.
        let host = if id % 2 == 0 { &a } else { &b };
        shards.push(shard(host, id).await);
    }
    let urls = shard_url_args(&shards);
    let mut migration = spawn_add_shard(&a, &urls, &[]);
    let id = copying(&a, &mut migration).await;
    let out = interrupt(migration).await;
    assert_eq!(out.status.code(), Some(130));

    // B sees the migration A left running, and finishes it.
    let seen = status(&b);
    assert_eq!(seen["migrations"][0]["id"], id.as_str(), "{seen}");
    assert_eq!(seen["migrations"][0]["status"], "running", "{seen}");
    let report = resume(&b, &id, &urls);
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(report["attempts"], 2, "{report}");
    let after = status(&a);
    assert_eq!(after["migrations"][0]["status"], "completed", "{after}");
    assert_eq!(after["topology"]["version"], 2, "{after}");
    assert_eq!(
        after["topology"]["shards"],
        serde_json::json!([0, 1, 2, 3]),
        "{after}"
    );
    assert!(!a.join("catalog.db").exists() && !b.join("catalog.db").exists());
}
