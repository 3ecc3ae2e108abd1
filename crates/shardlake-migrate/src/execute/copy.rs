//! Copying: the moving keys' history, as of one lake snapshot, replayed
//! into their new owners. The keys are settled at that snapshot first
//! (keys written since planning join), so the copy and the catch-up after
//! it together miss no event.

use std::collections::HashMap;

use super::replay::Sink;
use super::{Migrator, Run, key_index};
use crate::error::Result;
use crate::record;

impl Migrator {
    /// The keys that move, as of the copy snapshot `s0`: the plan was made
    /// earlier, so keys written since join it (claimed), and every key's
    /// namespaces are those it has at `s0`. Keys born after `s0` join
    /// during catch-up.
    pub(super) async fn settle_keys_at(&self, run: &mut Run, s0: i64) -> Result<()> {
        let keys = crate::plan::key_stats_at(&self.engine, Some(s0)).await?;
        let now =
            crate::plan::plan_between(&run.report.plan.from, &run.report.plan.to, &keys, 0.0)?;
        let index: HashMap<String, usize> = key_index(&run.report.plan);
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

    /// Replays the moving keys at the copy snapshot into their new owners.
    pub(super) async fn copy(&self, run: &mut Run) -> Result<()> {
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
}
