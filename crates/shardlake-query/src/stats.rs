//! Scan statistics returned with every result, computed from what the
//! planner pinned and pruned and what the scans recorded while executing.
//! Nothing here is estimated.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::ExecutionPlan;
use serde::{Deserialize, Serialize};

use crate::recorder::ScanRecorder;

/// What a query did. See `docs/query.md` for the precise definitions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScanStats {
    /// Distinct shards with events in the files the query read data from,
    /// as listed in those files' footers.
    pub shards_queried: usize,
    /// Namespaces (partitions) in the pinned snapshot.
    pub partitions_total: usize,
    /// Namespaces of the files the query read data from.
    pub partitions_scanned: usize,
    /// Namespaces the answer covers: those of the files left after the
    /// partition filter and file statistics, whether their data was read
    /// or their metadata answered (then `partitions_scanned` stays 0).
    #[serde(default)]
    pub partitions_covered: usize,
    /// `partitions_total - partitions_covered`: ruled out without looking
    /// at any of their files' data or footers.
    pub partitions_pruned: usize,
    /// Live data files in the pinned snapshot.
    pub files_total: usize,
    /// Files column data was read from.
    pub files_scanned: usize,
    /// `files_total - files_scanned`: ruled out from metadata, file
    /// statistics or row-group statistics without reading their data.
    pub files_pruned: usize,
    /// Bytes fetched from storage: column chunks and page indexes.
    pub bytes_scanned: u64,
    /// Rows decoded by the Parquet scans after row-group and page pruning
    /// (rows the scans emitted plus rows their pushed-down filters dropped).
    pub rows_scanned: u64,
    /// Rows in the result.
    pub rows_returned: u64,
    /// Whether the result came from the result cache (then nothing was scanned).
    pub cache_hit: bool,
    /// Whether this caller found an identical query (same scope, query and
    /// snapshots) running and waited for its answer instead of running it
    /// again (then also `cache_hit`, and `elapsed_ms` includes the wait).
    #[serde(default)]
    pub shared_run: bool,
    /// How the answer was made: [`AnsweredFrom`].
    #[serde(default)]
    pub answered_from: AnsweredFrom,
    /// The snapshots the query was pinned to.
    #[serde(with = "shardlake_core::json_id::vec")]
    pub snapshot_ids: Vec<i64>,
    /// Wall time from request until the plan was ready to run (snapshot
    /// pin, parsing, planning, file pruning, optimizing), milliseconds; 0
    /// for an answer from the cache. `elapsed_ms - planning_ms` is the run.
    #[serde(default)]
    pub planning_ms: f64,
    /// Wall time from request to last row, milliseconds.
    pub elapsed_ms: f64,
    /// Workers (`shardlake worker`) that ran scans of this query; 0 when
    /// it ran here alone.
    #[serde(default)]
    pub workers: usize,
    /// Tasks the workers ran for it, over all its stages; 0 when it ran
    /// here alone.
    #[serde(default)]
    pub tasks: usize,
    /// Bytes the scans on each worker fetched, by worker address (absent
    /// for a local run): how evenly the work spread.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub worker_bytes_scanned: BTreeMap<String, u64>,
}

/// How an answer was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnsweredFrom {
    /// Column data was read from at least one file.
    #[default]
    Scan,
    /// No column data was read: row counts, bounds and per-file constant
    /// columns (`namespace`) came from the snapshot's metadata and the
    /// files' footers (or the query needed no table at all).
    Metadata,
    /// The maintained current state of `things` (`provider/things`): the
    /// files read to bring it up to the pinned snapshot, if any, are in
    /// `files_scanned`, `bytes_scanned` and `rows_scanned`.
    State,
    /// The result cache.
    Cache,
}

