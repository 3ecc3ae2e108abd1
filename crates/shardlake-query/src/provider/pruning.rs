//! File pruning from Iceberg metadata: DataFusion's `PruningPredicate`
//! evaluated against per-file statistics taken from the manifests, before
//! any file is opened. The namespace partition is exact (each file holds one
//! namespace); other columns use the files' lower and upper bounds.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, UInt64Array};
use arrow::datatypes::SchemaRef;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, ScalarValue};

use crate::snapshot::LakeFile;

/// Statistics of a list of files, one "container" per file.
pub struct FileStatistics<'a> {
    schema: SchemaRef,
    files: &'a [Arc<LakeFile>],
}

impl<'a> FileStatistics<'a> {
    /// Statistics of `files`, whose columns follow `schema`.
    pub fn new(schema: SchemaRef, files: &'a [Arc<LakeFile>]) -> Self {
        Self { schema, files }
    }

    fn index(&self, column: &Column) -> Option<usize> {
        self.schema.index_of(column.name()).ok()
    }

    fn bounds(
        &self,
        column: &Column,
        pick: fn(&LakeFile, usize) -> Option<ScalarValue>,
    ) -> Option<ArrayRef> {
        let i = self.index(column)?;
        let data_type = self.schema.field(i).data_type();
        let null = ScalarValue::try_from(data_type).ok()?;
        let values = self
            .files
            .iter()
            .map(|f| pick(f, i).unwrap_or_else(|| null.clone()));
        ScalarValue::iter_to_array(values).ok()
    }
}

const NAMESPACE: usize = 0;

fn namespace_scalar(f: &LakeFile) -> ScalarValue {
    ScalarValue::Utf8(Some(f.namespace.clone()))
}

impl PruningStatistics for FileStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bounds(column, |f, i| {
            if i == NAMESPACE {
                Some(namespace_scalar(f))
            } else {
                f.columns.get(i).and_then(|c| c.min.clone())
            }
        })
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bounds(column, |f, i| {
            if i == NAMESPACE {
                Some(namespace_scalar(f))
            } else {
                f.columns.get(i).and_then(|c| c.max.clone())
            }
        })
    }

    fn num_containers(&self) -> usize {
        self.files.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let i = self.index(column)?;
        Some(Arc::new(
            self.files
                .iter()
                .map(|f| {
                    if i == NAMESPACE {
                        Some(0)
                    } else {
                        f.columns.get(i).and_then(|c| c.nulls)
                    }
                })
                .collect::<UInt64Array>(),
        ))
    }

    fn row_counts(&self, _column: &Column) -> Option<ArrayRef> {
        Some(Arc::new(
            self.files
                .iter()
                .map(|f| Some(f.rows))
                .collect::<UInt64Array>(),
        ))
    }

    fn contained(&self, column: &Column, values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        // The partition value is known exactly: a file either holds only
        // rows of one of `values`, or none.
        if self.index(column)? != NAMESPACE {
            return None;
        }
        Some(
            self.files
                .iter()
                .map(|f| Some(values.contains(&namespace_scalar(f))))
                .collect(),
        )
    }
}
