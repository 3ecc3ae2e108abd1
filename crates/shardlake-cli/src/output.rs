//! Writing query results, batch by batch as the engine streams them:
//! `table` for people (capped at `--max-rows`, NULL shown as `NULL`),
//! `csv`, `tsv`, `json`, `ndjson`, `arrow` and `parquet` for scripts and
//! other tools. Nothing but the rows a table shows is ever held: a million
//! rows in CSV go out as they come, and a table of them keeps the first
//! `--max-rows` and counts the rest.

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::util::display::FormatOptions;
use futures::StreamExt;
use serde_json::Value;
use shardlake_query::QueryStream;
use shardlake_query::format::{columns_json, for_each_row, row_object};

/// Output format of `shardlake query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table, at most `--max-rows` rows, then the scan
    /// statistics.
    Table,
    /// CSV with a header line.
    Csv,
    /// Tab-separated values with a header line.
    Tsv,
    /// One document `{"columns", "rows", "stats"}`; rows are objects
    /// (arrays with `--json-arrays`).
    Json,
    /// One JSON object per row.
    Ndjson,
    /// Arrow IPC stream.
    Arrow,
    /// A Parquet file.
    Parquet,
}

/// How to write a result.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The format.
    pub format: Format,
    /// Rows a table shows (0: all).
    pub max_rows: usize,
    /// JSON rows as arrays (the shape of `/v1/query`) instead of objects.
    pub json_arrays: bool,
}

/// Streams `stream` to `out` in `options.format`.
pub async fn write_stream(
    out: &mut (dyn Write + Send),
    options: &Options,
    stream: &mut QueryStream,
) -> anyhow::Result<()> {
    let schema = stream.schema();
    match options.format {
        Format::Table => table(out, options.max_rows, stream).await,
        Format::Csv | Format::Tsv => {
            let delimiter = if options.format == Format::Tsv {
                b'\t'
            } else {
                b','
            };
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .with_delimiter(delimiter)
                .build(&mut *out);
            let mut wrote = false;
            while let Some(batch) = stream.next().await {
                writer.write(&batch?)?;
                wrote = true;
            }
            if !wrote {
                // An empty result still gets its header line.
                writer.write(&RecordBatch::new_empty(schema))?;
            }
            Ok(())
        }
        Format::Json => {
            write!(out, "{{\"columns\":{},\"rows\":[", columns_json(&schema))?;
            let mut first = true;
            while let Some(batch) = stream.next().await {
                for_each_row(&batch?, |row| {
                    let row = json_row(&schema, row, options.json_arrays);
                    let sep = if std::mem::take(&mut first) { "" } else { "," };
                    write!(out, "{sep}{row}").map_err(arrow::error::ArrowError::from)
                })?;
            }
            let stats = serde_json::to_value(stream.stats())?;
            writeln!(out, "],\"stats\":{stats}}}")?;
            Ok(())
        }
        Format::Ndjson => {
            while let Some(batch) = stream.next().await {
                for_each_row(&batch?, |row| {
                    writeln!(out, "{}", row_object(&schema, row))
                        .map_err(arrow::error::ArrowError::from)
                })?;
            }
            Ok(())
        }
        Format::Arrow => {
            let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut *out, &schema)?;
            while let Some(batch) = stream.next().await {
                writer.write(&batch?)?;
            }
            writer.finish()?;
            Ok(())
        }
        Format::Parquet => {
            let mut writer = parquet::arrow::ArrowWriter::try_new(&mut *out, schema, None)?;
            while let Some(batch) = stream.next().await {
                writer.write(&batch?)?;
            }
            writer.close()?;
            Ok(())
        }
    }
}

fn json_row(schema: &SchemaRef, row: Vec<Value>, arrays: bool) -> Value {
    if arrays {
        Value::Array(row)
    } else {
        row_object(schema, row)
    }
}

/// The first `max_rows` rows as a table, the number of the others, then
/// the scan statistics.
async fn table(
    out: &mut (dyn Write + Send),
    max_rows: usize,
    stream: &mut QueryStream,
) -> anyhow::Result<()> {
    let schema = stream.schema();
    let cap = if max_rows == 0 { usize::MAX } else { max_rows };
    let mut shown: Vec<RecordBatch> = Vec::new();
    let (mut kept, mut total) = (0usize, 0u64);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        total += batch.num_rows() as u64;
        if kept < cap {
            let take = batch.num_rows().min(cap - kept);
            kept += take;
            shown.push(batch.slice(0, take));
        }
    }
    write_table(&mut *out, &schema, &shown)?;
    if (kept as u64) < total {
        writeln!(
            out,
            "{} rows, {kept} shown (--max-rows 0 shows all, --format csv streams them)",
            thousands(total)
        )?;
    }
    if let Some(stats) = stream.stats() {
        writeln!(out, "{}", stats.summary())?;
    }
    Ok(())
}

/// Rows held in memory as an aligned table, NULL shown as `NULL`.
pub fn write_table(
    out: &mut dyn Write,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> anyhow::Result<()> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        writeln!(out, "(no rows; columns: {})", names.join(", "))?;
        return Ok(());
    }
    let options = FormatOptions::default().with_null("NULL");
    let text = arrow::util::pretty::pretty_format_batches_with_options(batches, &options)?;
    writeln!(out, "{text}")?;
    Ok(())
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
