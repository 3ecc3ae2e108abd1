//! [`TableCommitter`] for the plain-Parquet format: every file of a commit
//! but one written in parallel, then the last one, which makes the commit
//! complete (see the module docs of [`super`]).

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::async_writer::ParquetObjectWriter;
use parquet::file::metadata::KeyValue;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{COMMIT_KEY, CommitFacts, ParquetEventsTable, lock_writer};
use crate::commit::{CommitPlan, CommitState, TableCommitter};
use crate::data_file::{EXPECTED_COMPRESSION, WriterConfig, content_digest, cut, sorted_namespace};
use crate::error::{Error, ErrorKind, Result};
use crate::{crashpoint, file_meta};

/// Commits plans to a plain-Parquet `events` table. Holds the lake's
/// writer lock for its whole life.
pub struct ParquetCommitter {
    table: ParquetEventsTable,
    state: CommitState,
    committed: HashSet<String>,
    writer: WriterConfig,
    // Released when the committer is dropped (or the process dies).
    _lock: std::fs::File,
}

impl ParquetCommitter {
    /// Takes the writer lock, recovers the state from the files, and
    /// removes the files of commits a crash left incomplete.
    pub async fn new(table: ParquetEventsTable, writer: WriterConfig) -> Result<Self> {
        let lock = lock_writer(table.warehouse().data_dir())?;
        let snapshot = recover(&table).await?;
        table.set_exclusive(true);
        Ok(Self {
            committed: committed_ids(&snapshot),
            state: snapshot.state,
            table,
            writer,
            _lock: lock,
        })
    }
}

/// Where a file of commit `commit_id` starting at `first_position` goes.
pub(super) fn file_path(
    table: &ParquetEventsTable,
    namespace: &str,
    first_position: i64,
    commit_id: &str,
    rows: &RecordBatch,
) -> Path {
    let name = format!(
        "{first_position:020}-{commit_id}-{:032x}.parquet",
        content_digest(rows)
    );
    table
        .prefix()
        .clone()
        .join(format!("namespace={namespace}"))
        .join(name)
}

fn committed_ids(snapshot: &super::ParquetSnapshot) -> HashSet<String> {
    snapshot
        .complete
        .iter()
        .map(|c| c.facts.commit_id.clone())
        .collect()
}

#[async_trait]
impl TableCommitter for ParquetCommitter {
    fn state(&self) -> &CommitState {
        &self.state
    }

    async fn refresh(&mut self) -> Result<()> {
        let snapshot = recover(&self.table).await?;
        self.committed = committed_ids(&snapshot);
        self.state = snapshot.state;
        Ok(())
    }

