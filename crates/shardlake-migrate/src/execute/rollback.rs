//! Rolling back: undoing a run as far as it got (drop the copies, reopen
//! the old owners, return the buffered writes; after cutover, give the
//! keys back under a republished old layout). Never fails: what could not
//! be undone is recorded, and a retry finishes it.

use shardlake_routing::Topology;

use super::replay::Sink;
use super::{Migrator, Moves, Run, by_shard};
use crate::error::{Result, invalid_plan};
use crate::record::{self, MigrationReport, MigrationStatus, Phase, RollbackSummary};

impl Migrator {
    /// Undoes an unfinished migration (one that failed without rollback,
    /// or whose process died).
    pub async fn rollback(&self, id: &str) -> Result<MigrationReport> {
        let report = self.load(id).await?;
        match report.status {
            MigrationStatus::Completed => Err(invalid_plan(format!(
                "migration {id} completed; plan the reverse migration instead"
            ))),
            MigrationStatus::RolledBack => Ok(report),
            MigrationStatus::Running | MigrationStatus::Failed => {
                self.take_lease(id).await?;
                Ok(self.finish_rollback(report).await)
            }
        }
    }

    pub(super) async fn finish_rollback(&self, report: MigrationReport) -> MigrationReport {
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

    /// Undoes the run as far as it got. Never fails: what could not be
    /// undone is listed in the summary and the status stays `failed`, so an
    /// operator can retry (`shardlake migrate rollback`).
    pub(super) async fn roll_back(&self, run: &mut Run) {
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
            note(&mut problems, released, "release the keys".into());
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
                    return Err(invalid_plan(format!(
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
