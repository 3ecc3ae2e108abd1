//! The lake lifecycle over HTTP: `/v1/snapshots`, time travel on
//! `/v1/query` and `/v1/replay` (410 once a snapshot expired), replay
//! cursors leased against expiry, and background maintenance reported in
//! `/v1/stats` and `/metrics`.

use serde_json::{Value, json};

use crate::support::{ACME, ADMIN, TestServer, assert_error, tokens};

fn event(ns: &str, shard: i32, seq: i64) -> Value {
    json!({"namespace": ns, "shard_id": shard, "seq": seq,
        "partition_key": format!("Order:o-{seq}"), "event_type": "thing.created",
        "ts": "2026-01-01T00:00:00Z"})
}

/// Three commits of two events: the snapshot ids, oldest first.
async fn three_commits(server: &TestServer) -> Vec<i64> {
    let mut ids = Vec::new();
    for seq in 1..=3 {
        let body = json!([event("tenant-001", 1, seq), event("tenant-002", 2, seq)]);
        let ack: Value = server
            .post_json("/v1/events", Some(ADMIN), &body)
            .await
            .json()
            .await
            .expect("ack");
        ids.push(id_of(&ack["snapshot_id"]));
    }
    ids
}

/// A snapshot id as JSON answers carry it: a string (ids pass 2^53).
fn id_of(value: &Value) -> i64 {
    value
        .as_str()
        .unwrap_or_else(|| panic!("a string id, got {value}"))
        .parse()
        .expect("an id")
}

fn count(answer: &Value) -> i64 {
    answer["rows"][0][0].as_i64().expect("a count")
}

