//! Flushing: the writes buffered while the keys were fenced go to their
//! owners under the current routing, then the fence is lifted. A re-run
//! asks the lake what already arrived (by idempotency key), so no write is
//! delivered twice.

use std::collections::{BTreeMap, BTreeSet};

use shardlake_core::Event;
use shardlake_core::schema::columns;
use shardlake_query::{Condition, EventsQuery, Op};
use shardlake_routing::ShardId;

use super::{Migrator, Run};
use crate::error::{Result, internal};
use crate::record;

impl Migrator {
    /// Delivers the buffer to the keys' current owners until it is empty,
    /// then lifts the fence with the last of it.
    pub(super) async fn flush_and_unfence(&self, run: &mut Run) -> Result<u64> {
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
            let mut event: Event = serde_json::from_str(&b.event)
                .map_err(|e| internal(format!("buffered write {} is unreadable: {e}", b.n)))?;
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
        let keys: BTreeSet<&str> = writes
            .iter()
            .map(|(_, e)| e.partition_key.as_str())
            .collect();
        let ids: BTreeSet<&str> = writes
            .iter()
            .filter_map(|(_, e)| e.idempotency_key.as_deref())
            .collect();
        // A typed query, not SQL text: the keys and ids (written by clients)
        // only ever become literals of the plan. The partition keys prune
        // files by their statistics.
        let query = EventsQuery {
            conditions: vec![
                Condition::new(
                    columns::PARTITION_KEY,
                    Op::In,
                    keys.into_iter().collect::<Vec<_>>(),
                ),
                Condition::new(
                    columns::IDEMPOTENCY_KEY,
                    Op::In,
                    ids.into_iter().collect::<Vec<_>>(),
                ),
            ],
            ..EventsQuery::default()
        };
        // Whatever the engine's freshness bound: a delivery of a moment ago counts.
        let result = self
            .engine
            .query_events(query)
            .latest()
            .without_cache()
            .await?;
        let mut found = BTreeSet::new();
        for batch in &result.batches {
            let col = batch
                .column_by_name(columns::IDEMPOTENCY_KEY)
                .ok_or_else(|| internal("the events query returned no idempotency keys"))?;
            let col = arrow::array::AsArray::as_string::<i32>(col);
            found.extend(col.iter().flatten().map(str::to_owned));
        }
        Ok(found)
    }
}
