//! Partitioned subscriptions: a consumer named `name` handling
//! partition `i` of `n` of the key space receives its events in position
//! order (so per key in causal order), in batches, and acknowledges each
//! batch with a durable checkpoint in the catalog database. A restart
//! resumes after the checkpoint: nothing acknowledged is delivered again,
//! nothing is skipped. Re-partitioning starts new partitions from what a
//! complete earlier layout has processed (see
//! [`shardlake_lake::checkpoint`]), so scaling 1 -> n -> 1 loses nothing.

use std::future::Future;

use futures::StreamExt;
use shardlake_core::{Event, events_from_batch};
use shardlake_lake::Lake;
use shardlake_lake::checkpoint::Checkpoints;
use shardlake_routing::{KeyedLanes, LaneItem};

use crate::engine::CrossShardQuery;
use crate::error::{Error, ErrorKind, Result};
use crate::typed::{PartitionOf, ReplayQuery};

/// Which subscription this consumer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionConfig {
    /// The subscription (e.g. the projection's name).
    pub name: String,
    /// This consumer's partition of the key space.
    pub partition: PartitionOf,
    /// Only this namespace (`None`: all).
    pub namespace: Option<String>,
    /// Most events per batch.
    pub batch_size: usize,
}

/// One consumer of a partitioned subscription.
pub struct Subscription {
    engine: CrossShardQuery,
    checkpoints: Checkpoints,
    config: SubscriptionConfig,
    position: i64,
}

/// An event on a lane keyed by its partition key.
struct Keyed(Event);

impl LaneItem for Keyed {
    fn shard_key(&self) -> Option<&str> {
        Some(&self.0.partition_key)
    }
}

impl Subscription {
    /// Opens the consumer and finds where it resumes.
    pub async fn open(
        engine: &CrossShardQuery,
        lake: &Lake,
        config: SubscriptionConfig,
    ) -> Result<Self> {
        let p = config.partition;
        if p.count == 0 || p.index >= p.count {
            return Err(Error::new(
                ErrorKind::InvalidQuery,
                format!("partition {} of {} does not exist", p.index, p.count),
            ));
        }
        let checkpoints = lake.checkpoints().await?;
        let position = checkpoints
            .resume_position(&config.name, p.index, p.count)
            .await?;
        Ok(Self {
            engine: engine.clone(),
            checkpoints,
            config,
            position,
        })
    }

    /// The position of the last acknowledged event (0: none yet).
    pub fn position(&self) -> i64 {
        self.position
    }

    /// The next batch after the checkpoint, in position order (empty when
    /// caught up). Polling again without acknowledging returns it again.
    pub async fn poll(&self) -> Result<Vec<Event>> {
        let query = ReplayQuery {
            namespace: self.config.namespace.clone(),
            after_position: Some(self.position),
            partition: Some(self.config.partition),
            limit: Some(self.config.batch_size.max(1)),
            ..ReplayQuery::default()
        };
        let mut stream = self.engine.replay(query).without_cache().stream().await?;
        let mut events = Vec::new();
        while let Some(batch) = stream.next().await {
            events.extend(events_from_batch(&batch?)?);
        }
        Ok(events)
    }

    /// Records that everything up to `position` is processed (durable
    /// before it returns). Never moves backwards.
    pub async fn acknowledge(&mut self, position: i64) -> Result<()> {
        let p = self.config.partition;
        self.checkpoints
            .save(&self.config.name, p.index, p.count, position)
            .await?;
        self.position = self.position.max(position);
        Ok(())
    }

    /// Polls one batch and runs `handler` on each event, keys in parallel
    /// over `lanes` lanes and each key's events strictly in order; once all
    /// succeeded, acknowledges the batch. Returns the number of events (0:
    /// caught up). A failing handler leaves the batch unacknowledged, so it
    /// is delivered again.
    pub async fn process<F, Fut, E>(&mut self, lanes: usize, handler: F) -> Result<usize>
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let events = self.poll().await?;
        let Some(last) = events.last().and_then(|e| e.position) else {
            return Ok(0);
        };
        let n = events.len();
        let lanes = KeyedLanes::new(lanes, move |item: Keyed| handler(item.0));
        let mut done = Vec::with_capacity(n);
        for event in events {
            done.push(
                lanes
                    .submit(Keyed(event))
                    .map_err(|e| Error::new(ErrorKind::Unexpected, format!("lanes: {e}")))?,
            );
        }
        let mut failure = None;
        for d in done {
            match d.outcome().await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = failure.or(Some(e.to_string())),
                Err(e) => failure = failure.or(Some(e.to_string())),
            }
        }
        lanes.close().await;
        if let Some(message) = failure {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!("a handler failed; the batch stays unacknowledged: {message}"),
            ));
        }
        self.acknowledge(last).await?;
        Ok(n)
    }
}
