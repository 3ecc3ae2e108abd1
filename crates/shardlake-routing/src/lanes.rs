//! `KeyedLanes`: N lanes; items with the same key run strictly in
//! order, one at a time; different keys run in parallel on other lanes.
//!
//! An item's key is its shard key if it has one, else its identifier, else
//! none, and keyless items all go to lane 0 (serial, the safe default). A
//! key picks its lane with the project's hash (`fnv1a_32(key) % lanes`), so
//! a key's lane is the same everywhere the same lane count is used.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::hash::fnv1a_32;

/// What a lane needs to know about an item.
pub trait LaneItem: Send + 'static {
    /// The key whose items must stay in order.
    fn shard_key(&self) -> Option<&str> {
        None
    }

    /// The fallback key.
    fn identifier(&self) -> Option<&str> {
        None
    }
}

struct Job<T, R> {
    item: T,
    done: oneshot::Sender<R>,
}

/// The lanes are closed (the executor was shut down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LanesClosed;

impl std::fmt::Display for LanesClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the lanes are closed")
    }
}

impl std::error::Error for LanesClosed {}

/// The outcome of one submitted item, once its lane has run it.
pub struct Dispatched<R> {
    rx: oneshot::Receiver<R>,
}

impl<R> Dispatched<R> {
    /// Waits for the item's handler to finish and returns its output.
    pub async fn outcome(self) -> Result<R, LanesClosed> {
        self.rx.await.map_err(|_| LanesClosed)
    }
}

/// A keyed, ordered executor.
pub struct KeyedLanes<T, R> {
    senders: Vec<mpsc::UnboundedSender<Job<T, R>>>,
    workers: Vec<JoinHandle<()>>,
}

impl<T: LaneItem, R: Send + 'static> KeyedLanes<T, R> {
    /// `lanes` lanes (at least one), each running `handler` on its items
    /// one at a time, in submission order.
    pub fn new<F, Fut>(lanes: usize, handler: F) -> Self
    where
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let (senders, workers) = (0..lanes.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::unbounded_channel::<Job<T, R>>();
                let handler = Arc::clone(&handler);
                let worker = tokio::spawn(async move {
                    while let Some(job) = rx.recv().await {
                        let output = handler(job.item).await;
                        // The submitter may have stopped waiting; fine.
                        let _ = job.done.send(output);
                    }
                });
                (tx, worker)
            })
            .unzip();
        Self { senders, workers }
    }

    /// Number of lanes.
    pub fn lanes(&self) -> usize {
        self.senders.len()
    }

    /// The lane of `item`.
    pub fn lane_of(&self, item: &T) -> usize {
        match item.shard_key().or_else(|| item.identifier()) {
            Some(key) => (fnv1a_32(key.as_bytes()) % self.senders.len() as u32) as usize,
            None => 0,
        }
    }

    /// Queues `item` on its lane; it runs after every earlier item of the lane.
    pub fn submit(&self, item: T) -> Result<Dispatched<R>, LanesClosed> {
        let lane = self.lane_of(&item);
        let (done, rx) = oneshot::channel();
        self.senders[lane]
            .send(Job { item, done })
            .map_err(|_| LanesClosed)?;
        Ok(Dispatched { rx })
    }

    /// Stops taking items and waits until every queued item has run.
    pub async fn close(self) {
        drop(self.senders);
        for worker in self.workers {
            let _ = worker.await;
        }
    }
}