    async fn commit(&mut self, plan: &Arc<CommitPlan>) -> Result<()> {
        plan.check_base(&self.state)?;
        let _change = self.table.change();
        let _writing = self.table.writing(&plan.commit_id);
        crashpoint::hit(crashpoint::BEFORE_WRITE);
        let chunks = sorted_chunks(plan, &self.writer).await?;
        let facts = CommitFacts {
            commit_id: plan.commit_id.clone(),
            first_position: plan.first_position(),
            next_position: plan.state.next_position,
            files: chunks.len(),
            watermarks: plan.state.watermarks.clone(),
            watermark_digests: plan.state.watermark_digests.clone(),
            committed_at_ms: chrono::Utc::now().timestamp_millis(),
            compacted_at_ms: None,
        };
        let facts = serde_json::to_string(&facts).map_err(|e| {
            Error::new(ErrorKind::Unexpected, "cannot encode commit facts").with_source(e)
        })?;
        let mut files: Vec<(Path, RecordBatch)> = chunks
            .into_iter()
            .map(|(namespace, rows)| {
                let path = file_path(
                    &self.table,
                    &namespace,
                    plan.first_position(),
                    &plan.commit_id,
                    &rows,
                );
                (path, rows)
            })
            .collect();
        // The last file written completes the commit: everything else first.
        let seal = files.pop();
        let store = self.table.warehouse().store();
        futures::stream::iter(files)
            .map(|(path, rows)| {
                let (store, facts, writer) = (Arc::clone(&store), facts.clone(), &self.writer);
                async move {
                    write_file(store, path, rows, &facts, writer).await?;
                    crashpoint::hit(crashpoint::BETWEEN_FILES);
                    Ok::<_, Error>(())
                }
            })
            .buffer_unordered(self.writer.parallelism.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        crashpoint::hit(crashpoint::BEFORE_CATALOG);
        if let Some((path, rows)) = seal {
            write_file(store, path, rows, &facts, &self.writer).await?;
        }
        crashpoint::hit(crashpoint::AFTER_CATALOG);
        self.committed.insert(plan.commit_id.clone());
        self.state = CommitState {
            snapshot_id: Some(plan.state.next_position),
            ..plan.state.clone()
        };
        Ok(())
    }

    fn contains_commit(&self, commit_id: &str) -> bool {
        self.committed.contains(commit_id)
    }
}

impl Drop for ParquetCommitter {
    fn drop(&mut self) {
        // The lock goes with the committer: other processes may write now.
        self.table.set_exclusive(false);
    }
}

/// The table's state, after removing the files of incomplete commits. Only
/// the lock holder may call this: for it, an incomplete commit is nobody's
/// work in progress, only what a crash or a failed attempt left behind.
async fn recover(table: &ParquetEventsTable) -> Result<super::ParquetSnapshot> {
    // A compaction of this process may be writing its commit right now, or
    // finish it while the table is read: watched from before the read.
    let writing = table.watch_writing();
    let mut snapshot = table.snapshot().await?;
    let (in_flight, leftovers): (Vec<_>, Vec<_>) = std::mem::take(&mut snapshot.incomplete)
        .into_iter()
        .partition(|f| writing.saw(&f.commit.commit_id));
    if !leftovers.is_empty() {
        tracing::info!(
            files = leftovers.len(),
            "removing files of incomplete commits"
        );
        table.delete(&leftovers).await?;
    }
    snapshot.incomplete = in_flight;
    Ok(snapshot)
}

/// Each namespace's rows of `plan`, sorted in write order and cut into
/// file-sized chunks (CPU work, one blocking task per namespace).
pub(super) async fn sorted_chunks(
    plan: &Arc<CommitPlan>,
    config: &WriterConfig,
) -> Result<Vec<(String, RecordBatch)>> {
    let max_bytes = config.target_file_size.saturating_mul(EXPECTED_COMPRESSION);
    let slots = Arc::new(Semaphore::new(config.parallelism.max(1)));
    let mut tasks = JoinSet::new();
    for i in 0..plan.namespaces.len() {
        let (plan, slots) = (Arc::clone(plan), Arc::clone(&slots));
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.map_err(|e| {
                Error::new(ErrorKind::Unexpected, "writer slots closed").with_source(e)
            })?;
            let rows = sorted_namespace(&plan, i).await?;
            let namespace = plan.namespaces[i].namespace.clone();
            Ok::<_, Error>(
                cut(&rows, max_bytes)
                    .into_iter()
                    .map(|chunk| (namespace.clone(), chunk))
                    .collect::<Vec<_>>(),
            )
        });
    }
    let mut chunks = Vec::new();
    while let Some(result) = tasks.join_next().await {
        chunks.extend(
            result.map_err(|e| {
                Error::new(ErrorKind::Unexpected, "sort task failed").with_source(e)
            })??,
        );
    }
    // Namespace order, whatever order the tasks finished in.
    chunks.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(chunks)
}

pub(super) async fn write_file(
    store: Arc<dyn object_store::ObjectStore>,
    path: Path,
    rows: RecordBatch,
    facts: &str,
    config: &WriterConfig,
) -> Result<()> {
    let metadata = vec![
        KeyValue::new(
            file_meta::SHARDS_KEY.to_owned(),
            file_meta::encode(&file_meta::shard_ranges(&rows)),
        ),
        KeyValue::new(COMMIT_KEY.to_owned(), facts.to_owned()),
    ];
    let failed = |e: parquet::errors::ParquetError| {
        Error::new(ErrorKind::Storage, "writing a data file failed").with_source(e)
    };
    let mut writer = AsyncArrowWriter::try_new(
        ParquetObjectWriter::new(store, path),
        rows.schema(),
        Some(config.writer_properties(metadata)?),
    )
    .map_err(failed)?;
    let step = config.row_group_rows.max(1);
    let mut offset = 0;
    while offset < rows.num_rows() {
        let len = step.min(rows.num_rows() - offset);
        writer
            .write(&rows.slice(offset, len))
            .await
            .map_err(failed)?;
        if offset == 0 {
            crashpoint::hit(crashpoint::MID_FILE);
        }
        offset += len;
    }
    // Publishes the file: nothing of it is visible before this returns.
    writer.close().await.map_err(failed)?;
    Ok(())
}
