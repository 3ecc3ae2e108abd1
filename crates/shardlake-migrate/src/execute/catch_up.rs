//! Catching up: what was committed since the last applied snapshot goes
//! to the new owners too, in rounds, so the write pause at the fence
//! stays short. Keys that start to change owner only now join here.

use std::collections::HashMap;

use futures::StreamExt;
use shardlake_core::Event;
use shardlake_query::ReplayQuery;
use shardlake_routing::{ShardId, ShardRouter};

use super::replay::Sink;
use super::{Migrator, Run, key_index};
use crate::error::{Result, internal};
use crate::plan::KeyMove;
use crate::record;

impl Migrator {
    /// Applies what was committed since the applied snapshot; returns the
    /// number of events of moving keys it saw. Keys that appeared after
    /// planning and change owner join the migration here.
    pub(super) async fn catch_up(&self, run: &mut Run) -> Result<u64> {
        self.catch_up_into(run, true).await
    }

    /// [`Self::catch_up`]; with `apply` false it only finds the keys that
    /// joined (for a rollback, which gives back whole histories instead).
    pub(super) async fn catch_up_into(&self, run: &mut Run, apply: bool) -> Result<u64> {
        let current = self.engine.current_snapshot().await?.snapshot_id;
        let Some(current) = current else {
            return Ok(0);
        };
        if run.report.applied_snapshot == Some(current) {
            return Ok(0);
        }
        let mut moves = Self::moves(&run.report);
        let mut index: HashMap<String, usize> = key_index(&run.report.plan);
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
                .map_err(|e| internal(format!("replayed rows: {e}")))?;
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
}
