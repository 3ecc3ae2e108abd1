//! Crash safety: an ingesting process is killed with SIGKILL at each crash
//! point of the commit path (and at arbitrary moments); after a restart that
//! re-sends everything, every event is in the lake exactly once.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use shardlake_testkit::{moto, postgres};

use crate::{
    assert_exactly_n, generate, put_on_s3, run_ok, shardlake_at, use_catalog, use_parquet,
};

const EVENTS: u64 = 40_000;

/// Every crash point of the commit path; `:2` crashes in the second
/// commit, after a first commit landed.
const POINTS: [&str; 8] = [
    "commit.before_write:2",
    "write.mid_file",
    "write.mid_file:3",
    "write.between_files:2",
    "commit.before_catalog",
    "commit.before_catalog:2",
    "commit.after_catalog",
    "commit.after_catalog:2",
];

pub(crate) fn spawn_ingest(warehouse: &Path, file: &Path, crash_at: Option<&str>) -> Child {
    let mut cmd = shardlake_at(warehouse);
    cmd.args([
        "ingest",
        "--quiet",
        "--batch-events",
        "5000",
        "--flush-ms",
        "20",
    ])
    .arg(file)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if let Some(point) = crash_at {
        cmd.env("SHARDLAKE_CRASH_AT", point);
    }
    cmd.spawn().expect("spawn ingest")
}

/// Waits until the child reports reaching its crash point, then SIGKILLs it.
pub(crate) fn kill_at_crash_point(child: Child, point: &str) {
    kill_at_crash_point_when(child, point, || {});
}

/// Waits until the child reports reaching its crash point (where it blocks
/// until killed), runs `meanwhile`, then SIGKILLs it.
pub(crate) fn kill_at_crash_point_when(mut child: Child, point: &str, meanwhile: impl FnOnce()) {
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("crash point") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("crash point {point} never reached"));
    assert!(
        line.contains(point.split(':').next().unwrap_or(point)),
        "{line}"
    );
    meanwhile();
    // Child::kill sends SIGKILL on Unix: no destructors, no flushing.
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap");
    assert!(!status.success());
}

#[test]
fn sigkill_at_every_crash_point_then_resend_yields_exactly_once() {
    crash_at_every_point(false);
}

/// The same crash points in the plain-Parquet format, where "catalog"
/// means the commit's last file: before it the commit is incomplete and
/// invisible, after it complete.
#[test]
fn parquet_sigkill_at_every_crash_point_then_resend_yields_exactly_once() {
    crash_at_every_point(true);
}

fn crash_at_every_point(parquet: bool) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = generate(tmp.path(), EVENTS, 8, 4, 11);
    for point in POINTS {
        let wh = tmp
            .path()
            .join(format!("lake-{}", point.replace([':', '.'], "-")));
        if parquet {
            use_parquet(&wh);
        }
        crash_then_resend(&wh, &file, point);
    }
}

/// Kills an ingest at `point`, restarts it re-sending everything (as a
/// shard that never got its ack would), and checks the lake.
fn crash_then_resend(wh: &Path, file: &Path, point: &str) {
    kill_at_crash_point(spawn_ingest(wh, file, Some(point)), point);
    let out = run_ok(
        wh,
        &["ingest", "--quiet", "--json", file.to_str().expect("path")],
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    let accepted = summary["accepted"].as_u64().expect("accepted");
    let duplicates = summary["duplicates"].as_u64().expect("duplicates");
    assert_eq!(accepted + duplicates, EVENTS, "{point}: {summary}");
    if point.starts_with("commit.after_catalog") {
        assert!(
            duplicates > 0,
            "{point}: the crashed commit had landed: {summary}"
        );
    }
    assert_exactly_n(wh, EVENTS);
}

/// The same crashes with the table files on S3, in both formats: a data
/// file cut off mid-upload, a commit dying before and after its commit
/// point.
#[test]
fn on_s3_sigkill_at_crash_points_then_resend_yields_exactly_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = generate(tmp.path(), EVENTS, 8, 4, 13);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let bucket = runtime.block_on(moto().bucket());
    for (format, point) in [
        ("iceberg", "write.mid_file:3"),
        ("iceberg", "commit.before_catalog:2"),
        ("iceberg", "commit.after_catalog:2"),
        ("parquet", "write.between_files:2"),
        ("parquet", "commit.before_catalog:2"),
    ] {
        let name = format!("lake-{format}-{}", point.replace([':', '.'], "-"));
        let wh = tmp.path().join(&name);
        put_on_s3(&wh, &bucket, &name);
        if format == "parquet" {
            use_parquet(&wh);
        }
        crash_then_resend(&wh, &file, point);
    }
    // Only the catalog database is local; the table is in the bucket.
    let keys = runtime.block_on(bucket.keys(""));
    assert!(keys.iter().any(|k| k.ends_with(".parquet")), "{keys:?}");
    assert!(
        !tmp.path()
            .join("lake-iceberg-write-mid_file-3/warehouse")
            .exists()
    );
}

/// The same crash points with the catalog on PostgreSQL (the commit point
/// is the compare-and-swap on its row there) and the files on S3: the
/// layout of several servers on one lake.
#[test]
fn on_postgres_sigkill_at_every_crash_point_then_resend_yields_exactly_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = generate(tmp.path(), EVENTS, 8, 4, 14);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let bucket = runtime.block_on(moto().bucket());
    for point in POINTS {
        let name = format!("lake-pg-{}", point.replace([':', '.'], "-"));
        let wh = tmp.path().join(&name);
        put_on_s3(&wh, &bucket, &name);
        use_catalog(&wh, &runtime.block_on(postgres().database()));
        crash_then_resend(&wh, &file, point);
        assert!(!wh.join("catalog.db").exists(), "{point}: no local catalog");
    }
}

#[test]
fn sigkill_at_arbitrary_moments_then_resend_yields_exactly_once() {
    kill_at_arbitrary_moments(false);
}

#[test]
fn parquet_sigkill_at_arbitrary_moments_then_resend_yields_exactly_once() {
    kill_at_arbitrary_moments(true);
}

fn kill_at_arbitrary_moments(parquet: bool) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = generate(tmp.path(), EVENTS, 8, 4, 12);
    let wh = tmp.path().join("lake");
    if parquet {
        use_parquet(&wh);
    }
    // Deterministic "random" delays spread over an ingest's lifetime.
    for delay_ms in [30u64, 120, 250, 400, 700] {
        let mut child = spawn_ingest(&wh, &file, None);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
    }
    run_ok(&wh, &["ingest", "--quiet", file.to_str().expect("path")]);
    assert_exactly_n(&wh, EVENTS);
}
