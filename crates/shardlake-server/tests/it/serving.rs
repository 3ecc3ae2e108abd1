//! The serving path: ETags and 304, `GET /v1/query`, and timeouts that
//! answer while the work they stop cannot be interrupted.

use std::time::Duration;

use reqwest::Response;
use serde_json::{Value, json};

use crate::support::{ACME, ADMIN, TestServer, tokens};

const BY_NAMESPACE: &str = "SELECT namespace, count(*) AS n FROM events GROUP BY 1 ORDER BY 1";

fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// `POST /v1/query` with `body`, sending `If-None-Match: etag` if given.
async fn post_query(
    server: &TestServer,
    token: Option<&str>,
    body: Value,
    etag: Option<&str>,
) -> Response {
    let mut request = server.post("/v1/query", token).json(&body);
    if let Some(etag) = etag {
        request = request.header("if-none-match", etag);
    }
    request.send().await.expect("request")
}

#[tokio::test]
async fn an_etag_gets_304_with_or_without_the_cache_until_a_commit() {
    let server = TestServer::start(|_| {}).await;
    server.ingest_fixture(None).await;

    let first = post_query(&server, None, json!({"sql": BY_NAMESPACE}), None).await;
    assert_eq!(first.status(), 200);
    let etag = header(&first, "etag");
    assert!(
        etag.starts_with("W/\"") && etag.ends_with(".json\""),
        "{etag}"
    );
    // An answer of the current snapshot: reuse only after revalidating.
    assert_eq!(header(&first, "cache-control"), "public, no-cache");
    let rows = first.json::<Value>().await.expect("json")["rows"].clone();

    // The same query (written differently) with the tag: 304, no body.
    let again = post_query(
        &server,
        None,
        json!({"sql": "select NAMESPACE, COUNT(*) as n from events group by 1 order by 1"}),
        Some(&etag),
    )
    .await;
    assert_eq!(again.status(), 304);
    assert_eq!(header(&again, "etag"), etag);
    assert!(again.bytes().await.expect("body").is_empty());
    // Also with the cache off: the tag comes from the query and snapshot,
    // not from a cache entry.
    let uncached = post_query(
        &server,
        None,
        json!({"sql": BY_NAMESPACE, "cache": false}),
        Some(&etag),
    )
    .await;
    assert_eq!(uncached.status(), 304);
    // A list of tags, one of them ours, and `*` match too.
    for tags in [format!("\"other\", {etag}"), "*".to_owned()] {
        let listed = post_query(&server, None, json!({"sql": BY_NAMESPACE}), Some(&tags)).await;
        assert_eq!(listed.status(), 304, "{tags}");
    }
    // Another format is another answer.
    let csv = post_query(
        &server,
        None,
        json!({"sql": BY_NAMESPACE, "format": "csv"}),
        Some(&etag),
    )
    .await;
    assert_eq!(csv.status(), 200);
    assert!(header(&csv, "etag").ends_with(".csv\""));

    // GET names the same answer with the same tag.
    let url = format!(
        "/v1/query?sql={}",
        url::form_urlencoded::byte_serialize(BY_NAMESPACE.as_bytes()).collect::<String>()
    );
    let got = server.get(&url, None).send().await.expect("get");
    assert_eq!(got.status(), 200);
    assert_eq!(header(&got, "etag"), etag);
    assert_eq!(got.json::<Value>().await.expect("json")["rows"], rows);
    let revalidated = server
        .get(&url, None)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(revalidated.status(), 304);

    // A commit is a new snapshot: the old tag no longer matches.
    let event = json!({"namespace": "tenant-009", "shard_id": 99, "seq": 1,
        "partition_key": "Order:o-1", "event_type": "thing.created",
        "ts": "2026-01-01T00:00:00Z", "payload": {}});
    let ack = server
        .post("/v1/events", None)
        .json(&json!([event]))
        .send()
        .await
        .expect("ingest");
    assert_eq!(ack.status(), 200);
    let changed = post_query(&server, None, json!({"sql": BY_NAMESPACE}), Some(&etag)).await;
    assert_eq!(changed.status(), 200);
    let new_tag = header(&changed, "etag");
    assert_ne!(new_tag, etag);
    let body: Value = changed.json().await.expect("json");
    assert_eq!(body["rows"].as_array().map(Vec::len), Some(5));

    // A time-travel answer never changes: caches may keep it.
    let snapshot = body["stats"]["snapshot_ids"][0].clone();
    let pinned = post_query(
        &server,
        None,
        json!({"sql": BY_NAMESPACE, "snapshot_id": snapshot}),
        None,
    )
    .await;
    assert_eq!(pinned.status(), 200);
    assert_eq!(
        header(&pinned, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    let metrics = server.metrics(None).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("shardlake_query_not_modified_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_scope_never_matches_another_scopes_etag() {
    let server = TestServer::start(|c| c.tokens = tokens()).await;
    server.ingest_fixture(Some(ADMIN)).await;
    let all = post_query(&server, Some(ADMIN), json!({"sql": BY_NAMESPACE}), None).await;
    assert_eq!(all.status(), 200);
    let etag = header(&all, "etag");
    // With tokens, answers are the caller's own.
    assert_eq!(header(&all, "cache-control"), "private, no-cache");
    assert!(header(&all, "vary").contains("authorization"));

    // The same SQL and snapshot from a caller limited to tenant-001: its
    // answer differs, and so does its tag.
    let scoped = post_query(
        &server,
        Some(ACME),
        json!({"sql": BY_NAMESPACE}),
        Some(&etag),
    )
    .await;
    assert_eq!(scoped.status(), 200);
    assert_ne!(header(&scoped, "etag"), etag);
    let body: Value = scoped.json().await.expect("json");
    assert_eq!(body["rows"].as_array().map(Vec::len), Some(1));
    // Its own tag matches its own answer.
    let own = post_query(&server, Some(ACME), json!({"sql": BY_NAMESPACE}), None).await;
    let own_tag = header(&own, "etag");
    let revalidated = post_query(
        &server,
        Some(ACME),
        json!({"sql": BY_NAMESPACE}),
        Some(&own_tag),
    )
    .await;
    assert_eq!(revalidated.status(), 304);
}

/// Constant folding of a huge `repeat` never yields: the planner holds its
/// thread for seconds (a second or more).
const STUCK_IN_PLANNING: &str = "SELECT length(repeat('x', 700000000)) AS n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_stuck_in_planning_times_out_while_the_server_keeps_answering() {
    let server = TestServer::start(|_| {}).await;
    server.ingest_fixture(None).await;
    let cached = post_query(&server, None, json!({"sql": BY_NAMESPACE}), None).await;
    assert_eq!(cached.status(), 200);

    let stuck = tokio::time::timeout(
        // A hang guard, not a measurement.
        Duration::from_secs(60),
        post_query(
            &server,
            None,
            json!({"sql": STUCK_IN_PLANNING, "timeout_ms": 200}),
            None,
        ),
    )
    .await
    .expect("the timeout answers");
    assert_eq!(stuck.status(), 504);
    assert_eq!(
        stuck.json::<Value>().await.expect("json")["error"],
        "query_timeout"
    );
    // The work it stopped cannot be interrupted: it still holds its query
    // slot (slots bound the work running, not the requests waiting)...
    let running = server.get_json("/v1/stats", None).await;
    assert_eq!(
        running["server"]["queries_running"], 1,
        "the 504 came before the planner let go: {running}"
    );
    // ...while health checks and cached answers keep coming.
    let health = server.get("/healthz", None).send().await.expect("healthz");
    assert_eq!(health.status(), 200);
    let hit = post_query(&server, None, json!({"sql": BY_NAMESPACE}), None).await;
    assert_eq!(hit.status(), 200);
    assert_eq!(
        hit.json::<Value>().await.expect("json")["stats"]["cache_hit"],
        true
    );
    // The slot is given back once the planner finishes.
    server
        .wait_for_stats(None, "the stuck work to end", |s| {
            s["server"]["queries_running"] == 0
        })
        .await;
}
