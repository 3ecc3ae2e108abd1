//! [`TableCommitter`] for the Iceberg `events` table: data files plus one
//! `fast_append` snapshot per commit, with the commit state in the same
//! metadata update, conditional on the snapshot the plan was made against.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use uuid::Uuid;

use super::catalog::PinnedCatalog;
use super::table::{IcebergEventsTable, commit_state, state_properties, summary};
use super::writer::write_data_files;
use crate::commit::{CommitPlan, CommitState, TableCommitter};
use crate::crashpoint;
use crate::data_file::WriterConfig;
use crate::error::Result;

/// Commits plans to the Iceberg `events` table.
pub struct IcebergCommitter {
    table: IcebergEventsTable,
    current: Table,
    state: CommitState,
    writer: WriterConfig,
}

impl IcebergCommitter {
    /// A committer starting from the table's current state.
    pub async fn new(table: IcebergEventsTable, writer: WriterConfig) -> Result<Self> {
        let current = table.load().await?;
        let state = commit_state(&current)?;
        Ok(Self {
            table,
            current,
            state,
            writer,
        })
    }
}

#[async_trait]
impl TableCommitter for IcebergCommitter {
    fn state(&self) -> &CommitState {
        &self.state
    }

    async fn refresh(&mut self) -> Result<()> {
        let current = self.table.refresh(&self.current).await?;
        self.state = commit_state(&current)?;
        self.current = current;
        Ok(())
    }

    async fn commit(&mut self, plan: &Arc<CommitPlan>) -> Result<()> {
        plan.check_base(&self.state)?;
        crashpoint::hit(crashpoint::BEFORE_WRITE);
        let started = std::time::Instant::now();
        let files = write_data_files(&self.current, plan, &self.writer).await?;
        let written = started.elapsed();
        crashpoint::hit(crashpoint::BEFORE_CATALOG);

        let mut snapshot_props = HashMap::new();
        snapshot_props.insert(summary::COMMIT_ID.to_owned(), plan.commit_id.clone());
        snapshot_props.insert(
            summary::FIRST_POSITION.to_owned(),
            plan.first_position().to_string(),
        );
        snapshot_props.insert(
            summary::NEXT_POSITION.to_owned(),
            plan.state.next_position.to_string(),
        );

        let tx = Transaction::new(&self.current);
        let mut props = tx.update_table_properties();
        for (k, v) in state_properties(&plan.state)? {
            props = props.set(k, v);
        }
        let tx = props.apply(tx)?;
        let commit_uuid = Uuid::parse_str(&plan.commit_id).unwrap_or_else(|_| Uuid::new_v4());
        let tx = tx
            .fast_append()
            // Watermarks already guarantee no event is appended twice; the
            // duplicate-file check would read every manifest on every commit.
            .with_check_duplicate(false)
            .set_commit_uuid(commit_uuid)
            .set_snapshot_properties(snapshot_props)
            .add_data_files(files)
            .apply(tx)?;
        let pinned = PinnedCatalog::new(self.table.catalog(), self.current.clone());
        let table = tx.commit(&pinned).await?;
        crashpoint::hit(crashpoint::AFTER_CATALOG);
        tracing::debug!(
            rows = plan.rows(),
            write_ms = written.as_secs_f64() * 1e3,
            catalog_ms = (started.elapsed() - written).as_secs_f64() * 1e3,
            "iceberg commit"
        );
        self.state = commit_state(&table)?;
        self.current = table;
        Ok(())
    }

    fn contains_commit(&self, commit_id: &str) -> bool {
        self.current.metadata().snapshots().any(|s| {
            s.summary()
                .additional_properties
                .get(summary::COMMIT_ID)
                .is_some_and(|id| id == commit_id)
        })
    }
}
