//! Dead letters: every refused event is written, with its reason, to an NDJSON
//! file per UTC day, so an operator can inspect and re-drive it. Nothing a
//! shard sent disappears without a trace.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use shardlake_core::RejectedLine;
use tracing::warn;

use crate::error::{Error, ErrorKind, Result};

/// One dead-letter line.
#[derive(Debug, Serialize)]
pub struct DeadLetterRecord<'a> {
    /// When the event was refused (RFC 3339).
    pub at: String,
    /// Index of the event in its request.
    pub index: usize,
    /// Stable error code.
    pub code: &'static str,
    /// Explanation.
    pub message: &'a str,
    /// The refused text, as received (cut to 64 KiB).
    pub raw: &'a str,
}

/// Appends dead-letter records to `<dir>/dead-letter-<YYYY-MM-DD>.ndjson`.
pub(crate) struct DeadLetters {
    dir: Option<PathBuf>,
    open: Mutex<Option<(String, File)>>,
}

impl DeadLetters {
    pub(crate) fn new(dir: Option<PathBuf>) -> Result<Self> {
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::new(
                    ErrorKind::DataInvalid,
                    format!("cannot create dead-letter directory {}", dir.display()),
                )
                .with_source(e)
            })?;
        }
        Ok(Self {
            dir,
            open: Mutex::new(None),
        })
    }

    /// Records `rejected`. Failing to write a dead letter is logged, not
    /// returned: the caller already has every rejection in its ack.
    ///
    /// Writes are small synchronous appends to a local file, done inline:
    /// refused events are the exception, and a short blocking append is
    /// cheaper than a hop to the blocking pool.
    pub(crate) fn record(&self, rejected: &[RejectedLine]) {
        let Some(dir) = &self.dir else { return };
        let now = Utc::now();
        let at = now.to_rfc3339_opts(SecondsFormat::Millis, true);
        let day = now.format("%Y-%m-%d").to_string();
        let mut text = String::new();
        for r in rejected {
            let record = DeadLetterRecord {
                at: at.clone(),
                index: r.index,
                code: r.error.code.as_str(),
                message: &r.error.message,
                raw: &r.raw,
            };
            if let Ok(line) = serde_json::to_string(&record) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        let mut guard = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|(d, _)| *d != day) {
            let path = dir.join(format!("dead-letter-{day}.ndjson"));
            match OpenOptions::new().create(true).append(true).open(&path) {
                Ok(file) => *guard = Some((day, file)),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "cannot open dead-letter file");
                    return;
                }
            }
        }
        if let Some((_, file)) = guard.as_mut()
            && let Err(e) = file.write_all(text.as_bytes())
        {
            warn!(error = %e, "cannot write dead letters");
        }
    }
}
