//! `/v1/migrations`: plans, a migration to real HTTP shards run in the
//! background and watched to the end, and every refusal with its code.

use std::time::Duration;

use serde_json::{Value, json};
use shardlake_server::ShardEndpoint;
use tokio::sync::watch;

use crate::support::{ACME, ADMIN, TestServer, assert_error, shard, tokens};

/// Polls a migration's record until it is no longer running.
async fn watch(server: &TestServer, location: &str) -> Value {
    loop {
        let report: Value = server.get_json(location, Some(ADMIN)).await;
        if report["status"] != "running" {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn jump(shards: u32) -> Value {
    json!({"version": 1, "shards": (0..shards).collect::<Vec<_>>(), "strategy": {"kind": "jump"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_planned_started_watched_and_refused_with_codes() {
    let (gate, open) = watch::channel(true);
    let mut shards = Vec::new();
    for id in 0..4 {
        shards.push(shard(id, open.clone()).await);
    }
    let endpoints: Vec<ShardEndpoint> = shards.iter().map(|(_, e)| e.clone()).collect();
    let server = TestServer::start(|c| {
        c.tokens = tokens();
        c.shards = endpoints;
    })
    .await;
    server.ingest_fixture(Some(ADMIN)).await;

    // Admin only.
    let r = server
        .get("/v1/migrations", Some(ACME))
        .send()
        .await
        .expect("request");
    assert_error(r, 403, "forbidden").await;
    // No topology recorded and none given.
    let r = server
        .post_json("/v1/migrations/plan", Some(ADMIN), &json!({"add_shard": 3}))
        .await;
    assert_error(r, 400, "no_topology").await;

    // A dry run changes nothing.
    let r = server
        .post_json(
            "/v1/migrations/plan",
            Some(ADMIN),
            &json!({"add_shard": 3, "current": jump(3)}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let plan: Value = r.json().await.expect("plan");
    let moves = plan["moves"].as_array().expect("moves").len();
    assert!(
        moves > 10
            && plan["moves"]
                .as_array()
                .expect("moves")
                .iter()
                .all(|m| m["to"] == 3)
    );
    let list: Value = server.get_json("/v1/migrations", Some(ADMIN)).await;
    assert_eq!(list, json!({"topology": null, "migrations": []}));

    // `curl -d` sends a form content type: the JSON is read all the same,
    // and what cannot be read is a JSON error, as on every route.
    let body = json!({"add_shard": 3, "current": jump(3)}).to_string();
    let r = server
        .post("/v1/migrations/plan", Some(ADMIN))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    for bad in ["{not json", r#"{"add_shard": "three"}"#] {
        let r = server
            .post("/v1/migrations/plan", Some(ADMIN))
            .body(bad)
            .send()
            .await
            .expect("request");
        assert_error(r, 400, "invalid_request").await;
    }
    let r = server
        .post("/v1/migrations/not-a-migration/frobnicate", Some(ADMIN))
        .send()
        .await
        .expect("request");
    assert!(r.status().is_client_error());
    let body: Value = r.json().await.expect("a JSON error body");
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{body}"
    );

    // Bad changes.
    for (body, status, code) in [
        (
            json!({"remove_shard": 9, "current": jump(3)}),
            400,
            "invalid_plan",
        ),
        (
            json!({"add_shard": 3, "remove_shard": 1, "current": jump(3)}),
            400,
            "invalid_plan",
        ),
        (
            json!({"add_shard": 4, "current": jump(4)}),
            400,
            "shard_endpoint_missing",
        ),
    ] {
        let r = server.post_json("/v1/migrations", Some(ADMIN), &body).await;
        assert_error(r, status, code).await;
    }

    // Start, then watch it to the end.
    let r = server
        .post_json(
            "/v1/migrations",
            Some(ADMIN),
            &json!({"add_shard": 3, "current": jump(3)}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let report = watch(&server, &location).await;
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(report["keys_verified"], moves);
    assert_eq!(
        shards[3].0.keys().len(),
        moves,
        "the new shard holds the moved keys"
    );

    let list: Value = server.get_json("/v1/migrations", Some(ADMIN)).await;
    assert_eq!(list["topology"]["version"], 2);
    assert_eq!(list["migrations"][0]["keys_moving"], moves);
    assert!(
        list["migrations"][0]["plan"].get("moves").is_none(),
        "the list is a summary"
    );

    let id = report["id"].as_str().expect("id");
    let r = server
        .post(&format!("/v1/migrations/{id}/resume"), Some(ADMIN))
        .send()
        .await
        .expect("request");
    assert_error(r, 409, "migration_finished").await;
    let r = server
        .get("/v1/migrations/v9-v10-00000000", Some(ADMIN))
        .send()
        .await
        .expect("request");
    assert_error(r, 404, "migration_not_found").await;
    // A rebalance (to hash over the same shards) from the recorded v2; a
    // second change while it is open is refused. The shards hold the
    // rebalance until the refusal is checked.
    gate.send_replace(false);
    let rebalance =
        json!({"topology": {"version": 1, "shards": [0, 1, 2, 3], "strategy": {"kind": "hash"}}});
    let r = server
        .post_json("/v1/migrations", Some(ADMIN), &rebalance)
        .await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let r = server
        .post_json("/v1/migrations", Some(ADMIN), &json!({"remove_shard": 0}))
        .await;
    let body = r.json::<Value>().await.expect("json");
    assert!(
        ["migration_in_progress", "migration_unfinished"]
            .contains(&body["error"].as_str().unwrap_or("")),
        "{body}"
    );
    gate.send_replace(true);
    let report = watch(&server, &location).await;
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(report["plan"]["to"]["version"], 3);
    assert_eq!(report["plan"]["to"]["strategy"]["kind"], "hash");
}
