//! Reading the moving keys back from the lake: the replays that select
//! them (by key, or whole namespaces filtered here) and the per-shard
//! batches that hand their events to `apply`. Copy, catch-up and the
//! rollback's give-back all stream events this way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use shardlake_core::Event;
use shardlake_query::ReplayQuery;
use shardlake_routing::ShardId;

use super::{Migrator, Moves, Run};
use crate::error::{Result, internal};
use crate::plan::KeyMove;
use crate::record;

/// How often the record is saved while events are being applied.
const SAVE_EVERY: Duration = Duration::from_millis(250);

impl Migrator {
    /// The replays that read `moves`' keys at `snapshot`: by key where few
    /// keys of a namespace move (statistics prune the rest), whole
    /// namespaces (filtered here) where many do. Keys with events in more
    /// than one namespace are replayed without a namespace filter, so their
    /// events stay in one position order.
    pub(super) fn replays_of(&self, moves: &[KeyMove], snapshot: i64) -> Vec<ReplayQuery> {
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
    pub(super) async fn replay_into(
        &self,
        query: ReplayQuery,
        moves: &Moves,
        sink: &mut Sink<'_>,
        run: &mut Run,
    ) -> Result<()> {
        let mut stream = self.engine.replay(query).without_cache().stream().await?;
        while let Some(batch) = stream.next().await {
            let events = shardlake_core::events_from_batch(&batch?)
                .map_err(|e| internal(format!("replayed rows: {e}")))?;
            for event in events {
                if let Some(&(_, to)) = moves.get(&event.partition_key) {
                    sink.push(to, event, run).await?;
                }
            }
        }
        Ok(())
    }
}

/// Per-shard batches of events on their way to `apply` (each shard's in
/// replay order, so each key's stay in position order).
pub(super) struct Sink<'a> {
    migrator: &'a Migrator,
    pending: BTreeMap<ShardId, Vec<Event>>,
}

impl<'a> Sink<'a> {
    pub(super) fn new(migrator: &'a Migrator) -> Self {
        Self {
            migrator,
            pending: BTreeMap::new(),
        }
    }

    /// Queues `event` for `shard`, applying a full batch.
    pub(super) async fn push(&mut self, shard: ShardId, event: Event, run: &mut Run) -> Result<()> {
        let batch = self.pending.entry(shard).or_default();
        batch.push(event);
        if batch.len() >= self.migrator.config.batch_size {
            let events = std::mem::take(batch);
            self.apply(shard, &events, run).await?;
        }
        Ok(())
    }

    pub(super) async fn flush_all(&mut self, run: &mut Run) -> Result<()> {
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
