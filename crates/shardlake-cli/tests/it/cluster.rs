//! A cluster of real processes: two `shardlake worker`s on loopback over a
//! lake on S3 (moto), and `shardlake query --worker ...` as the
//! coordinator. Answers equal the local ones, the statistics say where they
//! ran, a worker without its secret refuses, a hung (SIGSTOPped) or killed
//! worker fails the query with `worker_unavailable`, and a worker refuses to
//! listen beyond loopback without a secret.

use std::path::Path;
use std::process::Stdio;

use serde_json::Value;

use crate::{generate, put_on_s3, query_json, run_ok, shardlake_at, spawn_server};

const SECRET: &str = "cluster-secret-for-the-test-0123";

/// A `shardlake worker` process and its URL.
struct WorkerProcess {
    child: tokio::process::Child,
    url: String,
}

async fn start_worker(warehouse: &Path) -> WorkerProcess {
    let mut cmd = shardlake_at(warehouse);
    cmd.args(["worker", "--listen", "127.0.0.1:0"])
        .env("SHARDLAKE_DISTRIBUTED__SECRET", SECRET)
        .stderr(Stdio::inherit());
    let (child, banner, url) = spawn_server(cmd).await;
    assert!(banner.contains("cluster secret required"), "{banner}");
    WorkerProcess { child, url }
}

/// `shardlake query` as a coordinator of `workers`.
fn query_on(
    warehouse: &Path,
    workers: &[&WorkerProcess],
    secret: &str,
    sql: &str,
) -> std::process::Output {
    let mut cmd = shardlake_at(warehouse);
    cmd.args([
        "query",
        "--format",
        "json",
        "--json-arrays",
        "--min-scan-bytes",
        "0",
    ]);
    for w in workers {
        cmd.args(["--worker", &w.url]);
    }
    cmd.env("SHARDLAKE_DISTRIBUTED__SECRET", secret)
        .arg(sql)
        .output()
        .expect("spawn query")
}

fn sorted_rows(doc: &Value) -> Vec<String> {
    let mut rows: Vec<String> = doc["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(Value::to_string)
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_answer_what_the_local_engine_answers() {
    let bucket = shardlake_testkit::moto().bucket().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = dir.path().join("lake");
    put_on_s3(&warehouse, &bucket, "cluster");
    let events = generate(dir.path(), 20_000, 8, 4, 7);
    run_ok(&warehouse, &["ingest", events.to_str().expect("utf-8")]);

    let a = start_worker(&warehouse).await;
    let mut b = start_worker(&warehouse).await;
    let sql = "SELECT namespace, count(*) AS n, count(DISTINCT entity_id) AS entities, sum(version) AS v \
               FROM events GROUP BY namespace";
    let local = query_json(&warehouse, sql);
    let out = query_on(&warehouse, &[&a, &b], SECRET, sql);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let distributed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(sorted_rows(&distributed), sorted_rows(&local));
    let (s, l) = (&distributed["stats"], &local["stats"]);
    assert!(s["workers"].as_u64() >= Some(1), "{s}");
    assert!(s["tasks"].as_u64() >= s["workers"].as_u64(), "{s}");
    assert_eq!(l["workers"], 0, "{l}");
    for key in [
        "files_scanned",
        "bytes_scanned",
        "rows_scanned",
        "shards_queried",
    ] {
        assert_eq!(s[key], l[key], "{key}: {s} vs {l}");
    }

    // The wrong secret: refused by the workers, with the retryable code.
    let out = query_on(&warehouse, &[&a, &b], "not-the-secret-0123456789", sql);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("worker_unavailable"), "{stderr}");
    assert!(stderr.contains("secret"), "{stderr}");

    // A hung worker (SIGSTOP: the kernel still accepts its connections,
    // nothing answers): the HTTP/2 keep-alive gives up on it and the query
    // fails with the same retryable error, inside the query timeout (the
    // CLI's 60 s: a timeout would say `query_timeout`).
    let pid = b.child.id().expect("pid").to_string();
    let signal = |sig: &str| {
        let sent = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
    };
    signal("-STOP");
    let out = query_on(&warehouse, &[&a, &b], SECRET, sql);
    signal("-CONT");
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("worker_unavailable"), "{stderr}");
    assert!(!stderr.contains("query_timeout"), "{stderr}");

    // A killed worker: the query fails, saying so; never a partial answer.
    b.child.kill().await.expect("kill");
    let out = query_on(&warehouse, &[&a, &b], SECRET, sql);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // JSON streams its opening before the first row: what was printed is
    // not an answer (it does not parse), and the exit status says so.
    assert!(
        serde_json::from_slice::<Value>(&out.stdout).is_err(),
        "no answer printed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("worker_unavailable"), "{stderr}");
    drop(a);
}

#[test]
fn a_worker_without_a_secret_stays_on_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = shardlake_at(&dir.path().join("lake"))
        .args(["worker", "--listen", "0.0.0.0:0"])
        .env_remove("SHARDLAKE_DISTRIBUTED__SECRET")
        .output()
        .expect("spawn worker");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("distributed.secret"), "{stderr}");
}
