//! The format-independent half of a commit: what each commit records
//! ([`CommitState`]), how a batch of pending events becomes the rows of one
//! commit ([`plan_commit`]), and what a table format must provide
//! ([`TableCommitter`]).
//!
//! Exactly once rests on three facts, all enforced here or by the committer:
//! 1. every commit atomically records each shard's highest committed `seq`
//!    (its watermark) together with the data;
//! 2. a plan is always made against the state the commit is conditional on,
//!    so an event with `seq <= watermark` is never written again;
//! 3. a commit only lands if the table is still at that state
//!    (compare-and-swap); otherwise the caller re-reads and re-plans.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{Int32Type, Int64Type};
use async_trait::async_trait;
use shardlake_core::schema::columns;
use shardlake_core::with_positions;
use uuid::Uuid;

use crate::error::{Error, ErrorKind, Result};

/// The first position ever assigned in a table.
pub const FIRST_POSITION: i64 = 1;

/// What a table records atomically with each commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitState {
    /// Highest committed `seq` of every shard that ever committed.
    pub watermarks: BTreeMap<i32, i64>,
    /// Content digest ([`content_digest`]) of each shard's event at its
    /// watermark, where known (tables written before it was recorded have
    /// none until the shard commits again): a re-sent `(shard_id, seq)`
    /// that says something else than what the lake stores is told apart
    /// from a true re-send.
    pub watermark_digests: BTreeMap<i32, u64>,
    /// The position the next committed event gets.
    pub next_position: i64,
    /// Format-specific id of the commit this state belongs to (the Iceberg
    /// snapshot id), `None` for an empty table.
    pub snapshot_id: Option<i64>,
}

impl Default for CommitState {
    fn default() -> Self {
        Self {
            watermarks: BTreeMap::new(),
            watermark_digests: BTreeMap::new(),
            next_position: FIRST_POSITION,
            snapshot_id: None,
        }
    }
}

impl CommitState {
    /// The committed watermark of `shard` (0 if it never committed).
    pub fn watermark(&self, shard: i32) -> i64 {
        self.watermarks.get(&shard).copied().unwrap_or(0)
    }
}

/// The rows of one commit: which input rows are kept, their positions, and
/// which namespace each belongs to. The rows of a namespace are materialized
/// (sorted, stamped) by [`CommitPlan::namespace_batch`], so that work can run
/// per namespace in parallel while files are written.
#[derive(Debug, Clone)]
pub struct CommitPlan {
    /// Unique id of this commit attempt, recorded with the commit so an
    /// ambiguous failure can be resolved by looking for it.
    pub commit_id: String,
    /// The input rows, pending schema, arrival order (kept or not).
    pub pending: RecordBatch,
    /// Position of each input row (meaningless where not kept).
    pub positions: Vec<i64>,
    /// Kept rows of each namespace (input row indices), namespaces by name.
    pub namespaces: Vec<NamespaceRows>,
    /// The state this plan was made against (the commit's precondition).
    pub base: CommitState,
    /// The state after the commit (full watermarks, next position).
    pub state: CommitState,
    /// Which input rows are written (`false`: duplicate).
    pub kept: Vec<bool>,
    /// Which duplicates say something else than the event they repeat
    /// (the stored one at the shard's watermark, or an earlier row of the
    /// batch with the same `(shard_id, seq)`): a shard that reused a `seq`
    /// for a different event. They are dropped like any duplicate.
    pub conflicting: Vec<bool>,
}

/// The kept rows of one namespace in a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRows {
    /// The namespace.
    pub namespace: String,
    /// Input row indices, in arrival order.
    pub rows: Vec<u32>,
}

impl CommitPlan {
    /// Position of the first row of this commit.
    pub fn first_position(&self) -> i64 {
        self.base.next_position
    }

