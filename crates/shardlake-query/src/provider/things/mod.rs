//! The `things` table: the current state of every entity, answered from a
//! fold kept up to date commit by commit instead of re-deriving it from the
//! whole log on every query.
//!
//! `things` is defined by [`THINGS_SQL`], an aggregate over `events`. The
//! table keeps, per namespace, the fold of that aggregate over the files
//! it last saw ([`state::Fold`]): a query pinned to a newer snapshot folds
//! only the files added since (a commit adds files, never changes one),
//! and a query whose files are the fold's reads it from memory. A
//! compaction rewrites files without changing events: the fold carries
//! over to the new files when the rows of the files it removed equal the
//! rows of the files it added below the fold's highest position (new
//! commits only ever add higher positions). Anything else the fold cannot
//! follow (rows removed by retention, an older snapshot pinned, a
//! namespace whose fold would not fit the memory budget) is answered by
//! planning [`THINGS_SQL`] itself, so every snapshot a query can pin gets
//! exactly the fold of its events.
//!
//! The state is built lazily, namespace by namespace, by the first query
//! that needs it, and bounded by `things_state_bytes`: least recently used
//! namespaces are dropped first, and a query whose folds would not fit
//! together (estimated from the last fold's bytes per event) is planned
//! from SQL rather than building folds that evict each other.

mod exec;
mod state;

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Column;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::FileGroup;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    Expr, LogicalPlan, LogicalPlanBuilder, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use futures::TryStreamExt;
use object_store::path::Path;
use shardlake_core::event_schema;
use shardlake_core::schema::columns;

use self::exec::things_state_exec;
use self::state::{FOLD_COLUMNS, Fold};
use super::events::{EventsTable, balance, matching_namespaces};
use crate::context::QueryContext;
use crate::recorder::ScanRecorder;
use crate::scope::Scope;
use crate::snapshot::{LakeFile, SnapshotFiles};

/// The `things` view: the latest state of every entity (by commit position),
/// entities whose latest event is `thing.deleted` excluded. Columns follow
/// the Thing of the typed API: `id`, `type`, `version`, `created_at`, `updated_at`,
/// `namespace`, `payload`, plus `events` and `position` (of the latest event).
///
/// This is the definition; [`ThingsTable`] answers it from a maintained
/// fold whenever it can, and plans this SQL when it cannot.
///
/// An aggregate rather than a window: `first_value`/`last_value` keep their
/// ordering key per group, so no sort is needed, and filters on the group
/// keys (`namespace`, `type`, `id`) are pushed below the aggregate into the
/// `events` scan, where they prune partitions and files. Only primitive
/// values are carried through ordered aggregates (DataFusion has a fast
/// per-group accumulator for those); deletion is detected by comparing
/// positions, not by carrying the last `event_type` string. `payload` is the
/// one string carried, and the optimizer drops it when a query does not
/// select it.
pub const THINGS_SQL: &str = r#"
SELECT
    entity_id AS id,
    entity_type AS "type",
    last_value(version ORDER BY position) AS version,
    first_value(ts ORDER BY position) AS created_at,
    last_value(ts ORDER BY position) AS updated_at,
    namespace,
    last_value(payload ORDER BY position) AS payload,
    count(*) AS events,
    max(position) AS position
FROM events
WHERE entity_type IS NOT NULL AND entity_id IS NOT NULL
GROUP BY namespace, entity_type, entity_id
HAVING max(CASE WHEN event_type = 'thing.deleted' THEN position END) IS DISTINCT FROM max(position)
"#;

/// The `things` table.
pub struct ThingsTable {
    events: Arc<EventsTable>,
    /// [`THINGS_SQL`] planned (unoptimized): the answer when the fold
    /// cannot give it.
    view: LogicalPlan,
    schema: SchemaRef,
    state: ThingsState,
}

impl std::fmt::Debug for ThingsTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThingsTable")
            .field("namespaces_kept", &self.state.slots.entry_count())
            .field("budget_bytes", &self.state.budget)
            .finish()
    }
}

