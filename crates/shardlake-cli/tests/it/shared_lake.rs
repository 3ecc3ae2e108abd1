//! Several servers on one lake: the catalog and the control state in
//! PostgreSQL (the test kit's server, a database per test), the table files
//! on S3 (moto), and each `shardlake` process with a data directory of its
//! own, as it would have on its own host. Two `serve` processes ingest the
//! same shards at once and every event lands once; either answers queries.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use shardlake_testkit::{moto, postgres};

use crate::{assert_exactly_n, generate, put_on_s3, shardlake_at, spawn_server, use_catalog};

/// Two "hosts" (data directories) sharing one lake: a fresh PostgreSQL
/// database as its catalog and a fresh bucket for its files.
pub(crate) async fn two_hosts(dir: &Path) -> (PathBuf, PathBuf) {
    let url = postgres().database().await;
    let bucket = moto().bucket().await;
    let hosts = (dir.join("host-a"), dir.join("host-b"));
    for host in [&hosts.0, &hosts.1] {
        put_on_s3(host, &bucket, "lake");
        use_catalog(host, &url);
    }
    hosts
}

/// `shardlake serve` on a free port of `host`; the process and its URL.
async fn serve(host: &Path) -> (tokio::process::Child, String) {
    let mut cmd = shardlake_at(host);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    let (child, _, url) = spawn_server(cmd).await;
    (child, url)
}

/// Posts `events` to `base` in batches of `batch`, in order; (accepted,
/// duplicates) summed over the acks.
async fn post_all(base: String, events: Vec<Value>, batch: usize) -> (u64, u64) {
    let client = reqwest::Client::new();
    let (mut accepted, mut duplicates) = (0, 0);
    for chunk in events.chunks(batch) {
        let response = client
            .post(format!("{base}/v1/events"))
            .json(&chunk)
            .send()
            .await
            .expect("ingest");
        assert_eq!(
            response.status(),
            200,
            "{}",
            response.text().await.unwrap_or_default()
        );
        let ack: Value = response.json().await.expect("ack");
        accepted += ack["accepted"].as_u64().expect("accepted");
        duplicates += ack["duplicates"].as_u64().expect("duplicates");
    }
    (accepted, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_catalog_ingest_overlapping_shards_exactly_once() {
    const EVENTS: u64 = 20_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = two_hosts(dir.path()).await;
    let file = generate(dir.path(), EVENTS, 8, 4, 21);
    let events: Vec<Value> = std::fs::read_to_string(&file)
        .expect("events")
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect();
    // Both servers start on an empty catalog at once: one creates the lake.
    let ((_server_a, url_a), (_server_b, url_b)) = tokio::join!(serve(&a), serve(&b));
    assert!(!a.join("catalog.db").exists() && !b.join("catalog.db").exists());

    // Shards 0-5 to A, 2-7 to B: shards 2-5 reach both, each in order, as a
    // shard that re-sends to another server after losing its ack would.
    let shards = |lo: i64, hi: i64| -> Vec<Value> {
        events
            .iter()
            .filter(|e| (lo..=hi).contains(&e["shard_id"].as_i64().expect("shard")))
            .cloned()
            .collect()
    };
    let (for_a, for_b) = (shards(0, 5), shards(2, 7));
    let overlap = (for_a.len() + for_b.len()) as u64 - EVENTS;
    let (ra, rb) = tokio::join!(
        tokio::spawn(post_all(url_a.clone(), for_a, 500)),
        tokio::spawn(post_all(url_b.clone(), for_b, 450)),
    );
    let ((acc_a, dup_a), (acc_b, dup_b)) = (ra.expect("a"), rb.expect("b"));
    assert_eq!(acc_a + acc_b, EVENTS, "each event accepted by one server");
    assert_eq!(dup_a + dup_b, overlap, "the other copy is a duplicate");
    assert!(acc_a > 0 && acc_b > 0);

    // Exactly once, positions 1..=n, read by a third process on host A.
    assert_exactly_n(&a, EVENTS);
    // Any server answers queries over everything both committed.
    let client = reqwest::Client::new();
    for base in [&url_a, &url_b] {
        shardlake_testkit::wait_for_stats(
            || {
                client
                    .post(format!("{base}/v1/query"))
                    .json(&json!({"sql": "SELECT count(*) AS n, count(DISTINCT shard_id) AS s FROM events"}))
            },
            "every event to be visible",
            |answer| answer["rows"][0] == json!([EVENTS, 8]),
        )
        .await;
    }
}
