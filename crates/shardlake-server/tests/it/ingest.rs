//! `POST /v1/events`: durable acks, retries without double rows, bad events
//! alone, limits.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::support::{TestServer, assert_error};

fn event(ns: &str, shard: i32, seq: i64) -> Value {
    json!({"namespace": ns, "shard_id": shard, "seq": seq,
        "partition_key": format!("Order:o-{seq}"), "entity_type": "Order",
        "entity_id": format!("o-{seq}"), "event_type": "thing.created", "version": 1,
        "ts": "2026-01-01T00:00:00Z", "payload": {"amount": seq}})
}

#[tokio::test]
async fn a_retried_request_is_acknowledged_as_duplicates_never_double_rows() {
    let server = TestServer::start(|_| {}).await;
    let first = server.ingest_fixture(None).await;
    assert_eq!(first["accepted"], 3000);
    assert_eq!(first["duplicates"], 0);
    assert_eq!(first["rejected"], json!([]));
    let watermarks = first["watermarks"].as_object().expect("watermarks");
    assert_eq!(watermarks.len(), 6, "{first}");
    assert!(first["snapshot_id"].is_string(), "ids are strings: {first}");

    // The shard retries the whole request (say its ack was lost).
    let retry = server.ingest_fixture(None).await;
    assert_eq!(retry["accepted"], 0);
    assert_eq!(retry["duplicates"], 3000);
    assert_eq!(
        retry["conflicting_duplicates"], 0,
        "a true re-send: {retry}"
    );
    assert_eq!(retry["watermarks"], first["watermarks"]);
    assert!(retry["snapshot_id"].is_null());
    assert_eq!(
        server.rows(None, "SELECT count(*) FROM events").await,
        vec![json!([3000])]
    );
}

