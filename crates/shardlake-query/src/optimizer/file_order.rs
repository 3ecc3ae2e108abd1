//! Reading files in their order when a query asks for that order.
//!
//! Every data file is written sorted by `(partition_key, position)` (each
//! commit sorts its rows per namespace; compaction sorts what it merges)
//! and holds one namespace. So a chain of files whose key ranges do not
//! overlap, read one after the other, yields rows in `(partition_key,
//! position)` order, and a set of such chains needs only a merge, not a
//! sort. The replay shape (`ORDER BY partition_key, position`, often with a
//! `LIMIT`), windows over an entity's events (`PARTITION BY partition_key
//! ORDER BY position`) and `ORDER BY namespace, partition_key, position`
//! then stream.
//!
//! The files' default grouping (balanced by bytes, in path order) is what
//! every other query wants, and chains can be many more groups than cores
//! (files of separate commits overlap in keys), so [`ReadInFileOrder`]
//! regroups a scan only below a node that needs its rows in that order: a
//! sort, or a node requiring a sorted input, whose leading key is the
//! scan's `partition_key` (or `namespace`) ascending. It then declares the
//! scan's output ordering; DataFusion checks it against each group's file
//! bounds, and its own `EnforceSorting` replaces the sort by a merge of the
//! chains (and a `LIMIT` by a merge that stops early). When the files
//! overlap so much that the chains would outnumber [`MAX_CHAINS`], the
//! plan is left as it is: a merge of that many streams, each holding a
//! decoded batch, costs more memory than the sort.

use std::sync::Arc;

use datafusion::common::Result as DfResult;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::datasource::physical_plan::{FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use shardlake_core::schema::{columns, event_schema};

/// Most chains a scan is regrouped into: beyond that the merge holds too
/// many decoded batches at once (one per chain, ~1-2 MB each) and the sort
/// it replaces is the better plan.
pub const MAX_CHAINS: usize = 64;

/// The physical optimizer rule (see the module documentation). Runs before
/// DataFusion's `EnforceDistribution` and `EnforceSorting`, which plan the
/// merge from the ordering it declares.
#[derive(Debug, Default)]
pub struct ReadInFileOrder;

impl PhysicalOptimizerRule for ReadInFileOrder {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let partitions = config.execution.target_partitions.max(1);
        plan.transform_down(|node| {
            let wanted = wanted_orderings(&node);
            if wanted.iter().all(Option::is_none) {
                return Ok(Transformed::no(node));
            }
            let mut children: Vec<Arc<dyn ExecutionPlan>> =
                node.children().into_iter().cloned().collect();
            let mut changed = false;
            for (child, leading) in children.iter_mut().zip(wanted) {
                let Some(leading) = leading else { continue };
                if let Some(ordered) = in_file_order(child, leading, partitions)? {
                    *child = ordered;
                    changed = true;
                }
            }
            if changed {
                Ok(Transformed::yes(node.with_new_children(children)?))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "read_in_file_order"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// For each child of `node`, the column (an index into the child's output)
/// its rows are wanted ordered by first, ascending: the sort's own key for
/// a sort, else what the node requires of its input.
fn wanted_orderings(node: &Arc<dyn ExecutionPlan>) -> Vec<Option<usize>> {
    let leading_column = |expr: &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
                          descending: bool| {
        (!descending)
            .then(|| expr.as_any().downcast_ref::<Column>().map(Column::index))
            .flatten()
    };
    if let Some(sort) = node.as_any().downcast_ref::<SortExec>() {
        let first = sort.expr().first();
        return vec![leading_column(&first.expr, first.options.descending)];
    }
    node.required_input_ordering()
        .into_iter()
        .map(|required| {
            let required = required?;
            let first = required.first().first();
            let descending = first.options.is_some_and(|o| o.descending);
            leading_column(&first.expr, descending)
        })
        .collect()
}

/// `node` with the events scan below it regrouped into chains read in
/// file order, if its output column `column` is that scan's `partition_key`
/// or `namespace`, reached through nodes that keep rows and their order.
fn in_file_order(
    node: &Arc<dyn ExecutionPlan>,
    column: usize,
    partitions: usize,
) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    let any = node.as_any();
    let (child, child_column) = if let Some(projection) = any.downcast_ref::<ProjectionExec>() {
        let Some(source) = projection
            .expr()
            .get(column)
            .and_then(|p| p.expr.as_any().downcast_ref::<Column>())
        else {
            return Ok(None);
        };
        (projection.input(), source.index())
    } else if let Some(filter) = any.downcast_ref::<FilterExec>() {
        let source = match filter.projection() {
            Some(p) => match p.get(column) {
                Some(&c) => c,
                None => return Ok(None),
            },
            None => column,
        };
        (filter.input(), source)
    } else if any.is::<RepartitionExec>() || any.is::<CoalescePartitionsExec>() {
        // A repartition loses the order of its inputs, but EnforceSorting
        // replaces it by an order-keeping one when that removes a sort.
        match node.children().as_slice() {
            [child] => (*child, column),
            _ => return Ok(None),
        }
    } else if let Some(scan) = any.downcast_ref::<DataSourceExec>() {
        return ordered_scan(scan, column, partitions);
    } else {
        return Ok(None);
    };
    let Some(ordered) = in_file_order(child, child_column, partitions)? else {
        return Ok(None);
    };
    Ok(Some(Arc::clone(node).with_new_children(vec![ordered])?))
}

/// `scan` regrouped into chains of files in `(partition_key, position)`
/// order (led by `namespace` when output column `column` is the
/// namespace), with that ordering declared; `None` if the scan is not of
/// the events table, the column is neither, or the chains are too many.
fn ordered_scan(
    scan: &DataSourceExec,
    column: usize,
    partitions: usize,
) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    let Some(config) = scan.data_source().as_any().downcast_ref::<FileScanConfig>() else {
        return Ok(None);
    };
    let table_schema = Arc::clone(config.file_source().table_schema().table_schema());
    if table_schema != event_schema() || !config.output_ordering.is_empty() {
        return Ok(None);
    }
    // The table column behind output column `column`.
    let source = match config.file_source().projection() {
        Some(p) => match p.iter().nth(column) {
            Some(e) => match e.expr.as_any().downcast_ref::<Column>() {
                Some(c) => c.index(),
                None => return Ok(None),
            },
            None => return Ok(None),
        },
        None => column,
    };
    let keys: &[&str] = match table_schema.field(source).name().as_str() {
        columns::PARTITION_KEY => &[columns::PARTITION_KEY, columns::POSITION],
        columns::NAMESPACE => &[
            columns::NAMESPACE,
            columns::PARTITION_KEY,
            columns::POSITION,
        ],
        _ => return Ok(None),
    };
    let mut ordering = Vec::with_capacity(keys.len());
    for name in keys {
        let index = table_schema.index_of(name)?;
        ordering.push(PhysicalSortExpr::new_default(Arc::new(Column::new(
            name, index,
        ))));
    }
    let Some(ordering) = LexOrdering::new(ordering) else {
        return Ok(None);
    };
    let chains = FileScanConfig::split_groups_by_statistics_with_target_partitions(
        &table_schema,
        &config.file_groups,
        &ordering,
        partitions,
    );
    // A file without bounds for a key cannot be placed in a chain.
    let Ok(chains) = chains else { return Ok(None) };
    if chains.is_empty() || chains.len() > MAX_CHAINS {
        return Ok(None);
    }
    let config = FileScanConfigBuilder::from(config.clone())
        .with_file_groups(chains)
        .with_output_ordering(vec![ordering])
        .build();
    Ok(Some(DataSourceExec::from_data_source(config)))
}
