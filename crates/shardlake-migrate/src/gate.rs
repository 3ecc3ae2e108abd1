//! The write path during migrations: route each write to its key's owner,
//! and buffer (durably) the writes to keys that are being moved.
//!
//! A fence is a predicate, not a key list: a write is buffered when its key
//! routes differently in the migration's two topologies. Keys that did not
//! exist when the plan was made are fenced too, so no key changes owner
//! behind the migration's back.
//!
//! Writes hold the gate's read lock while they are delivered (until the
//! owner has made them durable). Raising or lifting a fence takes the write
//! lock, so it waits out every write already in flight: after `fence`
//! returns, no write to a moving key is on its way to the old owner; while
//! a fence is lifted, no write can overtake the buffered ones.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use shardlake_core::{Event, EventLimits};
use shardlake_routing::{ShardId, ShardRouter, SharedRouter, Topology};
use shardlake_shard::{ShardStub, shard_failed};
use tokio::sync::RwLock as AsyncRwLock;

use crate::error::{ErrorKind, Result, invalid_write};
use crate::store::ControlStore;

/// The shards a process can reach, by id.
#[derive(Default)]
pub struct ShardSet {
    shards: RwLock<BTreeMap<ShardId, Arc<dyn ShardStub>>>,
}

impl std::fmt::Debug for ShardSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ids()).finish()
    }
}

impl ShardSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a shard.
    pub fn insert(&self, shard: Arc<dyn ShardStub>) {
        self.shards
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(shard.id(), shard);
    }

    /// The shard `id`.
    pub fn get(&self, id: ShardId) -> Result<Arc<dyn ShardStub>> {
        self.shards
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned()
            .ok_or_else(|| shard_failed(id, "no such shard is registered (give its endpoint)"))
    }

    /// Registered shard ids.
    pub fn ids(&self) -> Vec<ShardId> {
        self.shards
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }
}

/// What happened to a submitted write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Submitted {
    /// The owner made it durable in the lake.
    Delivered {
        /// The owner.
        shard: ShardId,
    },
    /// Its key is moving: it is durably buffered and will be delivered to
    /// the key's owner after cutover (or to the old owner on rollback), in
    /// arrival order.
    Buffered {
        /// The migration holding it.
        migration: String,
        /// Its number in the buffer.
        n: i64,
    },
}

/// One raised fence.
struct Fence {
    migration: String,
    a: ShardRouter,
    b: ShardRouter,
}

impl Fence {
    fn covers(&self, key: &str) -> Result<bool> {
        Ok(self.a.shard_of(key)? != self.b.shard_of(key)?)
    }
}

/// Routes writes to owners, buffering writes to moving keys.
pub struct WriteGate {
    router: Arc<SharedRouter>,
    shards: Arc<ShardSet>,
    control: ControlStore,
    fences: AsyncRwLock<Vec<Fence>>,
}

impl std::fmt::Debug for WriteGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteGate")
            .field(
                "topology_version",
                &self.router.current().topology().version,
            )
            .finish_non_exhaustive()
    }
}

impl WriteGate {
    /// A gate with no fences. [`crate::Migrator::open`] raises the fences
    /// of unfinished migrations found in the control store.
    pub fn new(router: Arc<SharedRouter>, shards: Arc<ShardSet>, control: ControlStore) -> Self {
        Self {
            router,
            shards,
            control,
            fences: AsyncRwLock::new(Vec::new()),
        }
    }

    /// The router writes follow.
    pub fn router(&self) -> &Arc<SharedRouter> {
        &self.router
    }

    /// The shards writes go to.
    pub fn shards(&self) -> &Arc<ShardSet> {
        &self.shards
    }

    /// Routes one write: buffered if its key is moving, else handed to its
    /// owner and returned once durable. An invalid write is refused here,
    /// before it could be buffered and block a flush later.
    pub async fn submit(&self, event: Event) -> Result<Submitted> {
        // The owner stamps shard and seq; validate everything else.
        let mut probe = event.clone();
        (probe.shard_id, probe.seq) = (0, 1);
        if let Err(e) = probe.validate(&EventLimits::default()) {
            return Err(invalid_write(e.to_string()));
        }
        loop {
            let fences = self.fences.read().await;
            let mut stale = None;
            for fence in fences.iter() {
                if fence.covers(&event.partition_key)? {
                    let json =
                        serde_json::to_string(&event).map_err(|e| invalid_write(e.to_string()))?;
                    match self
                        .control
                        .buffer_write(&fence.migration, &event.partition_key, &json)
                        .await?
                    {
                        Some(n) => {
                            return Ok(Submitted::Buffered {
                                migration: fence.migration.clone(),
                                n,
                            });
                        }
                        None => {
                            stale = Some(fence.migration.clone());
                            break;
                        }
                    }
                }
            }
            if let Some(migration) = stale {
                // Another process finished (or undid) that migration: drop
                // the fence, follow the recorded topology, and route again.
                drop(fences);
                self.lift_stale(&migration).await?;
                continue;
            }
            let owner = self.router.route(&event.partition_key)?;
            match self
                .shards
                .get(owner)?
                .write(std::slice::from_ref(&event))
                .await
            {
                Ok(()) => return Ok(Submitted::Delivered { shard: owner }),
                // The owner gave the key away (or is giving it away): if
                // the recorded topology moved on, this gate's routing is
                // stale; follow it and route again.
                Err(e) if e.kind() == ErrorKind::KeyFenced && self.refresh().await? => {
                    drop(fences);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Adopts the recorded topology if it is newer than this gate's;
    /// whether it was.
    async fn refresh(&self) -> Result<bool> {
        match crate::record::current_topology(&self.control).await? {
            Some(current) if current.version > self.router.current().topology().version => {
                self.router.swap(ShardRouter::new(current)?)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Drops a fence the control store no longer holds and adopts the
    /// recorded topology if it is newer than this process's.
    async fn lift_stale(&self, migration: &str) -> Result<()> {
        let mut fences = self.fences.write().await;
        fences.retain(|f| f.migration != migration);
        self.refresh().await?;
        Ok(())
    }

    /// Starts buffering writes to keys that route differently in `a` and
    /// `b`; returns once no write to such a key is in flight.
    pub(crate) async fn fence(&self, migration: &str, a: &Topology, b: &Topology) -> Result<()> {
        let fence = Fence {
            migration: migration.to_owned(),
            a: ShardRouter::new(a.clone())?,
            b: ShardRouter::new(b.clone())?,
        };
        let mut fences = self.fences.write().await;
        fences.retain(|f| f.migration != migration);
        fences.push(fence);
        Ok(())
    }

    /// Lifts `migration`'s fence after `last_flush` ran with every write
    /// held back, so no new write overtakes a buffered one.
    pub(crate) async fn unfence<F>(&self, migration: &str, last_flush: F) -> Result<()>
    where
        F: Future<Output = Result<()>>,
    {
        let mut fences = self.fences.write().await;
        last_flush.await?;
        fences.retain(|f| f.migration != migration);
        Ok(())
    }

    /// Whether writes to `key` are being buffered now.
    pub async fn is_fenced(&self, key: &str) -> Result<bool> {
        for fence in self.fences.read().await.iter() {
            if fence.covers(key)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
