//! `shardlake maintain`, `shardlake snapshots` and time travel as a user
//! runs them, and maintenance killed with SIGKILL at each of its crash
//! points: the lake reopens with every event exactly once, and the next
//! run finishes the job.

use std::path::Path;
use std::process::Stdio;

use serde_json::Value;

use crate::crash::{kill_at_crash_point, kill_at_crash_point_when, spawn_ingest};
use crate::{assert_exactly_n, generate, run_ok, shardlake_at, use_parquet};

/// The flags that make a run drop everything it may.
const EVERYTHING: [&str; 8] = [
    "--retention-secs",
    "0",
    "--min-snapshots",
    "1",
    "--grace-secs",
    "0",
    "--min-files",
    "2",
];

/// Commits the events of `file` into the lake at `wh` in `commits`
/// commits of equal size, through the library (the CLI's `ingest` cuts
/// its input into 4 MiB chunks, so it cannot make many small commits).
fn ingest_in_commits(wh: &Path, file: &Path, commits: usize, parquet: bool) {
    let text = std::fs::read(file).expect("events");
    let lines: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let format = if parquet {
            shardlake_lake::TableFormat::Parquet
        } else {
            shardlake_lake::TableFormat::Iceberg
        };
        let lake = shardlake_lake::Lake::open_with(
            wh,
            &shardlake_lake::ObjectStorageConfig::default(),
            format,
        )
        .await
        .expect("lake");
        let emitter = shardlake_testkit::quick_emitter(&lake).await;
        for chunk in lines.chunks(lines.len().div_ceil(commits)) {
            let body = chunk.join(&b'\n');
            let ack = emitter
                .emit(shardlake_lake::EmitInput::Ndjson(&body))
                .await
                .expect("commit");
            assert!(ack.snapshot_id.is_some());
        }
        emitter.close().await.expect("close");
    });
}

/// `shardlake ingest` of `file`: the summary.
fn ingest(wh: &Path, file: &Path) -> Value {
    let out = run_ok(
        wh,
        &["ingest", "--quiet", "--json", file.to_str().expect("path")],
    );
    serde_json::from_slice(&out.stdout).expect("summary")
}

fn maintain_json(wh: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["maintain", "--json"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&EVERYTHING);
    let out = run_ok(wh, &args);
    serde_json::from_slice(&out.stdout).expect("report")
}

