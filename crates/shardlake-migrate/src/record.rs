//! What a migration records about itself: its phase, counters and outcome.
//! The same record is the durable state a re-run resumes from, the result
//! the caller gets, and what `shardlake migrate status` and
//! `/v1/migrations` show.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use shardlake_routing::{ShardId, Topology};

use crate::error::{Result, internal};
use crate::plan::MigrationPlan;
use crate::store::{ControlStore, MigrationRow};

/// The phases of a migration, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Claiming the keys, choosing the copy snapshot.
    Initializing,
    /// Replaying the moving keys at the copy snapshot into their new owners.
    Copying,
    /// Replaying what was committed since, until the lag is small.
    CatchingUp,
    /// Buffering writes to moving keys, fencing and draining the old
    /// owners, then the last catch-up.
    Fencing,
    /// Publishing the next topology version.
    Cutover,
    /// Delivering buffered writes to the new owners, in order.
    Flushing,
    /// Comparing each moved key on its new owner with the lake.
    Verifying,
    /// Done; the old owners forgot the moved keys.
    Complete,
    /// Undoing a failed migration.
    RollingBack,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Self; 9] = [
        Self::Initializing,
        Self::Copying,
        Self::CatchingUp,
        Self::Fencing,
        Self::Cutover,
        Self::Flushing,
        Self::Verifying,
        Self::Complete,
        Self::RollingBack,
    ];

    /// The phase named `name` ([`Self::as_str`]), if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The name used in records, logs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initializing => "initializing",
            Self::Copying => "copying",
            Self::CatchingUp => "catching_up",
            Self::Fencing => "fencing",
            Self::Cutover => "cutover",
            Self::Flushing => "flushing",
            Self::Verifying => "verifying",
            Self::Complete => "complete",
            Self::RollingBack => "rolling_back",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationStatus {
    /// Under way (or interrupted: a re-run resumes it).
    Running,
    /// Every moved key verified on its new owner.
    Completed,
    /// Failed and undone: old routing, nothing left on the targets.
    RolledBack,
    /// Failed and not (entirely) undone: resume or roll back.
    Failed,
}

impl MigrationStatus {
    /// Every status.
    pub const ALL: [Self; 4] = [
        Self::Running,
        Self::Completed,
        Self::RolledBack,
        Self::Failed,
    ];

    /// The status named `name` ([`Self::as_str`]), if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The name used in records and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::RolledBack => "rolled_back",
            Self::Failed => "failed",
        }
    }

    /// Whether the migration still holds its keys.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Running | Self::Failed)
    }
}

/// A failure, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureSummary {
    /// Stable code ([`shardlake_core::ErrorKind::code`]).
    pub code: String,
    /// What happened.
    pub message: String,
    /// The phase it happened in.
    pub phase: Phase,
}

/// What a rollback did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackSummary {
    /// Keys dropped from the new owners.
    pub keys_dropped: usize,
    /// The version that restored the previous layout, if cutover had
    /// happened (versions never go back, so the old layout is republished).
    pub topology_restored_as: Option<u64>,
    /// Buffered writes delivered to the previous owners.
    pub writes_returned: u64,
    /// Steps that failed (empty: the rollback is complete).
    pub problems: Vec<String>,
}

