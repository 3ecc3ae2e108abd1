//! The phased migration: copy from the lake, catch up, fence, cut over,
//! flush, verify; or roll back.
//!
//! Every step is idempotent and the record is saved at every phase change,
//! so a re-run after a crash (or a failure without rollback) converges:
//! applying skips what a shard holds (by position), the fence and the
//! topology are durable in the control store, and buffered writes that were
//! delivered before the crash are found in the lake by idempotency key and
//! not sent again.
//!
//! Per key, position order stays causal across the move: the old owner is
//! fenced and drained and its events are in the lake before cutover; the
//! new owner's first events (the buffered writes) are committed after.
//!
//! This file holds the [`Migrator`]: its entry points, the lease, the
//! phase driver and what the phases share. Each phase adds its methods
//! from a file of its own; `replay` has the lake reads they share.

mod catch_up;
mod copy;
mod cutover;
mod fence;
mod flush;
mod replay;
mod rollback;
mod verify;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use shardlake_lake::Lake;
use shardlake_query::CrossShardQuery;
use shardlake_routing::ShardId;
use shardlake_shard::ShardStub;

use crate::error::{
    Result, invalid_plan, keys_busy, migration_busy, migration_not_found, timed_out,
};
use crate::gate::WriteGate;
use crate::plan::{KeyMove, MigrationPlan};
use crate::record::{self, FailureSummary, MigrationReport, MigrationStatus, Phase, Progress};
use crate::store::ControlStore;

/// How a migration runs.
#[derive(Debug, Clone)]
pub struct MigrationConfig {
    /// The whole run (not the rollback) is cancelled after this long.
    pub timeout: Duration,
    /// Events per `apply` call.
    pub batch_size: usize,
    /// Undo a failed run (drop the copies, restore routing, return the
    /// buffered writes to the old owners).
    pub rollback_on_failure: bool,
    /// Catch-up rounds before fencing at most.
    pub max_catch_up_rounds: u32,
    /// Fence once a catch-up round applied at most this many events (the
    /// writes buffered while fenced grow with the last round's length).
    pub catch_up_threshold: u64,
    /// Replay a namespace's moving keys by key (pruned by statistics) when
    /// at most this many move; otherwise scan the namespace and filter.
    pub keyed_replay_limit: usize,
    /// A run holds a lease on its migration, renewed every third of this;
    /// another process may take the migration over only once it expired
    /// (its runner died).
    pub lease: Duration,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            batch_size: 5_000,
            rollback_on_failure: true,
            max_catch_up_rounds: 5,
            catch_up_threshold: 1_000,
            keyed_replay_limit: 1_000,
            lease: Duration::from_secs(30),
        }
    }
}

/// Called before each phase starts (and awaited): to pause for an
/// operator, to inject faults in tests, or to log.
#[async_trait]
pub trait PhaseHook: Send + Sync {
    /// `phase` is about to start.
    async fn before(&self, phase: Phase, report: &MigrationReport);
}

type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Runs migrations of one lake.
pub struct Migrator {
    /// Names this migrator in leases.
    runner: String,
    lake: Lake,
    engine: CrossShardQuery,
    control: ControlStore,
    gate: Arc<WriteGate>,
    config: MigrationConfig,
    progress: Option<ProgressFn>,
    hook: Option<Arc<dyn PhaseHook>>,
}

impl std::fmt::Debug for Migrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A run in progress: the record and its clocks.
struct Run {
    report: MigrationReport,
    started: Instant,
    phase_started: Instant,
    /// When the record was last saved while applying (`status` in another
    /// process shows progress from it).
    saved: Instant,
    /// Events counted since the last checkpoint by earlier attempts: a
    /// resumed run finds them on the targets again, and that many skips
    /// are not counted twice.
    recount: u64,
}

/// Where each moving key goes.
type Moves = HashMap<String, (ShardId, ShardId)>;

