//! Result formats, and the streaming encoders behind NDJSON, CSV, Arrow and
//! replayed events.
//!
//! A streamed response is encoded batch by batch as the engine produces
//! them; nothing holds the whole result. The scan statistics exist only
//! once the last batch is out, so they travel at the end: NDJSON writes a
//! final line `{"stats": {...}}`, and every streamed format also sends them
//! in the HTTP trailer `x-shardlake-stats` (to clients that ask for
//! trailers with `TE: trailers`). The body that drives an encoder is
//! `routes::stream_body::StreamedBody`.

use arrow::array::RecordBatch;
use arrow::csv::WriterBuilder as CsvWriterBuilder;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::writer::StreamWriter;
use arrow::json::writer::{LineDelimited, WriterBuilder as JsonWriterBuilder};
use axum::http::{HeaderValue, StatusCode};
use bytes::Bytes;
use serde_json::json;
use shardlake_core::events_from_batch;
use shardlake_query::ScanStats;

use crate::error::ApiError;

/// Trailer carrying the scan statistics of a streamed result, as JSON.
pub const STATS_TRAILER: &str = "x-shardlake-stats";
/// Trailer carrying the error that cut a streamed result short, as JSON.
pub const ERROR_TRAILER: &str = "x-shardlake-error";

/// How a result is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON document `{"columns", "rows", "stats"}` (served from the cache).
    Json,
    /// One JSON object per row, then `{"stats": {...}}`.
    Ndjson,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// Arrow IPC stream.
    Arrow,
}

impl Format {
    /// The format's name as requests give it (`"format": "csv"`).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
            Format::Arrow => "arrow",
        }
    }

    /// The `Content-Type` of the response.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }

    /// The format an `Accept` header asks for: the first media range we
    /// produce, `None` when it accepts anything (`*/*`), an error when it
    /// names only types we cannot produce.
    pub fn from_accept(accept: &HeaderValue) -> Result<Option<Self>, ApiError> {
        let text = accept.to_str().unwrap_or("");
        for range in text.split(',') {
            let media = range.split(';').next().unwrap_or("").trim();
            let format = match media {
                "application/json" => Format::Json,
                "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                    Format::Ndjson
                }
                "text/csv" => Format::Csv,
                "application/vnd.apache.arrow.stream" => Format::Arrow,
                "*/*" | "application/*" | "" => return Ok(None),
                _ => continue,
            };
            return Ok(Some(format));
        }
        Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            format!(
                "cannot answer with `{text}`; use application/json, application/x-ndjson, \
                 text/csv or application/vnd.apache.arrow.stream"
            ),
        ))
    }
}

/// Encodes one streamed result, batch by batch.
pub enum StreamEncoder {
    /// NDJSON rows.
    Ndjson,
    /// CSV; the header goes before the first rows.
    Csv {
        /// Whether the header is out.
        header_written: bool,
        /// The result schema (for the header of an empty result).
        schema: SchemaRef,
    },
    /// Arrow IPC; the writer's buffer is drained after every batch.
    Arrow(Box<StreamWriter<Vec<u8>>>),
    /// Replayed events, one per line in their JSON form (README, "The
    /// event"), and nothing else: no stats line, no error line, so a
    /// consumer can pipe the lines anywhere.
    Events,
}

impl StreamEncoder {
    /// An encoder of `format` (not JSON) for results of `schema`.
    pub fn new(format: Format, schema: &SchemaRef) -> Result<Self, ArrowError> {
        Ok(match format {
            Format::Ndjson | Format::Json => StreamEncoder::Ndjson,
            Format::Csv => StreamEncoder::Csv {
                header_written: false,
                schema: SchemaRef::clone(schema),
            },
            Format::Arrow => {
                StreamEncoder::Arrow(Box::new(StreamWriter::try_new(Vec::new(), schema)?))
            }
        })
    }

    /// The `Content-Type` of what the encoder writes.
    pub fn content_type(&self) -> &'static str {
        match self {
            StreamEncoder::Ndjson | StreamEncoder::Events => Format::Ndjson.content_type(),
            StreamEncoder::Csv { .. } => Format::Csv.content_type(),
            StreamEncoder::Arrow(_) => Format::Arrow.content_type(),
        }
    }

    /// The bytes of `batch` (plus anything the format writes before it).
    pub fn batch(&mut self, batch: &RecordBatch) -> Result<Bytes, ArrowError> {
        match self {
            StreamEncoder::Ndjson => {
                let mut writer = JsonWriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, LineDelimited>(Vec::new());
                writer.write(batch)?;
                writer.finish()?;
                Ok(Bytes::from(writer.into_inner()))
            }
            StreamEncoder::Csv { header_written, .. } => {
                let mut writer = CsvWriterBuilder::new()
                    .with_header(!*header_written)
                    .build(Vec::new());
                writer.write(batch)?;
                *header_written = true;
                Ok(Bytes::from(writer.into_inner()))
            }
            StreamEncoder::Arrow(writer) => {
                writer.write(batch)?;
                Ok(Bytes::from(std::mem::take(writer.get_mut())))
            }
            StreamEncoder::Events => {
                let events =
                    events_from_batch(batch).map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
                let mut out = Vec::with_capacity(batch.num_rows() * 256);
                for event in events {
                    serde_json::to_writer(&mut out, &event)
                        .map_err(|e| ArrowError::JsonError(e.to_string()))?;
                    out.push(b'\n');
                }
                Ok(Bytes::from(out))
            }
        }
    }

    /// The bytes that end a complete result.
    pub fn finish(&mut self, stats: &ScanStats) -> Result<Bytes, ArrowError> {
        match self {
            StreamEncoder::Ndjson => {
                let mut line = serde_json::to_vec(&json!({ "stats": stats }))
                    .map_err(|e| ArrowError::JsonError(e.to_string()))?;
                line.push(b'\n');
                Ok(Bytes::from(line))
            }
            StreamEncoder::Csv {
                header_written: false,
                schema,
            } => {
                // An empty result still gets its header row.
                let empty = RecordBatch::new_empty(SchemaRef::clone(schema));
                self.batch(&empty)
            }
            StreamEncoder::Csv { .. } | StreamEncoder::Events => Ok(Bytes::new()),
            StreamEncoder::Arrow(writer) => {
                writer.finish()?;
                Ok(Bytes::from(std::mem::take(writer.get_mut())))
            }
        }
    }

    /// The bytes that report an error in the body, where the format has a
    /// place for one (NDJSON's last line). Other formats (replayed events
    /// too: their lines must stay events) end the response abnormally
    /// instead, which every HTTP client notices.
    pub fn error_line(&self, error: &ApiError) -> Option<Bytes> {
        match self {
            StreamEncoder::Ndjson => {
                let mut line = error.body().to_string().into_bytes();
                line.push(b'\n');
                Some(Bytes::from(line))
            }
            _ => None,
        }
    }
}
