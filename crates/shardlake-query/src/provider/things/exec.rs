//! `ThingsStateExec`: the answer of a `things` scan from the maintained
//! folds, named as such in `EXPLAIN`.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};

/// The live entities of some namespaces, already folded, spread over
/// partitions.
#[derive(Debug)]
pub(super) struct ThingsStateExec {
    partitions: Vec<Vec<RecordBatch>>,
    namespaces: usize,
    entities: usize,
    properties: Arc<PlanProperties>,
}

impl ThingsStateExec {
    /// `batches` (in the `things` schema) projected to `projection`, spread
    /// round robin over at most `partitions` partitions.
    pub(super) fn new(
        batches: &[RecordBatch],
        schema: &SchemaRef,
        projection: Option<&Vec<usize>>,
        partitions: usize,
        namespaces: usize,
    ) -> DfResult<Self> {
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
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(n),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            partitions: spread,
            namespaces,
            entities: batches.iter().map(RecordBatch::num_rows).sum(),
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for ThingsStateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ThingsStateExec: maintained state of {} namespaces ({} live entities)",
            self.namespaces, self.entities
        )
    }
}

impl ExecutionPlan for ThingsStateExec {
    fn name(&self) -> &str {
        "ThingsStateExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let batches = self.partitions.get(partition).cloned().unwrap_or_default();
        Ok(Box::pin(MemoryStream::try_new(
            batches,
            Arc::clone(self.properties.eq_properties.schema()),
            None,
        )?))
    }
}