impl ScanStats {
    /// Statistics of an executed plan, from what `recorder` recorded (and,
    /// for a plan that ran on workers, what their scans sent back).
    pub(crate) fn from_execution(
        recorder: &ScanRecorder,
        plan: &Arc<dyn ExecutionPlan>,
        rows_returned: u64,
        planning_ms: f64,
        elapsed_ms: f64,
    ) -> Self {
        let (plan, cluster) = crate::distributed::absorb(plan, recorder);
        let plan = &plan;
        let findings = recorder.findings();
        Self {
            shards_queried: findings.shards_queried,
            partitions_total: findings.partitions_total,
            partitions_scanned: findings.partitions_scanned,
            partitions_covered: findings.partitions_covered,
            partitions_pruned: findings.partitions_total - findings.partitions_covered,
            files_total: findings.files_total,
            files_scanned: findings.files_scanned,
            files_pruned: findings.files_total - findings.files_scanned,
            bytes_scanned: findings.bytes_scanned,
            rows_scanned: rows_scanned(plan) + findings.rows_folded,
            rows_returned,
            cache_hit: false,
            shared_run: false,
            answered_from: if findings.from_state && findings.files_scanned == findings.files_folded
            {
                AnsweredFrom::State
            } else if findings.files_scanned == 0 && findings.bytes_scanned == 0 {
                AnsweredFrom::Metadata
            } else {
                AnsweredFrom::Scan
            },
            snapshot_ids: findings.snapshot_ids.clone(),
            planning_ms,
            elapsed_ms,
            workers: cluster.workers,
            tasks: cluster.tasks,
            worker_bytes_scanned: cluster.bytes_by_worker,
        }
    }

    /// The statistics of serving `self`'s result again from the cache:
    /// the same snapshot and totals, nothing scanned. `shared_run`: the
    /// caller waited for an identical query's run rather than finding it.
    pub(crate) fn served_from_cache(&self, elapsed_ms: f64, shared_run: bool) -> Self {
        Self {
            shards_queried: 0,
            partitions_scanned: 0,
            partitions_pruned: 0,
            files_scanned: 0,
            files_pruned: 0,
            bytes_scanned: 0,
            rows_scanned: 0,
            cache_hit: true,
            shared_run,
            answered_from: AnsweredFrom::Cache,
            planning_ms: 0.0,
            elapsed_ms,
            workers: 0,
            tasks: 0,
            worker_bytes_scanned: BTreeMap::new(),
            ..self.clone()
        }
    }

    /// One line for people: `3 of 12 files, 1 of 4 partitions, 2 shards, 1.2 MB, 10000 rows scanned ...`.
    pub fn summary(&self) -> String {
        if self.cache_hit {
            return format!(
                "{} rows from cache (snapshot {:?}) in {:.1} ms",
                self.rows_returned, self.snapshot_ids, self.elapsed_ms
            );
        }
        if self.answered_from == AnsweredFrom::Metadata {
            return format!(
                "{} rows in {:.1} ms, answered from metadata: {} of {} partitions, no data read from the {} files (snapshot {:?})",
                self.rows_returned,
                self.elapsed_ms,
                self.partitions_covered,
                self.partitions_total,
                self.files_total,
                self.snapshot_ids,
            );
        }
        if self.answered_from == AnsweredFrom::State {
            return format!(
                "{} rows in {:.1} ms from the maintained state of things: {} of {} partitions, {} files ({} rows) read to bring it up to date (snapshot {:?})",
                self.rows_returned,
                self.elapsed_ms,
                self.partitions_covered,
                self.partitions_total,
                self.files_scanned,
                self.rows_scanned,
                self.snapshot_ids,
            );
        }
        let spread = match self.workers {
            0 => String::new(),
            n => format!(" on {n} workers ({} tasks)", self.tasks),
        };
        format!(
            "{} rows in {:.1} ms; scanned {} of {} files, {} of {} partitions, {} shards, {:.2} MB, {} rows{spread} (snapshot {:?})",
            self.rows_returned,
            self.elapsed_ms,
            self.files_scanned,
            self.files_total,
            self.partitions_scanned,
            self.partitions_total,
            self.shards_queried,
            self.bytes_scanned as f64 / 1e6,
            self.rows_scanned,
            self.snapshot_ids,
        )
    }
}

/// Rows the Parquet scans of `plan` decoded: what they emitted plus what
/// their row filters dropped. A scan that fetched no bytes decoded nothing:
/// the rows it emitted were made from metadata (a column constant per
/// file, such as `namespace`, with row counts from the footers).
fn rows_scanned(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![Arc::clone(plan)];
    while let Some(node) = stack.pop() {
        if node.as_any().is::<DataSourceExec>()
            && let Some(metrics) = node.metrics()
            && metrics
                .sum_by_name("bytes_scanned")
                .is_some_and(|b| b.as_usize() > 0)
        {
            total += metrics.output_rows().unwrap_or(0) as u64;
            total += metrics
                .sum_by_name("pushdown_rows_pruned")
                .map_or(0, |v| v.as_usize() as u64);
        }
        stack.extend(node.children().into_iter().cloned());
    }
    total
}
