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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use shardlake_core::Event;
use shardlake_lake::Lake;
use shardlake_lake::control::ControlStore;
use shardlake_query::{CrossShardQuery, ReplayQuery};
use shardlake_routing::{ShardId, ShardRouter, Topology};

use crate::error::{MigrateError, Result};
use crate::gate::WriteGate;
use crate::plan::{KeyMove, MigrationPlan};
use crate::record::{
    self, FailureSummary, MigrationReport, MigrationStatus, Phase, Progress, RollbackSummary,
};
use crate::stub::{KeyDigest, ShardStub, digest_of};

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

/// How often the record is saved while events are being applied.
const SAVE_EVERY: Duration = Duration::from_millis(250);

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
        let control = lake.control().await?;
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
            return Err(MigrateError::InvalidPlan(format!(
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
        busy(conflicts)?;
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
            Err((holder, until)) => Err(MigrateError::Busy(format!(
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

    async fn finish_rollback(&self, report: MigrationReport) -> MigrationReport {
        let mut run = Run::new(report);
        let id = run.report.id.clone();
        if self
            .with_lease(&id, self.roll_back(&mut run))
            .await
            .is_none()
        {
            return run.report;
        }
        self.finish(&mut run).await;
        run.report
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

    /// Undoes an unfinished migration (one that failed without rollback,
    /// or whose process died).
    pub async fn rollback(&self, id: &str) -> Result<MigrationReport> {
        let report = self.load(id).await?;
        match report.status {
            MigrationStatus::Completed => Err(MigrateError::InvalidPlan(format!(
                "migration {id} completed; plan the reverse migration instead"
            ))),
            MigrationStatus::RolledBack => Ok(report),
            MigrationStatus::Running | MigrationStatus::Failed => {
                self.take_lease(id).await?;
                Ok(self.finish_rollback(report).await)
            }
        }
    }

    async fn load(&self, id: &str) -> Result<MigrationReport> {
        record::migration_report(&self.control, id)
            .await?
            .ok_or_else(|| MigrateError::Unknown(format!("no migration `{id}`")))
    }

    async fn claim(&self, id: &str, keys: &[String]) -> Result<()> {
        busy(self.control.claim_keys(id, keys).await?)
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
                Err(_) => Some(MigrateError::Timeout {
                    phase: run.report.phase.to_string(),
                }),
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

    /// The keys that move, as of the copy snapshot `s0`: the plan was made
    /// earlier, so keys written since join it (claimed), and every key's
    /// namespaces are those it has at `s0`. Keys born after `s0` join
    /// during catch-up.
    async fn settle_keys_at(&self, run: &mut Run, s0: i64) -> Result<()> {
        let keys = crate::plan::key_stats_at(&self.engine, Some(s0)).await?;
        let now =
            crate::plan::plan_between(&run.report.plan.from, &run.report.plan.to, &keys, 0.0)?;
        let index: HashMap<String, usize> = run
            .report
            .plan
            .moves
            .iter()
            .enumerate()
            .map(|(i, m)| (m.key.clone(), i))
            .collect();
        let mut joined = Vec::new();
        for m in now.moves {
            match index.get(&m.key) {
                Some(&i) => run.report.plan.moves[i].namespaces = m.namespaces,
                None => joined.push(m),
            }
        }
        if !joined.is_empty() {
            let keys: Vec<String> = joined.iter().map(|m| m.key.clone()).collect();
            self.claim(&run.report.id, &keys).await?;
            for m in joined {
                *run.report.plan.destinations.entry(m.to).or_insert(0) += 1;
                run.report.plan.events_to_move += m.events;
                run.report.plan.moves.push(m);
                run.report.keys_discovered += 1;
            }
        }
        Ok(())
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

    /// Replays the moving keys at the copy snapshot into their new owners.
    async fn copy(&self, run: &mut Run) -> Result<()> {
        let Some(snapshot) = run.report.copy_snapshot else {
            return Ok(()); // an empty lake: nothing to copy
        };
        let moves = Self::moves(&run.report);
        let mut sink = Sink::new(self);
        for query in self.replays_of(&run.report.plan.moves, snapshot) {
            self.replay_into(query, &moves, &mut sink, run).await?;
        }
        sink.flush_all(run).await?;
        run.checkpoint(snapshot);
        record::save(&self.control, &run.report).await
    }

    /// The replays that read `moves`' keys at `snapshot`: by key where few
    /// keys of a namespace move (statistics prune the rest), whole
    /// namespaces (filtered here) where many do. Keys with events in more
    /// than one namespace are replayed without a namespace filter, so their
    /// events stay in one position order.
    fn replays_of(&self, moves: &[KeyMove], snapshot: i64) -> Vec<ReplayQuery> {
        let mut by_namespace: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut spanning = Vec::new();
        for m in moves {
            match m.namespaces.as_slice() {
                [ns] => by_namespace.entry(ns).or_default().push(m.key.clone()),
                _ => spanning.push(m.key.clone()),
            }
        }
        let at = |namespace: Option<&str>, keys: Vec<String>| ReplayQuery {
            namespace: namespace.map(str::to_owned),
            partition_keys: keys,
            snapshot_id: Some(snapshot),
            ..ReplayQuery::default()
        };
        let limit = self.config.keyed_replay_limit.max(1);
        let mut queries = Vec::new();
        for (ns, keys) in by_namespace {
            if keys.len() <= limit {
                queries.push(at(Some(ns), keys));
            } else {
                queries.push(at(Some(ns), Vec::new()));
            }
        }
        for chunk in spanning.chunks(limit) {
            queries.push(at(None, chunk.to_vec()));
        }
        queries
    }

    /// Streams `query`, handing the events of moving keys to `sink`.
    async fn replay_into(
        &self,
        query: ReplayQuery,
        moves: &Moves,
        sink: &mut Sink<'_>,
        run: &mut Run,
    ) -> Result<()> {
        let mut stream = self.engine.replay(query).without_cache().stream().await?;
        while let Some(batch) = stream.next().await {
            let events = shardlake_core::events_from_batch(&batch?)
                .map_err(|e| MigrateError::Internal(format!("replayed rows: {e}")))?;
            for event in events {
                if let Some(&(_, to)) = moves.get(&event.partition_key) {
                    sink.push(to, event, run).await?;
                }
            }
        }
        Ok(())
    }

    /// Applies what was committed since the applied snapshot; returns the
    /// number of events of moving keys it saw. Keys that appeared after
    /// planning and change owner join the migration here.
    async fn catch_up(&self, run: &mut Run) -> Result<u64> {
        self.catch_up_into(run, true).await
    }

    /// [`Self::catch_up`]; with `apply` false it only finds the keys that
    /// joined (for a rollback, which gives back whole histories instead).
    async fn catch_up_into(&self, run: &mut Run, apply: bool) -> Result<u64> {
        let current = self.engine.current_snapshot().await?.snapshot_id;
        let Some(current) = current else {
            return Ok(0);
        };
        if run.report.applied_snapshot == Some(current) {
            return Ok(0);
        }
        let mut moves = Self::moves(&run.report);
        let mut index: HashMap<String, usize> = run
            .report
            .plan
            .moves
            .iter()
            .enumerate()
            .map(|(i, m)| (m.key.clone(), i))
            .collect();
        let (from, to) = (
            ShardRouter::new(run.report.plan.from.clone())?,
            ShardRouter::new(run.report.plan.to.clone())?,
        );
        let query = ReplayQuery {
            since_snapshot: run.report.applied_snapshot,
            snapshot_id: Some(current),
            ..ReplayQuery::default()
        };
        let mut stream = self.engine.replay(query).without_cache().stream().await?;
        let mut sink = Sink::new(self);
        let mut seen = 0;
        while let Some(batch) = stream.next().await {
            let events = shardlake_core::events_from_batch(&batch?)
                .map_err(|e| MigrateError::Internal(format!("replayed rows: {e}")))?;
            for event in events {
                let key = event.partition_key.as_str();
                let route = match moves.get(key) {
                    Some(r) => Some(*r),
                    None => {
                        let (a, b) = (from.shard_of(key)?, to.shard_of(key)?);
                        (a != b).then_some((a, b))
                    }
                };
                let Some((a, b)) = route else { continue };
                if !moves.contains_key(key) {
                    self.discover(run, &event, a, b).await?;
                    moves.insert(event.partition_key.clone(), (a, b));
                    index.insert(event.partition_key.clone(), run.report.plan.moves.len() - 1);
                } else if let Some(m) = index
                    .get(key)
                    .and_then(|&i| run.report.plan.moves.get_mut(i))
                    .filter(|m| !m.namespaces.contains(&event.namespace))
                {
                    // A new namespace for a moving key: replays for it
                    // (verify, rollback) must read that one too.
                    m.namespaces.push(event.namespace.clone());
                    m.namespaces.sort();
                }
                seen += 1;
                if apply {
                    sink.push(b, event, run).await?;
                }
            }
        }
        sink.flush_all(run).await?;
        run.checkpoint(current);
        run.report.catch_up_rounds += 1;
        record::save(&self.control, &run.report).await?;
        Ok(seen)
    }

    /// A key the plan did not know changes owner: claim and move it too.
    async fn discover(
        &self,
        run: &mut Run,
        event: &Event,
        from: ShardId,
        to: ShardId,
    ) -> Result<()> {
        let key = event.partition_key.clone();
        self.claim(&run.report.id, std::slice::from_ref(&key))
            .await?;
        if run.report.fenced {
            self.gate
                .shards()
                .get(from)?
                .set_accepting(std::slice::from_ref(&key), false)
                .await?;
        }
        let plan = &mut run.report.plan;
        plan.moves.push(KeyMove {
            key,
            namespaces: vec![event.namespace.clone()],
            from,
            to,
            events: 0,
            bytes: 0,
        });
        *plan.destinations.entry(to).or_insert(0) += 1;
        run.report.keys_discovered += 1;
        Ok(())
    }

    /// Buffers writes to moving keys, fences and drains the old owners,
    /// then applies the last of their events.
    async fn fence(&self, run: &mut Run) -> Result<()> {
        self.raise_fence(run, |m| m.from).await?;
        // Everything the old owners had acknowledged is committed now: any
        // later event of theirs for a moved key is a zombie's (verify).
        if run.report.fence_position.is_none() {
            let state = self.lake.commit_state().await?;
            run.report.fence_position = Some(state.next_position - 1);
        }
        self.catch_up(run).await?;
        run.report.fence_snapshot = run.report.applied_snapshot;
        record::save(&self.control, &run.report).await
    }

    /// Buffers writes to the moving keys (durably first: a restarted gate
    /// raises the fence again), then fences and drains the shards that
    /// own them now (`owner` picks old or new owner).
    async fn raise_fence(&self, run: &mut Run, owner: fn(&KeyMove) -> ShardId) -> Result<()> {
        run.report.fenced = true;
        record::save(&self.control, &run.report).await?;
        let plan = &run.report.plan;
        self.gate
            .fence(&run.report.id, &plan.from, &plan.to)
            .await?;
        for (shard, keys) in by_shard(&plan.moves, owner) {
            let stub = self.stub(shard)?;
            stub.set_accepting(&keys, false).await?;
            stub.drain().await?;
        }
        Ok(())
    }

    /// Publishes the next topology (durably, then in this process).
    async fn cut_over(&self, run: &mut Run) -> Result<()> {
        let next = run.report.plan.to.clone();
        if !record::publish_topology(&self.control, &next).await? {
            let current = record::current_topology(&self.control).await?;
            if current.as_ref() != Some(&next) {
                return Err(MigrateError::InvalidPlan(format!(
                    "topology version {} is taken by another change",
                    next.version
                )));
            }
        }
        self.adopt(&next)?;
        run.report.cut_over = true;
        record::save(&self.control, &run.report).await
    }

    /// Makes `topology` this process's routing (if it is not older).
    fn adopt(&self, topology: &Topology) -> Result<()> {
        let router = self.gate.router();
        if router.current().topology().version < topology.version {
            router.swap(ShardRouter::new(topology.clone())?)?;
        }
        Ok(())
    }

    /// Delivers the buffer to the keys' current owners until it is empty,
    /// then lifts the fence with the last of it.
    async fn flush_and_unfence(&self, run: &mut Run) -> Result<u64> {
        let mut delivered = 0;
        for _ in 0..3 {
            let n = self.flush_buffer(run).await?;
            delivered += n;
            if n == 0 {
                break;
            }
        }
        let id = run.report.id.clone();
        let mut last = 0;
        self.gate
            .unfence(&id, async {
                last = self.flush_buffer(run).await?;
                // From here on no gate (of any process) buffers for this
                // migration: the buffer insert checks this flag.
                run.report.fenced = false;
                record::save(&self.control, &run.report).await
            })
            .await?;
        delivered += last;
        // Writes another process buffered before it saw the flag.
        delivered += self.flush_buffer(run).await?;
        Ok(delivered)
    }

    /// Sends the buffered writes to their keys' owners under the current
    /// routing, each owner's in arrival order; returns how many went out.
    async fn flush_buffer(&self, run: &mut Run) -> Result<u64> {
        let buffered = self.control.buffered_writes(&run.report.id).await?;
        if buffered.is_empty() {
            return Ok(0);
        }
        run.report.writes_buffered += buffered.len() as u64;
        let mut writes = Vec::with_capacity(buffered.len());
        for b in &buffered {
            let mut event: Event = serde_json::from_str(&b.event).map_err(|e| {
                MigrateError::Internal(format!("buffered write {} is unreadable: {e}", b.n))
            })?;
            // Names the write, so a re-run can tell whether it arrived.
            if event.idempotency_key.is_none() {
                event.idempotency_key = Some(format!("shardlake-buffered-write:{}", b.n));
            }
            writes.push((b.n, event));
        }
        let delivered = if run.report.flush_started {
            // A delivery an earlier run started may still be on its way:
            // let the owners finish before asking the lake what arrived.
            let router = self.gate.router().current();
            let mut owners = BTreeSet::new();
            for (_, e) in &writes {
                owners.insert(router.shard_of(&e.partition_key)?);
            }
            for owner in owners {
                self.gate.shards().get(owner)?.drain().await?;
            }
            self.delivered_already(&writes).await?
        } else {
            BTreeSet::new()
        };
        run.report.flush_started = true;
        record::save(&self.control, &run.report).await?;

        let router = self.gate.router().current();
        let mut by_owner: BTreeMap<ShardId, (Vec<i64>, Vec<Event>)> = BTreeMap::new();
        let mut done = Vec::new();
        for (n, event) in writes {
            if event
                .idempotency_key
                .as_ref()
                .is_some_and(|k| delivered.contains(k))
            {
                done.push(n);
                continue;
            }
            let owner = router.shard_of(&event.partition_key)?;
            let entry = by_owner.entry(owner).or_default();
            entry.0.push(n);
            entry.1.push(event);
        }
        let mut sent = 0;
        for (owner, (ns, events)) in by_owner {
            let stub = self.gate.shards().get(owner)?;
            for (n, chunk) in ns
                .chunks(self.config.batch_size)
                .zip(events.chunks(self.config.batch_size))
            {
                stub.write(chunk).await?;
                self.control.remove_buffered(&run.report.id, n).await?;
                sent += chunk.len() as u64;
            }
        }
        self.control.remove_buffered(&run.report.id, &done).await?;
        Ok(sent)
    }

    /// Idempotency keys of `writes` that are in the lake already.
    async fn delivered_already(&self, writes: &[(i64, Event)]) -> Result<BTreeSet<String>> {
        let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let keys: BTreeSet<String> = writes
            .iter()
            .map(|(_, e)| quote(&e.partition_key))
            .collect();
        let ids: BTreeSet<String> = writes
            .iter()
            .filter_map(|(_, e)| e.idempotency_key.as_deref().map(quote))
            .collect();
        let sql = format!(
            "SELECT idempotency_key FROM events WHERE partition_key IN ({}) AND idempotency_key IN ({})",
            keys.into_iter().collect::<Vec<_>>().join(", "),
            ids.into_iter().collect::<Vec<_>>().join(", ")
        );
        // Whatever the engine's freshness bound: a delivery of a moment ago counts.
        let result = self.engine.sql(sql).latest().without_cache().await?;
        let mut found = BTreeSet::new();
        for batch in &result.batches {
            let col = arrow::array::AsArray::as_string::<i32>(batch.column(0));
            found.extend(col.iter().flatten().map(str::to_owned));
        }
        Ok(found)
    }

    /// Compares each moved key on its new owner with the lake: event count,
    /// last position and content hash, at one snapshot.
    async fn verify(&self, run: &mut Run) -> Result<()> {
        self.catch_up(run).await?;
        let Some(snapshot) = run.report.applied_snapshot else {
            return Ok(());
        };
        let moves = Self::moves(&run.report);
        let mut lake: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        for query in self.replays_of(&run.report.plan.moves, snapshot) {
            let mut stream = self.engine.replay(query).without_cache().stream().await?;
            while let Some(batch) = stream.next().await {
                let events = shardlake_core::events_from_batch(&batch?)
                    .map_err(|e| MigrateError::Internal(format!("replayed rows: {e}")))?;
                for e in events {
                    if moves.contains_key(&e.partition_key) {
                        lake.entry(e.partition_key.clone()).or_default().push(e);
                    }
                }
            }
        }
        let mut mismatches = Vec::new();
        // An old owner that kept writing after it was fenced (a zombie that
        // missed the fence) would own the key twice.
        let fenced_at = run.report.fence_position.unwrap_or(i64::MAX);
        for (key, events) in &lake {
            let Some(&(from, _)) = moves.get(key) else {
                continue;
            };
            if let Some(e) = events
                .iter()
                .find(|e| e.shard_id == from as i32 && e.position.unwrap_or(0) > fenced_at)
            {
                mismatches.push(format!(
                    "`{key}`: old owner {from} committed seq {} at position {} after it was fenced (position {fenced_at})",
                    e.seq,
                    e.position.unwrap_or(0)
                ));
            }
        }
        let mut verified = 0;
        for (shard, keys) in by_shard(&run.report.plan.moves, |m| m.to) {
            let held = self.gate.shards().get(shard)?.digests(&keys).await?;
            for key in keys {
                let expected: Option<KeyDigest> =
                    lake.get(&key).map(|events| digest_of(events.iter()));
                let actual = held.get(&key);
                if expected.as_ref() == actual {
                    verified += 1;
                } else {
                    mismatches.push(format!(
                        "`{key}` on shard {shard}: lake {} events, shard {} events",
                        expected.map_or(0, |d| d.events),
                        actual.map_or(0, |d| d.events)
                    ));
                }
            }
        }
        run.report.keys_verified = verified;
        if mismatches.is_empty() {
            Ok(())
        } else {
            let total = mismatches.len();
            mismatches.truncate(5);
            Err(MigrateError::VerificationFailed(format!(
                "{total} key(s) differ: {}",
                mismatches.join("; ")
            )))
        }
    }

    /// Undoes the run as far as it got. Never fails: what could not be
    /// undone is listed in the summary and the status stays `failed`, so an
    /// operator can retry (`shardlake migrate rollback`).
    async fn roll_back(&self, run: &mut Run) {
        let failed_in = run.report.phase;
        if let Err(e) = self.enter(run, Phase::RollingBack).await {
            tracing::warn!(error = %e, "could not record the rollback phase");
        }
        let mut summary = RollbackSummary::default();
        let mut problems = Vec::new();
        if let Err(e) = record::cut_over_per_store(&self.control, &mut run.report).await {
            problems.push(format!("read the topology: {e}"));
        }
        let note = |problems: &mut Vec<String>, result: Result<()>, what: String| {
            if let Err(e) = result {
                problems.push(format!("{what}: {e}"));
            }
        };
        if run.report.cut_over {
            match self.uncut(run).await {
                Ok((version, returned)) => {
                    summary.topology_restored_as = Some(version);
                    summary.writes_returned += returned;
                }
                Err(e) => note(&mut problems, Err(e), "restore routing".into()),
            }
        }
        if !run.report.cut_over {
            // Copies exist only where events were sent; old owners stopped
            // accepting only once fenced.
            let needed = run.report.rollback_shards();
            let targets = by_shard(&run.report.plan.moves, |m| m.to);
            for (shard, keys) in targets.into_iter().filter(|(s, _)| needed.contains(s)) {
                let result = self
                    .stub(shard)
                    .map(|s| async move { s.drop_keys(&keys).await.map(|()| keys.len()) });
                match result {
                    Ok(dropping) => match dropping.await {
                        Ok(n) => summary.keys_dropped += n,
                        Err(e) => note(
                            &mut problems,
                            Err(e),
                            format!("drop the copies on shard {shard}"),
                        ),
                    },
                    Err(e) => note(
                        &mut problems,
                        Err(e),
                        format!("drop the copies on shard {shard}"),
                    ),
                }
            }
            if run.report.fenced {
                for (shard, keys) in by_shard(&run.report.plan.moves, |m| m.from) {
                    let result = match self.stub(shard) {
                        Ok(stub) => stub.set_accepting(&keys, true).await,
                        Err(e) => Err(e),
                    };
                    note(&mut problems, result, format!("reopen shard {shard}"));
                }
                // The fence stays up (and a retry reopens again) until
                // every old owner accepts its keys.
                if problems.is_empty() {
                    match self.flush_and_unfence(run).await {
                        Ok(n) => summary.writes_returned += n,
                        Err(e) => note(&mut problems, Err(e), "return the buffered writes".into()),
                    }
                }
            }
        }
        if problems.is_empty() {
            let released = self.control.release_keys(&run.report.id).await;
            note(
                &mut problems,
                released.map_err(Into::into),
                "release the keys".into(),
            );
        }
        let done = problems.is_empty();
        run.report.rolled_back = done;
        summary.problems = problems;
        run.report.rollback = Some(summary);
        if done {
            run.report.status = MigrationStatus::RolledBack;
            run.report.applied_snapshot = None;
            run.report.fence_position = None;
            run.report.flush_started = false;
            run.report.phase = failed_in;
        } else {
            // Stays in `rolling_back`: resume or rollback finishes the
            // rollback, never drives a half-undone migration forward.
            run.report.status = MigrationStatus::Failed;
        }
    }

    fn stub(&self, shard: ShardId) -> Result<Arc<dyn ShardStub>> {
        self.gate.shards().get(shard)
    }

    /// After cutover: fence again, give the keys back to their old owners
    /// (the previous layout, republished as a newer version, since versions
    /// never go back), let the old owners apply what the new ones committed
    /// meanwhile, drop the copies and return the buffered writes. Returns
    /// the restoring version and the writes returned.
    async fn uncut(&self, run: &mut Run) -> Result<(u64, u64)> {
        let plan = run.report.plan.clone();
        self.raise_fence(run, |m| m.to).await?;
        let current = record::current_topology(&self.control).await?;
        let restored = match current {
            // An earlier rollback attempt republished it already.
            Some(t)
                if t.version > plan.to.version
                    && (&t.shards, &t.strategy) == (&plan.from.shards, &plan.from.strategy) =>
            {
                t
            }
            current => {
                let restored = Topology {
                    version: current.map_or(plan.to.version, |t| t.version.max(plan.to.version))
                        + 1,
                    ..plan.from.clone()
                };
                if !record::publish_topology(&self.control, &restored).await? {
                    return Err(MigrateError::InvalidPlan(format!(
                        "topology version {} is taken by another change",
                        restored.version
                    )));
                }
                restored
            }
        };
        self.adopt(&restored)?;

        // Keys first written after the fence joined under the new routing:
        // find them, so they go back too.
        run.report.applied_snapshot = run.report.fence_snapshot;
        self.catch_up_into(run, false).await?;
        // The old owners take back each key's whole history (applying skips
        // what they hold, so they end with exactly what the new owners
        // committed meanwhile, in order).
        if let Some(snapshot) = self.engine.current_snapshot().await?.snapshot_id {
            let back: Moves = run
                .report
                .plan
                .moves
                .iter()
                .map(|m| (m.key.clone(), (m.to, m.from)))
                .collect();
            let mut sink = Sink::new(self);
            for query in self.replays_of(&run.report.plan.moves, snapshot) {
                self.replay_into(query, &back, &mut sink, run).await?;
            }
            sink.flush_all(run).await?;
        }
        for (shard, keys) in by_shard(&run.report.plan.moves, |m| m.to) {
            self.stub(shard)?.drop_keys(&keys).await?;
        }
        for (shard, keys) in by_shard(&run.report.plan.moves, |m| m.from) {
            self.stub(shard)?.set_accepting(&keys, true).await?;
        }
        let returned = self.flush_and_unfence(run).await?;
        // Only now: a retry before this point redoes the whole give-back.
        run.report.cut_over = false;
        record::save(&self.control, &run.report).await?;
        Ok((restored.version, returned))
    }
}

/// `KeysBusy` unless `conflicts` is empty.
fn busy(conflicts: Vec<(String, String)>) -> Result<()> {
    if conflicts.is_empty() {
        return Ok(());
    }
    Err(MigrateError::KeysBusy {
        total: conflicts.len(),
        conflicts: conflicts.into_iter().take(5).collect(),
    })
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
    fn count_applied(&mut self, ack: &crate::stub::ApplyAck) {
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

/// Per-shard batches of events on their way to `apply` (each shard's in
/// replay order, so each key's stay in position order).
struct Sink<'a> {
    migrator: &'a Migrator,
    pending: BTreeMap<ShardId, Vec<Event>>,
}

impl<'a> Sink<'a> {
    fn new(migrator: &'a Migrator) -> Self {
        Self {
            migrator,
            pending: BTreeMap::new(),
        }
    }

    /// Queues `event` for `shard`, applying a full batch.
    async fn push(&mut self, shard: ShardId, event: Event, run: &mut Run) -> Result<()> {
        let batch = self.pending.entry(shard).or_default();
        batch.push(event);
        if batch.len() >= self.migrator.config.batch_size {
            let events = std::mem::take(batch);
            self.apply(shard, &events, run).await?;
        }
        Ok(())
    }

    async fn flush_all(&mut self, run: &mut Run) -> Result<()> {
        for (shard, events) in std::mem::take(&mut self.pending) {
            if !events.is_empty() {
                self.apply(shard, &events, run).await?;
            }
        }
        Ok(())
    }

    async fn apply(&self, shard: ShardId, events: &[Event], run: &mut Run) -> Result<()> {
        let stub = self.migrator.gate.shards().get(shard)?;
        // Durably before the first send: a rollback must find every copy.
        if let Some(sent_to) = &mut run.report.shards_sent_to
            && sent_to.insert(shard)
        {
            run.saved = Instant::now();
            record::save(&self.migrator.control, &run.report).await?;
        }
        let ack = stub.apply(events).await?;
        run.count_applied(&ack);
        self.migrator.report_progress(run);
        if run.saved.elapsed() >= SAVE_EVERY {
            run.saved = Instant::now();
            record::save(&self.migrator.control, &run.report).await?;
        }
        Ok(())
    }
}