    /// Refuses to commit a plan made against another state than the
    /// committer's: its positions and dedup would be wrong.
    pub fn check_base(&self, state: &CommitState) -> Result<()> {
        if self.base == *state {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Unexpected,
            "plan was made against a state other than the committer's",
        ))
    }

    /// Number of rows written.
    pub fn rows(&self) -> usize {
        (self.state.next_position - self.base.next_position) as usize
    }

    /// The rows of namespace `i` in the table's schema, sorted by
    /// `(partition_key, position)`: the table's write order.
    pub fn namespace_batch(&self, i: usize) -> Result<RecordBatch> {
        let ns = self.namespaces.get(i).ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                format!("no namespace {i} in the plan"),
            )
        })?;
        let partition_key = column(&self.pending, columns::PARTITION_KEY)?
            .as_string_opt::<i32>()
            .ok_or_else(|| schema_error(columns::PARTITION_KEY))?;
        let mut order = ns.rows.clone();
        let positions = &self.positions;
        order.sort_unstable_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            partition_key
                .value(a)
                .cmp(partition_key.value(b))
                .then_with(|| positions[a].cmp(&positions[b]))
        });
        let stamped: Int64Array = order.iter().map(|&r| positions[r as usize]).collect();
        let sorted = take_record_batch(&self.pending, &UInt32Array::from(order))?;
        with_positions(&sorted, Arc::new(stamped))
    }

    /// Every namespace's rows, concatenated in namespace order (for tests
    /// and small commits).
    pub fn sorted_batch(&self) -> Result<RecordBatch> {
        let parts = (0..self.namespaces.len())
            .map(|i| self.namespace_batch(i))
            .collect::<Result<Vec<_>>>()?;
        Ok(arrow::compute::concat_batches(
            &shardlake_core::event_schema(),
            &parts,
        )?)
    }
}

