//! `POST /v1/query`: every format, the cache, and every error code.

use std::io::Cursor;

use arrow::ipc::reader::StreamReader;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::support::{FIXTURE_COUNTS, TestServer, assert_error};

const BY_NAMESPACE: &str =
    "SELECT namespace, count(*) AS n FROM events GROUP BY namespace ORDER BY namespace";

fn expected_by_namespace() -> Vec<Value> {
    FIXTURE_COUNTS
        .iter()
        .map(|(ns, n)| json!([ns, n]))
        .collect()
}

#[tokio::test]
async fn json_answers_carry_columns_rows_and_honest_stats_and_use_the_cache() {
    json_answers(TestServer::start(|_| {}).await, "iceberg").await;
}

/// The same over a plain-Parquet lake (`format = "parquet"`).
#[tokio::test]
async fn parquet_json_answers_carry_columns_rows_and_honest_stats_and_use_the_cache() {
    let server = TestServer::start(|c| c.format = Some(shardlake_lake::TableFormat::Parquet)).await;
    assert!(server.warehouse.join("control.db").exists());
    assert!(!server.warehouse.join("catalog.db").exists());
    json_answers(server, "parquet").await;
}

async fn json_answers(server: TestServer, format: &str) {
    server.ingest_fixture(None).await;
    let tables: Value = server.get_json("/v1/tables", None).await;
    assert_eq!(tables["tables"][0]["kind"], format, "{tables}");

    let first = server.query(None, BY_NAMESPACE).await;
    assert_eq!(
        first["columns"],
        json!([{"name": "namespace", "type": "Utf8"}, {"name": "n", "type": "Int64"}])
    );
    assert_eq!(
        first["rows"].as_array().expect("rows"),
        &expected_by_namespace()
    );
    let stats = &first["stats"];
    assert_eq!(stats["cache_hit"], false);
    assert_eq!(stats["partitions_total"], 4);
    assert_eq!(stats["rows_returned"], 4);
    assert!(stats["files_total"].as_u64() > Some(0), "{stats}");
    assert_eq!(stats["snapshot_ids"].as_array().map(Vec::len), Some(1));

    // The same query, written differently, comes from the cache...
    let again = server
        .query(
            None,
            "select NAMESPACE, COUNT(*) as n from EVENTS group by namespace order by namespace",
        )
        .await;
    assert_eq!(again["rows"], first["rows"]);
    assert_eq!(again["stats"]["cache_hit"], true);
    assert_eq!(again["stats"]["bytes_scanned"], 0);
    // ...unless the caller says not to.
    let fresh = server
        .query_raw(None, json!({"sql": BY_NAMESPACE, "cache": false}))
        .await;
    let fresh: Value = fresh.json().await.expect("json");
    assert_eq!(fresh["stats"]["cache_hit"], false);

    // A commit makes the next identical query miss.
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
    let after = server.query(None, BY_NAMESPACE).await;
    assert_eq!(after["stats"]["cache_hit"], false);
    assert_eq!(after["rows"].as_array().map(Vec::len), Some(5));
}

/// Reads a streamed response whole, with its trailers (asked for with `TE: trailers`).
async fn streamed(
    server: &TestServer,
    body: Value,
    accept: Option<&str>,
) -> (u16, String, Vec<u8>, Option<Value>) {
    let mut request = server
        .post("/v1/query", None)
        .header("te", "trailers")
        .json(&body);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let http: http::Response<reqwest::Body> = response.into();
    let collected = http.into_body().collect().await.expect("body");
    let stats = collected
        .trailers()
        .and_then(|t| t.get("x-shardlake-stats"))
        .map(|v| serde_json::from_slice(v.as_bytes()).expect("stats trailer is JSON"));
    (status, content_type, collected.to_bytes().to_vec(), stats)
}