#[tokio::test]
async fn snapshots_are_listed_and_reached_by_id_or_time_until_they_expire() {
    let server = TestServer::start(|c| {
        c.tokens = tokens();
        c.maintenance.enabled = false;
    })
    .await;
    let ids = three_commits(&server).await;
    let listed = server.get_json("/v1/snapshots", Some(ADMIN)).await;
    let snapshots = listed["snapshots"].as_array().expect("snapshots");
    let listed_ids: Vec<i64> = snapshots.iter().map(|s| id_of(&s["snapshot_id"])).collect();
    assert_eq!(listed_ids, ids);
    assert_eq!(snapshots[2]["current"], true);
    assert_eq!(snapshots[1]["total_rows"], 4);
    assert_eq!(listed["retention"]["snapshot_retention_secs"], 3600);
    // Table-wide totals are not a scoped caller's business.
    let scoped = server.get_json("/v1/snapshots", Some(ACME)).await;
    assert_eq!(scoped["snapshots"][1]["total_rows"], Value::Null);
    assert_eq!(scoped["snapshots"][1]["snapshot_id"], ids[1].to_string());

    let sql = "SELECT count(*) FROM events";
    let at = |snapshot: Value| json!({"sql": sql, "snapshot_id": snapshot});
    for (i, id) in ids.iter().enumerate() {
        let answer: Value = server
            .query_raw(Some(ADMIN), at(json!(id)))
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(count(&answer), 2 * (i as i64 + 1), "{answer}");
        assert_eq!(answer["stats"]["snapshot_ids"], json!([id.to_string()]));
    }
    // Ids beyond 2^53 survive as strings.
    let answer: Value = server
        .query_raw(Some(ADMIN), at(json!(ids[0].to_string())))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(count(&answer), 2);
    let committed_at = snapshots[1]["committed_at"].as_str().expect("time");
    let answer: Value = server
        .query_raw(Some(ADMIN), json!({"sql": sql, "as_of": committed_at}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        answer["stats"]["snapshot_ids"],
        json!([ids[1].to_string()]),
        "{answer}"
    );
    assert_eq!(count(&answer), 4);

    for bad in [
        json!({"sql": sql, "snapshot_id": ids[0], "as_of": committed_at}),
        json!({"sql": sql, "as_of": "yesterday"}),
        json!({"sql": sql, "snapshot_id": "12x"}),
    ] {
        assert_error(
            server.query_raw(Some(ADMIN), bad).await,
            400,
            "invalid_request",
        )
        .await;
    }
    assert_error(
        server
            .query_raw(
                Some(ADMIN),
                json!({"sql": sql, "as_of": "2000-01-01T00:00:00Z"}),
            )
            .await,
        410,
        "snapshot_expired",
    )
    .await;
    assert_error(
        server.query_raw(Some(ADMIN), at(json!(42))).await,
        410,
        "snapshot_expired",
    )
    .await;
    let replay = |q: &str| server.get(&format!("/v1/replay?{q}"), Some(ADMIN)).send();
    assert_error(
        replay("snapshot_id=42").await.expect("request"),
        410,
        "snapshot_expired",
    )
    .await;
    let body = replay(&format!("namespace=tenant-001&as_of={committed_at}"))
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert_eq!(
        body.lines().count(),
        2,
        "the snapshot's two tenant-001 events"
    );
}

#[tokio::test]
async fn a_replay_cursor_is_leased_and_background_maintenance_expires_the_rest() {
    let server = TestServer::start(|c| {
        c.tokens = tokens();
        c.maintenance.interval_secs = 1;
        c.maintenance.lake.retention.retention = std::time::Duration::ZERO;
        c.maintenance.lake.retention.min_snapshots_to_keep = 1;
        c.maintenance.lake.orphan_grace = std::time::Duration::ZERO;
        c.compaction.lake.min_small_files = 2;
    })
    .await;
    let ids = three_commits(&server).await;
    // A replay at the first snapshot hands it out as a cursor: leased.
    let response = server
        .get(&format!("/v1/replay?snapshot_id={}", ids[0]), Some(ADMIN))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-shardlake-snapshot"]
            .to_str()
            .expect("header"),
        ids[0].to_string()
    );
    let _ = response.text().await.expect("body");

    // Wait for a maintenance run that found something to remove.
    let stats = server
        .wait_for_stats(Some(ADMIN), "a maintenance run that removed files", |s| {
            s["maintenance"]["status"]["last_run"]["cleanup"]["files_deleted"]
                .as_u64()
                .is_some_and(|n| n > 0)
        })
        .await;
    let last = &stats["maintenance"]["status"]["last_run"];
    assert!(
        last["expiry"]["snapshots_expired"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{last}"
    );
    assert!(
        stats["maintenance"]["status"]["runs"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    );
    let listed = server.get_json("/v1/snapshots", Some(ADMIN)).await;
    let kept: Vec<(i64, Value)> = listed["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| (id_of(&s["snapshot_id"]), s["pinned_by"].clone()))
        .collect();
    assert!(
        kept.contains(&(ids[0], json!(["replay-cursor"]))),
        "the leased cursor survives: {listed}"
    );
    assert!(
        !kept.iter().any(|(id, _)| *id == ids[1]),
        "the rest expired: {listed}"
    );
    // The cursor still resumes, and every row is still there.
    let response = server
        .get(
            &format!("/v1/replay?snapshot_id={}&after_position=1", ids[0]),
            Some(ADMIN),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body").lines().count(), 1);
    assert_eq!(
        count(
            &server
                .query(Some(ADMIN), "SELECT count(*) FROM events")
                .await
        ),
        6
    );

    let metrics = server.metrics(Some(ADMIN)).await;
    for name in [
        "shardlake_maintenance_runs_total ",
        "shardlake_maintenance_files_removed_total ",
        "shardlake_maintenance_snapshots_expired_total ",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(name) && !l.ends_with(" 0")),
            "{name}: {metrics}"
        );
    }
    assert!(metrics.contains("shardlake_maintenance_last_duration_seconds"));
}

/// `GET /v1/files`: the live files of a snapshot in the caller's scope,
/// with string ids, and a JSON error for what it cannot answer.
#[tokio::test]
async fn files_lists_the_live_files_of_a_snapshot_within_the_scope() {
    let server = TestServer::start(|c| {
        c.tokens = tokens();
        c.maintenance.enabled = false;
    })
    .await;
    let ids = three_commits(&server).await;
    let all = server.get_json("/v1/files", Some(ADMIN)).await;
    assert_eq!(id_of(&all["snapshot_id"]), ids[2]);
    let files = all["files"].as_array().expect("files");
    let rows: u64 = files
        .iter()
        .map(|f| f["rows"].as_u64().expect("rows"))
        .sum();
    assert_eq!(rows, 6, "{all}");
    for file in files {
        assert!(
            file["location"]
                .as_str()
                .is_some_and(|l| l.ends_with(".parquet"))
        );
        assert!(file["bytes"].as_u64().is_some_and(|b| b > 0));
    }
    // An older snapshot has fewer files.
    let first = server
        .get_json(&format!("/v1/files?snapshot_id={}", ids[0]), Some(ADMIN))
        .await;
    assert_eq!(id_of(&first["snapshot_id"]), ids[0]);
    assert!(first["files"].as_array().expect("files").len() < files.len());
    // A scoped token sees its namespaces only, and may not ask for others.
    let scoped = server.get_json("/v1/files", Some(ACME)).await;
    let namespaces: std::collections::BTreeSet<&str> = scoped["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["namespace"].as_str().expect("namespace"))
        .collect();
    assert!(namespaces.iter().all(|n| *n == "tenant-001"), "{scoped}");
    let r = server
        .get("/v1/files?namespace=tenant-002", Some(ACME))
        .send()
        .await
        .expect("request");
    assert_error(r, 403, "forbidden").await;
    let r = server
        .get("/v1/files?snapshot_id=soon", Some(ADMIN))
        .send()
        .await
        .expect("request");
    assert_error(r, 400, "invalid_request").await;
}