/// Turns pending events (the [`shardlake_core::pending_event_schema`],
/// concatenated in arrival order) into the plan of one commit against `base`.
///
/// - Duplicates are dropped: an event whose `seq` is at or below its shard's
///   watermark, or repeats a `(shard_id, seq)` seen earlier in the batch.
/// - Positions continue from `base.next_position`. Kept rows take positions
///   in arrival order, except that each shard's events are placed in `seq`
///   order among the slots its events occupy: position order never
///   contradicts a shard's own order, and otherwise follows arrival.
/// - Kept rows are grouped by namespace; [`CommitPlan::namespace_batch`]
///   sorts a namespace's rows by `(partition_key, position)`.
///
/// Returns the plan with `kept` all false and no rows if everything was a
/// duplicate.
pub fn plan_commit(pending: &RecordBatch, base: &CommitState) -> Result<CommitPlan> {
    let n = pending.num_rows();
    if u32::try_from(n).is_err() {
        return Err(Error::new(
            ErrorKind::DataInvalid,
            format!("a commit holds at most {} events, got {n}", u32::MAX),
        ));
    }
    let shard = column(pending, columns::SHARD_ID)?
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| schema_error(columns::SHARD_ID))?
        .values();
    let seq = column(pending, columns::SEQ)?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| schema_error(columns::SEQ))?
        .values();

    // 1. Per shard, in seq order: keep what is above the watermark, once.
    // A duplicate of the stored event at the watermark, or of an earlier
    // row of the batch, is compared with it by content.
    let contents = Contents::new(pending);
    let mut by_shard_seq: Vec<u32> = (0..n as u32).collect();
    by_shard_seq.sort_unstable_by_key(|&i| (shard[i as usize], seq[i as usize], i));
    let mut kept = vec![false; n];
    let mut conflicting = vec![false; n];
    let mut state = base.clone();
    // Kept rows of each shard, in seq order: `kept_in_seq_order[range]`.
    let mut kept_in_seq_order: Vec<u32> = Vec::with_capacity(n);
    let mut shard_ranges: HashMap<i32, (usize, usize)> = HashMap::new();
    let mut i = 0;
    while i < n {
        let s = shard[by_shard_seq[i] as usize];
        let start = kept_in_seq_order.len();
        let stored = base.watermark(s);
        let mut high = stored;
        let mut last_kept: Option<u32> = None;
        while i < n && shard[by_shard_seq[i] as usize] == s {
            let row = by_shard_seq[i];
            let q = seq[row as usize];
            if q > high {
                high = q;
                kept[row as usize] = true;
                kept_in_seq_order.push(row);
                last_kept = Some(row);
            } else {
                let differs = match last_kept {
                    Some(earlier) if seq[earlier as usize] == q => {
                        contents.digest(earlier as usize) != contents.digest(row as usize)
                    }
                    _ if q == stored => base
                        .watermark_digests
                        .get(&s)
                        .is_some_and(|d| *d != contents.digest(row as usize)),
                    _ => false,
                };
                conflicting[row as usize] = differs;
            }
            i += 1;
        }
        if let Some(last) = last_kept {
            state.watermarks.insert(s, high);
            state
                .watermark_digests
                .insert(s, contents.digest(last as usize));
            shard_ranges.insert(s, (start, kept_in_seq_order.len()));
        }
    }

    // 2. Positions: slots in arrival order, filled per shard in seq order.
    let mut position_of_row = vec![0i64; n];
    let mut cursor: HashMap<i32, usize> = shard_ranges.iter().map(|(s, r)| (*s, r.0)).collect();
    let mut next = base.next_position;
    for row in 0..n {
        if !kept[row] {
            continue;
        }
        let c = cursor
            .get_mut(&shard[row])
            .ok_or_else(|| Error::new(ErrorKind::Unexpected, "kept row of an unknown shard"))?;
        position_of_row[kept_in_seq_order[*c] as usize] = next;
        *c += 1;
        next += 1;
    }
    state.next_position = next;

    // 3. Group kept rows by namespace.
    let namespace = column(pending, columns::NAMESPACE)?
        .as_string_opt::<i32>()
        .ok_or_else(|| schema_error(columns::NAMESPACE))?;
    let mut by_namespace: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (row, k) in kept.iter().enumerate() {
        if *k {
            by_namespace
                .entry(namespace.value(row))
                .or_default()
                .push(row as u32);
        }
    }
    let namespaces = by_namespace
        .into_iter()
        .map(|(ns, rows)| NamespaceRows {
            namespace: ns.to_owned(),
            rows,
        })
        .collect();

    Ok(CommitPlan {
        commit_id: Uuid::new_v4().to_string(),
        pending: pending.clone(),
        positions: position_of_row,
        namespaces,
        base: base.clone(),
        state,
        kept,
        conflicting,
    })
}

/// The content digest of one pending event: xxh3 over every column but
/// `shard_id` and `seq` (where it came from), each value typed and
/// length-prefixed so no two events share an encoding. Stable across
/// releases: it is recorded in the table (as [`CommitState::watermark_digests`]).
pub fn content_digest(pending: &RecordBatch, row: usize) -> u64 {
    Contents::new(pending).digest(row)
}

/// The content columns of a pending batch.
struct Contents<'a> {
    columns: Vec<&'a dyn Array>,
}

impl<'a> Contents<'a> {
    fn new(pending: &'a RecordBatch) -> Self {
        let columns = pending
            .schema_ref()
            .fields()
            .iter()
            .zip(pending.columns())
            .filter(|(f, _)| f.name() != columns::SHARD_ID && f.name() != columns::SEQ)
            .map(|(_, c)| c.as_ref())
            .collect();
        Self { columns }
    }

