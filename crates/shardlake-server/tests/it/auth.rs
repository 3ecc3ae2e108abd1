//! Bearer tokens and tenant isolation: a scoped token sees only its
//! namespaces through every SQL shape, the cache, the statistics and
//! `/v1/tables`, and writes only to its namespaces.

use serde_json::{Value, json};
use shardlake_server::{Server, ServerConfig};

use crate::support::{ACME, ADMIN, TestServer, WRITER, assert_error, tokens};

/// SQL shapes a tenant might try, each run with the `acme` token (scope
/// `tenant-001`). Each must answer exactly what the admin gets when
/// `events` and `things` are replaced by their `tenant-001` rows.
pub(crate) const SHAPES: &[&str] = &[
    "SELECT count(*) FROM events",
    "SELECT DISTINCT namespace FROM events ORDER BY 1",
    "SELECT namespace, count(*) FROM events GROUP BY namespace ORDER BY 1",
    "SELECT count(*) FROM events WHERE namespace = 'tenant-000'",
    "SELECT count(*) FROM events WHERE namespace = 'tenant-000' OR 1 = 1",
    "SELECT count(*) FROM events WHERE namespace IN ('tenant-000', 'tenant-002', 'tenant-001')",
    "SELECT count(*) FROM (SELECT * FROM events) sub",
    "SELECT count(*) FROM events WHERE partition_key IN (SELECT partition_key FROM events WHERE namespace <> 'tenant-001')",
    "SELECT (SELECT count(*) FROM events) AS total",
    "SELECT max(seq), min(ts), sum(shard_id) FROM events",
    "SELECT namespace FROM events UNION SELECT namespace FROM things ORDER BY 1",
    "SELECT namespace, count(*) FROM (SELECT namespace FROM events UNION ALL SELECT namespace FROM things) u GROUP BY 1 ORDER BY 1",
    "SELECT count(*) FROM events e JOIN things t ON e.entity_id = t.id",
    "SELECT count(*) FROM events a JOIN events b ON a.partition_key = b.partition_key AND a.namespace <> b.namespace",
    "SELECT count(*) FROM things",
    "SELECT namespace, count(*) FROM things GROUP BY namespace ORDER BY 1",
    "SELECT count(*) FROM things t WHERE EXISTS (SELECT 1 FROM events e WHERE e.entity_id = t.id AND e.namespace = 'tenant-000')",
    "SELECT namespace, position FROM events ORDER BY position DESC LIMIT 3",
    "SELECT namespace, row_number() OVER (ORDER BY position) AS r FROM events ORDER BY position LIMIT 3",
    "SELECT count(*) FROM events WHERE json_get_str(payload, 'country') IS NOT NULL",
    "SELECT event_type, count(*) FROM events WHERE namespace LIKE 'tenant-%' GROUP BY 1 ORDER BY 1",
];

/// What the admin runs to get the answer `shape` must give the acme token:
/// the shape over CTEs that shadow both tables with tenant-001's rows.
pub(crate) fn as_admin(shape: &str) -> String {
    format!(
        "WITH events AS (SELECT * FROM events WHERE namespace = 'tenant-001'), \
         things AS (SELECT * FROM things WHERE namespace = 'tenant-001') {shape}"
    )
}

