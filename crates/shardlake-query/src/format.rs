//! Results as JSON, the shape every interface shares:
//! `{"columns": [{"name", "type"}], "rows": [[...]], "stats": {...}}`.
//! Numbers, booleans and strings are native JSON, lists are arrays,
//! structs and maps are objects, NULL is `null`; every other type is its
//! Arrow display string (timestamps in RFC 3339).

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::engine::QueryResult;
use crate::snapshot::SnapshotFiles;

/// One cell as JSON: numbers, booleans and strings natively, lists as
/// arrays, structs and maps as objects (recursively), NULL (of any type,
/// the untyped `NULL` literal included) as `null`, and anything else
/// (timestamps, dates, decimals, binary) as its display string.
fn cell(array: &ArrayRef, formatter: &ArrayFormatter<'_>, row: usize) -> Value {
    if array.is_null(row) || array.data_type() == &DataType::Null {
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
        DataType::List(_) => values(&array.as_list::<i32>().value(row)),
        DataType::LargeList(_) => values(&array.as_list::<i64>().value(row)),
        DataType::FixedSizeList(..) => values(&array.as_fixed_size_list().value(row)),
        DataType::Struct(fields) => {
            let one = array.as_struct().slice(row, 1);
            let mut object = serde_json::Map::with_capacity(fields.len());
            for (field, column) in fields.iter().zip(one.columns()) {
                let value = values(column).as_array_mut().and_then(|v| v.pop());
                object.insert(field.name().clone(), value.unwrap_or(Value::Null));
            }
            Value::Object(object)
        }
        DataType::Map(..) => {
            let entries = array.as_map().value(row);
            let keys = values(entries.column(0));
            let items = values(entries.column(1));
            let mut object = serde_json::Map::new();
            if let (Value::Array(keys), Value::Array(items)) = (keys, items) {
                for (key, item) in keys.into_iter().zip(items) {
                    let key = match key {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    object.insert(key, item);
                }
            }
            Value::Object(object)
        }
        _ => json!(formatter.value(row).to_string()),
    }
}

/// Every value of `array`, as a JSON array.
fn values(array: &ArrayRef) -> Value {
    let options = display_options();
    match ArrayFormatter::try_new(array.as_ref(), &options) {
        Ok(formatter) => Value::Array(
            (0..array.len())
                .map(|row| cell(array, &formatter, row))
                .collect(),
        ),
        Err(e) => json!(format!("<{e}>")),
    }
}

fn display_options() -> FormatOptions<'static> {
    FormatOptions::default().with_null("null")
}

/// The formatters of `batch`'s columns (for the display-string fallback).
fn formatters<'a>(
    batch: &'a RecordBatch,
    options: &'a FormatOptions<'a>,
) -> Result<Vec<ArrayFormatter<'a>>, ArrowError> {
    batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), options))
        .collect()
}

/// Calls `row` with each row of `batch` as an array of JSON values.
pub fn for_each_row(
    batch: &RecordBatch,
    mut row: impl FnMut(Vec<Value>) -> Result<(), ArrowError>,
) -> Result<(), ArrowError> {
    let options = display_options();
    let formatters = formatters(batch, &options)?;
    for i in 0..batch.num_rows() {
        row(batch
            .columns()
            .iter()
            .zip(&formatters)
            .map(|(c, f)| cell(c, f, i))
            .collect())?;
    }
    Ok(())
}

/// A row (as [`for_each_row`] gives it) as an object keyed by column name.
pub fn row_object(schema: &SchemaRef, row: Vec<Value>) -> Value {
    Value::Object(
        schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .zip(row)
            .collect(),
    )
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
    let mut rows = Vec::new();
    for batch in batches {
        for_each_row(batch, |row| {
            rows.push(Value::Array(row));
            Ok(())
        })?;
    }
    Ok(rows)
}

/// The live files of a snapshot as every interface lists them:
/// `{"snapshot_id": "...", "files": [{"location", "namespace", "rows",
/// "bytes"}]}` (the id a string, as ids are in every JSON answer), each
/// location as `location` renders it.
pub fn live_files_json(live: &SnapshotFiles, location: impl Fn(&str) -> String) -> Value {
    let files: Vec<Value> = live
        .files
        .iter()
        .map(|f| {
            json!({
                "location": location(&f.location),
                "namespace": f.namespace,
                "rows": f.rows,
                "bytes": f.size,
            })
        })
        .collect();
    json!({
        "snapshot_id": live.snapshot_id.map(|id| id.to_string()),
        "files": files,
    })
}

/// `{"columns":[...],"rows":[...]`: the part of a JSON answer that does not
/// change when it is served again (keys in the order `to_json` has them).
pub(crate) fn render_json_head(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Bytes, ArrowError> {
    let mut head = br#"{"columns":"#.to_vec();
    serde_json::to_writer(&mut head, &columns_json(schema))
        .map_err(|e| ArrowError::JsonError(e.to_string()))?;
    head.extend_from_slice(br#","rows":"#);
    serde_json::to_writer(&mut head, &rows_json(batches)?)
        .map_err(|e| ArrowError::JsonError(e.to_string()))?;
    Ok(Bytes::from(head))
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

    /// [`Self::to_json`] as bytes. The columns and rows of a result run
    /// with [`SqlQuery::rendering_json`](crate::SqlQuery::rendering_json)
    /// were rendered once, on the query runtime, and are shared by every
    /// answer served from the cache: a hit costs the statistics and a copy.
    /// Any other result is rendered here, for this caller only (the cache
    /// keeps only what it weighed).
    pub fn to_json_bytes(&self) -> Result<Bytes, ArrowError> {
        let head = match self.json.get() {
            Some(head) => head.clone(),
            None => render_json_head(&self.schema, &self.batches)?,
        };
        let stats = serde_json::to_value(&self.stats)
            .and_then(|v| serde_json::to_vec(&v))
            .map_err(|e| ArrowError::JsonError(e.to_string()))?;
        let mut body = Vec::with_capacity(head.len() + stats.len() + 10);
        body.extend_from_slice(&head);
        body.extend_from_slice(br#","stats":"#);
        body.extend_from_slice(&stats);
        body.push(b'}');
        Ok(Bytes::from(body))
    }
}
