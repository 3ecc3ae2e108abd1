//! Rendering query results: `table` for people, `json` and `csv` for scripts.

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use serde_json::{Map, Value};
use shardlake_query::format::{columns_json, rows_json};

/// Output format of `shardlake query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// `{"columns": [{"name","type"}], "rows": [[...]]}`.
    Json,
    /// CSV with a header line.
    Csv,
}

/// Writes `batches` in `format`, with `extra` top-level JSON fields (e.g. stats).
pub fn write(
    out: &mut dyn Write,
    format: Format,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    extra: Map<String, Value>,
) -> anyhow::Result<()> {
    match format {
        Format::Table => {
            let text = arrow::util::pretty::pretty_format_batches(batches)?;
            if batches.iter().all(|b| b.num_rows() == 0) {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                writeln!(out, "(no rows; columns: {})", names.join(", "))?;
            } else {
                writeln!(out, "{text}")?;
            }
        }
        Format::Json => {
            let mut doc = Map::new();
            doc.insert("columns".into(), columns_json(schema));
            doc.insert("rows".into(), Value::Array(rows_json(batches)?));
            doc.extend(extra);
            serde_json::to_writer(&mut *out, &Value::Object(doc))?;
            writeln!(out)?;
        }
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            if batches.is_empty() {
                writer.write(&RecordBatch::new_empty(std::sync::Arc::clone(schema)))?;
            }
            for batch in batches {
                writer.write(batch)?;
            }
        }
    }
    Ok(())
}
