//! `generate`, `ingest`, `query` and `demo` as a user runs them.

use crate::{assert_exactly_n, generate, query_json, run_ok};

#[test]
fn ingesting_the_same_file_twice_keeps_one_copy() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let wh = tmp.path().join("lake");
    let file = generate(tmp.path(), 30_000, 8, 4, 1);
    let file = file.to_str().expect("utf-8 path");

    let first = run_ok(&wh, &["ingest", file, "--json"]);
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).expect("summary");
    assert_eq!(first["accepted"], 30_000);
    assert_eq!(first["duplicates"], 0);
    assert_eq!(first["rejected"], 0);

    let second = run_ok(&wh, &["ingest", file, "--json"]);
    let second: serde_json::Value = serde_json::from_slice(&second.stdout).expect("summary");
    assert_eq!(second["accepted"], 0);
    assert_eq!(second["duplicates"], 30_000);
    assert_eq!(second["emitter"]["commits"], 0, "nothing new, no snapshot");

    assert_exactly_n(&wh, 30_000);
}

#[test]
fn bad_lines_are_reported_by_number_and_good_ones_land() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let wh = tmp.path().join("lake");
    let file = tmp.path().join("mixed.ndjson");
    std::fs::write(
        &file,
        concat!(
            r#"{"namespace":"a","shard_id":0,"seq":1,"partition_key":"k1","event_type":"thing.created","ts":"2026-01-01T00:00:00Z"}"#, "\n",
            r#"{"namespace":"a","shard_id":0,"seq":2,"partition_key":"k1","event_type":"thing.updated","ts":"2026-01-01T00:00:01Z","payload":[1,2]}"#, "\n",
            "garbage\n",
            r#"{"namespace":"b","shard_id":1,"seq":1,"partition_key":"k2","event_type":"thing.created","ts":"2026-01-01T00:00:02Z"}"#, "\n",
        ),
    )
    .expect("write");
    let out = crate::shardlake_at(&wh)
        .args(["ingest", file.to_str().expect("path"), "--json"])
        .output()
        .expect("spawn");
    // Exit status 1: not everything was stored.
    assert_eq!(out.status.code(), Some(1));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    assert_eq!(summary["accepted"], 2);
    assert_eq!(summary["rejected"], 2);
    let examples = summary["rejected_examples"].as_array().expect("examples");
    assert_eq!(examples[0]["index"], 2);
    assert_eq!(examples[0]["code"], "invalid_payload");
    assert_eq!(examples[1]["index"], 3);
    assert_eq!(examples[1]["code"], "malformed_json");
    let doc = query_json(
        &wh,
        "SELECT namespace, count(*) FROM events GROUP BY namespace ORDER BY namespace",
    );
    assert_eq!(doc["rows"], serde_json::json!([["a", 1], ["b", 1]]));
}

#[test]
fn query_formats_for_people_and_scripts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let wh = tmp.path().join("lake");
    let file = generate(tmp.path(), 2_000, 4, 3, 9);
    run_ok(&wh, &["ingest", file.to_str().expect("path"), "--quiet"]);
    let sql = "SELECT namespace, count(*) AS n FROM events GROUP BY namespace ORDER BY namespace";

    let doc = query_json(&wh, sql);
    assert_eq!(doc["columns"][0]["name"], "namespace");
    assert_eq!(doc["columns"][1]["type"], "Int64");
    let rows = doc["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    let total: u64 = rows.iter().map(|r| r[1].as_u64().expect("count")).sum();
    assert_eq!(total, 2_000);
    // Scan statistics ride along with the rows.
    assert_eq!(doc["stats"]["rows_returned"], 3);
    assert_eq!(doc["stats"]["partitions_total"], 3);
    assert_eq!(doc["stats"]["cache_hit"], false);
    let filtered = query_json(
        &wh,
        "SELECT count(DISTINCT entity_id) FROM events WHERE namespace = 'tenant-001'",
    );
    assert_eq!(filtered["stats"]["partitions_scanned"], 1);
    assert_eq!(filtered["stats"]["partitions_pruned"], 2);

    let csv = run_ok(&wh, &["query", "--format", "csv", sql]);
    let csv = String::from_utf8(csv.stdout).expect("utf-8");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "namespace,n");
    assert_eq!(lines.len(), 4);
    assert!(lines[1].starts_with("tenant-000,"));

    let table = run_ok(&wh, &["query", sql]);
    let table = String::from_utf8(table.stdout).expect("utf-8");
    assert!(table.contains("| namespace  | n "), "{table}");
    assert!(table.contains("3 rows in"), "{table}");
    assert!(table.contains("of 3 partitions"), "{table}");

    let bad = crate::shardlake()
        .arg("--warehouse")
        .arg(&wh)
        .args(["query", "SELECT nope FROM events"])
        .output()
        .expect("spawn");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nope"));
}

