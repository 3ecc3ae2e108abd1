//! [`TableCommitter`] for the Iceberg `events` table: data files plus one
//! append snapshot per commit ([`super::append`]), with the commit state in
//! the same metadata update, conditional on the version the plan was made
//! against.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::table::Table;

use super::append::append;
use super::table::{IcebergEventsTable, commit_state, state_properties, summary};
use super::writer::write_data_files;
use crate::commit::{CommitPlan, CommitState, TableCommitter};
use crate::crashpoint;
use crate::data_file::WriterConfig;
use crate::error::{Error, ErrorKind, Result};

/// Versions a plan may be carried onto when only maintenance (compaction,
/// manifest merging, expiry) of another process committed in between: each
/// is a cheap re-commit of the same files, never a rewrite.
const MAX_REBASES: u32 = 50;

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

/// Whether `a` and `b` record the same commits: what a plan depends on.
/// Maintenance commits change the snapshot but never the state.
fn same_commits(a: &CommitState, b: &CommitState) -> bool {
    a.watermarks == b.watermarks && a.next_position == b.next_position
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

        let snapshot_props = HashMap::from([
            (summary::COMMIT_ID.to_owned(), plan.commit_id.clone()),
            (
                summary::FIRST_POSITION.to_owned(),
                plan.first_position().to_string(),
            ),
            (
                summary::NEXT_POSITION.to_owned(),
                plan.state.next_position.to_string(),
            ),
        ]);
        let properties = state_properties(&plan.state)?;
        for _ in 0..MAX_REBASES {
            // Under the process's commit lock: maintenance of this process
            // cannot commit between our look at the table and our swap.
            let _commits = self.table.lock_commits().await;
            // Someone may have committed since this committer last looked.
            // If that changed the commit state (another emitter), the plan
            // is stale: the caller re-plans. If not (maintenance), the same
            // files go on top of the latest version.
            let latest = self.table.refresh(&self.current).await?;
            let state = commit_state(&latest)?;
            self.state = state.clone();
            self.current = latest.clone();
            if !same_commits(&state, &plan.base) {
                return Err(Error::new(
                    ErrorKind::CommitConflict,
                    "another committer moved the table on; re-planning",
                ));
            }
            if let Some(table) = append(
                &self.table,
                &latest,
                &files,
                properties.clone(),
                snapshot_props.clone(),
            )
            .await?
            {
                crashpoint::hit(crashpoint::AFTER_CATALOG);
                tracing::debug!(
                    rows = plan.rows(),
                    write_ms = written.as_secs_f64() * 1e3,
                    catalog_ms = (started.elapsed() - written).as_secs_f64() * 1e3,
                    "iceberg commit"
                );
                self.state = commit_state(&table)?;
                self.current = table;
                return Ok(());
            }
            tracing::debug!("another process committed in between; looking again");
        }
        Err(Error::new(
            ErrorKind::CommitConflict,
            format!("the table moved on {MAX_REBASES} times during one commit"),
        ))
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