fn snapshots(wh: &Path) -> Vec<Value> {
    let out = run_ok(wh, &["snapshots", "--json"]);
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("snapshots")
        .as_array()
        .expect("a list")
        .clone()
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        files_under(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn maintain_compacts_expires_and_cleans_and_time_travel_reaches_what_is_retained() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let wh = tmp.path().join("lake");
    let file = generate(tmp.path(), 12_000, 6, 3, 5);
    ingest_in_commits(&wh, &file, 12, false);
    let commits = 12;
    let listed = snapshots(&wh);
    assert_eq!(listed.len() as u64, commits);

    // Time travel by id and by time reach the same snapshot.
    let third = &listed[2];
    let id = third["snapshot_id"]
        .as_str()
        .expect("a string id")
        .to_owned();
    let at = third["committed_at"].as_str().expect("time");
    let sql = "SELECT count(*) FROM events";
    let by_id = run_ok(
        &wh,
        &[
            "query",
            "--format",
            "json",
            "--json-arrays",
            "--snapshot",
            &id,
            sql,
        ],
    );
    let by_id: Value = serde_json::from_slice(&by_id.stdout).expect("json");
    let by_time = run_ok(
        &wh,
        &[
            "query",
            "--format",
            "json",
            "--json-arrays",
            "--as-of",
            at,
            sql,
        ],
    );
    let by_time: Value = serde_json::from_slice(&by_time.stdout).expect("json");
    assert_eq!(by_id["rows"][0][0], third["total_rows"]);
    assert_eq!(by_time["rows"], by_id["rows"]);
    assert_eq!(by_time["stats"]["snapshot_ids"][0], id.as_str());

    // A dry run changes nothing.
    let table = wh.join("warehouse");
    let before = files_under(&table);
    let dry = maintain_json(&wh, &["--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert!(
        dry["compaction"]["files_removed"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{dry}"
    );
    assert_eq!(files_under(&table), before);
    assert_eq!(snapshots(&wh).len() as u64, commits);

    let report = maintain_json(&wh, &[]);
    assert!(
        report["compaction"]["files_added"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{report}"
    );
    assert_eq!(
        report["expiry"]["snapshots_expired"].as_u64(),
        Some(commits),
        "{report}"
    );
    assert!(
        report["cleanup"]["files_deleted"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{report}"
    );
    assert!(files_under(&table) < before);
    assert_eq!(snapshots(&wh).len(), 1);
    assert_exactly_n(&wh, 12_000);

    // The expired snapshot is refused by name, never answered from another.
    let out = shardlake_at(&wh)
        .args(["query", "--snapshot", &id, sql])
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("snapshot_expired") && err.contains(&id),
        "{err}"
    );

    // People get a readable report.
    let out = run_ok(&wh, &["maintain"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for line in ["compaction:", "expiry:", "cleanup:", "done in"] {
        assert!(text.contains(line), "{text}");
    }
    let out = run_ok(&wh, &["snapshots"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(current)"));
}

#[test]
fn a_parquet_lake_is_maintained_from_the_command_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let wh = tmp.path().join("lake");
    use_parquet(&wh);
    let file = generate(tmp.path(), 8_000, 4, 2, 6);
    ingest_in_commits(&wh, &file, 8, true);
    let before = files_under(&wh.join("warehouse"));
    let report = maintain_json(&wh, &[]);
    assert!(
        report["compaction"]["files_added"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{report}"
    );
    assert!(
        report["expiry"]["files_deleted"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{report}"
    );
    assert!(files_under(&wh.join("warehouse")) < before);
    assert_eq!(snapshots(&wh).len(), 1);
    assert_exactly_n(&wh, 8_000);
    let again = ingest(&wh, &file);
    assert_eq!(again["duplicates"], 8_000, "{again}");
}

/// Kills `shardlake maintain` at `point`, then checks nothing was lost or
/// doubled, that the next run completes (the dead run's lease does not
/// block it), and that a re-send is all duplicates.
fn kill_maintenance_at(wh: &Path, file: &Path, events: u64, point: &str, actions: &[&str]) {
    let mut cmd = shardlake_at(wh);
    cmd.arg("maintain")
        .args(actions)
        .args(EVERYTHING)
        .env("SHARDLAKE_CRASH_AT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    kill_at_crash_point(cmd.spawn().expect("spawn maintain"), point);
    assert_exactly_n(wh, events);
    let report = maintain_json(wh, &[]);
    assert_eq!(report["skipped"], Value::Null, "{point}: {report}");
    assert_exactly_n(wh, events);
    let again = ingest(wh, file);
    assert_eq!(
        again["duplicates"].as_u64(),
        Some(events),
        "{point}: {again}"
    );
    assert_exactly_n(wh, events);
}

#[test]
fn sigkill_at_every_maintenance_crash_point_loses_and_doubles_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let small = generate(tmp.path(), 6_000, 6, 3, 7);
    // In 120 commits: enough small manifests for a merge to be due.
    let many = generate(tmp.path(), 12_000, 6, 3, 8);
    for (format, point, file, events, commits, actions) in [
        (
            "iceberg",
            "maintain.compact.before_commit",
            &small,
            6_000,
            12,
            &[][..],
        ),
        (
            "iceberg",
            "maintain.compact.after_commit",
            &small,
            6_000,
            12,
            &[],
        ),
        (
            "iceberg",
            "maintain.merge.before_commit",
            &many,
            12_000,
            120,
            &["merge-manifests"],
        ),
        (
            "iceberg",
            "maintain.expire.before_commit",
            &small,
            6_000,
            12,
            &[],
        ),
        (
            "iceberg",
            "maintain.cleanup.mid_delete",
            &small,
            6_000,
            12,
            &[],
        ),
        (
            "parquet",
            "maintain.compact.before_commit",
            &small,
            6_000,
            12,
            &[],
        ),
        (
            "parquet",
            "maintain.compact.after_commit",
            &small,
            6_000,
            12,
            &[],
        ),
        (
            "parquet",
            "maintain.expire.before_commit",
            &small,
            6_000,
            12,
            &[],
        ),
    ] {
        let wh = tmp
            .path()
            .join(format!("{format}-{}", point.replace('.', "-")));
        if format == "parquet" {
            use_parquet(&wh);
        }
        ingest_in_commits(&wh, file, commits, format == "parquet");
        kill_maintenance_at(&wh, file, events, point, actions);
    }
}

#[test]
fn maintenance_beside_a_writer_killed_mid_commit_loses_and_doubles_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = generate(tmp.path(), 6_000, 6, 3, 9);
    // A superset: the first 6,000 events again, then 6,000 more.
    let both = generate(tmp.path(), 12_000, 6, 3, 9);
    for parquet in [false, true] {
        let wh = tmp.path().join(if parquet { "parquet" } else { "iceberg" });
        if parquet {
            use_parquet(&wh);
        }
        ingest_in_commits(&wh, &first, 12, parquet);
        // A second writer stops with its data files written and its commit
        // not made (the Parquet format: all files but the sealing one), and
        // blocks there; meanwhile, maintenance with no grace period at all.
        let writer = spawn_ingest(&wh, &both, Some("commit.before_catalog"));
        kill_at_crash_point_when(writer, "commit.before_catalog", || {
            let report = maintain_json(&wh, &[]);
            assert_eq!(report["skipped"], Value::Null, "{report}");
            if parquet {
                // A Parquet lake's in-flight files are the writer's to judge.
                assert!(report["compaction"]["skipped"].is_string(), "{report}");
                assert!(report["cleanup"]["skipped"].is_string(), "{report}");
            }
        });
        // The writer's retry commits everything exactly once.
        let out = run_ok(
            &wh,
            &["ingest", "--quiet", "--json", both.to_str().expect("path")],
        );
        let summary: Value = serde_json::from_slice(&out.stdout).expect("summary");
        assert_eq!(
            summary["accepted"].as_u64().unwrap_or(0) + summary["duplicates"].as_u64().unwrap_or(0),
            12_000,
            "{summary}"
        );
        assert_exactly_n(&wh, 12_000);
    }
}
