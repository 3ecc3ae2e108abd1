//! `shardlake serve` as a process: config file, real socket, request logs,
//! and SIGTERM that commits what is pending and exits 0.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

use crate::query_json;

/// The one line `serve` prints when ready, the base URL in it, and the
/// rest of stdout (kept open: a closed pipe would fail the server's writes).
async fn wait_for_banner(
    child: &mut tokio::process::Child,
) -> (String, String, Lines<BufReader<ChildStdout>>) {
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let banner = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
        .await
        .expect("the server starts")
        .expect("read")
        .expect("a banner line");
    let base = banner
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("an address")
        .to_owned();
    (banner, base, stdout)
}

#[tokio::test]
async fn serve_answers_http_and_sigterm_commits_pending_events_then_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path().join("lake");
    let config = dir.path().join("shardlake.toml");
    // A long flush interval: only the shutdown can commit the request below.
    std::fs::write(
        &config,
        "[emitter]\nflush_interval_ms = 600000\n[limits]\nquery_timeout_ms = 5000\n",
    )
    .expect("config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shardlake"))
        .arg("--warehouse")
        .arg(&warehouse)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .env("SHARDLAKE_LOG_FORMAT", "json")
        // A test knob in the environment is not a setting: the server
        // starts (it used to refuse it as an unknown field).
        .env("SHARDLAKE_TEST_PYTHON", "/nowhere/bin/python")
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn serve");
    let (banner, base, _stdout) = wait_for_banner(&mut child).await;
    assert!(banner.contains("authentication is OFF"), "{banner}");

    let client = reqwest::Client::new();
    let events = json!([
        {"namespace": "acme", "shard_id": 1, "seq": 1, "partition_key": "k", "event_type": "a", "ts": "2026-01-01T00:00:00Z"},
        {"namespace": "acme", "shard_id": 1, "seq": 2, "partition_key": "k", "event_type": "b", "ts": "2026-01-01T00:00:01Z"},
    ]);
    let pending = {
        let request = client.post(format!("{base}/v1/events")).json(&events);
        tokio::spawn(async move { request.send().await.expect("request") })
    };
    // Wait until the events are queued (a state, not a time): only then
    // does the signal test draining rather than a refused connection.
    shardlake_testkit::wait_for_stats(
        || client.get(format!("{base}/v1/stats")),
        "the events to be queued",
        |s| s["emitter"]["queued_events"] == 2,
    )
    .await;
    assert!(
        !pending.is_finished(),
        "the commit waits for the flush interval"
    );

    let pid = child.id().expect("pid").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let response = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("answered during shutdown")
        .expect("task");
    assert_eq!(response.status(), 200);
    let ack: Value = response.json().await.expect("json");
    assert_eq!(ack["accepted"], 2);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(status.code(), Some(0));

    // Structured request logs: request id, caller, status, duration.
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .await
        .expect("stderr");
    let logged: Value = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "request answered" && l["span"]["path"] == "/v1/events")
        .unwrap_or_else(|| panic!("no JSON request log in:\n{stderr}"));
    let span = &logged["span"];
    assert_eq!(
        span["request_id"].as_str().map(str::len),
        Some(36),
        "{logged}"
    );
    assert_eq!(span["caller"], "anonymous", "{logged}");
    assert_eq!(span["accepted"], 2, "{logged}");
    assert_eq!(logged["fields"]["status"], 200, "{logged}");
    assert!(
        logged["fields"]["duration_ms"].as_f64().is_some(),
        "{logged}"
    );

    let doc = query_json(&warehouse, "SELECT count(*) FROM events");
    assert_eq!(doc["rows"][0][0], 2);
}

