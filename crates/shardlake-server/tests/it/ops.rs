//! Health, readiness, statistics, Prometheus metrics, request ids and
//! graceful shutdown.

use std::time::Duration;

use serde_json::{Value, json};
use shardlake_lake::Lake;

use crate::support::{ADMIN, TestServer, tokens};

#[tokio::test]
async fn health_stats_and_metrics_report_what_happened() {
    let server = TestServer::start(|c| c.tokens = tokens()).await;
    let health: Value = server
        .get("/healthz", None)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");
    let ready = server.get("/readyz", None).send().await.expect("request");
    assert_eq!(ready.status(), 200);

    server.ingest_fixture(Some(ADMIN)).await;
    server
        .query(Some(ADMIN), "SELECT count(*) FROM events")
        .await;
    server
        .query(Some(ADMIN), "SELECT count(*) FROM events")
        .await;

    let stats: Value = server
        .get("/v1/stats", Some(ADMIN))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["emitter"]["events_committed"], 3000, "{stats}");
    assert_eq!(stats["engine"]["cache"]["hits"], 1, "{stats}");
    assert_eq!(stats["engine"]["cache"]["misses"], 1, "{stats}");
    assert_eq!(stats["emitter_health"]["status"], "healthy");

    let response = server
        .get("/metrics", Some(ADMIN))
        .send()
        .await
        .expect("request");
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/openmetrics-text"))
    );
    let text = response.text().await.expect("text");
    for line in [
        "shardlake_emitter_events_committed_total 3000",
        "shardlake_cache_hits_total 1",
        "shardlake_query_rows_returned_total 2",
        "shardlake_http_requests_total{route=\"/v1/query\",method=\"POST\",status=\"200\"} 2",
        "shardlake_http_requests_total{route=\"/v1/events\",method=\"POST\",status=\"200\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    assert!(text.contains("shardlake_http_request_duration_seconds_bucket{"));
    assert!(text.trim_end().ends_with("# EOF"));
}

/// The maintained state of `things` shows in `/metrics` once a query
/// built it, and a query of one namespace keeps that namespace alone.
#[tokio::test]
async fn the_things_state_is_in_the_metrics() {
    let server = TestServer::start(|c| c.tokens = tokens()).await;
    server.ingest_fixture(Some(ADMIN)).await;
    let gauge = |text: &str, name: &str| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let metrics = || async { server.metrics(Some(ADMIN)).await };
    let before = metrics().await;
    assert_eq!(gauge(&before, "shardlake_things_state_namespaces"), 0);
    let answer = server
        .query(
            Some(ADMIN),
            "SELECT count(*) FROM things WHERE namespace = 'tenant-001'",
        )
        .await;
    assert_eq!(answer["stats"]["answered_from"], "state", "{answer}");
    let after = metrics().await;
    assert_eq!(gauge(&after, "shardlake_things_state_namespaces"), 1);
    assert!(gauge(&after, "shardlake_things_state_bytes") > 0, "{after}");
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_keeps_the_callers() {
    let server = TestServer::start(|_| {}).await;
    let response = server.get("/healthz", None).send().await.expect("request");
    let id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("a request id");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let response = server
        .get("/v1/nothing", None)
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
    assert_eq!(
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("trace-me-42")
    );
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_commits() {
    // Commits wait for a long flush interval, so the ingest below is still
    // waiting for its commit when shutdown starts.
    let server = TestServer::start(|c| {
        c.emitter.flush_interval = Duration::from_millis(60_000);
        c.emitter.max_batch_events = 1_000_000;
    })
    .await;
    let warehouse = server.warehouse.clone();
    let body = std::fs::read(crate::support::FIXTURE).expect("fixture");
    let in_flight = {
        let request = server
            .post("/v1/events", None)
            .header("content-type", "application/x-ndjson")
            .body(body);
        tokio::spawn(async move { request.send().await.expect("request") })
    };
    server
        .wait_for_stats(None, "the fixture to be queued", |s| {
            s["emitter"]["queued_events"].as_u64() > Some(0)
        })
        .await;
    assert!(
        !in_flight.is_finished(),
        "the commit should still be pending"
    );
    let addr = server.addr;
    let stopping = tokio::spawn(server.stop());
    // Closing the emitter commits the pending batch, which answers the request.
    let response = tokio::time::timeout(Duration::from_secs(30), in_flight)
        .await
        .expect("answered during shutdown")
        .expect("task");
    assert_eq!(response.status(), 200);
    let ack: Value = response.json().await.expect("json");
    assert_eq!(ack["accepted"], 3000);
    let (ended, _dir) = stopping.await.expect("task");
    ended.expect("serve returned Ok");
    // Nothing listens any more, and everything acknowledged is in the lake.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let lake = Lake::open_local(&warehouse).await.expect("reopen");
    let state = lake.commit_state().await.expect("state");
    assert_eq!(state.watermarks.len(), 6);
    // Positions start at 1: 3,000 events committed, the next is 3,001.
    assert_eq!(json!(state.next_position), json!(3001));
}