#[tokio::test]
async fn a_scoped_token_sees_only_its_namespace_through_every_shape() {
    let server = TestServer::start(|c| c.tokens = tokens()).await;
    server.ingest_fixture(Some(ADMIN)).await;

    // The CTE trick really restricts (else the comparison proves nothing).
    assert_eq!(
        server
            .rows(Some(ADMIN), &as_admin("SELECT count(*) FROM events"))
            .await,
        vec![json!([724])]
    );
    for shape in SHAPES {
        // Admin first, so a cross-scope cache hit would show.
        let full = server.query(Some(ADMIN), shape).await;
        let scoped = server.query(Some(ACME), shape).await;
        let expected = server.rows(Some(ADMIN), &as_admin(shape)).await;
        assert_eq!(scoped["rows"], json!(expected), "shape: {shape}");
        let text = scoped["rows"].to_string();
        for other in ["tenant-000", "tenant-002", "tenant-003"] {
            assert!(!text.contains(other), "{shape} leaked {other}: {text}");
        }
        // And the other order: the scoped answer never serves the admin.
        let again = server.query(Some(ADMIN), shape).await;
        assert_eq!(again["rows"], full["rows"], "shape: {shape}");
    }

    // Statistics mention only what the scope may see.
    let stats = &server.query(Some(ACME), "SELECT * FROM events").await["stats"];
    assert_eq!(stats["partitions_total"], 1, "{stats}");
    assert_eq!(stats["partitions_pruned"], 0, "{stats}");
    assert_eq!(stats["rows_returned"], 724);
    let all = &server.query(Some(ADMIN), "SELECT * FROM events").await["stats"];
    assert_eq!(all["partitions_total"], 4);
    assert!(stats["files_total"].as_u64() < all["files_total"].as_u64());

    // `/v1/tables` counts only the scope's rows.
    let tables: Value = server
        .get("/v1/tables", Some(ACME))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let events = &tables["tables"][0];
    assert_eq!(
        (events["name"].as_str(), events["rows"].as_i64()),
        (Some("events"), Some(724))
    );
    assert_eq!(events["namespaces"], 1);
    let things_rows = server.rows(Some(ACME), "SELECT count(*) FROM things").await;
    assert_eq!(json!([tables["tables"][1]["rows"]]), things_rows[0]);
    let admin_tables: Value = server
        .get("/v1/tables", Some(ADMIN))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(admin_tables["tables"][0]["rows"], 3000);
    assert_eq!(admin_tables["tables"][0]["namespaces"], 4);
}

fn event(ns: &str, seq: i64) -> Value {
    json!({"namespace": ns, "shard_id": 77, "seq": seq, "partition_key": "k",
        "event_type": "thing.created", "ts": "2026-01-01T00:00:00Z"})
}

#[tokio::test]
async fn tokens_gate_every_endpoint_and_writes_stay_in_scope() {
    let server = TestServer::start(|c| c.tokens = tokens()).await;
    // No token, a wrong one, a malformed header: 401 with a challenge.
    for token in [None, Some("wrong-token-0123456789")] {
        let response = server.query_raw(token, json!({"sql": "SELECT 1"})).await;
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer realm=\"shardlake\"")
        );
        assert_error(response, 401, "unauthorized").await;
    }
    let basic = server
        .post("/v1/query", None)
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .json(&json!({"sql": "SELECT 1"}))
        .send()
        .await
        .expect("request");
    assert_error(basic, 401, "unauthorized").await;

    // Permissions: writer cannot query, acme cannot administer.
    assert_error(
        server
            .query_raw(Some(WRITER), json!({"sql": "SELECT 1"}))
            .await,
        403,
        "forbidden",
    )
    .await;
    for path in ["/v1/stats", "/metrics"] {
        let response = server.get(path, Some(ACME)).send().await.expect("request");
        assert_error(response, 403, "forbidden").await;
        let response = server.get(path, None).send().await.expect("request");
        assert_error(response, 401, "unauthorized").await;
    }
    let response = server
        .get("/v1/tables", Some(WRITER))
        .send()
        .await
        .expect("request");
    assert_error(response, 403, "forbidden").await;
    // Health needs no token.
    let health = server.get("/healthz", None).send().await.expect("request");
    assert_eq!(health.status(), 200);

    // acme writes to its namespace; one event elsewhere refuses the whole request.
    let ok = server
        .post("/v1/events", Some(ACME))
        .json(&json!([event("tenant-001", 1)]))
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);
    let mixed = server
        .post("/v1/events", Some(ACME))
        .json(&json!([event("tenant-001", 2), event("tenant-000", 3)]))
        .send()
        .await
        .expect("request");
    let body = assert_error(mixed, 403, "forbidden").await;
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("tenant-000"))
    );
    assert_eq!(
        server
            .rows(Some(ADMIN), "SELECT namespace, seq FROM events")
            .await,
        vec![json!(["tenant-001", 1])],
        "nothing of the refused request was written"
    );
    // The writer token writes anywhere.
    let ok = server
        .post("/v1/events", Some(WRITER))
        .json(&json!([event("tenant-000", 4)]))
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn without_tokens_only_loopback_is_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ServerConfig {
        listen: "0.0.0.0:0".parse().expect("addr"),
        warehouse: dir.path().join("lake"),
        ..ServerConfig::default()
    };
    let err = Server::bind(config.clone()).await.err().expect("refused");
    assert!(err.to_string().contains("loopback"), "{err}");
    // (Refused before binding: tests never listen beyond loopback.)
}