    fn digest(&self, row: usize) -> u64 {
        use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut bytes = |tag: u8, value: &[u8]| {
            hasher.update(&[tag]);
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(value);
        };
        for column in &self.columns {
            if column.is_null(row) {
                bytes(0, &[]);
                continue;
            }
            match column.data_type() {
                DataType::Utf8 => bytes(1, column.as_string::<i32>().value(row).as_bytes()),
                DataType::Int64 => bytes(
                    2,
                    &column.as_primitive::<Int64Type>().value(row).to_le_bytes(),
                ),
                DataType::Int32 => bytes(
                    3,
                    &column.as_primitive::<Int32Type>().value(row).to_le_bytes(),
                ),
                DataType::Timestamp(TimeUnit::Microsecond, _) => bytes(
                    4,
                    &column
                        .as_primitive::<TimestampMicrosecondType>()
                        .value(row)
                        .to_le_bytes(),
                ),
                // Not in the event schema today: its display form, so a
                // value is never left out of the digest.
                _ => bytes(
                    5,
                    arrow::util::display::array_value_to_string(*column, row)
                        .unwrap_or_default()
                        .as_bytes(),
                ),
            }
        }
        hasher.digest()
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Arc<dyn Array>> {
    batch.column_by_name(name).ok_or_else(|| schema_error(name))
}

fn schema_error(name: &str) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        format!("pending batch lacks a valid `{name}` column"),
    )
}

/// The format-specific half of a commit. One committer per emitter; it keeps
/// the table state it last saw and commits conditionally on it.
#[async_trait]
pub trait TableCommitter: Send {
    /// The state as of the latest commit this committer has seen.
    fn state(&self) -> &CommitState;

    /// Re-reads the table's latest state.
    async fn refresh(&mut self) -> Result<()>;

    /// Writes `plan`'s rows as data files and commits them with `plan.state`,
    /// only if the table is still at `plan.base`. Fails with
    /// [`ErrorKind::CommitConflict`] if another committer moved the table on;
    /// any other error leaves it unknown whether the commit landed.
    async fn commit(&mut self, plan: &Arc<CommitPlan>) -> Result<()>;

    /// Whether a commit with this id is part of the table (after [`Self::refresh`]).
    fn contains_commit(&self, commit_id: &str) -> bool;
}

#[cfg(test)]
mod tests {
    use shardlake_core::{Event, EventBatchBuilder, EventLimits, events_from_batch};

    use super::*;

    fn pending(events: &[(&str, i32, i64, &str)]) -> RecordBatch {
        // Each event in its own request: the builder's per-request seq check
        // must not hide the committer's duplicate handling.
        let ts = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("ts");
        let batches: Vec<RecordBatch> = events
            .iter()
            .map(|(ns, shard, seq, key)| {
                let mut b = EventBatchBuilder::new(EventLimits::default());
                b.push_event(&Event::new(*ns, *shard, *seq, *key, "thing.created", ts))
                    .expect("valid");
                b.finish().into_record_batch()
            })
            .collect();
        arrow::compute::concat_batches(&shardlake_core::pending_event_schema(), &batches)
            .expect("concat")
    }

    fn rows(plan: &CommitPlan) -> Vec<(String, i32, i64, String, i64)> {
        events_from_batch(&plan.sorted_batch().expect("sorted"))
            .expect("events")
            .into_iter()
            .map(|e| {
                (
                    e.namespace,
                    e.shard_id,
                    e.seq,
                    e.partition_key,
                    e.position.expect("position"),
                )
            })
            .collect()
    }

    #[test]
    fn duplicates_are_dropped_against_watermarks_and_within_the_batch() {
        let base = CommitState {
            watermarks: BTreeMap::from([(1, 5)]),
            next_position: 100,
            snapshot_id: Some(7),
            ..CommitState::default()
        };
        let batch = pending(&[
            ("a", 1, 4, "k"), // below watermark
            ("a", 1, 6, "k"),
            ("a", 2, 1, "j"),
            ("a", 1, 6, "k"), // repeat within the batch
            ("a", 1, 5, "k"), // equal to watermark
        ]);
        let plan = plan_commit(&batch, &base).expect("plan");
        assert_eq!(plan.kept, vec![false, true, true, false, false]);
        assert_eq!(plan.rows(), 2);
        assert_eq!(plan.state.watermarks, BTreeMap::from([(1, 6), (2, 1)]));
        assert_eq!(plan.state.next_position, 102);
        assert_eq!(plan.first_position(), 100);
        // Nothing recorded to compare the watermark's event with; the
        // repeat within the batch is the same event.
        assert_eq!(plan.conflicting, vec![false; 5]);
    }

