//! What a newcomer runs in their first hour, and the traps it used to hold:
//! a mistyped warehouse that became a new empty lake answering 0, a
//! DuckDB glob that counted compacted rows twice, a table that buffered a
//! million rows, errors printed four times, exit 0 on rejected input.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;

use crate::{generate, query_json, run_ok, shardlake, shardlake_at};

/// Runs against `warehouse`, expecting failure; (status, stderr).
fn run_err(warehouse: &Path, args: &[&str]) -> (i32, String) {
    let out = shardlake_at(warehouse)
        .args(args)
        .output()
        .expect("spawn shardlake");
    assert!(
        !out.status.success(),
        "shardlake {args:?} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn small_lake(dir: &Path) -> std::path::PathBuf {
    let lake = dir.join("lake");
    let file = generate(dir, 2_000, 4, 3, 5);
    let out = run_ok(&lake, &["ingest", file.to_str().expect("path"), "--quiet"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("created a new iceberg lake at"),
        "a new lake is announced: {stderr}"
    );
    lake
}

#[test]
fn reading_commands_refuse_a_missing_or_mistyped_warehouse_and_create_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let typo = tmp.path().join("typo").join("lake");
    for args in [
        &["query", "SELECT count(*) FROM events"][..],
        &["replay", "--namespace", "tenant-000"],
        &["snapshots"],
        &["files"],
        &["maintain", "--dry-run"],
        &["migrate", "status"],
    ] {
        let (code, stderr) = run_err(&typo, args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("no shardlake lake at") && stderr.contains("shardlake ingest"),
            "{args:?}: {stderr}"
        );
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }

    // The table-files subfolder of a real lake is named for what it is.
    let lake = small_lake(tmp.path());
    let inside = lake.join("warehouse");
    let (_, stderr) = run_err(&inside, &["query", "SELECT count(*) FROM events"]);
    assert!(
        stderr.contains("is inside the shardlake lake at") && stderr.contains("--warehouse"),
        "{stderr}"
    );
    // Writing there is refused too: a lake nested in a lake is never meant.
    let file = generate(tmp.path(), 10, 1, 1, 1);
    let (_, stderr) = run_err(&inside, &["ingest", file.to_str().expect("path")]);
    assert!(
        stderr.contains("is inside the shardlake lake at"),
        "{stderr}"
    );
    assert!(!inside.join("catalog.db").exists());

    // A second ingest into the same lake says nothing about creating one.
    let again = run_ok(&lake, &["ingest", file.to_str().expect("path"), "--quiet"]);
    assert!(!String::from_utf8_lossy(&again.stderr).contains("created"));
}

#[test]
fn an_existing_lake_opens_in_its_own_format_and_a_contradicting_flag_names_both() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = tmp.path().join("lake");
    let file = generate(tmp.path(), 500, 2, 2, 3);
    let out = run_ok(
        &lake,
        &[
            "--table-format",
            "parquet",
            "ingest",
            file.to_str().expect("path"),
            "--quiet",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("created a new parquet lake"));
    // No flag: the lake knows its format.
    let doc = query_json(&lake, "SELECT count(*) FROM events");
    assert_eq!(doc["rows"][0][0], 500);
    let (_, stderr) = run_err(&lake, &["--table-format", "iceberg", "query", "SELECT 1"]);
    assert!(
        stderr.contains("is a parquet lake, not iceberg") && !stderr.contains("DataInvalid"),
        "{stderr}"
    );
}

#[test]
fn ingest_exits_non_zero_on_rejected_lines_and_reads_gzip_zstd_and_json_arrays() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = tmp.path().join("lake");
    let event = |seq: u32| {
        format!(
            r#"{{"namespace":"a","shard_id":0,"seq":{seq},"partition_key":"k{seq}","event_type":"thing.created","ts":"2026-01-01T00:00:00Z"}}"#
        )
    };

    // One bad line: the good ones land, the status says not everything did.
    let mixed = tmp.path().join("mixed.ndjson");
    std::fs::write(&mixed, format!("{}\nnot json\n{}\n", event(1), event(2))).expect("write");
    let out = shardlake_at(&lake)
        .args(["ingest", mixed.to_str().expect("path"), "--quiet"])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 of 3 lines were rejected"), "{stderr}");
    assert_eq!(
        query_json(&lake, "SELECT count(*) FROM events")["rows"][0][0],
        2
    );

    // Compressed input is decompressed, whatever the file is called.
    let ndjson = format!("{}\n{}\n", event(3), event(4));
    let gz = tmp.path().join("events.ndjson.gz");
    let mut gzip = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    gzip.stdin
        .take()
        .expect("stdin")
        .write_all(ndjson.as_bytes())
        .expect("feed gzip");
    std::fs::write(&gz, gzip.wait_with_output().expect("gzip").stdout).expect("write gz");
    run_ok(&lake, &["ingest", gz.to_str().expect("path"), "--quiet"]);
    let zst = tmp.path().join("events.bin");
    let compressed = zstd::encode_all(format!("{}\n", event(5)).as_bytes(), 3).expect("zstd");
    std::fs::write(&zst, compressed).expect("write zst");
    run_ok(&lake, &["ingest", zst.to_str().expect("path"), "--quiet"]);

    // A JSON array (what HTTP ingest accepts), pretty-printed even.
    let array = tmp.path().join("events.json");
    let pretty = serde_json::to_string_pretty(&serde_json::json!([
        serde_json::from_str::<serde_json::Value>(&event(6)).expect("event"),
        serde_json::from_str::<serde_json::Value>(&event(7)).expect("event"),
    ]))
    .expect("array");
    std::fs::write(&array, pretty).expect("write array");
    let out = run_ok(&lake, &["ingest", array.to_str().expect("path"), "--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    assert_eq!(summary["accepted"], 2, "{summary}");
    assert_eq!(
        query_json(&lake, "SELECT count(*) FROM events")["rows"][0][0],
        7
    );
}

#[test]
fn query_reads_files_and_stdin_caps_tables_and_renders_values_as_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = small_lake(tmp.path());

    // A table shows 40 rows and counts the rest; NULL is NULL.
    let out = run_ok(
        &lake,
        &[
            "query",
            "SELECT seq, NULL AS nothing FROM events ORDER BY position",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2,000 rows, 40 shown"), "{text}");
    assert!(text.contains("| NULL"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("| ")).count(), 41);

    // Several statements from a file, then from stdin.
    let script = tmp.path().join("q.sql");
    std::fs::write(
        &script,
        "SELECT count(*) AS n FROM events;\n-- a comment; with a semicolon\nSELECT 'a;b' AS s;\n",
    )
    .expect("script");
    let out = run_ok(
        &lake,
        &[
            "query",
            "-f",
            script.to_str().expect("path"),
            "--format",
            "csv",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n2000\ns\na;b\n");
    let mut child = shardlake_at(&lake)
        .args(["query", "--format", "csv"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"SELECT count(DISTINCT shard_id) AS shards FROM events")
        .expect("write sql");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "shards\n4\n");
    let out = run_ok(
        &lake,
        &["query", "--format", "csv", "-c", "SELECT 40 + 2 AS x"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x\n42\n");

    // JSON rows are objects; lists, structs and untyped NULL are JSON values.
    let doc = query_json(&lake, "SELECT 1 AS one");
    assert_eq!(
        doc["rows"],
        serde_json::json!([[1]]),
        "--json-arrays keeps the old shape"
    );
    let out = run_ok(
        &lake,
        &[
            "query",
            "--format",
            "json",
            "SELECT NULL AS nothing, [1, 2] AS list, named_struct('a', 1, 'b', 'x') AS s",
        ],
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        doc["rows"],
        serde_json::json!([{"nothing": null, "list": [1, 2], "s": {"a": 1, "b": "x"}}])
    );
    // The statistics say how an answer was made.
    let grouped = query_json(&lake, "SELECT namespace, count(*) FROM events GROUP BY 1");
    assert_eq!(grouped["stats"]["answered_from"], "metadata", "{grouped}");
    assert_eq!(grouped["stats"]["rows_scanned"], 0, "{grouped}");
    let scanned = query_json(&lake, "SELECT count(DISTINCT entity_id) FROM events");
    assert_eq!(scanned["stats"]["answered_from"], "scan", "{scanned}");
    assert_eq!(scanned["stats"]["rows_scanned"], 2_000, "{scanned}");
    // Snapshot ids are strings: exact in jq and JavaScript.
    let ids = doc["stats"]["snapshot_ids"].as_array().expect("ids");
    assert!(ids.iter().all(serde_json::Value::is_string), "{doc}");
    let out = run_ok(
        &lake,
        &[
            "query",
            "--format",
            "ndjson",
            "SELECT seq FROM events ORDER BY position LIMIT 2",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("{\"seq\":"));
}

#[test]
fn errors_are_said_once_and_a_closed_pipe_ends_quietly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = small_lake(tmp.path());
    let (code, stderr) = run_err(&lake, &["query", "SELEC 1"]);
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: invalid_query: "), "{stderr}");
    assert_eq!(stderr.matches("SELEC").count(), 1, "{stderr}");

    // `| head -1`: the reader leaves after one line.
    let mut child = shardlake_at(&lake)
        .args(["query", "--format", "csv", "SELECT * FROM events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read a line");
    assert!(first.starts_with("namespace,"), "{first}");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{:?}", out.status);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn files_lists_exactly_what_duckdb_must_read_after_compaction() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = tmp.path().join("lake");
    // Two commits, so each namespace has two files to compact.
    let events = generate(tmp.path(), 3_000, 4, 3, 5);
    let text = std::fs::read_to_string(&events).expect("events");
    let lines: Vec<&str> = text.lines().collect();
    for (i, half) in lines.chunks(1_500).enumerate() {
        let part = tmp.path().join(format!("half-{i}.ndjson"));
        std::fs::write(&part, half.join("\n") + "\n").expect("write");
        run_ok(&lake, &["ingest", part.to_str().expect("path"), "--quiet"]);
    }
    let out = run_ok(&lake, &["compact", "--min-files", "2"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("compacted"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let total = query_json(&lake, "SELECT count(*) FROM events")["rows"][0][0]
        .as_u64()
        .expect("count");

    // The replaced files stay on disk for time travel: a glob counts them.
    let glob = format!(
        "SELECT count(*) FROM read_parquet('{}/warehouse/shardlake/events/data/*/*.parquet')",
        lake.display()
    );
    assert!(duckdb(&glob) > total, "the glob double-counts");

    let statement = run_ok(&lake, &["files", "--format", "duckdb"]);
    let statement = String::from_utf8_lossy(&statement.stdout).trim().replacen(
        "SELECT *",
        "SELECT count(*)",
        1,
    );
    assert_eq!(duckdb(&statement), total);

    // pyarrow, from the JSON list (the recipe in docs/deployment.md).
    let listing = run_ok(&lake, &["files", "--format", "json"]);
    let out = std::process::Command::new(shardlake_testkit::python())
        .args([
            "-c",
            "import json, sys, pyarrow.dataset as ds\n\
             live = json.loads(sys.stdin.read())\n\
             print(ds.dataset([f['location'] for f in live['files']], format='parquet').count_rows())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(&listing.stdout)?;
            child.wait_with_output()
        })
        .expect("run pyarrow");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        total.to_string()
    );

    let paths = run_ok(&lake, &["files"]);
    let paths = String::from_utf8_lossy(&paths.stdout).into_owned();
    assert_eq!(
        paths.lines().count(),
        3,
        "one compacted file per namespace: {paths}"
    );
    assert!(paths.lines().all(|p| Path::new(p).is_file()), "{paths}");

    // Nothing left to compact says why.
    let out = run_ok(&lake, &["compact"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("nothing to compact: "), "{text}");
}

/// The one number `sql` returns, computed by DuckDB.
fn duckdb(sql: &str) -> u64 {
    let out = std::process::Command::new(shardlake_testkit::python())
        .args([
            "-c",
            "import duckdb, sys; print(duckdb.connect().execute(sys.argv[1]).fetchone()[0])",
            sql,
        ])
        .output()
        .expect("run duckdb");
    assert!(
        out.status.success(),
        "duckdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a count")
}

#[test]
fn help_groups_the_lake_options_apart() {
    let out = shardlake()
        .args(["query", "--help"])
        .output()
        .expect("help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Lake (every command):"), "{text}");
    assert!(text.contains("--max-rows"), "{text}");
}

/// The issue's trap: other events reusing stored `(shard_id, seq)`s are
/// still dropped, but no longer silently.
#[test]
fn events_that_reuse_a_stored_seq_are_reported_as_conflicting_duplicates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = tmp.path().join("lake");
    let first = generate(tmp.path(), 3_000, 4, 3, 1);
    let other = generate(tmp.path(), 3_000, 4, 3, 99);
    run_ok(&lake, &["ingest", first.to_str().expect("path"), "--quiet"]);
    let again = run_ok(&lake, &["ingest", first.to_str().expect("path"), "--json"]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).expect("summary");
    assert_eq!(
        again["conflicting_duplicates"], 0,
        "a true re-send: {again}"
    );
    let out = run_ok(&lake, &["ingest", other.to_str().expect("path")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("of the duplicates differ from the event the lake stores"),
        "{text}"
    );
}
