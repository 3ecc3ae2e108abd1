//! SQL functions shardlake adds.
//!
//! `shardlake_partition(key, n)`: the partition (0..n) of a partition key,
//! `fnv1a_32(key) % n`: the same hash as routing and keyed lanes, so a
//! subscription's partition `i of n` is `WHERE shardlake_partition(partition_key, n) = i`.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use shardlake_core::hash::fnv1a_32;

/// Name of the partition function in SQL.
pub const PARTITION_FN: &str = "shardlake_partition";

/// `shardlake_partition(key Utf8, n Int64) -> Int64`.
pub fn partition_udf() -> ScalarUDF {
    create_udf(
        PARTITION_FN,
        vec![DataType::Utf8, DataType::Int64],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(partition),
    )
}

fn partition(args: &[ColumnarValue]) -> DfResult<ColumnarValue> {
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let (keys, counts) = (
        arrays[0].as_string::<i32>(),
        arrays[1].as_primitive::<Int64Type>(),
    );
    let mut out = Vec::with_capacity(keys.len());
    for i in 0..keys.len() {
        if keys.is_null(i) || counts.is_null(i) {
            out.push(None);
            continue;
        }
        let n = counts.value(i);
        if n <= 0 || n > i64::from(u32::MAX) {
            return Err(DataFusionError::Execution(format!(
                "{PARTITION_FN}: the partition count must be in 1..=4294967295, got {n}"
            )));
        }
        out.push(Some(i64::from(
            fnv1a_32(keys.value(i).as_bytes()) % n as u32,
        )));
    }
    let array = Int64Array::from(out);
    // A scalar in, a scalar out.
    if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
        return Ok(ColumnarValue::Scalar(
            datafusion::common::ScalarValue::try_from_array(&array, 0)?,
        ));
    }
    Ok(ColumnarValue::Array(Arc::new(array)))
}