/// A migration's record and result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationReport {
    /// Id: `v<from>-v<to>-<hash of the next topology>`.
    pub id: String,
    /// Where it stands.
    pub status: MigrationStatus,
    /// The last phase entered.
    pub phase: Phase,
    /// The plan, including keys found moving during catch-up.
    pub plan: MigrationPlan,
    /// Keys in the plan when it started.
    pub keys_planned: usize,
    /// Keys that appeared in the lake after planning and move too.
    pub keys_discovered: usize,
    /// Events applied on the new owners (and, by a rollback after cutover,
    /// on the old ones), over all attempts.
    pub events_copied: u64,
    /// Events the new owners had already, and no earlier attempt counted
    /// (a resumed copy finds what the dead run applied; those it had
    /// counted as copied are not counted again): `events_copied +
    /// events_skipped` is the number of events moved, however many
    /// attempts it took.
    pub events_skipped: u64,
    /// `events_copied + events_skipped` when the targets were last caught
    /// up to a recorded snapshot: a resumed run re-applies what came after,
    /// and skips up to the difference are not counted again.
    #[serde(default)]
    pub events_counted_at_checkpoint: u64,
    /// Shards this migration sent events to (recorded before the first
    /// send): a rollback before cutover drops copies only there, so a
    /// target that never received anything (or never existed) does not
    /// hold the rollback up. `None` in records from before it was kept:
    /// every destination.
    #[serde(default)]
    pub shards_sent_to: Option<BTreeSet<ShardId>>,
    /// Incremental replays after the copy.
    pub catch_up_rounds: u32,
    /// Writes found buffered when flushing (a write counted again only if
    /// its delivery failed and was retried).
    pub writes_buffered: u64,
    /// Buffered writes delivered to the new owners.
    pub writes_flushed: u64,
    /// Keys whose copy matched the lake (count and content hash).
    pub keys_verified: usize,
    /// The snapshot the copy read.
    #[serde(with = "shardlake_core::json_id::option", default)]
    pub copy_snapshot: Option<i64>,
    /// The new owners hold every moving key's events up to this snapshot.
    #[serde(with = "shardlake_core::json_id::option", default)]
    pub applied_snapshot: Option<i64>,
    /// The snapshot after the old owners were fenced and drained.
    #[serde(with = "shardlake_core::json_id::option", default)]
    pub fence_snapshot: Option<i64>,
    /// The last position committed when the old owners were fenced: none
    /// of their events for a moved key may come after it.
    #[serde(default)]
    pub fence_position: Option<i64>,
    /// Whether writes to moving keys are being buffered.
    pub fenced: bool,
    /// Whether the next topology was published.
    pub cut_over: bool,
    /// Whether buffered writes have started going out (a re-run checks the
    /// lake for writes already delivered).
    pub flush_started: bool,
    /// Whether it was undone.
    pub rolled_back: bool,
    /// What the rollback did.
    pub rollback: Option<RollbackSummary>,
    /// Why it failed.
    pub error: Option<FailureSummary>,
    /// Old owners that could not forget the moved keys (best effort: a
    /// removed shard may be gone).
    pub cleanup_problems: Vec<String>,
    /// Runs (1 + resumes).
    pub attempts: u32,
    /// Wall time over all runs.
    pub duration_ms: u64,
    /// Wall time per phase over all runs.
    pub phase_ms: BTreeMap<String, u64>,
}

impl MigrationReport {
    pub(crate) fn new(id: String, plan: MigrationPlan) -> Self {
        Self {
            id,
            status: MigrationStatus::Running,
            phase: Phase::Initializing,
            keys_planned: plan.moves.len(),
            plan,
            keys_discovered: 0,
            events_copied: 0,
            events_skipped: 0,
            events_counted_at_checkpoint: 0,
            shards_sent_to: Some(BTreeSet::new()),
            catch_up_rounds: 0,
            writes_buffered: 0,
            writes_flushed: 0,
            keys_verified: 0,
            copy_snapshot: None,
            applied_snapshot: None,
            fence_snapshot: None,
            fence_position: None,
            fenced: false,
            cut_over: false,
            flush_started: false,
            rolled_back: false,
            rollback: None,
            error: None,
            cleanup_problems: Vec::new(),
            attempts: 1,
            duration_ms: 0,
            phase_ms: BTreeMap::new(),
        }
    }

    /// Whether it completed.
    pub fn succeeded(&self) -> bool {
        self.status == MigrationStatus::Completed
    }

    /// The shards a rollback of this record talks to. After cutover, every
    /// shard a key moves from or to (the keys go back). Before cutover,
    /// only the targets that were sent events (they hold copies to drop)
    /// and, once fenced, the old owners (they reopen their keys): a target
    /// that never received anything, or never existed, is not needed.
    pub fn rollback_shards(&self) -> BTreeSet<ShardId> {
        let moves = &self.plan.moves;
        if self.cut_over {
            return moves.iter().flat_map(|m| [m.from, m.to]).collect();
        }
        let sent = |s: &ShardId| {
            self.shards_sent_to
                .as_ref()
                .is_none_or(|set| set.contains(s))
        };
        let mut shards: BTreeSet<ShardId> = moves.iter().map(|m| m.to).filter(sent).collect();
        if self.fenced {
            shards.extend(moves.iter().map(|m| m.from));
        }
        shards
    }
}