/// One namespace's fold, and its size for the cache's weigher (read
/// without taking the fold's lock).
#[derive(Default)]
struct Slot {
    bytes: AtomicU64,
    fold: tokio::sync::Mutex<Fold>,
}

/// The folds kept, within a memory budget.
struct ThingsState {
    budget: u64,
    /// Namespace to its fold; weighed in KiB.
    slots: moka::sync::Cache<String, Arc<Slot>>,
    /// Bytes a fold holds per event folded, in thousandths, as the last
    /// fold measured it: how large a fold not yet built will be.
    bytes_per_row_milli: AtomicU64,
}

/// What a fold is assumed to hold per event before one was measured.
const DEFAULT_BYTES_PER_ROW: u64 = 64;

impl ThingsState {
    /// Whether folds of `namespaces` (with the rows of their files) fit the
    /// budget together: the folds kept weigh what they weigh, the others
    /// what their rows make at the last measured bytes per row. A query
    /// whose folds would not fit is planned from SQL, instead of building
    /// folds that evict each other on every query.
    fn fits<'a>(&self, namespaces: impl Iterator<Item = (&'a str, u64)>) -> bool {
        let per_row = self.bytes_per_row_milli.load(Ordering::Relaxed);
        let mut total = 0u64;
        for (namespace, rows) in namespaces {
            total += match self.slots.get(namespace) {
                Some(slot) => slot.bytes.load(Ordering::Relaxed),
                None => rows.saturating_mul(per_row) / 1000,
            };
        }
        total <= self.budget
    }
}

/// What answering one namespace from its fold took.
struct Answered {
    batches: Arc<Vec<RecordBatch>>,
    /// Files read to bring the fold up to date, and their rows.
    read: Vec<Path>,
    rows: u64,
}

impl ThingsTable {
    /// `things` over `events`, whose [`THINGS_SQL`] was planned as `view`;
    /// folds are kept within `budget_bytes` (0: never kept, every query
    /// plans the SQL).
    pub fn new(events: Arc<EventsTable>, view: LogicalPlan, budget_bytes: u64) -> Self {
        let schema = Arc::new(view.schema().as_arrow().clone());
        let kib = budget_bytes / 1024;
        Self {
            events,
            view,
            schema,
            state: ThingsState {
                budget: budget_bytes,
                slots: moka::sync::Cache::builder()
                    .max_capacity(kib)
                    .weigher(|_, slot: &Arc<Slot>| {
                        let kib = slot.bytes.load(Ordering::Relaxed) / 1024;
                        u32::try_from(kib.max(1)).unwrap_or(u32::MAX)
                    })
                    .build(),
                bytes_per_row_milli: AtomicU64::new(DEFAULT_BYTES_PER_ROW * 1000),
            },
        }
    }

    /// Bytes the kept folds hold (an estimate: entities and materialized
    /// batches), and how many namespaces they cover.
    pub fn state_size(&self) -> (u64, u64) {
        self.state.slots.run_pending_tasks();
        self.state
            .slots
            .iter()
            .fold((0, 0), |(bytes, n), (_, slot)| {
                (bytes + slot.bytes.load(Ordering::Relaxed), n + 1)
            })
    }

    /// The plan of [`THINGS_SQL`] with `filters` and `projection` applied.
    async fn planned_from_sql(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut plan = LogicalPlanBuilder::from(self.view.clone());
        if let Some(filter) = conjunction(filters.iter().cloned()) {
            plan = plan.filter(filter)?;
        }
        if let Some(indices) = projection {
            plan = plan.project(
                indices
                    .iter()
                    .map(|&i| Expr::Column(Column::from_name(self.schema.field(i).name()))),
            )?;
        }
        session.create_physical_plan(&plan.build()?).await
    }

