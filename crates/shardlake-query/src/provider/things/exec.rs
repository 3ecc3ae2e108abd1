//! The answer of a `things` scan from the maintained folds: a
//! [`PrecomputedExec`] named `ThingsStateExec` in `EXPLAIN`.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::Result as DfResult;

use crate::precomputed::PrecomputedExec;

/// `batches` (in the `things` schema, `schema`) of `namespaces` namespaces,
/// projected to `projection` and spread round robin over at most
/// `partitions` partitions.
pub(super) fn things_state_exec(
    batches: &[RecordBatch],
    schema: &SchemaRef,
    projection: Option<&Vec<usize>>,
    partitions: usize,
    namespaces: usize,
) -> DfResult<PrecomputedExec> {
    let schema = match projection {
        Some(indices) => Arc::new(schema.project(indices)?),
        None => Arc::clone(schema),
    };
    let n = partitions.clamp(1, batches.len().max(1));
    let mut spread = vec![Vec::new(); n];
    for (i, batch) in batches.iter().enumerate() {
        let batch = match projection {
            Some(indices) => batch.project(indices)?,
            None => batch.clone(),
        };
        spread[i % n].push(batch);
    }
    let entities: usize = batches.iter().map(RecordBatch::num_rows).sum();
    Ok(PrecomputedExec::new(
        "ThingsStateExec",
        format!("maintained state of {namespaces} namespaces ({entities} live entities)"),
        schema,
        spread,
    ))
}
