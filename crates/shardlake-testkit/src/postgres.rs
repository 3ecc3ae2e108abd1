//! One PostgreSQL server per test process, for lakes whose catalog several
//! servers share: Debian's `postgresql` binaries on a temporary data
//! directory and a loopback port, never a system service.
//!
//! `initdb` and `postgres` refuse to run as root (and CI runs as root): a
//! root test process runs them as the `postgres` user with `setpriv`, which
//! execs, so the guard's shell still holds the server's own pid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running PostgreSQL server on loopback.
pub struct PostgresServer {
    port: u16,
    // The server runs under a shell that stops it (fast shutdown) and
    // removes its data directory when this child's stdin closes, which
    // happens when the test process exits, however it exits.
    _guard: Child,
}

static POSTGRES: OnceLock<PostgresServer> = OnceLock::new();

/// The process's PostgreSQL server, started on first use.
pub fn postgres() -> &'static PostgresServer {
    POSTGRES.get_or_init(PostgresServer::start)
}

/// Where the server binaries are: `SHARDLAKE_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHARDLAKE_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server found under /usr/lib/postgresql: run .ci/test-env \
             (apt-get install postgresql) or set SHARDLAKE_TEST_PG_BIN to its bin directory"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` run as the `postgres` user when this process is root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn answers(bin: &Path, port: u16) -> bool {
    Command::new(bin.join("pg_isready"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "shardlake",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl PostgresServer {
    fn start() -> Self {
        let bin = bin_dir();
        let data = std::env::temp_dir().join(format!("shardlake-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&data).expect("postgres data directory");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data)
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "cannot chown {} to postgres",
                data.display()
            );
        }
        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "shardlake",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = crate::moto::free_port();
            let log = std::env::temp_dir().join(format!("shardlake-pg-{port}.log"));
            let server = as_server_user(&bin.join("postgres"));
            let mut argv: Vec<String> = vec![server.get_program().to_string_lossy().into_owned()];
            argv.extend(server.get_args().map(|a| a.to_string_lossy().into_owned()));
            argv.extend(
                [
                    "-D",
                    &data.display().to_string(),
                    "-p",
                    &port.to_string(),
                    "-k",
                    &data.display().to_string(),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=400",
                    // A test database: durability is the lake's business.
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ]
                .map(str::to_owned),
            );
            // SIGINT: fast shutdown (SIGTERM would wait for every client).
            let mut guard = Command::new("sh")
                .arg("-c")
                .arg(
                    r#"log=$1; data=$2; shift 2; "$@" >"$log" 2>&1 & m=$!; read -r _; kill -INT "$m"; wait "$m"; rm -rf "$data""#,
                )
                .arg("sh")
                .arg(&log)
                .arg(&data)
                .args(&argv)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start postgres: {e}"));
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if answers(&bin, port) {
                    return Self {
                        port,
                        _guard: guard,
                    };
                }
                last_log = std::fs::read_to_string(&log).unwrap_or_default();
                let lost_port = last_log.contains("Address already in use")
                    || last_log.contains("could not bind");
                let exited = guard.try_wait().ok().flatten().is_some()
                    || last_log.contains("database system is shut down");
                if lost_port || exited || Instant::now() >= deadline {
                    drop(guard.stdin.take());
                    let _ = guard.wait();
                    assert!(
                        lost_port,
                        "postgres did not answer on port {port} within 60 s; its log: {last_log}"
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("postgres lost its port three times; its last log: {last_log}")
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty database; returns its `postgres://` URL.
    pub async fn database(&self) -> String {
        let name = format!("lake_{}", uuid::Uuid::new_v4().simple());
        let admin = format!("postgres://shardlake@127.0.0.1:{}/postgres", self.port);
        let db = shardlake_lake::db::Database::connect(&admin)
            .await
            .expect("connect to postgres");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(db.pool())
            .await
            .expect("create database");
        db.pool().close().await;
        format!("postgres://shardlake@127.0.0.1:{}/{name}", self.port)
    }
}