#[tokio::test]
async fn a_bad_event_is_rejected_alone_and_all_bad_is_400() {
    let server = TestServer::start(|_| {}).await;
    let mut bad = event("acme", 1, 2);
    bad["seq"] = json!(0);
    let body = json!([event("acme", 1, 1), bad, event("acme", 1, 3), {"namespace": ""}]);
    let response = server
        .post("/v1/events", None)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let ack: Value = response.json().await.expect("json");
    assert_eq!(ack["accepted"], 2);
    let rejected = ack["rejected"].as_array().expect("rejected");
    let indexes: Vec<i64> = rejected
        .iter()
        .map(|r| r["index"].as_i64().expect("index"))
        .collect();
    assert_eq!(indexes, vec![1, 3]);
    assert!(
        rejected
            .iter()
            .all(|r| r["code"].is_string() && r["error"].is_string())
    );
    assert_eq!(ack["watermarks"], json!({"1": 3}));

    // NDJSON reports 1-based line numbers.
    let ndjson = format!("{}\nnot json\n", event("acme", 2, 1));
    let response = server
        .post("/v1/events", None)
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .expect("request");
    let ack: Value = response.json().await.expect("json");
    assert_eq!(ack["accepted"], 1);
    assert_eq!(ack["rejected"][0]["index"], 2);

    // Nothing valid at all: 400, with every reason, and (like every refused
    // event) dead-lettered with what was sent.
    let dead_before = dead_letters(&server).len();
    let response = server
        .post("/v1/events", None)
        .json(&json!([{"namespace": "acme"}, {"seq": -1}]))
        .send()
        .await
        .expect("request");
    let body = assert_error(response, 400, "invalid_events").await;
    assert_eq!(body["rejected"].as_array().map(Vec::len), Some(2));
    let dead = dead_letters(&server);
    assert_eq!(dead.len(), dead_before + 2, "{dead:?}");
    assert_eq!(dead[dead_before]["raw"], r#"{"namespace":"acme"}"#);
    assert_eq!(dead[dead_before + 1]["code"], body["rejected"][1]["code"]);
    for garbage in ["", "[1, 2", "   "] {
        let response = server
            .post("/v1/events", None)
            .header("content-type", "application/json")
            .body(garbage)
            .send()
            .await
            .expect("request");
        assert_error(response, 400, "invalid_events").await;
    }
    assert_eq!(
        server.rows(None, "SELECT count(*) FROM events").await,
        vec![json!([3])]
    );
}

#[tokio::test]
async fn oversized_bodies_get_413_and_a_full_queue_429() {
    let server = TestServer::start(|c| {
        c.limits.max_body_bytes = 64 * 1024;
        c.limits.queue_wait_ms = 100;
        // One request fills the queue, and its commit waits a while.
        c.emitter.max_queued_bytes = 1;
        c.emitter.flush_interval = Duration::from_millis(10_000);
        c.emitter.max_batch_events = 1_000_000;
    })
    .await;
    let big: Vec<Value> = (1..=1000).map(|i| event("acme", 1, i)).collect();
    let response = server
        .post("/v1/events", None)
        .json(&big)
        .send()
        .await
        .expect("request");
    assert_error(response, 413, "body_too_large").await;

    let first = {
        let request = server
            .post("/v1/events", None)
            .json(&json!([event("acme", 1, 1)]));
        tokio::spawn(async move { request.send().await.expect("request") })
    };
    server
        .wait_for_stats(None, "the first event to be queued", |s| {
            s["emitter"]["queued_events"] == 1
        })
        .await;
    let refused = server
        .post("/v1/events", None)
        .json(&json!([event("acme", 2, 1)]))
        .send()
        .await
        .expect("request");
    assert_error(refused, 429, "ingest_queue_full").await;
    let first = first.await.expect("task");
    assert_eq!(first.status(), 200);
    // The refused request left nothing behind; the first is durable.
    assert_eq!(
        server.rows(None, "SELECT shard_id FROM events").await,
        vec![json!([1])]
    );
}

#[tokio::test]
async fn background_compaction_folds_small_commits_while_serving() {
    let server = TestServer::start(|c| {
        c.maintenance.interval_secs = 1;
        c.compaction.lake.min_small_files = 4;
        c.tokens = crate::support::tokens();
    })
    .await;
    let admin = Some(crate::support::ADMIN);
    // Ten requests, one commit each, two namespaces: twenty small files.
    // (Ten distinct snapshots prove ten commits; counting files here would
    // race the compactor, which may already have run.)
    let mut snapshots = std::collections::BTreeSet::new();
    for seq in 1..=10 {
        let body = json!([event("acme", 1, seq), event("globex", 2, seq)]);
        let r = server
            .post("/v1/events", admin)
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        let ack: Value = r.json().await.expect("ack");
        snapshots.insert(
            ack["snapshot_id"]
                .as_str()
                .expect("a commit per request")
                .to_owned(),
        );
    }
    assert_eq!(snapshots.len(), 10);
    let files = |v: &Value| v["stats"]["files_total"].as_u64().expect("files_total");
    let sql = json!({"sql": "SELECT count(*) FROM events", "cache": false});
    let mut after = Value::Null;
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = server
            .query_raw(admin, sql.clone())
            .await
            .json()
            .await
            .expect("json");
        if files(&after) == 2 {
            break;
        }
    }
    assert_eq!(
        files(&after),
        2,
        "one file per namespace after compaction: {after}"
    );
    assert_eq!(after["rows"], json!([[20]]));
    let metrics = server.metrics(admin).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("shardlake_compactions_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stale_watermark_expectation_is_a_409_with_the_actual_watermark() {
    let server = TestServer::start(|_| {}).await;
    let post = |events: Value, expect: &str| {
        server
            .post("/v1/events", None)
            .header("x-shardlake-expect-watermarks", expect)
            .json(&events)
            .send()
    };
    let ok = post(json!([event("acme", 4, 1), event("acme", 4, 2)]), "4=0")
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);
    let stale = post(json!([event("acme", 4, 3)]), "4=0")
        .await
        .expect("request");
    let body = assert_error(stale, 409, "concurrency_conflict").await;
    assert_eq!(
        body["conflict"],
        json!({"shard_id": 4, "expected": 0, "actual": 2})
    );
    let right = post(json!([event("acme", 4, 3)]), " 4 = 2 ")
        .await
        .expect("request");
    assert_eq!(right.status(), 200);
    let bad = post(json!([event("acme", 4, 4)]), "four=2")
        .await
        .expect("request");
    assert_error(bad, 400, "invalid_request").await;
    assert_eq!(
        server
            .rows(None, "SELECT max(seq), count(*) FROM events")
            .await,
        vec![json!([3, 3])]
    );
}