impl Migrator {
    /// A migrator writing through `gate`. Raises the fences of unfinished
    /// migrations found in the lake's control store, so writes to their
    /// keys keep being buffered after a restart.
    pub async fn open(
        lake: &Lake,
        engine: CrossShardQuery,
        gate: Arc<WriteGate>,
        config: MigrationConfig,
    ) -> Result<Self> {
        let control = ControlStore::open(lake).await?;
        for report in record::migration_reports(&control).await? {
            if report.status.is_open() && report.fenced {
                gate.fence(&report.id, &report.plan.from, &report.plan.to)
                    .await?;
            }
        }
        let config = MigrationConfig {
            batch_size: config.batch_size.max(1),
            keyed_replay_limit: config.keyed_replay_limit.max(1),
            ..config
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            runner: format!("pid{}-{:x}", std::process::id(), nanos),
            lake: lake.clone(),
            engine,
            control,
            gate,
            config,
            progress: None,
            hook: None,
        })
    }

    /// Reports progress to `f`.
    pub fn on_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Awaits `hook` before every phase.
    pub fn with_hook(mut self, hook: Arc<dyn PhaseHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The control store (topologies, migration records).
    pub fn control(&self) -> &ControlStore {
        &self.control
    }

    /// The name this migrator holds leases under: a caller that stops a
    /// run (a signal) releases the lease with it, so a resume need not
    /// wait for it to run out.
    pub fn runner(&self) -> &str {
        &self.runner
    }

    /// Carries out `plan`. Returns the record whatever happened (check
    /// [`MigrationReport::status`]); errors only when it cannot start (a
    /// stale plan, keys another migration holds, no store).
    ///
    /// Running the same plan again resumes an unfinished run, returns a
    /// completed one, and starts over after a rollback.
    pub async fn execute(&self, plan: MigrationPlan) -> Result<MigrationReport> {
        let report = self.prepare(plan).await?;
        Ok(self.run_prepared(report).await)
    }

    /// The checks and claims of [`Self::execute`] without the run: returns
    /// the record to hand to [`Self::run_prepared`] (e.g. in a background
    /// task, once the caller has been told the migration started).
    pub async fn prepare(&self, plan: MigrationPlan) -> Result<MigrationReport> {
        let id = record::migration_id(&plan);
        let mut attempts = 1;
        if let Some(existing) = record::migration_report(&self.control, &id).await? {
            match existing.status {
                MigrationStatus::Completed => return Ok(existing),
                MigrationStatus::Running | MigrationStatus::Failed => {
                    self.take_lease(&id).await?;
                    return Ok(reopen(existing));
                }
                MigrationStatus::RolledBack => attempts = existing.attempts + 1,
            }
        }
        let current = match record::current_topology(&self.control).await? {
            Some(t) => t,
            None => {
                // The first migration of a lake records where it starts.
                record::publish_topology(&self.control, &plan.from).await?;
                plan.from.clone()
            }
        };
        if current != plan.from {
            return Err(invalid_plan(format!(
                "the plan starts from topology version {} but version {} is current; plan again",
                plan.from.version, current.version
            )));
        }
        let keys: Vec<String> = plan.moves.iter().map(|m| m.key.clone()).collect();
        let mut report = MigrationReport::new(id, plan);
        report.attempts = attempts;
        let conflicts = self
            .control
            .begin_migration(&record::row(&report)?, &keys)
            .await?;
        refuse_busy_keys(&conflicts)?;
        self.take_lease(&report.id).await?;
        Ok(report)
    }

    /// Takes (or renews) this migrator's lease on migration `id`.
    async fn take_lease(&self, id: &str) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let until = now + self.config.lease.as_millis() as i64;
        match self.control.lease(id, &self.runner, now, until).await? {
            Ok(()) => Ok(()),
            Err((holder, until)) => Err(migration_busy(format!(
                "migration {id} is being run by {holder} (its lease ends in {} ms unless renewed); \
                 wait for it, or for its lease to run out if that process died",
                (until - now).max(0)
            ))),
        }
    }

    /// Runs `work` while renewing the lease on `id`; `None` if the lease
    /// was lost (another process took the migration over: touch nothing).
    async fn with_lease<T>(&self, id: &str, work: impl Future<Output = T>) -> Option<T> {
        let heartbeat = async {
            loop {
                tokio::time::sleep(self.config.lease / 3).await;
                if let Err(e) = self.take_lease(id).await {
                    return e;
                }
            }
        };
        tokio::select! {
            out = work => Some(out),
            lost = heartbeat => {
                tracing::error!(migration = %id, error = %lost, "lost the migration's lease; stopping");
                None
            }
        }
    }

    /// Drives a record from [`Self::prepare`] to its end (a finished one is
    /// returned as is).
    pub async fn run_prepared(&self, report: MigrationReport) -> MigrationReport {
        if !report.status.is_open() {
            report
        } else if report.phase == Phase::RollingBack {
            // A rollback that was interrupted finishes as a rollback.
            self.finish_rollback(report).await
        } else {
            self.run(report).await
        }
    }

    /// Continues an interrupted or failed migration from where its record
    /// says it stopped.
    pub async fn resume(&self, id: &str) -> Result<MigrationReport> {
        let report = self.load(id).await?;
        if !report.status.is_open() {
            return Ok(report);
        }
        self.take_lease(id).await?;
        Ok(self.run_prepared(reopen(report)).await)
    }

    async fn load(&self, id: &str) -> Result<MigrationReport> {
        record::migration_report(&self.control, id)
            .await?
            .ok_or_else(|| migration_not_found(id))
    }

    async fn claim(&self, id: &str, keys: &[String]) -> Result<()> {
        refuse_busy_keys(&self.control.claim_keys(id, keys).await?)
    }

    /// Drives `report` to an end state; a failure is recorded (and rolled
    /// back if configured), never returned.
    async fn run(&self, report: MigrationReport) -> MigrationReport {
        let mut run = Run::new(report);
        let id = run.report.id.clone();
        let work = async {
            let outcome = tokio::time::timeout(self.config.timeout, self.drive(&mut run)).await;
            let failure = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                // Dropping `drive` cancelled whatever it was awaiting.
                Err(_) => Some(timed_out(run.report.phase.to_string())),
            };
            if let Some(e) = failure {
                tracing::warn!(migration = %run.report.id, phase = %run.report.phase, error = %e, "migration failed");
                run.report.error = Some(FailureSummary {
                    code: e.code().to_owned(),
                    message: e.to_string(),
                    phase: run.report.phase,
                });
                if self.config.rollback_on_failure {
                    self.roll_back(&mut run).await;
                } else {
                    run.report.status = MigrationStatus::Failed;
                }
            }
        };
        if self.with_lease(&id, work).await.is_none() {
            return run.report;
        }
        self.finish(&mut run).await;
        run.report
    }

    /// Saves the final record and gives up the lease.
    async fn finish(&self, run: &mut Run) {
        run.close_phase();
        run.report.duration_ms += run.started.elapsed().as_millis() as u64;
        run.started = Instant::now();
        if let Err(e) = record::save(&self.control, &run.report).await {
            tracing::error!(migration = %run.report.id, error = %e, "could not save the migration record");
        }
        if let Err(e) = self
            .control
            .release_lease(&run.report.id, &self.runner)
            .await
        {
            tracing::warn!(migration = %run.report.id, error = %e, "could not release the lease");
        }
    }

    async fn enter(&self, run: &mut Run, phase: Phase) -> Result<()> {
        run.close_phase();
        run.report.phase = phase;
        record::save(&self.control, &run.report).await?;
        tracing::info!(migration = %run.report.id, phase = %phase, "migration phase");
        self.report_progress(run);
        if let Some(hook) = &self.hook {
            hook.before(phase, &run.report).await;
        }
        Ok(())
    }

    fn report_progress(&self, run: &Run) {
        if let Some(progress) = &self.progress {
            progress(&Progress {
                id: run.report.id.clone(),
                phase: run.report.phase,
                keys_total: run.report.plan.moves.len(),
                events_total: run.report.plan.events_to_move,
                events_done: run.report.events_copied + run.report.events_skipped,
                writes_buffered: run.report.writes_buffered,
                elapsed_ms: run.started.elapsed().as_millis() as u64,
            });
        }
    }

    async fn drive(&self, run: &mut Run) -> Result<()> {
        self.enter(run, Phase::Initializing).await?;
        self.check_shards(&run.report)?;
        if run.report.copy_snapshot.is_none() {
            let snapshot = self.engine.current_snapshot().await?.snapshot_id;
            if let Some(s0) = snapshot {
                self.settle_keys_at(run, s0).await?;
            }
            run.report.copy_snapshot = snapshot;
            record::save(&self.control, &run.report).await?;
        }

        if run.report.applied_snapshot.is_none() && !run.report.cut_over {
            self.enter(run, Phase::Copying).await?;
            self.copy(run).await?;
        }

        self.enter(run, Phase::CatchingUp).await?;
        for _ in 0..self.config.max_catch_up_rounds {
            if self.catch_up(run).await? <= self.config.catch_up_threshold {
                break;
            }
        }

        self.enter(run, Phase::Fencing).await?;
        self.fence(run).await?;

        self.enter(run, Phase::Cutover).await?;
        self.cut_over(run).await?;

        self.enter(run, Phase::Flushing).await?;
        let flushed = self.flush_and_unfence(run).await?;
        run.report.writes_flushed += flushed;

        self.enter(run, Phase::Verifying).await?;
        self.verify(run).await?;

        // The old owners forget the moved keys. Best effort: a removed
        // shard may be gone for good, and routing no longer sends it anything.
        run.report.cleanup_problems.clear();
        for (shard, keys) in by_shard(&run.report.plan.moves, |m| m.from) {
            let result = match self.gate.shards().get(shard) {
                Ok(stub) => stub.drop_keys(&keys).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                run.report.cleanup_problems.push(e.to_string());
            }
        }
        self.control.release_keys(&run.report.id).await?;
        run.report.status = MigrationStatus::Completed;
        self.enter(run, Phase::Complete).await
    }

    fn check_shards(&self, report: &MigrationReport) -> Result<()> {
        for shard in report.plan.destinations.keys() {
            self.gate.shards().get(*shard)?;
        }
        Ok(())
    }

    fn moves(report: &MigrationReport) -> Moves {
        report
            .plan
            .moves
            .iter()
            .map(|m| (m.key.clone(), (m.from, m.to)))
            .collect()
    }

    fn stub(&self, shard: ShardId) -> Result<Arc<dyn ShardStub>> {
        self.gate.shards().get(shard)
    }
}

