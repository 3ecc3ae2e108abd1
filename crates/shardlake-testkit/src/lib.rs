//! What shardlake's tests run against for real, shared by every crate's
//! integration tests:
//!
//! - [`moto`]: one `moto_server` (an S3 implementation) per test process,
//!   on a free loopback port, with a fresh bucket per test
//!   ([`S3Bucket`]);
//! - [`FlakyS3`]: an HTTP proxy in front of it that answers some requests
//!   with 503 `SlowDown`, or none at all, to test retries and outages;
//! - [`python`]: the interpreter of the test virtualenv (pyiceberg,
//!   DuckDB, psycopg, Playwright);
//! - [`chromium`]: Debian's Chromium, which Playwright drives headless for
//!   the web console's browser test;
//! - [`wait_for_stats`]: waiting for a running server's state instead of
//!   sleeping;
//! - [`slt`]: the sqllogictest harness every backend runs `sql/` through,
//!   and [`commit_fixture`], the lake it runs over.
//!
//! The tools come from `.venv-test/`, which `bash .ci/test-env` creates
//! (`bash .ci/test` runs it first). A missing tool fails the test with
//! that instruction: tests never skip silently.

mod flaky;
mod lakes;
mod moto;
mod postgres;
pub mod slt;
mod stats;

use std::path::PathBuf;

pub use flaky::{Fault, FlakyS3};
pub use lakes::{
    FIXTURE_EVENTS, commit_fixture, lake_with_keys, quick_emitter, quick_emitter_config,
};
pub use moto::{ACCESS_KEY_ID, MotoServer, S3Bucket, SECRET_ACCESS_KEY, moto};
pub use postgres::{PostgresServer, postgres};
pub use stats::wait_for_stats;

/// The workspace root (where `.venv-test/` lives).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// A tool of the test virtualenv: `$<env_var>` if set, else
/// `.venv-test/bin/<name>`. Panics with how to create it when missing.
pub fn venv_tool(name: &str, env_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    let path = workspace_root().join(".venv-test/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `bash .ci/test-env` (or the whole suite with `bash .ci/test`), \
         or point ${env_var} at one",
        path.display()
    );
    path
}

/// The Chromium the browser tests drive: `$SHARDLAKE_TEST_CHROMIUM`, else
/// Debian's `/usr/bin/chromium` (`.ci/test-env` installs it). Panics with
/// how to install it when missing: the browser tests never skip.
pub fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("SHARDLAKE_TEST_CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "Chromium is missing: run `bash .ci/test-env` (as root it runs \
         `apt-get install chromium`), install Debian's `chromium` package yourself, \
         or point $SHARDLAKE_TEST_CHROMIUM at a Chromium or Chrome binary"
    );
    path
}

/// The Python interpreter of the test virtualenv (pyiceberg, DuckDB,
/// psycopg, Playwright).
pub fn python() -> PathBuf {
    venv_tool("python", "SHARDLAKE_TEST_PYTHON")
}
