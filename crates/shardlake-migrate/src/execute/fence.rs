//! Fencing: writes to the moving keys are buffered (durably) and their
//! owners stop accepting them and drain, so the last catch-up round after
//! it leaves nothing behind and no key has two writers.

use shardlake_routing::ShardId;

use super::{Migrator, Run, by_shard};
use crate::error::Result;
use crate::plan::KeyMove;
use crate::record;

impl Migrator {
    /// Buffers writes to moving keys, fences and drains the old owners,
    /// then applies the last of their events.
    pub(super) async fn fence(&self, run: &mut Run) -> Result<()> {
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
    pub(super) async fn raise_fence(
        &self,
        run: &mut Run,
        owner: fn(&KeyMove) -> ShardId,
    ) -> Result<()> {
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
}
