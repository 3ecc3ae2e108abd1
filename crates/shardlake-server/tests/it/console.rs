//! The web console: its assets as HTTP serves them (hashed names, cache
//! lifetimes, ETags, the security headers), the read-only endpoints it
//! reads (`/v1/whoami`, `/v1/lake`, `/v1/shards`, `/v1/maintenance`), and
//! the console itself in headless Chromium driven by Playwright
//! (`scripts/console_browser.py`), against a live server with a migration
//! held running.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::support::{
    ACME, ADMIN, FIXTURE_COUNTS, TestServer, WRITER, assert_error, shard, tokens,
};

/// The `assets/...` names index.html loads.
fn asset_names(index: &str) -> Vec<String> {
    index
        .split("\"assets/")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn console_assets_are_hashed_cached_and_locked_down() {
    let server = TestServer::start(|c| c.tokens = tokens()).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    // `/` and `/console` lead to the console; no token needed for the page.
    for path in ["/", "/console"] {
        let r = no_redirects
            .get(server.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 307, "{path}");
        assert_eq!(r.headers()["location"], "/console/");
    }
    let r = server.get("/console/", None).send().await.expect("request");
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let csp = headers["content-security-policy"].to_str().expect("ascii");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    let etag = headers["etag"].clone();
    let index = r.text().await.expect("body");
    assert!(!index.contains("<script>"), "no inline script");

    // The page again with its ETag: 304, no body.
    let r = server
        .get("/console/", None)
        .header("if-none-match", etag.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag);

    // Gzipped for clients that take it: the same bytes, another ETag.
    let r = server
        .get("/console/", None)
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .expect("request");
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["vary"], "accept-encoding");
    assert_ne!(r.headers()["etag"], etag);
    let zipped = r.bytes().await.expect("body");
    let mut unzipped = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&zipped[..]),
        &mut unzipped,
    )
    .expect("gunzip");
    assert_eq!(unzipped, index);
    assert!(zipped.len() < index.len());

    // Every asset is served under a name with its content hash, for a year.
    let names = asset_names(&index);
    assert_eq!(names.len(), 10, "{names:?}");
    let (mut total, mut total_gzip) = (0, zipped.len());
    for name in &names {
        let parts: Vec<&str> = name.split('.').collect();
        let hash = parts[parts.len() - 2];
        assert!(
            hash.len() == 12 && hash.chars().all(|c| c.is_ascii_hexdigit()),
            "{name} has no content hash"
        );
        let r = server
            .get(&format!("/console/assets/{name}"), None)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        let kind = r.headers()["content-type"].to_str().expect("ascii");
        assert!(
            (name.ends_with(".js") && kind.starts_with("text/javascript"))
                || (name.ends_with(".css") && kind.starts_with("text/css")),
            "{name}: {kind}"
        );
        assert!(r.headers().contains_key("content-security-policy"));
        let etag = r.headers()["etag"].clone();
        let body = r.bytes().await.expect("body");
        // The name's hash is the content's (SHA-256, first 12 hex digits).
        use sha2::Digest;
        assert_eq!(&hex::encode(sha2::Sha256::digest(&body))[..12], hash);
        total += body.len();
        let zipped = server
            .get(&format!("/console/assets/{name}"), None)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .expect("request")
            .bytes()
            .await
            .expect("body");
        total_gzip += zipped.len();
        let r = server
            .get(&format!("/console/assets/{name}"), None)
            .header("if-none-match", etag)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 304, "{name}");
    }
    println!(
        "console: index.html {} B + {} assets {total} B = {} B uncompressed, {total_gzip} B gzipped",
        index.len(),
        names.len(),
        index.len() + total
    );
    // Unknown (or stale) asset names are a JSON 404 like every unknown path.
    let r = server
        .get("/console/assets/app.000000000000.js", None)
        .send()
        .await
        .expect("request");
    assert_error(r, 404, "not_found").await;
    // The API's own answers are unchanged: no console headers on them.
    let r = server
        .get("/v1/whoami", Some(ADMIN))
        .send()
        .await
        .expect("request");
    assert!(!r.headers().contains_key("content-security-policy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_lake_shards_and_maintenance_answer_within_scope() {
    let server = TestServer::start(|c| {
        c.tokens = tokens();
        c.maintenance.interval_secs = 1;
    })
    .await;
    server.ingest_fixture(Some(ADMIN)).await;

    // Who a token is, what it may do, which namespaces it sees.
    let acme = server.get_json("/v1/whoami", Some(ACME)).await;
    assert_eq!(
        acme,
        json!({"name": "acme", "namespaces": ["tenant-001"],
               "permissions": ["query", "ingest"], "auth_enabled": true})
    );
    let admin = server.get_json("/v1/whoami", Some(ADMIN)).await;
    assert_eq!(admin["namespaces"], "*");
    assert_eq!(admin["permissions"], json!(["query", "ingest", "admin"]));
    let r = server
        .get("/v1/whoami", None)
        .send()
        .await
        .expect("request");
    assert_error(r, 401, "unauthorized").await;

    // The lake: per namespace from the snapshot, per emitting shard from a
    // query; the sums agree with each other and with the fixture.
    let lake = server.get_json("/v1/lake", Some(ADMIN)).await;
    let per_ns: Vec<(String, i64)> = lake["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .map(|n| {
            (
                n["namespace"].as_str().expect("ns").to_owned(),
                n["events"].as_i64().expect("events"),
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = FIXTURE_COUNTS
        .iter()
        .map(|(ns, n)| ((*ns).to_owned(), *n))
        .collect();
    assert_eq!(per_ns, expected);
    assert_eq!(lake["totals"]["events"], 3000);
    let shard_events: i64 = lake["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| s["events"].as_i64().expect("events"))
        .sum();
    assert_eq!(shard_events, 3000);
    assert_eq!(lake["shards"].as_array().map(Vec::len), Some(6));
    let files: u64 = lake["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .map(|n| n["files"].as_u64().expect("files"))
        .sum();
    assert_eq!(lake["totals"]["files"], files);
    let listed = server.get_json("/v1/files", Some(ADMIN)).await;
    assert_eq!(
        listed["files"].as_array().map(Vec::len),
        Some(files as usize)
    );
    // A scoped token's lake is its namespace alone, shards included.
    let scoped = server.get_json("/v1/lake", Some(ACME)).await;
    assert_eq!(
        scoped["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .map(|n| n["namespace"].clone())
            .collect::<Vec<_>>(),
        vec![json!("tenant-001")]
    );
    assert_eq!(scoped["totals"]["events"], 724);
    let scoped_shard_events: i64 = scoped["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| s["events"].as_i64().expect("events"))
        .sum();
    assert_eq!(scoped_shard_events, 724);
    let r = server
        .get("/v1/lake", Some(WRITER))
        .send()
        .await
        .expect("request");
    assert_error(r, 403, "forbidden").await;

    // Shards: admin only; without a topology, judged by emitting shard.
    for path in ["/v1/shards", "/v1/maintenance"] {
        let r = server.get(path, Some(ACME)).send().await.expect("request");
        assert_error(r, 403, "forbidden").await;
    }
    let shards = server.get_json("/v1/shards", Some(ADMIN)).await;
    assert_eq!(shards["topology"], Value::Null);
    assert_eq!(shards["basis"], "emitted");
    assert_eq!(shards["balance"]["keys"], 3000, "{shards}");
    let rows = shards["shards"].as_array().expect("shards");
    assert_eq!(rows.len(), 6);
    // Hot shards are exactly those above the mean by the threshold.
    let mean = shards["balance"]["mean"].as_f64().expect("mean");
    for threshold in [0.0, 10.0, 25.0] {
        let s = server
            .get_json(&format!("/v1/shards?hot_pct={threshold}"), Some(ADMIN))
            .await;
        let mut expected: Vec<(i64, i64)> = s["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .map(|r| {
                (
                    r["emitted_events"].as_i64().expect("events"),
                    r["shard_id"].as_i64().expect("id"),
                )
            })
            .filter(|(events, _)| *events as f64 > mean * (1.0 + threshold / 100.0))
            .collect();
        expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let expected: Vec<i64> = expected.into_iter().map(|(_, id)| id).collect();
        assert_eq!(s["hot"], json!(expected), "hot_pct={threshold}");
    }
    let hot0 = server.get_json("/v1/shards?hot_pct=0", Some(ADMIN)).await;
    assert!(
        !hot0["hot"].as_array().expect("hot").is_empty(),
        "an uneven fixture has a shard above its mean"
    );
    for bad in ["hot_pct=-1", "hot_pct=lots", "threshold=3"] {
        let r = server
            .get(&format!("/v1/shards?{bad}"), Some(ADMIN))
            .send()
            .await
            .expect("request");
        assert_error(r, 400, "invalid_request").await;
    }

    // Maintenance keeps its recent runs, newest first.
    let runs = loop {
        let m = server.get_json("/v1/maintenance", Some(ADMIN)).await;
        if m["recent"].as_array().is_some_and(|r| r.len() >= 2) {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(runs["enabled"], true);
    let recent = runs["recent"].as_array().expect("recent");
    assert!(recent[0]["finished_at"].as_str() >= recent[1]["finished_at"].as_str());
    assert!(recent[0]["report"]["duration_ms"].is_number(), "{runs}");
    assert!(runs["runs"].as_u64().expect("runs") >= 2);
}

/// The console in a real browser: every page, a scoped token, a live
/// migration, the layout at 1280x800 and at a phone's width.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let chromium = shardlake_testkit::chromium();
    let (gate, open) = watch::channel(true);
    let mut shards = Vec::new();
    for id in 0..4 {
        shards.push(shard(id, open.clone()).await);
    }
    let endpoints = shards.iter().map(|(_, e)| e.clone()).collect();
    let server = TestServer::start(|c| {
        c.tokens = tokens();
        c.shards = endpoints;
        c.maintenance.interval_secs = 1;
    })
    .await;
    server.ingest_fixture(Some(ADMIN)).await;

    // A finished migration (which records topology v2), then one held
    // running behind closed shards until the browser has seen it.
    let start = |body: Value| {
        let server = &server;
        async move {
            let r = server.post_json("/v1/migrations", Some(ADMIN), &body).await;
            assert_eq!(r.status(), 202);
            r.headers()["location"]
                .to_str()
                .expect("location")
                .to_owned()
        }
    };
    let first = start(json!({"add_shard": 3, "current":
        {"version": 1, "shards": [0, 1, 2], "strategy": {"kind": "jump"}}}))
    .await;
    loop {
        let report = server.get_json(&first, Some(ADMIN)).await;
        if report["status"] != "running" {
            assert_eq!(report["status"], "completed", "{report}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gate.send_replace(false);
    let held = start(json!({"topology":
        {"version": 1, "shards": [0, 1, 2, 3], "strategy": {"kind": "hash"}}}))
    .await;
    // The browser's maintenance table needs a run to show.
    loop {
        let m = server.get_json("/v1/maintenance", Some(ADMIN)).await;
        if m["recent"].as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let out = tempfile::Builder::new()
        .prefix("shardlake-console-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let mut child = tokio::process::Command::new(shardlake_testkit::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/scripts/console_browser.py"
        ))
        .args(["--url", &server.url("")])
        .args(["--admin", ADMIN, "--scoped", ACME])
        .arg("--chromium")
        .arg(&chromium)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut report = None;
    while let Some(line) = lines.next_line().await.expect("stdout") {
        if line == "open-gate" {
            // The browser has shown the migration running: let it finish.
            let running = server.get_json(&held, Some(ADMIN)).await;
            assert_eq!(running["status"], "running", "{running}");
            gate.send_replace(true);
            stdin.write_all(b"go\n").await.expect("stdin");
        } else if line.starts_with('{') {
            report = Some(line);
        }
    }
    let output = child.wait_with_output().await.expect("python finishes");
    assert!(
        output.status.success(),
        "the browser script failed (screenshots in {}):\n{}",
        out.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&report.expect("a report")).expect("json");
    for path in report["screenshots"].as_array().expect("screenshots") {
        println!("console screenshot: {}", path.as_str().unwrap_or(""));
    }
    println!(
        "console: first contentful paint {} ms, DOMContentLoaded {} ms, load {} ms, {} B transferred; \
         again (cached): first contentful paint {} ms",
        report["first_contentful_paint_ms"],
        report["dom_content_loaded_ms"],
        report["load_ms"],
        report["bytes_transferred"],
        report["reload_first_contentful_paint_ms"],
    );
    // The second visit takes every hashed asset from the browser's cache.
    assert_eq!(report["reload_assets_from_cache"], 10, "{report}");

    // No script error and no Content-Security-Policy violation anywhere.
    assert_eq!(report["console_errors"], json!([]), "{report}");
    assert!(
        report["landed_on"]
            .as_str()
            .is_some_and(|u| u.ends_with("/console/"))
    );
    assert!(report["sign_in_visible"].as_bool().expect("bool"));
    assert!(
        report["bad_token_error"]
            .as_str()
            .is_some_and(|e| e.contains("unauthorized: unknown token"))
    );
    assert_eq!(report["token_in_session_storage"], true);
    assert_eq!(report["token_in_url"], false);
    assert_eq!(report["token_after_sign_out"], Value::Null);

    // The query's table equals what HTTP answers.
    let expected: Vec<Value> = FIXTURE_COUNTS
        .iter()
        .map(|(ns, n)| json!([ns, n.to_string()]))
        .collect();
    assert_eq!(report["by_namespace"], json!(expected));
    // Counts per namespace come from metadata: nothing scanned, every
    // partition covered.
    let stats = &report["stats_first"];
    assert_eq!(stats["Answered from"], "metadata", "{stats}");
    assert_eq!(stats["Files scanned"], "0 of 4", "{stats}");
    assert_eq!(stats["Rows scanned"], "0 of 3,000", "{stats}");
    assert_eq!(stats["Partitions"], "4 of 4", "{stats}");
    assert_eq!(stats["Rows returned"], "4", "{stats}");
    // Counts per hour read `ts` from every file.
    let stats = &report["stats_scan"];
    assert_eq!(stats["Answered from"], "scan", "{stats}");
    assert_eq!(stats["Files scanned"], "4 of 4", "{stats}");
    assert_eq!(stats["Rows scanned"], "3,000 of 3,000", "{stats}");
    assert!(
        stats["Bytes scanned"]
            .as_str()
            .is_some_and(|b| !b.starts_with("0 B") && b.contains(" of ")),
        "{stats}"
    );
    assert_eq!(report["cache_hit_again"], "true");
    assert!(
        report["stats_again"]["Answered from"]
            .as_str()
            .is_some_and(|s| s.contains("cache")),
        "{report}"
    );
    assert_eq!(report["chart_tab_visible"], true);
    assert_eq!(report["chart_kind_namespace"], "bar");
    assert_eq!(report["chart_kind_time"], "line");
    assert!(
        report["chart_series_time"].as_array().is_some_and(|s| s
            .iter()
            .any(|s| s.as_str().is_some_and(|s| s.starts_with("events")))),
        "{report}"
    );
    assert_eq!(report["page_1_label"], "Rows 1–100 of 250");
    assert_eq!(report["page_1_rows"], 100);
    assert_eq!(report["page_2_label"], "Rows 101–200 of 250");
    assert_eq!(report["page_last_label"], "Rows 201–250 of 250");
    assert_eq!(report["page_last_rows"], 50);
    assert_eq!(report["export_header"], "namespace,seq,event_type");
    assert_eq!(report["export_rows"], 250);
    assert_eq!(
        report["export_json_columns"],
        json!(["namespace", "seq", "event_type"])
    );
    assert_eq!(report["export_json_rows"], 250);
    assert_eq!(report["export_ndjson_rows"], 250);
    assert_eq!(report["export_ndjson_stats_last"], true);
    assert!(
        report["plan_types"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("physical_plan"))),
        "{report}"
    );
    assert!(
        report["plan_operators"].as_array().is_some_and(|ops| ops
            .iter()
            .any(|o| o.as_str().is_some_and(|o| o.ends_with("Exec")))),
        "{report}"
    );
    assert!(
        report["error_text"]
            .as_str()
            .is_some_and(|e| e.starts_with("invalid_query") && e.contains("no_such_column")),
        "{report}"
    );
    assert_eq!(report["error_not_allowed"], "statement_not_allowed");
    let history = report["history"].as_array().expect("history");
    assert_eq!(history[0], json!(["DROP TABLE events", true]));
    assert!(history.iter().any(|h| h[1] == false));
    assert_eq!(report["tab_indents"], "  x");

    // The lake page: the fixture's namespaces, a maintenance run.
    assert!(
        report["lake_totals"]
            .as_str()
            .is_some_and(|t| t.contains("3,000")),
        "{report}"
    );
    let lake_ns: Vec<Value> = report["lake_namespaces"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| json!([r[0], r[1]]))
        .collect();
    let expected: Vec<Value> = FIXTURE_COUNTS
        .iter()
        .map(|(ns, n)| {
            json!([
                ns,
                format!("{},{:03}", n / 1000, n % 1000).trim_start_matches("0,")
            ])
        })
        .collect();
    assert_eq!(lake_ns, expected);
    assert!(report["lake_maintenance_rows"].as_u64() >= Some(1));
    assert!(report["lake_snapshot_rows"].as_u64() >= Some(1));

    // The shards page: the recorded topology, six emitting shards (four in
    // the topology), the held migration running, then completed by polling.
    assert!(
        report["topology"]
            .as_str()
            .is_some_and(|t| t.contains("Version 2") && t.contains("0, 1, 2, 3")),
        "{report}"
    );
    assert_eq!(report["shards_rows"].as_array().map(Vec::len), Some(6));
    let before = report["migration_before"].as_array().expect("migrations");
    assert_eq!(before.len(), 2, "{report}");
    assert_eq!(before[0][1], "running", "{report}");
    assert_eq!(before[1][1], "completed", "{report}");
    let after = report["migration_after"].as_array().expect("migrations");
    assert_eq!(after[0][1], "completed", "{report}");
    assert_eq!(after[0][0], before[0][0], "{report}");
    assert_eq!(report["shards_page_not_reloaded"], true);

    // Readable at 1280x800 and at 420 px: nothing wider than the window
    // (wide tables scroll inside their own box).
    for key in [
        "overflow_query",
        "overflow_lake",
        "overflow_shards",
        "overflow_narrow_query",
        "overflow_narrow_lake",
    ] {
        assert!(report[key].as_i64() <= Some(0), "{key}: {report}");
    }

    // A scoped token sees its namespace only, on every page.
    assert!(
        report["who_scoped"]
            .as_str()
            .is_some_and(|w| w.contains("acme") && w.contains("tenant-001"))
    );
    assert_eq!(
        report["scoped_by_namespace"],
        json!([["tenant-001", "724"]])
    );
    assert_eq!(
        report["scoped_lake_namespaces"]
            .as_array()
            .map(|rows| rows.iter().map(|r| r[0].clone()).collect::<Vec<_>>()),
        Some(vec![json!("tenant-001")])
    );
    let lake_text = report["scoped_lake_text"].as_str().expect("text");
    for (other, _) in FIXTURE_COUNTS.iter().filter(|(ns, _)| *ns != "tenant-001") {
        assert!(!lake_text.contains(other), "{other} shown to acme");
    }
    assert!(
        report["scoped_maintenance"]
            .as_str()
            .is_some_and(|t| t.contains("admin tokens only"))
    );
    assert!(
        report["scoped_shards"]
            .as_str()
            .is_some_and(|t| t.contains("admin tokens"))
    );
    assert_eq!(report["scoped_shards_admin_hidden"], true);
}