    /// Namespace `namespace` of `things` at the snapshot whose files of it
    /// are `files`, from its fold brought up to date (`None`: the fold
    /// cannot answer it, see the module's comment).
    async fn answer_from_fold(
        &self,
        session: &dyn Session,
        namespace: &str,
        files: &[Arc<LakeFile>],
        recorder: &Arc<ScanRecorder>,
    ) -> DfResult<Option<Answered>> {
        let slot = self
            .state
            .slots
            .get_with_by_ref(namespace, || Arc::new(Slot::default()));
        // Queries of one namespace wait for each other: the second finds
        // the fold the first brought up to date.
        let mut fold = slot.fold.lock().await;
        let Some(plan) = FoldPlan::of(&fold, files) else {
            return Ok(None);
        };
        let read: Vec<Path> = plan.read.iter().map(|f| f.path.clone()).collect();
        let rows_read: u64 = plan.read.iter().map(|f| f.rows).sum();
        if plan.rebuild {
            fold.clear();
        }
        if plan.rebuild || !plan.read.is_empty() {
            fold.begin();
            self.fold_files(session, namespace, &plan.read, &mut fold, recorder)
                .await?;
        }
        fold.finish(plan.files);
        let batches = fold.batches(namespace, &self.schema, session.config().batch_size())?;
        let bytes = fold.bytes() as u64;
        slot.bytes.store(bytes, Ordering::Relaxed);
        if let Some(per_row) = bytes.saturating_mul(1000).checked_div(fold.rows) {
            self.state
                .bytes_per_row_milli
                .store(per_row.max(1), Ordering::Relaxed);
        }
        drop(fold);
        // Weigh it again at its new size (one over the budget is dropped).
        self.state.slots.insert(namespace.to_owned(), slot);
        Ok(Some(Answered {
            batches,
            read,
            rows: rows_read,
        }))
    }

    /// Reads `files` (of `namespace`) into `fold`, through the query's
    /// recorder, decoding on all partitions.
    async fn fold_files(
        &self,
        session: &dyn Session,
        namespace: &str,
        files: &[Arc<LakeFile>],
        fold: &mut Fold,
        recorder: &Arc<ScanRecorder>,
    ) -> DfResult<()> {
        if files.is_empty() {
            return Ok(());
        }
        let schema = event_schema();
        let projection = FOLD_COLUMNS
            .iter()
            .map(|c| schema.index_of(c))
            .collect::<Result<Vec<_>, _>>()?;
        let groups = balance(files.to_vec(), session.config().target_partitions())
            .into_iter()
            .map(|group| {
                FileGroup::new(
                    group
                        .iter()
                        .map(|f| PartitionedFile::new(f.path.to_string(), f.size))
                        .collect(),
                )
            })
            .collect();
        let scan = self.events.parquet_scan(
            session,
            groups,
            None,
            Some(projection),
            None,
            Arc::clone(recorder),
            &Scope::All,
        )?;
        let mut stream = execute_stream(
            Arc::new(CoalescePartitionsExec::new(scan)),
            session.task_ctx(),
        )?;
        while let Some(batch) = stream.try_next().await? {
            fold.add(&batch, namespace)?;
        }
        Ok(())
    }
}

/// How to bring a fold to a snapshot's files of its namespace.
struct FoldPlan {
    /// The files the fold will be of.
    files: HashMap<Path, u64>,
    /// Files to read into it.
    read: Vec<Arc<LakeFile>>,
    /// Whether to start from nothing.
    rebuild: bool,
}

