//! Cutting over: the plan's topology is published (durably first, then
//! in this process's router), from which moment the new owners own the
//! moved keys.

use shardlake_routing::{ShardRouter, Topology};

use super::{Migrator, Run};
use crate::error::{Result, invalid_plan};
use crate::record;

impl Migrator {
    /// Publishes the next topology (durably, then in this process).
    pub(super) async fn cut_over(&self, run: &mut Run) -> Result<()> {
        let next = run.report.plan.to.clone();
        if !record::publish_topology(&self.control, &next).await? {
            let current = record::current_topology(&self.control).await?;
            if current.as_ref() != Some(&next) {
                return Err(invalid_plan(format!(
                    "topology version {} is taken by another change",
                    next.version
                )));
            }
        }
        self.adopt(&next)?;
        run.report.cut_over = true;
        record::save(&self.control, &run.report).await
    }

    /// Makes `topology` this process's routing (if it is not older).
    pub(super) fn adopt(&self, topology: &Topology) -> Result<()> {
        let router = self.gate.router();
        if router.current().topology().version < topology.version {
            router.swap(ShardRouter::new(topology.clone())?)?;
        }
        Ok(())
    }
}
