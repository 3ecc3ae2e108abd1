//! The per-query context table providers read from the session config.

use std::sync::Arc;

use crate::recorder::ScanRecorder;
use crate::scope::Scope;
use crate::snapshot::SnapshotFiles;

/// Handed to every table scan of one query through
/// `SessionConfig::with_extension`: all scans of the query read the same
/// pinned snapshot, record into the same recorder and obey the same scope.
#[derive(Debug)]
pub struct QueryContext {
    /// The snapshot the query is pinned to.
    pub snapshot: Arc<SnapshotFiles>,
    /// Where scans record what they read.
    pub recorder: Arc<ScanRecorder>,
    /// The namespaces the caller may see.
    pub scope: Scope,
}