#[tokio::test]
async fn ndjson_csv_and_arrow_stream_rows_then_stats() {
    let server = TestServer::start(|_| {}).await;
    server.ingest_fixture(None).await;
    let sql = "SELECT namespace, shard_id, seq FROM events ORDER BY position";

    // NDJSON: one object per row, then the stats line; stats in the trailer too.
    let (status, content_type, body, trailer) =
        streamed(&server, json!({"sql": sql, "format": "ndjson"}), None).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/x-ndjson")
    );
    let lines: Vec<Value> = String::from_utf8(body)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 3001);
    assert_eq!(lines[0]["namespace"], "tenant-000");
    assert_eq!(lines[0]["seq"], 1);
    let last = &lines[3000]["stats"];
    assert_eq!(last["rows_returned"], 3000);
    assert_eq!(last["files_scanned"], last["files_total"]);
    assert_eq!(last["shards_queried"], 6);
    assert_eq!(last["partitions_scanned"], 4);
    assert_eq!(trailer.as_ref(), Some(last));

    // CSV: a header and one line per row; format chosen by `Accept`.
    let (status, content_type, body, trailer) =
        streamed(&server, json!({"sql": sql}), Some("text/csv")).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let text = String::from_utf8(body).expect("utf8");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("namespace,shard_id,seq"));
    assert_eq!(lines.count(), 3000);
    assert_eq!(trailer.expect("stats trailer")["rows_returned"], 3000);

    // Arrow IPC: a stream any Arrow reader decodes.
    let (status, content_type, body, trailer) =
        streamed(&server, json!({"sql": sql, "format": "arrow"}), None).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/vnd.apache.arrow.stream")
    );
    let reader = StreamReader::try_new(Cursor::new(body), None).expect("arrow stream");
    assert_eq!(reader.schema().field(1).name(), "shard_id");
    let rows: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
    assert_eq!(rows, 3000);
    assert_eq!(trailer.expect("stats trailer")["rows_returned"], 3000);

    // An empty CSV result still has its header.
    let (_, _, body, _) = streamed(
        &server,
        json!({"sql": "SELECT namespace FROM events WHERE seq < 0", "format": "csv"}),
        None,
    )
    .await;
    assert_eq!(String::from_utf8(body).expect("utf8"), "namespace\n");
}

#[tokio::test]
async fn a_request_may_lower_the_row_limit_but_not_raise_it() {
    let server = TestServer::start(|c| c.limits.max_rows = 2000).await;
    server.ingest_fixture(None).await;
    let sql = "SELECT namespace, seq FROM events WHERE namespace = 'tenant-001'";
    // 724 rows: within the server's limit, so it runs and is cached.
    let full = server.query(None, sql).await;
    assert_eq!(full["rows"].as_array().map(Vec::len), Some(724));
    // The same query asking for at most 100 rows is refused, also when the
    // answer is in the cache; as a stream, it ends with the error.
    for body in [
        json!({"sql": sql, "max_rows": 100}),
        json!({"sql": sql, "max_rows": 100, "cache": false}),
    ] {
        assert_error(server.query_raw(None, body).await, 400, "result_too_large").await;
    }
    let r = server
        .get("/v1/query?sql=SELECT%20*%20FROM%20events&max_rows=10", None)
        .send()
        .await
        .expect("request");
    assert_error(r, 400, "result_too_large").await;
    let (_, _, body, _) = streamed(
        &server,
        json!({"sql": sql, "format": "ndjson", "max_rows": 100}),
        None,
    )
    .await;
    let text = String::from_utf8(body).expect("utf8");
    let last: Value = serde_json::from_str(text.lines().last().expect("a line")).expect("json");
    assert_eq!(last["error"], "result_too_large", "{last}");
    // Enough rows: answered. More than the server allows: the server's limit.
    let r = server
        .query_raw(None, json!({"sql": sql, "max_rows": 724}))
        .await;
    assert_eq!(r.status(), 200);
    let r = server
        .query_raw(
            None,
            json!({"sql": "SELECT * FROM events", "max_rows": 1_000_000}),
        )
        .await;
    let refusal = assert_error(r, 400, "result_too_large").await;
    assert!(
        refusal["message"]
            .as_str()
            .is_some_and(|m| m.contains("more than 2000 rows")),
        "{refusal}"
    );
    assert_error(
        server
            .query_raw(None, json!({"sql": sql, "max_rows": 0}))
            .await,
        400,
        "invalid_request",
    )
    .await;
}

#[tokio::test]
async fn a_stream_over_its_row_limit_ends_with_an_error_not_silently() {
    let server = TestServer::start(|c| c.limits.max_rows = 100).await;
    server.ingest_fixture(None).await;
    let sql = "SELECT * FROM events";
    // NDJSON says so in its last line.
    let (status, _, body, _) =
        streamed(&server, json!({"sql": sql, "format": "ndjson"}), None).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).expect("utf8");
    let last: Value = serde_json::from_str(text.lines().last().expect("a line")).expect("json");
    assert_eq!(last["error"], "result_too_large", "{last}");
    assert!(text.lines().count() <= 101);
    // CSV has no place for it: the response is cut off and the client sees an error.
    let response = server
        .post("/v1/query", None)
        .json(&json!({"sql": sql, "format": "csv"}))
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(response.status(), 200);
    assert!(
        response.bytes().await.is_err(),
        "a cut-off body must be an error"
    );
    // JSON fails up front with 400.
    assert_error(
        server.query_raw(None, json!({"sql": sql})).await,
        400,
        "result_too_large",
    )
    .await;
}

