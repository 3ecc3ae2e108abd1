//! End-to-end tests of the `shardlake` binary: real processes, real files,
//! real SIGKILLs.

mod cluster;
mod crash;
mod docs;
mod first_hour;
mod ingest;
mod maintain;
mod migrate;
mod route;
mod serve;
mod shared_lake;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use shardlake_testkit::S3Bucket;

/// The binary under test.
pub fn shardlake() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardlake"))
}

/// Data directories whose table files live on S3 or in the Parquet format,
/// with the environment that says so (the CLI reads the format, storage
/// settings and AWS credentials from it, as an operator would set them).
static LAKE_ENV: Mutex<BTreeMap<PathBuf, Vec<(String, String)>>> = Mutex::new(BTreeMap::new());

/// Makes every later command against `warehouse` use the plain-Parquet
/// format (through `SHARDLAKE_FORMAT`, as an operator would set it).
pub fn use_parquet(warehouse: &Path) {
    LAKE_ENV
        .lock()
        .expect("registry")
        .entry(warehouse.to_path_buf())
        .or_default()
        .push(("SHARDLAKE_FORMAT".to_owned(), "parquet".to_owned()));
}

/// Makes every later command against `warehouse` keep its catalog and
/// control state in the database at `url` (through `SHARDLAKE_CATALOG__URL`,
/// as an operator would set it).
pub fn use_catalog(warehouse: &Path, url: &str) {
    LAKE_ENV
        .lock()
        .expect("registry")
        .entry(warehouse.to_path_buf())
        .or_default()
        .push(("SHARDLAKE_CATALOG__URL".to_owned(), url.to_owned()));
}

/// Makes every later command against `warehouse` keep its table files in
/// `bucket` under `prefix`.
pub fn put_on_s3(warehouse: &Path, bucket: &S3Bucket, prefix: &str) {
    let storage = bucket.storage(prefix);
    let env = vec![
        (
            "SHARDLAKE_STORAGE__LOCATION".to_owned(),
            storage.location.expect("location"),
        ),
        (
            "SHARDLAKE_STORAGE__ENDPOINT".to_owned(),
            storage.endpoint.expect("endpoint"),
        ),
        (
            "AWS_ACCESS_KEY_ID".to_owned(),
            storage.access_key_id.expect("key"),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".to_owned(),
            storage.secret_access_key.expect("secret"),
        ),
        ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
    ];
    LAKE_ENV
        .lock()
        .expect("registry")
        .entry(warehouse.to_path_buf())
        .or_default()
        .extend(env);
}

/// The binary, pointed at the lake in `warehouse` (and its S3 storage if
/// [`put_on_s3`] registered one, and its format if [`use_parquet`] did).
pub fn shardlake_at(warehouse: &Path) -> Command {
    let mut cmd = shardlake();
    cmd.arg("--warehouse").arg(warehouse);
    if let Some(env) = LAKE_ENV.lock().expect("registry").get(warehouse) {
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
    }
    cmd
}

/// Spawns `cmd` (a server: `serve`, `worker`, `shard serve`) with stdout
/// piped, waits up to a minute for its first line, the banner naming its
/// `http://` URL, and keeps reading the rest so the process never blocks
/// on a full pipe. Returns the process (killed on drop), the banner and
/// the URL.
pub async fn spawn_server(cmd: Command) -> (tokio::process::Child, String, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::from(cmd)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let banner = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
        .await
        .expect("it starts")
        .expect("read")
        .expect("a banner");
    let url = banner
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, banner, url)
}

/// Runs the binary with `args` against `warehouse`, expecting success.
pub fn run_ok(warehouse: &Path, args: &[&str]) -> Output {
    let out = shardlake_at(warehouse)
        .args(args)
        .output()
        .expect("spawn shardlake");
    assert!(
        out.status.success(),
        "shardlake {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Writes `shardlake generate` output to a file and returns its path.
pub fn generate(dir: &Path, events: u64, shards: u32, namespaces: u32, seed: u64) -> PathBuf {
    let out = shardlake()
        .args([
            "generate",
            "--events",
            &events.to_string(),
            "--shards",
            &shards.to_string(),
            "--namespaces",
            &namespaces.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .output()
        .expect("spawn generate");
    assert!(out.status.success());
    let path = dir.join(format!("events-{events}-{seed}.ndjson"));
    std::fs::write(&path, &out.stdout).expect("write events");
    path
}

/// Runs SQL and returns the JSON document `--format json --json-arrays`
/// prints (rows as arrays).
pub fn query_json(warehouse: &Path, sql: &str) -> serde_json::Value {
    let out = run_ok(
        warehouse,
        &["query", "--format", "json", "--json-arrays", sql],
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

/// Checks the lake holds exactly `n` events, each `(shard_id, seq)` once,
/// with positions 1..=n.
pub fn assert_exactly_n(warehouse: &Path, n: u64) {
    let doc = query_json(
        warehouse,
        "SELECT count(*) AS total, count(DISTINCT shard_id * 1000000000 + seq) AS distinct_events, \
         count(DISTINCT position) AS positions, min(position) AS first, max(position) AS last FROM events",
    );
    let row = &doc["rows"][0];
    assert_eq!(row[0], n, "rows: {doc}");
    assert_eq!(row[1], n, "distinct (shard_id, seq): {doc}");
    assert_eq!(row[2], n, "distinct positions: {doc}");
    assert_eq!(row[3], 1, "first position: {doc}");
    assert_eq!(row[4], n, "last position: {doc}");
}
