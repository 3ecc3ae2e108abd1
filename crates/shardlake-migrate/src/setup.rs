//! What every front end does to start a migration, once: turn the change
//! asked for into a plan over the lake's key statistics, and build the
//! migrator (shards reached at their HTTP endpoints, the write gate on the
//! recorded topology, the settings). The CLI (`shardlake migrate`) and the
//! server (`/v1/migrations`) differ only in how they ask and answer.

use std::collections::BTreeSet;
use std::sync::Arc;

use shardlake_lake::Lake;
use shardlake_query::CrossShardQuery;
use shardlake_routing::{ShardId, ShardRouter, SharedRouter, Topology};
use shardlake_shard::HttpShard;

use crate::error::Result;
use crate::execute::{MigrationConfig, Migrator};
use crate::gate::{ShardSet, WriteGate};
use crate::plan::{
    MigrationPlan, generate_rebalance_plan, key_stats, plan_add_shard, plan_remove_shard,
};
use crate::record::current_topology;
use crate::store::ControlStore;

/// A change of topology.
#[derive(Debug, Clone)]
pub enum TopologyChange {
    /// Add this shard; keys move to it.
    AddShard(ShardId),
    /// Remove this shard; its keys move to the others.
    RemoveShard(ShardId),
    /// Move to this topology (its version becomes the next one).
    RebalanceTo(Topology),
}

/// The plan of `change` from `from`, over the key statistics of the lake's
/// current snapshot, its duration estimated at `replay_events_per_second`.
pub async fn plan_change(
    engine: &CrossShardQuery,
    from: &Topology,
    change: TopologyChange,
    replay_events_per_second: f64,
) -> Result<MigrationPlan> {
    let keys = key_stats(engine).await?;
    let rate = replay_events_per_second;
    match change {
        TopologyChange::AddShard(id) => plan_add_shard(from, id, &keys, rate),
        TopologyChange::RemoveShard(id) => plan_remove_shard(from, id, &keys, rate),
        TopologyChange::RebalanceTo(mut to) => {
            to.version = from.version + 1;
            generate_rebalance_plan(from, &to, &keys, rate)
        }
    }
}

/// The shards a plan touches (sources and destinations).
pub fn plan_shards(plan: &MigrationPlan) -> BTreeSet<ShardId> {
    plan.moves.iter().flat_map(|m| [m.from, m.to]).collect()
}

/// Shard endpoints and settings: what a migrator is built from.
#[derive(Debug, Clone)]
pub struct MigrationSetup {
    endpoints: Vec<(ShardId, String)>,
    config: MigrationConfig,
}

impl MigrationSetup {
    /// Shards reached at `endpoints` (`(id, base URL)` of the HTTP shard
    /// protocol), migrations run with `config`.
    pub fn new(
        endpoints: impl IntoIterator<Item = (ShardId, String)>,
        config: MigrationConfig,
    ) -> Self {
        Self {
            endpoints: endpoints.into_iter().collect(),
            config,
        }
    }

    /// Of `needed`, the shards without an endpoint, in order: a migration
    /// that touches one of them cannot run.
    pub fn missing_endpoints(&self, needed: impl IntoIterator<Item = ShardId>) -> Vec<ShardId> {
        needed
            .into_iter()
            .filter(|s| !self.endpoints.iter().any(|(id, _)| id == s))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// A migrator for `plan`: its write gate routes by the recorded
    /// topology (else the plan's starting one, for a lake that records
    /// none yet). Check [`Self::missing_endpoints`] first.
    pub async fn migrator(
        &self,
        lake: &Lake,
        engine: CrossShardQuery,
        plan: &MigrationPlan,
    ) -> Result<Migrator> {
        let shards = Arc::new(ShardSet::new());
        for (id, url) in &self.endpoints {
            shards.insert(Arc::new(HttpShard::new(*id, url.clone())));
        }
        let control = ControlStore::open(lake).await?;
        let current = current_topology(&control)
            .await?
            .unwrap_or_else(|| plan.from.clone());
        let router = Arc::new(SharedRouter::new(ShardRouter::new(current)?));
        let gate = Arc::new(WriteGate::new(router, shards, control));
        Migrator::open(lake, engine, gate, self.config.clone()).await
    }
}