#[tokio::test]
async fn bad_requests_get_stable_codes() {
    let server = TestServer::start(|c| {
        c.limits.max_body_bytes = 1024 * 1024;
    })
    .await;
    server.ingest_fixture(None).await;

    assert_error(
        server.query_raw(None, json!({"sql": "SELEC 1"})).await,
        400,
        "invalid_query",
    )
    .await;
    assert_error(
        server
            .query_raw(None, json!({"sql": "SELECT nope FROM events"}))
            .await,
        400,
        "invalid_query",
    )
    .await;
    for sql in [
        "CREATE TABLE t (a INT)",
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
        "INSERT INTO events SELECT * FROM events",
        "DROP TABLE events",
        "COPY (SELECT 1) TO '/tmp/x.csv'",
        "SET datafusion.execution.batch_size = 1",
        "CREATE VIEW v AS SELECT 1",
        "DELETE FROM events",
        "EXPLAIN CREATE TABLE t (a INT)",
    ] {
        assert_error(
            server.query_raw(None, json!({ "sql": sql })).await,
            400,
            "statement_not_allowed",
        )
        .await;
    }
    // Files outside the lake are not tables.
    let response = server
        .query_raw(None, json!({"sql": "SELECT * FROM '/etc/passwd'"}))
        .await;
    assert_eq!(response.status(), 400);

    for body in [
        json!({}),
        json!({"sql": ""}),
        json!({"sql": "SELECT 1", "fromat": "csv"}),
        json!({"sql": "SELECT 1", "format": "xml"}),
        json!({"sql": "SELECT 1", "timeout_ms": 0}),
    ] {
        assert_error(server.query_raw(None, body).await, 400, "invalid_request").await;
    }
    let not_json = server
        .post("/v1/query", None)
        .body("sql=SELECT 1")
        .send()
        .await
        .expect("request");
    assert_error(not_json, 400, "invalid_request").await;

    let huge = json!({"sql": format!("SELECT '{}'", "x".repeat(2 * 1024 * 1024))});
    assert_error(server.query_raw(None, huge).await, 413, "body_too_large").await;

    let unacceptable = server
        .post("/v1/query", None)
        .header("accept", "application/xml")
        .json(&json!({"sql": "SELECT 1"}))
        .send()
        .await
        .expect("request");
    assert_error(unacceptable, 406, "not_acceptable").await;

    assert_error(
        server
            .get("/v1/nothing", None)
            .send()
            .await
            .expect("request"),
        404,
        "not_found",
    )
    .await;
    assert_error(
        server
            .get("/v1/events", None)
            .send()
            .await
            .expect("request"),
        405,
        "method_not_allowed",
    )
    .await;
    // GET /v1/query takes the body's fields as parameters.
    assert_error(
        server.get("/v1/query", None).send().await.expect("request"),
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        server
            .get("/v1/query?sql=SELECT%201&colour=red", None)
            .send()
            .await
            .expect("request"),
        400,
        "invalid_request",
    )
    .await;
}

/// Runs until stopped, holding a little memory.
const ENDLESS: &str = "SELECT count(DISTINCT value % 1000000) FROM range(10000000000)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_overload_and_memory_get_504_and_429() {
    let server = TestServer::start(|c| {
        c.limits.max_concurrent_queries = 1;
        c.limits.queue_wait_ms = 100;
    })
    .await;
    // A timed-out query answers 504 and frees its slot.
    assert_error(
        server
            .query_raw(None, json!({"sql": ENDLESS, "timeout_ms": 200}))
            .await,
        504,
        "query_timeout",
    )
    .await;
    // Its work lets go of the slot only when it really ends (a moment
    // after the 504; longer on a loaded machine): wait for that, or the
    // slot seen below could be this one's, not the busy query's.
    server
        .wait_for_stats(None, "the timed-out query's work to end", |s| {
            s["server"]["queries_running"] == 0
        })
        .await;
    // While one query holds the only slot, the next waits, then gets 429.
    let busy = {
        let request = server
            .post("/v1/query", None)
            .json(&json!({"sql": ENDLESS, "timeout_ms": 5_000}));
        tokio::spawn(async move { request.send().await.expect("request").status() })
    };
    server
        .wait_for_stats(None, "the busy query to hold the slot", |s| {
            s["server"]["queries_running"] == 1
        })
        .await;
    let refused = server.query_raw(None, json!({"sql": "SELECT 1"})).await;
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_error(refused, 429, "too_many_queries").await;
    assert_eq!(busy.await.expect("task"), 504);
    // Once it is gone, queries run again.
    assert_eq!(server.rows(None, "SELECT 1").await, vec![json!([1])]);

    let small = TestServer::start(|c| c.limits.memory_limit_bytes = 64 * 1024).await;
    small.ingest_fixture(None).await;
    assert_error(
        small
            .query_raw(
                None,
                json!({"sql": "SELECT partition_key, array_agg(payload) FROM events GROUP BY partition_key"}),
            )
            .await,
        429,
        "resources_exhausted",
    )
    .await;
}