/// The container's configuration (`docker/shardlake.toml`) with the
/// variables `docker/compose.yml` sets, the S3 server standing in for
/// MinIO: tokens from the environment are enforced, events land in the
/// bucket, queries read them back.
#[tokio::test]
async fn the_docker_configuration_serves_from_s3_with_tokens_from_the_environment() {
    let bucket = shardlake_testkit::moto().bucket().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docker/shardlake.toml");
    let token = "docker-admin-token-0123456789";
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shardlake"))
        // As in compose.yml, except the loopback port and a temp volume.
        .env("SHARDLAKE_CONFIG", config)
        .env("SHARDLAKE_WAREHOUSE", dir.path())
        .env(
            "SHARDLAKE_STORAGE__LOCATION",
            format!("s3://{}/lake", bucket.name()),
        )
        .env("SHARDLAKE_STORAGE__ENDPOINT", bucket.endpoint())
        .env("AWS_ACCESS_KEY_ID", shardlake_testkit::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", shardlake_testkit::SECRET_ACCESS_KEY)
        .env("AWS_REGION", "us-east-1")
        .env(
            "SHARDLAKE_TOKENS",
            format!(
                r#"[{{name="admin", token="{token}", namespaces=["*"], permissions=["query","ingest","admin"]}}]"#
            ),
        )
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn serve");
    let (banner, base, _stdout) = wait_for_banner(&mut child).await;
    assert!(banner.contains("bearer tokens required"), "{banner}");
    let client = reqwest::Client::new();
    let events = json!([
        {"namespace": "acme", "shard_id": 1, "seq": 1, "partition_key": "k", "event_type": "a", "ts": "2026-01-01T00:00:00Z"},
        {"namespace": "beta", "shard_id": 2, "seq": 1, "partition_key": "j", "event_type": "b", "ts": "2026-01-01T00:00:01Z"},
    ]);
    let anonymous = client
        .post(format!("{base}/v1/events"))
        .json(&events)
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status(), 401);
    let ack = client
        .post(format!("{base}/v1/events"))
        .bearer_auth(token)
        .json(&events)
        .send()
        .await
        .expect("request");
    assert_eq!(ack.status(), 200);
    let answer: Value = client
        .post(format!("{base}/v1/query"))
        .bearer_auth(token)
        .json(&json!({"sql": "SELECT count(*) AS n FROM events"}))
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["rows"][0][0], 2, "{answer}");
    let keys = bucket.keys("lake/").await;
    assert!(keys.iter().any(|k| k.ends_with(".parquet")), "{keys:?}");
    assert!(!dir.path().join("warehouse").exists());
    child.start_kill().expect("kill");
}

/// `[query] freshness_ms`: a server pins the snapshot it last looked up
/// until that look is older than the bound; another process's commit is in
/// every answer once the bound has passed since it landed.
#[tokio::test]
async fn another_writers_commit_is_seen_within_the_freshness_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path().join("lake");
    let events = |seq0: i64| {
        (0..50)
            .map(|i| {
                json!({"namespace": "acme", "shard_id": 7, "seq": seq0 + i, "partition_key": "k",
                    "event_type": "a", "ts": "2026-01-01T00:00:00Z"})
                .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let file = dir.path().join("first.ndjson");
    std::fs::write(&file, events(1)).expect("events");
    crate::run_ok(&warehouse, &["ingest", file.to_str().expect("utf-8 path")]);

    const FRESHNESS_MS: u64 = 1_500;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shardlake"))
        .arg("--warehouse")
        .arg(&warehouse)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("SHARDLAKE_QUERY__FRESHNESS_MS", FRESHNESS_MS.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn serve");
    let (_, base, _stdout) = wait_for_banner(&mut child).await;
    let client = reqwest::Client::new();
    let count = || async {
        let answer: Value = client
            .post(format!("{base}/v1/query"))
            .json(&json!({"sql": "SELECT count(*) FROM events", "cache": false}))
            .send()
            .await
            .expect("query")
            .json()
            .await
            .expect("json");
        answer["rows"][0][0].as_i64().expect("a count")
    };
    assert_eq!(count().await, 50);

    // A second writer process commits 50 more.
    let file = dir.path().join("second.ndjson");
    std::fs::write(&file, events(51)).expect("events");
    crate::run_ok(&warehouse, &["ingest", file.to_str().expect("utf-8 path")]);
    let landed = std::time::Instant::now();
    // Within the bound either answer is allowed; right after it, only the
    // new one.
    let early = count().await;
    assert!(early == 50 || early == 100, "{early}");
    tokio::time::sleep(Duration::from_millis(FRESHNESS_MS).saturating_sub(landed.elapsed())).await;
    for _ in 0..3 {
        assert_eq!(count().await, 100, "the bound has passed since the commit");
    }

    // The server's own commits are in the next answer at once.
    let own = json!([{"namespace": "acme", "shard_id": 8, "seq": 1, "partition_key": "k",
        "event_type": "a", "ts": "2026-01-01T00:00:00Z"}]);
    let ack = client
        .post(format!("{base}/v1/events"))
        .json(&own)
        .send()
        .await
        .expect("ingest");
    assert_eq!(ack.status(), 200);
    assert_eq!(count().await, 101);
}
