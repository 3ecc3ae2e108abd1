//! `PrecomputedExec`: rows made while planning, without reading data at
//! run time (an answer from file statistics, the maintained `things`),
//! named for what made them in `EXPLAIN`.

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

/// Batches in `schema`, one list per output partition.
#[derive(Debug)]
pub struct PrecomputedExec {
    /// The node's name, and what `EXPLAIN` says after it.
    name: &'static str,
    description: String,
    partitions: Vec<Vec<RecordBatch>>,
    properties: Arc<PlanProperties>,
}

impl PrecomputedExec {
    /// `partitions` (at least one, possibly empty) of rows in `schema`.
    pub fn new(
        name: &'static str,
        description: String,
        schema: SchemaRef,
        mut partitions: Vec<Vec<RecordBatch>>,
    ) -> Self {
        if partitions.is_empty() {
            partitions.push(Vec::new());
        }
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(partitions.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            name,
            description,
            partitions,
            properties: Arc::new(properties),
        }
    }
}

#[cfg(test)]
impl PrecomputedExec {
    /// Every batch, partition by partition.
    pub(crate) fn batches(&self) -> impl Iterator<Item = &RecordBatch> {
        self.partitions.iter().flatten()
    }
}

impl DisplayAs for PrecomputedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.description)
    }
}

impl ExecutionPlan for PrecomputedExec {
    fn name(&self) -> &str {
        self.name
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