/// A shard that reuses a `seq` for another event: the event is dropped as
/// a duplicate (exactly once rests on `(shard_id, seq)`), and the ack says
/// that its content differs from what the lake stores.
#[tokio::test]
async fn a_reused_seq_with_other_content_is_reported_as_a_conflicting_duplicate() {
    let server = TestServer::start(|_| {}).await;
    let event = |key: &str| {
        json!({"namespace": "acme", "shard_id": 7, "seq": 1, "partition_key": key,
               "event_type": "thing.created", "ts": "2026-01-01T00:00:00Z"})
    };
    let first: Value = server
        .post_json("/v1/events", None, &json!([event("Order:o-1")]))
        .await
        .json()
        .await
        .expect("ack");
    assert_eq!(first["accepted"], 1, "{first}");
    let same: Value = server
        .post_json("/v1/events", None, &json!([event("Order:o-1")]))
        .await
        .json()
        .await
        .expect("ack");
    assert_eq!(
        (&same["duplicates"], &same["conflicting_duplicates"]),
        (&json!(1), &json!(0))
    );
    let other: Value = server
        .post_json("/v1/events", None, &json!([event("Order:o-2")]))
        .await
        .json()
        .await
        .expect("ack");
    assert_eq!(
        (
            &other["accepted"],
            &other["duplicates"],
            &other["conflicting_duplicates"]
        ),
        (&json!(0), &json!(1), &json!(1)),
        "{other}"
    );
    assert_eq!(
        server.rows(None, "SELECT partition_key FROM events").await,
        vec![json!(["Order:o-1"])]
    );
}

/// Posts `body` cut into pieces of `piece` bytes, streamed with pauses, so
/// the server parses it while it arrives.
async fn post_in_pieces(server: &TestServer, body: Vec<u8>, piece: usize, ndjson: bool) -> Value {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(piece).map(|c| Ok(c.to_vec())).collect();
    let stream = futures::stream::iter(pieces).then(|piece| async {
        tokio::task::yield_now().await;
        piece
    });
    let mut request = server.post("/v1/events", None);
    if ndjson {
        request = request.header("content-type", "application/x-ndjson");
    }
    let response = request
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

#[tokio::test]
async fn a_large_body_is_parsed_as_it_arrives_with_refusals_numbered_as_sent() {
    let server = TestServer::start(|_| {}).await;
    // About 1.5 MB each: several of the server's parse pieces, cut at odd
    // places by the client's own pieces.
    let events = 5_000i64;
    let bad = [17i64, 2_500, 4_999];
    let mut ndjson = Vec::new();
    let mut array = Vec::from(&b"[\n"[..]);
    for seq in 1..=events {
        let (line, element) = if bad.contains(&seq) {
            (
                b"{\"namespace\": \"acme\", broken".to_vec(),
                json!({"shard_id": 1}),
            )
        } else {
            let line = serde_json::to_vec(&event("acme", 1, seq)).expect("json");
            (line, event("acme", 2, seq))
        };
        ndjson.extend_from_slice(&line);
        ndjson.push(b'\n');
        if seq > 1 {
            array.extend_from_slice(b",\n");
        }
        array.extend_from_slice(&serde_json::to_vec(&element).expect("json"));
    }
    array.extend_from_slice(b"\n]\n");

    let ack = post_in_pieces(&server, ndjson, 7_919, true).await;
    assert_eq!(ack["accepted"], events - 3);
    let lines: Vec<i64> = ack["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| r["index"].as_i64().expect("index"))
        .collect();
    assert_eq!(lines, bad.to_vec(), "1-based lines, as sent");

    // The same as a JSON array, sniffed from its first byte.
    let ack = post_in_pieces(&server, array, 4_093, false).await;
    assert_eq!(ack["accepted"], events - 3);
    let indexes: Vec<i64> = ack["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| r["index"].as_i64().expect("index"))
        .collect();
    assert_eq!(
        indexes,
        bad.iter().map(|i| i - 1).collect::<Vec<_>>(),
        "0-based indexes"
    );
    assert_eq!(
        server
            .rows(
                None,
                "SELECT shard_id, count(*) FROM events GROUP BY 1 ORDER BY 1"
            )
            .await,
        vec![json!([1, events - 3]), json!([2, events - 3])]
    );

    // A body that stops being an array is refused whole, nothing written.
    let mut broken = serde_json::to_vec(&json!([event("acme", 3, 1)])).expect("json");
    broken.pop(); // the closing bracket
    broken.extend_from_slice(&vec![b' '; 600_000]);
    broken.extend_from_slice(b"{}");
    let response = server
        .post("/v1/events", None)
        .body(broken)
        .send()
        .await
        .expect("request");
    assert_error(response, 400, "invalid_events").await;
    assert_eq!(
        server
            .rows(None, "SELECT count(*) FROM events WHERE shard_id = 3")
            .await,
        vec![json!([0])]
    );
}

/// Every dead-letter record the server wrote, in order.
fn dead_letters(server: &TestServer) -> Vec<Value> {
    let Ok(dir) = std::fs::read_dir(server.warehouse.join("dead-letter")) else {
        return Vec::new();
    };
    let mut files: Vec<_> = dir.map(|e| e.expect("entry").path()).collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .expect("read")
                .lines()
                .map(|l| serde_json::from_str(l).expect("json line"))
                .collect::<Vec<Value>>()
        })
        .collect()
}