#[tokio::test]
async fn lost_data_files_are_a_503_with_no_details_leaked() {
    let server = TestServer::start(|_| {}).await;
    server.ingest_fixture(None).await;
    // Remove the table's data files behind the server's back.
    let data = server.warehouse.join("warehouse");
    let mut removed = 0;
    let mut stack = vec![data];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                std::fs::remove_file(&path).expect("remove");
                removed += 1;
            }
        }
    }
    assert!(removed > 0, "found no data files to remove");
    let response = server
        .query_raw(
            None,
            json!({"sql": "SELECT count(DISTINCT seq) FROM events", "cache": false}),
        )
        .await;
    let retry_after = response.headers().get("retry-after").cloned();
    let body = assert_error(response, 503, "storage_unavailable").await;
    assert_eq!(
        retry_after.as_ref().and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let message = body["message"].as_str().expect("message");
    assert!(
        !message.contains(".parquet"),
        "paths stay in the log: {message}"
    );
}

#[tokio::test]
async fn replay_streams_events_in_position_order_pinned_and_resumable() {
    let server = TestServer::start(|c| c.tokens = crate::support::tokens()).await;
    server.ingest_fixture(Some(crate::support::ADMIN)).await;
    let admin = Some(crate::support::ADMIN);
    let get = |query: &str, token| server.get(&format!("/v1/replay?{query}"), token).send();

    let response = get("namespace=tenant-001", admin).await.expect("request");
    assert_eq!(response.status(), 200);
    let snapshot: i64 = response
        .headers()
        .get("x-shardlake-snapshot")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("the pinned snapshot");
    let text = response.text().await.expect("body");
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is an event"))
        .collect();
    assert_eq!(events.len(), 724);
    assert!(
        events.iter().all(|e| e["namespace"] == "tenant-001"
            && (e["payload"].is_object() || e["payload"].is_null()))
    );
    let positions: Vec<i64> = events
        .iter()
        .map(|e| e["position"].as_i64().expect("position"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));

    // Resume after the 100th event at the same snapshot, for two keys.
    let (k1, k2) = (
        events[0]["partition_key"].as_str().expect("key").to_owned(),
        events[1]["partition_key"].as_str().expect("key").to_owned(),
    );
    let q = format!(
        "namespace=tenant-001&partition_key={k1}&partition_key={k2}&after_position={}&snapshot={snapshot}",
        positions[0]
    );
    let text = get(&q, admin)
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    let resumed: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect();
    let want: Vec<&Value> = events[1..]
        .iter()
        .filter(|e| e["partition_key"] == k1.as_str() || e["partition_key"] == k2.as_str())
        .collect();
    assert_eq!(resumed.iter().collect::<Vec<_>>(), want);

    // Arrow, for machines.
    let bytes = get("namespace=tenant-003&format=arrow", admin)
        .await
        .expect("request")
        .bytes()
        .await
        .expect("body");
    let reader = StreamReader::try_new(Cursor::new(bytes.to_vec()), None).expect("arrow");
    assert_eq!(
        reader.map(|b| b.expect("batch").num_rows()).sum::<usize>(),
        433
    );

    // Scope: acme replays only tenant-001, and sees nothing else without a namespace.
    let acme = Some(crate::support::ACME);
    assert_error(
        get("namespace=tenant-000", acme).await.expect("request"),
        403,
        "forbidden",
    )
    .await;
    let text = get("", acme)
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert_eq!(text.lines().count(), 724);
    for bad in [
        "snapshot=abc",
        "nope=1",
        "format=csv",
        "shard_id=99999999999",
    ] {
        assert_error(
            get(bad, admin).await.expect("request"),
            400,
            "invalid_request",
        )
        .await;
    }
    // A snapshot the table does not retain (expired, or never there): 410.
    assert_error(
        get("snapshot=42", admin).await.expect("request"),
        410,
        "snapshot_expired",
    )
    .await;
}