    #[test]
    fn a_duplicate_that_says_something_else_is_told_apart() {
        let stored = pending(&[("a", 1, 5, "k")]);
        let base = CommitState {
            watermarks: BTreeMap::from([(1, 5)]),
            watermark_digests: BTreeMap::from([(1, content_digest(&stored, 0))]),
            next_position: 100,
            snapshot_id: Some(7),
        };
        let batch = pending(&[
            ("a", 1, 5, "k"),     // the stored event again: a true re-send
            ("a", 1, 5, "other"), // the same (shard, seq), another event
            ("a", 1, 6, "k"),
            ("b", 1, 6, "k"), // repeats the row before with other content
            ("a", 1, 6, "k"), // repeats it exactly
            ("a", 1, 4, "z"), // below the watermark: nothing to compare with
        ]);
        let plan = plan_commit(&batch, &base).expect("plan");
        assert_eq!(plan.kept, vec![false, false, true, false, false, false]);
        assert_eq!(
            plan.conflicting,
            vec![false, true, false, true, false, false]
        );
        // The new watermark's event is recorded for the next comparison.
        assert_eq!(
            plan.state.watermark_digests.get(&1).copied(),
            Some(content_digest(&batch, 2))
        );
        assert_ne!(content_digest(&batch, 0), content_digest(&batch, 1));
    }

    #[test]
    fn positions_follow_arrival_but_never_contradict_a_shards_seq_order() {
        // Shard 1's seq 3 arrives before its seq 2 (two requests crossed);
        // shard 2 arrives in between.
        let batch = pending(&[("a", 1, 3, "x"), ("a", 2, 1, "y"), ("a", 1, 2, "x")]);
        let plan = plan_commit(&batch, &CommitState::default()).expect("plan");
        let mut by_position = rows(&plan);
        by_position.sort_by_key(|r| r.4);
        let order: Vec<(i32, i64)> = by_position.iter().map(|r| (r.1, r.2)).collect();
        // Slots 1,2,3 in arrival order are (shard 1, shard 2, shard 1);
        // shard 1's slots are filled in seq order: 2 then 3.
        assert_eq!(order, vec![(1, 2), (2, 1), (1, 3)]);
        assert_eq!(by_position[0].4, FIRST_POSITION);
    }

    #[test]
    fn rows_are_sorted_by_namespace_key_position_with_ranges() {
        let batch = pending(&[
            ("b", 1, 1, "k2"),
            ("a", 1, 2, "k9"),
            ("b", 2, 1, "k1"),
            ("a", 2, 2, "k0"),
            ("b", 1, 3, "k1"),
        ]);
        let plan = plan_commit(&batch, &CommitState::default()).expect("plan");
        let got: Vec<(String, String)> = rows(&plan).into_iter().map(|r| (r.0, r.3)).collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), "k0".into()),
                ("a".into(), "k9".into()),
                ("b".into(), "k1".into()),
                ("b".into(), "k1".into()),
                ("b".into(), "k2".into()),
            ]
        );
        let ns: Vec<(&str, usize)> = plan
            .namespaces
            .iter()
            .map(|n| (n.namespace.as_str(), n.rows.len()))
            .collect();
        assert_eq!(ns, vec![("a", 2), ("b", 3)]);
        // Within (b, k1), position order holds.
        let r = rows(&plan);
        assert!(r[2].4 < r[3].4);
    }

    #[test]
    fn all_duplicates_make_an_empty_plan() {
        let base = CommitState {
            watermark_digests: BTreeMap::new(),
            watermarks: BTreeMap::from([(1, 10)]),
            next_position: 5,
            snapshot_id: Some(1),
        };
        let plan = plan_commit(&pending(&[("a", 1, 3, "k")]), &base).expect("plan");
        assert_eq!(plan.rows(), 0);
        assert!(plan.namespaces.is_empty());
        assert_eq!(plan.state, base);
    }
}
