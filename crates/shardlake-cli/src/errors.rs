//! How a failed command ends: one line on stderr, `error: <message>`, and
//! an exit code a script can act on.
//!
//! Library errors carry their source and also print it, so rendering an
//! error chain naively repeats the same message once per layer (a parse
//! error came out four times). Here every layer is rendered by its message
//! alone, query errors lead with their stable code (`invalid_query`, the
//! code HTTP answers with), other kinds' codes never show, and a layer that says nothing new is dropped.

use std::sync::atomic::{AtomicBool, Ordering};

use shardlake_core::ErrorKind;

/// Exit status of a command that failed for a reason other than the ones
/// below.
pub const FAILED: i32 = 1;
/// Exit status of `shardlake ingest` when storage failed (nothing of the
/// batch in flight was committed; run it again).
pub const STORAGE: i32 = 3;

/// Set once stdout's reader went away (`| head`): the command stops and
/// exits 0, as `cat` and DuckDB do.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Whether stdout's reader went away.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// stdout, noting a closed pipe (so that writers that turn the I/O error
/// into their own, as Arrow's CSV writer does, still end quietly).
pub struct Stdout(std::io::Stdout);

impl Stdout {
    /// The process's stdout.
    pub fn new() -> Self {
        Self(std::io::stdout())
    }
}

impl Default for Stdout {
    fn default() -> Self {
        Self::new()
    }
}

impl std::io::Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        note(self.0.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        note(self.0.flush())
    }
}

fn note<T>(result: std::io::Result<T>) -> std::io::Result<T> {
    if let Err(e) = &result
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
    result
}

/// The one line printed for `error` (without the `error: ` prefix).
pub fn describe(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = if let Some(e) = cause.downcast_ref::<shardlake_core::Error>() {
            if leads_with_code(e.kind()) {
                // A query's error message is its root cause's already; what
                // lies below is DataFusion's rendering of the same thing.
                parts.push(format!("{}: {}", e.code(), e.message()));
                break;
            }
            e.message().to_owned()
        } else {
            cause.to_string()
        };
        let text = text.trim().to_owned();
        // A layer that repeats another says nothing new; one that repeats
        // it with more detail replaces it.
        if text.is_empty() || parts.iter().any(|p| p.contains(&text)) {
            continue;
        }
        match parts.iter().position(|p| text.contains(p.as_str())) {
            Some(i) => parts[i] = text,
            None => parts.push(text),
        }
    }
    parts.join(": ")
}

/// Whether errors of `kind` are the caller's query's, said with their
/// stable code (the one HTTP answers with) and nothing below them.
fn leads_with_code(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidQuery
            | ErrorKind::NotAllowed
            | ErrorKind::ResultTooLarge
            | ErrorKind::QueryTimeout
            | ErrorKind::ResourcesExhausted
            | ErrorKind::SnapshotExpired
            | ErrorKind::WorkerUnavailable
    )
}

/// The exit status for `error`.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    let storage = error.chain().any(|cause| {
        cause
            .downcast_ref::<shardlake_core::Error>()
            .is_some_and(|e| e.kind() == ErrorKind::Storage)
    });
    if storage { STORAGE } else { FAILED }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_layer_is_said_once_without_internal_kind_names() {
        let root = std::io::Error::other("disk on fire");
        let lake =
            shardlake_lake::Error::new(ErrorKind::Storage, "commit failed").with_source(root);
        let error = anyhow::Error::new(lake).context("ingesting events.ndjson");
        let line = describe(&error);
        assert_eq!(
            line, "ingesting events.ndjson: commit failed: disk on fire",
            "{line}"
        );
        assert_eq!(exit_code(&error), STORAGE);
    }

    #[test]
    fn query_errors_lead_with_their_code() {
        let error = anyhow::Error::new(shardlake_query::Error::new(
            ErrorKind::InvalidQuery,
            "sql parser error: Expected: an SQL statement, found: SELEC",
        ));
        assert_eq!(
            describe(&error),
            "invalid_query: sql parser error: Expected: an SQL statement, found: SELEC"
        );
        assert_eq!(exit_code(&error), FAILED);
    }
}
