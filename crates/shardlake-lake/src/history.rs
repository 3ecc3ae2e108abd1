//! The retained snapshots of a lake: what time travel can reach.
//!
//! [`EventsTable::snapshots`] (and [`Lake::snapshots`]) lists them (id,
//! time, operation, row counts, what pins them) for `shardlake snapshots`
//! and `GET /v1/snapshots`; [`EventsTable::snapshot_as_of`] turns a point
//! in time into the snapshot that was current then. A snapshot that expired is gone from this list, and
//! asking for it is an error of kind [`ErrorKind::SnapshotExpired`], never
//! an answer from another snapshot.

use std::collections::BTreeMap;

use iceberg::spec::{Operation, SnapshotRef};
use serde::Serialize;

use crate::Lake;
use crate::error::{Error, ErrorKind, Result};
use crate::format::EventsTable;
use crate::iceberg::{COMPACTION_PROPERTY, summary};

/// One retained snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// The snapshot id (as a string too in JSON APIs: it may exceed 2^53).
    #[serde(with = "shardlake_core::json_id")]
    pub snapshot_id: i64,
    /// The snapshot before it, if retained or known.
    #[serde(with = "shardlake_core::json_id::option")]
    pub parent_id: Option<i64>,
    /// When it was committed (RFC 3339).
    pub committed_at: String,
    /// The same, Unix milliseconds.
    pub committed_at_ms: i64,
    /// `commit` (an emitter's append), `compaction`, `merge-manifests`, or
    /// the Iceberg operation of a snapshot another engine wrote.
    pub operation: String,
    /// Whether it is the current snapshot.
    pub current: bool,
    /// Rows in the table as of this snapshot.
    pub total_rows: Option<u64>,
    /// Data files in the table as of this snapshot.
    pub total_files: Option<u64>,
    /// Rows this snapshot added (0 for compaction).
    pub added_rows: Option<u64>,
    /// The position the next commit after this snapshot got.
    pub next_position: Option<i64>,
    /// What keeps it from expiring (`query`, `replay-cursor`,
    /// `migration:<id>`...).
    pub pinned_by: Vec<String>,
}

/// The error for a snapshot that is not retained.
pub fn snapshot_not_retained(snapshot_id: i64) -> Error {
    Error::new(
        ErrorKind::SnapshotExpired,
        format!(
            "snapshot {snapshot_id} is not retained by the table: it expired (see \
             `shardlake snapshots` for the ones that are) or never existed"
        ),
    )
}

impl Lake {
    /// Every retained snapshot, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        self.table().snapshots().await
    }

    /// The snapshot that was current at `at_ms` (Unix milliseconds).
    pub async fn snapshot_as_of(&self, at_ms: i64) -> Result<i64> {
        self.table().snapshot_as_of(at_ms).await
    }
}

impl EventsTable {
    /// Every retained snapshot, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let mut pins: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for pin in self.pins().list().await? {
            let holders = pins.entry(pin.snapshot_id).or_default();
            if !holders.contains(&pin.holder) {
                holders.push(pin.holder);
            }
        }
        let mut out = match self {
            EventsTable::Iceberg(t) => {
                let table = t.load().await?;
                let metadata = table.metadata();
                let current = metadata.current_snapshot_id();
                let mut snapshots: Vec<&SnapshotRef> = metadata.snapshots().collect();
                snapshots.sort_by_key(|s| (s.sequence_number(), s.timestamp_ms()));
                snapshots
                    .into_iter()
                    .map(|s| iceberg_info(s, current == Some(s.snapshot_id())))
                    .collect::<Vec<_>>()
            }
            EventsTable::Parquet(t) => {
                let snapshot = t.snapshot().await?;
                let retained = snapshot.retained();
                let mut parent = None;
                let last = retained.last().map(|c| c.facts.next_position);
                retained
                    .into_iter()
                    .map(|c| {
                        let at = c.committed_at_ms();
                        let info = SnapshotInfo {
                            snapshot_id: c.facts.next_position,
                            parent_id: parent,
                            committed_at: rfc3339(at),
                            committed_at_ms: at,
                            operation: if c.facts.compacted_at_ms.is_some() {
                                "compaction".to_owned()
                            } else {
                                "commit".to_owned()
                            },
                            current: Some(c.facts.next_position) == last,
                            total_rows: u64::try_from(c.facts.next_position - 1).ok(),
                            total_files: None,
                            added_rows: u64::try_from(
                                c.facts.next_position - c.facts.first_position,
                            )
                            .ok(),
                            next_position: Some(c.facts.next_position),
                            pinned_by: Vec::new(),
                        };
                        parent = Some(c.facts.next_position);
                        info
                    })
                    .collect()
            }
        };
        for info in &mut out {
            info.pinned_by = pins.remove(&info.snapshot_id).unwrap_or_default();
        }
        Ok(out)
    }

    /// The snapshot that was current at `at_ms` (Unix milliseconds): the
    /// newest retained one committed at or before it.
    pub async fn snapshot_as_of(&self, at_ms: i64) -> Result<i64> {
        let snapshots = self.snapshots().await?;
        // Maintenance snapshots change no rows: a time between a commit and
        // a compaction of it means the commit.
        let found = snapshots
            .iter()
            .filter(|s| s.committed_at_ms <= at_ms)
            .max_by_key(|s| (s.committed_at_ms, s.next_position));
        match (found, snapshots.first()) {
            (Some(s), _) => Ok(s.snapshot_id),
            (None, Some(oldest)) => Err(Error::new(
                ErrorKind::SnapshotExpired,
                format!(
                    "no retained snapshot is as old as {}: the oldest retained one, {}, is from {}",
                    rfc3339(at_ms),
                    oldest.snapshot_id,
                    oldest.committed_at
                ),
            )),
            (None, None) => Err(Error::new(
                ErrorKind::SnapshotExpired,
                "the table has no snapshot yet",
            )),
        }
    }
}

fn iceberg_info(s: &SnapshotRef, current: bool) -> SnapshotInfo {
    let props = &s.summary().additional_properties;
    let number = |key: &str| props.get(key).and_then(|v| v.parse::<u64>().ok());
    let operation = if props.contains_key(COMPACTION_PROPERTY) {
        "compaction".to_owned()
    } else if props.contains_key(summary::COMMIT_ID) {
        "commit".to_owned()
    } else if s.summary().operation == Operation::Replace {
        "merge-manifests".to_owned()
    } else {
        s.summary().operation.as_str().to_owned()
    };
    SnapshotInfo {
        snapshot_id: s.snapshot_id(),
        parent_id: s.parent_snapshot_id(),
        committed_at: rfc3339(s.timestamp_ms()),
        committed_at_ms: s.timestamp_ms(),
        operation,
        current,
        total_rows: number("total-records"),
        total_files: number("total-data-files"),
        added_rows: number("added-records").or(Some(0)),
        next_position: props
            .get(summary::NEXT_POSITION)
            .and_then(|v| v.parse().ok()),
        pinned_by: Vec::new(),
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
