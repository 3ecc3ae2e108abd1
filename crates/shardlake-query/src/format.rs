//! Results as JSON, the shape every interface shares:
//! `{"columns": [{"name", "type"}], "rows": [[...]], "stats": {...}}`.
//! Numbers, booleans and strings are native JSON; every other type is its
//! Arrow display string (timestamps in RFC 3339).

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Value, json};

use crate::engine::QueryResult;

/// One cell as JSON: numbers, booleans and strings natively, anything else
/// as its display string.
fn cell(array: &ArrayRef, formatter: &ArrayFormatter<'_>, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    macro_rules! num {
        ($t:ty) => {
            json!(array.as_primitive::<$t>().value(row))
        };
    }
    use arrow::datatypes::*;
    match array.data_type() {
        DataType::Boolean => json!(array.as_boolean().value(row)),
        DataType::Int8 => num!(Int8Type),
        DataType::Int16 => num!(Int16Type),
        DataType::Int32 => num!(Int32Type),
        DataType::Int64 => num!(Int64Type),
        DataType::UInt8 => num!(UInt8Type),
        DataType::UInt16 => num!(UInt16Type),
        DataType::UInt32 => num!(UInt32Type),
        DataType::UInt64 => num!(UInt64Type),
        DataType::Float32 | DataType::Float64 => {
            let v = if matches!(array.data_type(), DataType::Float32) {
                f64::from(array.as_primitive::<Float32Type>().value(row))
            } else {
                array.as_primitive::<Float64Type>().value(row)
            };
            serde_json::Number::from_f64(v).map_or_else(|| json!(v.to_string()), Value::Number)
        }
        DataType::Utf8 => json!(array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => json!(array.as_string::<i64>().value(row)),
        DataType::Utf8View => json!(array.as_string_view().value(row)),
        _ => json!(formatter.value(row).to_string()),
    }
}

/// Column descriptions `[{"name", "type"}]`.
pub fn columns_json(schema: &SchemaRef) -> Value {
    Value::Array(
        schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
            .collect(),
    )
}

/// Rows as arrays of JSON values.
pub fn rows_json(batches: &[RecordBatch]) -> Result<Vec<Value>, ArrowError> {
    let options = FormatOptions::default().with_null("null");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            rows.push(Value::Array(
                batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| cell(c, f, row))
                    .collect(),
            ));
        }
    }
    Ok(rows)
}

impl QueryResult {
    /// The result as `{"columns", "rows", "stats"}`.
    pub fn to_json(&self) -> Result<Value, ArrowError> {
        Ok(json!({
            "columns": columns_json(&self.schema),
            "rows": rows_json(&self.batches)?,
            "stats": self.stats,
        }))
    }
}