/// A progress update (at every phase change and every applied batch).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// The migration.
    pub id: String,
    /// Its phase.
    pub phase: Phase,
    /// Keys moving.
    pub keys_total: usize,
    /// Events planned to copy.
    pub events_total: u64,
    /// Events applied or found present so far.
    pub events_done: u64,
    /// Writes buffered so far.
    pub writes_buffered: u64,
    /// Since this run started.
    pub elapsed_ms: u64,
}

/// The id of the migration that carries out `plan`.
pub fn migration_id(plan: &MigrationPlan) -> String {
    let to = serde_json::to_string(&plan.to).unwrap_or_default();
    format!(
        "v{}-v{}-{:08x}",
        plan.from.version,
        plan.to.version,
        xxhash_rust::xxh3::xxh3_64(to.as_bytes()) as u32
    )
}

/// The stored form of `report`.
pub(crate) fn row(report: &MigrationReport) -> Result<MigrationRow> {
    let record = serde_json::to_string(report)
        .map_err(|e| internal(format!("unserializable record: {e}")))?;
    Ok(MigrationRow {
        id: report.id.clone(),
        status: report.status,
        phase: report.phase,
        fenced: report.fenced,
        record,
        updated_at: String::new(),
        pinned_snapshots: pinned_snapshots(report),
    })
}

/// The snapshots an unfinished migration still reads: its copy snapshot
/// (a resumed copy replays it again) and the snapshot the targets are
/// caught up to (the next catch-up replays what came after it). A finished
/// one reads none.
fn pinned_snapshots(report: &MigrationReport) -> Vec<i64> {
    if matches!(
        report.status,
        MigrationStatus::Completed | MigrationStatus::RolledBack
    ) {
        return Vec::new();
    }
    let mut ids: Vec<i64> = [
        report.copy_snapshot,
        report.applied_snapshot,
        report.fence_snapshot,
    ]
    .into_iter()
    .flatten()
    .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

pub(crate) async fn save(control: &ControlStore, report: &MigrationReport) -> Result<()> {
    control.save_migration(&row(report)?).await?;
    Ok(())
}

fn parse(row: &MigrationRow) -> Result<MigrationReport> {
    serde_json::from_str(&row.record)
        .map_err(|e| internal(format!("migration {} has a bad record: {e}", row.id)))
}

/// One migration's record.
pub async fn migration_report(control: &ControlStore, id: &str) -> Result<Option<MigrationReport>> {
    control.migration(id).await?.as_ref().map(parse).transpose()
}

/// Every migration's record, newest first.
pub async fn migration_reports(control: &ControlStore) -> Result<Vec<MigrationReport>> {
    control.migrations().await?.iter().map(parse).collect()
}

/// The current topology of the lake, if one was published.
pub async fn current_topology(control: &ControlStore) -> Result<Option<Topology>> {
    control
        .current_topology()
        .await?
        .map(|(version, json)| {
            serde_json::from_str(&json)
                .map_err(|e| internal(format!("topology version {version} is unreadable: {e}")))
        })
        .transpose()
}

/// Marks `report` as cut over if the store has its next topology (or a
/// later one) published: the record may lag the store after a crash or a
/// timeout between publishing and saving, and the store decides.
pub async fn cut_over_per_store(
    control: &ControlStore,
    report: &mut MigrationReport,
) -> Result<()> {
    if current_topology(control)
        .await?
        .is_some_and(|t| t.version >= report.plan.to.version)
    {
        report.cut_over = true;
    }
    Ok(())
}

/// Publishes `topology` if its version is higher than the current one.
pub async fn publish_topology(control: &ControlStore, topology: &Topology) -> Result<bool> {
    let json = serde_json::to_string(topology)
        .map_err(|e| internal(format!("unserializable topology: {e}")))?;
    control
        .publish_topology(topology.version as i64, &json)
        .await
}