/// `KeysBusy` unless `conflicts` is empty.
fn refuse_busy_keys(conflicts: &[(String, String)]) -> Result<()> {
    if conflicts.is_empty() {
        return Ok(());
    }
    Err(keys_busy(
        &conflicts[..conflicts.len().min(5)],
        conflicts.len(),
    ))
}

/// An unfinished record, ready for another run.
fn reopen(mut report: MigrationReport) -> MigrationReport {
    report.status = MigrationStatus::Running;
    report.error = None;
    report.attempts += 1;
    report
}

impl Run {
    fn new(report: MigrationReport) -> Self {
        let counted = report.events_copied + report.events_skipped;
        Self {
            recount: counted.saturating_sub(report.events_counted_at_checkpoint),
            report,
            started: Instant::now(),
            phase_started: Instant::now(),
            saved: Instant::now(),
        }
    }

    /// The targets hold every moving key's events up to `snapshot`.
    fn checkpoint(&mut self, snapshot: i64) {
        self.report.applied_snapshot = Some(snapshot);
        self.report.events_counted_at_checkpoint =
            self.report.events_copied + self.report.events_skipped;
        self.recount = 0;
    }

    /// Counts what a shard's `apply` did: skips of events an earlier
    /// attempt already counted (it applied them, then died before its
    /// checkpoint) are not counted again.
    fn count_applied(&mut self, ack: &shardlake_shard::ApplyAck) {
        let skipped = ack.skipped as u64;
        let recounted = skipped.min(self.recount);
        self.recount -= recounted;
        self.report.events_copied += ack.applied as u64;
        self.report.events_skipped += skipped - recounted;
    }

    fn close_phase(&mut self) {
        let ms = self.phase_started.elapsed().as_millis() as u64;
        *self
            .report
            .phase_ms
            .entry(self.report.phase.as_str().to_owned())
            .or_insert(0) += ms;
        self.phase_started = Instant::now();
    }
}

/// Keys of `moves` grouped by the shard `side` picks.
fn by_shard(
    moves: &[KeyMove],
    side: impl Fn(&KeyMove) -> ShardId,
) -> BTreeMap<ShardId, Vec<String>> {
    let mut out: BTreeMap<ShardId, Vec<String>> = BTreeMap::new();
    for m in moves {
        out.entry(side(m)).or_default().push(m.key.clone());
    }
    out
}

/// Each moving key's index in `plan.moves`.
pub(super) fn key_index(plan: &MigrationPlan) -> HashMap<String, usize> {
    plan.moves
        .iter()
        .enumerate()
        .map(|(i, m)| (m.key.clone(), i))
        .collect()
}