#[test]
fn demo_runs_on_an_empty_warehouse() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let wh = tmp.path().join("lake");
    let out = run_ok(&wh, &["demo", "--events", "5000"]);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.contains("5000 accepted, 0 duplicates"), "{text}");
    assert!(
        text.contains("0 accepted, 500 dropped as duplicates"),
        "{text}"
    );
    assert!(text.contains("invalid_timestamp"), "{text}");
    assert_exactly_n(&wh, 5_000);
}

#[test]
fn compact_turns_many_small_commits_into_few_files_and_keeps_every_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path().join("lake");
    let events = generate(dir.path(), 6_000, 8, 4, 3);
    // Twelve ingests of 500 events: twelve commits, each writing one file
    // per namespace.
    let text = std::fs::read_to_string(&events).expect("events");
    let all: Vec<&str> = text.lines().collect();
    for (i, chunk) in all.chunks(500).enumerate() {
        let part = dir.path().join(format!("part-{i}.ndjson"));
        std::fs::write(&part, chunk.join("\n") + "\n").expect("write part");
        run_ok(
            &warehouse,
            &["ingest", part.to_str().expect("utf8"), "--quiet"],
        );
    }
    let files = |w: &std::path::Path| -> u64 {
        let out = run_ok(
            w,
            &["query", "--format", "json", "SELECT count(*) FROM events"],
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        doc["stats"]["files_total"].as_u64().expect("files_total")
    };
    let before = files(&warehouse);
    assert!(before >= 40, "{before} files");
    let out = run_ok(&warehouse, &["compact", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report["files_removed"], before);
    assert_eq!(report["files_added"], 4);
    assert_eq!(report["rows"], 6_000);
    assert_eq!(files(&warehouse), 4);
    assert_exactly_n(&warehouse, 6_000);
    // Re-ingesting after compaction is still all duplicates.
    let out = run_ok(
        &warehouse,
        &[
            "ingest",
            events.to_str().expect("utf8"),
            "--json",
            "--quiet",
        ],
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (summary["accepted"].as_u64(), summary["duplicates"].as_u64()),
        (Some(0), Some(6_000))
    );
    let out = run_ok(&warehouse, &["compact"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("nothing to compact: ") && text.contains("already compact"),
        "the reason is given: {text}"
    );
}

#[test]
fn replay_prints_a_keys_events_as_ndjson_in_position_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path().join("lake");
    let events = generate(dir.path(), 5_000, 8, 4, 9);
    run_ok(
        &warehouse,
        &["ingest", events.to_str().expect("utf8"), "--quiet"],
    );
    let doc = query_json(
        &warehouse,
        "SELECT partition_key, count(*) AS n FROM events WHERE namespace = 'tenant-000' \
         GROUP BY 1 ORDER BY n DESC, partition_key LIMIT 1",
    );
    let key = doc["rows"][0][0].as_str().expect("key").to_owned();
    let n = doc["rows"][0][1].as_u64().expect("n");
    let out = run_ok(
        &warehouse,
        &[
            "replay",
            "--namespace",
            "tenant-000",
            "--partition-key",
            &key,
        ],
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is an event"))
        .collect();
    assert_eq!(lines.len() as u64, n);
    assert!(lines.iter().all(|e| e["partition_key"] == key.as_str()));
    let positions: Vec<i64> = lines
        .iter()
        .map(|e| e["position"].as_i64().expect("pos"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    // Resume after the first event.
    let after = positions[0].to_string();
    let out = run_ok(
        &warehouse,
        &[
            "replay",
            "--namespace",
            "tenant-000",
            "--partition-key",
            &key,
            "--after-position",
            &after,
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count() as u64,
        n - 1
    );
}
