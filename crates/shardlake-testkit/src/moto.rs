//! One moto S3 server per test process.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use shardlake_lake::{ObjectStorageConfig, StorageRetryConfig};

/// A running `moto_server` on loopback.
pub struct MotoServer {
    endpoint: String,
    // Held for the life of the process. The server runs under a shell that
    // kills it when this child's stdin closes, which happens when the test
    // process exits, however it exits: no server outlives its tests.
    _guard: Child,
}

static MOTO: OnceLock<MotoServer> = OnceLock::new();

/// The process's moto server, started on first use.
pub fn moto() -> &'static MotoServer {
    MOTO.get_or_init(MotoServer::start)
}

/// Whether moto answers a ListBuckets on `port` (an unsigned GET of `/`,
/// which moto accepts).
fn answers_s3(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut answer = String::new();
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .and_then(|()| stream.read_to_string(&mut answer))
        .is_ok()
        && answer.contains("ListAllMyBucketsResult")
}

pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl MotoServer {
    /// Starts moto on a free port. The port is free when chosen but may be
    /// taken by another test's listener before Python binds it, so a start
    /// that fails to bind is retried on a new port, and readiness means
    /// an S3 answer from moto, not merely something listening.
    #[expect(
        clippy::zombie_processes,
        reason = "the guard is kept in Self for the process's life or waited for \
                  before the next attempt; the lint does not follow the loop"
    )]
    fn start() -> Self {
        let exe: PathBuf = crate::venv_tool("moto_server", "SHARDLAKE_TEST_MOTO_SERVER");
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = std::env::temp_dir().join(format!("shardlake-moto-{port}.log"));
            let mut guard = Command::new("sh")
                .arg("-c")
                .arg(r#""$0" -H 127.0.0.1 -p "$1" >"$2" 2>&1 & m=$!; read -r _; kill "$m""#)
                .arg(&exe)
                .arg(port.to_string())
                .arg(&log)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
            let endpoint = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if answers_s3(port) {
                    return Self {
                        endpoint,
                        _guard: guard,
                    };
                }
                last_log = std::fs::read_to_string(&log).unwrap_or_default();
                let lost_port = last_log.contains("Address already in use");
                if lost_port || Instant::now() >= deadline {
                    // Closing its stdin ends the shell and moto with it.
                    drop(guard.stdin.take());
                    let _ = guard.wait();
                    assert!(
                        lost_port,
                        "moto_server did not answer on {endpoint} within 60 s; its log: {last_log}"
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("moto_server lost its port three times; its last log: {last_log}")
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A new, empty bucket with a unique name.
    pub async fn bucket(&self) -> S3Bucket {
        let name = format!("lake-{}", uuid::Uuid::new_v4().simple());
        // moto accepts unsigned requests: no SDK needed to create a bucket.
        let response = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await
            .expect("create bucket");
        assert!(
            response.status().is_success(),
            "creating bucket {name}: {}",
            response.status()
        );
        S3Bucket {
            endpoint: self.endpoint.clone(),
            name,
        }
    }
}

/// A bucket on the test S3 server.
#[derive(Debug, Clone)]
pub struct S3Bucket {
    endpoint: String,
    name: String,
}

/// Credentials moto accepts (it does not check signatures).
pub const ACCESS_KEY_ID: &str = "shardlake-test";
/// See [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "shardlake-test-secret";

impl S3Bucket {
    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The S3 endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Storage of a lake at `s3://<bucket>/<prefix>` on this server.
    pub fn storage(&self, prefix: &str) -> ObjectStorageConfig {
        self.storage_via(&self.endpoint, prefix)
    }

    /// Like [`Self::storage`], reached through `endpoint` (a proxy).
    pub fn storage_via(&self, endpoint: &str, prefix: &str) -> ObjectStorageConfig {
        ObjectStorageConfig {
            location: Some(format!("s3://{}/{prefix}", self.name)),
            endpoint: Some(endpoint.to_owned()),
            region: Some("us-east-1".to_owned()),
            access_key_id: Some(ACCESS_KEY_ID.to_owned()),
            secret_access_key: Some(SECRET_ACCESS_KEY.to_owned()),
            path_style: true,
            retry: StorageRetryConfig {
                // Fast enough that retry tests do not crawl.
                initial_backoff_ms: 20,
                max_backoff_ms: 500,
                ..StorageRetryConfig::default()
            },
            ..ObjectStorageConfig::default()
        }
    }

    /// Keys of every object under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let text = reqwest::Client::new()
            .get(format!(
                "{}/{}?list-type=2&prefix={prefix}&max-keys=100000",
                self.endpoint, self.name
            ))
            .send()
            .await
            .expect("list bucket")
            .text()
            .await
            .expect("list body");
        text.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }
}