impl FoldPlan {
    /// The plan for `fold` to become the fold of `files`; `None` when the
    /// files are of an older snapshot than the fold's (time travel: planned
    /// from SQL, the fold stays as it is).
    fn of(fold: &Fold, files: &[Arc<LakeFile>]) -> Option<Self> {
        let wanted: HashMap<Path, u64> = files.iter().map(|f| (f.path.clone(), f.rows)).collect();
        let rebuild = || Self {
            files: wanted.clone(),
            read: files.to_vec(),
            rebuild: true,
        };
        let Some(have) = fold.files() else {
            return Some(rebuild());
        };
        let added: Vec<&Arc<LakeFile>> = files
            .iter()
            .filter(|f| !have.contains_key(&f.path))
            .collect();
        let removed: Vec<(&Path, u64)> = have
            .iter()
            .filter(|(p, _)| !wanted.contains_key(*p))
            .map(|(p, rows)| (p, *rows))
            .collect();
        if removed.is_empty() {
            // Commits since the fold: only files added.
            return Some(Self {
                files: wanted.clone(),
                read: added.into_iter().cloned().collect(),
                rebuild: false,
            });
        }
        // Files were removed: a compaction (same events in new files), a
        // retention run (events gone), or an older snapshot.
        let position = event_schema()
            .index_of(columns::POSITION)
            .expect("events have a position");
        let min_position = |f: &LakeFile| -> Option<i64> {
            match f.columns.get(position)?.min.as_ref()? {
                datafusion::common::ScalarValue::Int64(Some(v)) => Some(*v),
                _ => None,
            }
        };
        let max_position = files
            .iter()
            .filter_map(|f| match f.columns.get(position)?.max.as_ref()? {
                datafusion::common::ScalarValue::Int64(Some(v)) => Some(*v),
                _ => None,
            })
            .max();
        if max_position.is_some_and(|m| m < fold.max_position) {
            return None;
        }
        let mut rewritten_rows = 0u64;
        let mut new = Vec::new();
        for f in added {
            match min_position(f) {
                Some(p) if p > fold.max_position => new.push(Arc::clone(f)),
                Some(_) => rewritten_rows += f.rows,
                None => return Some(rebuild()),
            }
        }
        let removed_rows: u64 = removed.iter().map(|(_, rows)| rows).sum();
        if rewritten_rows != removed_rows {
            return Some(rebuild());
        }
        Some(Self {
            files: wanted,
            read: new,
            rebuild: false,
        })
    }
}

#[async_trait]
impl TableProvider for ThingsTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn get_table_definition(&self) -> Option<&str> {
        Some(THINGS_SQL)
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Namespace filters choose the folds to read; every filter also
        // goes into the SQL plan when that answers. DataFusion re-checks
        // them all above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let Some(context) = session.config().get_extension::<QueryContext>() else {
            return self.planned_from_sql(session, projection, filters).await;
        };
        if self.state.budget == 0 {
            return self.planned_from_sql(session, projection, filters).await;
        }
        let snapshot: &SnapshotFiles = &context.snapshot;
        let scope = &context.scope;
        let wanted = matching_namespaces(session, filters, &snapshot.namespaces)?;
        let mut by_namespace: HashMap<&str, Vec<Arc<LakeFile>>> = HashMap::new();
        for f in &snapshot.files {
            if scope.allows(&f.namespace)
                && wanted.as_ref().is_none_or(|w| w.contains(&f.namespace))
            {
                by_namespace
                    .entry(f.namespace.as_str())
                    .or_default()
                    .push(Arc::clone(f));
            }
        }
        let rows_of = |files: &[Arc<LakeFile>]| files.iter().map(|f| f.rows).sum::<u64>();
        if !self
            .state
            .fits(by_namespace.iter().map(|(ns, files)| (*ns, rows_of(files))))
        {
            return self.planned_from_sql(session, projection, filters).await;
        }
        let mut namespaces: Vec<&str> = by_namespace.keys().copied().collect();
        namespaces.sort_unstable();
        let mut batches = Vec::new();
        let (mut read, mut rows) = (Vec::new(), 0u64);
        for namespace in namespaces {
            let files = &by_namespace[namespace];
            let Some(answered) = self
                .answer_from_fold(session, namespace, files, &context.recorder)
                .await?
            else {
                return self.planned_from_sql(session, projection, filters).await;
            };
            batches.extend(answered.batches.iter().cloned());
            read.extend(answered.read);
            rows += answered.rows;
        }
        let namespaces_answered = by_namespace.len();
        let kept: Vec<Arc<LakeFile>> = by_namespace.into_values().flatten().collect();
        context.recorder.planned(&context.snapshot, scope, kept);
        context.recorder.answered_from_state(read, rows);
        Ok(Arc::new(things_state_exec(
            &batches,
            &self.schema,
            projection,
            session.config().target_partitions(),
            namespaces_answered,
        )?))
    }
}

#[cfg(test)]
mod tests;
