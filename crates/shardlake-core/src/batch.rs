//! Columnar batches of validated, not yet committed events.
//!
//! [`EventBatchBuilder`] is the hot path of ingestion: events go straight from
//! their JSON bytes (or a Rust [`Event`]) into Arrow builders. Apart from what
//! the builders themselves grow, nothing is allocated per event on the common
//! path (strings without escapes, explicit partition key).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMicrosecondType};

use crate::error::{Error, ErrorKind, Result};
use crate::event::{
    Event, EventError, EventErrorCode, EventLimits, RawEvent, ValidEvent, format_ts_micros,
};
use crate::schema::{TS_TIMEZONE, columns, event_schema, pending_event_schema};

/// Events that passed validation, in columnar form with the
/// [`pending_event_schema`], plus their approximate in-memory size.
#[derive(Debug, Clone)]
pub struct EventBatch {
    batch: RecordBatch,
    approx_bytes: usize,
}

impl EventBatch {
    /// Wraps a record batch that already has the pending schema.
    ///
    /// Columnar callers use this to skip row-wise validation; the schema (names,
    /// types, nullability) must match exactly.
    pub fn try_new(batch: RecordBatch) -> Result<Self> {
        if batch.schema().fields() != pending_event_schema().fields() {
            return Err(Error::new(
                ErrorKind::DataInvalid,
                "record batch does not have the pending event schema",
            )
            .with_context("expected", format!("{:?}", pending_event_schema()))
            .with_context("actual", format!("{:?}", batch.schema())));
        }
        let approx_bytes = batch.get_array_memory_size();
        Ok(Self {
            batch,
            approx_bytes,
        })
    }

    /// An empty batch.
    pub fn empty() -> Self {
        Self {
            batch: RecordBatch::new_empty(pending_event_schema()),
            approx_bytes: 0,
        }
    }

    /// The events as an Arrow record batch.
    pub fn record_batch(&self) -> &RecordBatch {
        &self.batch
    }

    /// Consumes the wrapper.
    pub fn into_record_batch(self) -> RecordBatch {
        self.batch
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    /// Whether the batch holds no events.
    pub fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }

    /// Approximate bytes in memory, used for batching and backpressure.
    pub fn approx_bytes(&self) -> usize {
        self.approx_bytes
    }

    /// The shard id column.
    pub fn shard_ids(&self) -> &[i32] {
        self.batch.column(1).as_primitive::<Int32Type>().values()
    }

    /// The seq column.
    pub fn seqs(&self) -> &[i64] {
        self.batch.column(2).as_primitive::<Int64Type>().values()
    }
}

/// Builds an [`EventBatch`] from events one at a time, validating each.
///
/// Within one builder, each shard's `seq` must strictly increase: a request
/// whose events go backwards for a shard is malformed, and the offending
/// events are refused with [`EventErrorCode::SeqNotIncreasing`].
pub struct EventBatchBuilder {
    limits: EventLimits,
    namespace: StringBuilder,
    shard_id: Int32Builder,
    seq: Int64Builder,
    partition_key: StringBuilder,
    entity_type: StringBuilder,
    entity_id: StringBuilder,
    event_type: StringBuilder,
    version: Int64Builder,
    ts: TimestampMicrosecondBuilder,
    idempotency_key: StringBuilder,
    payload: StringBuilder,
    last_seq: HashMap<i32, i64>,
    len: usize,
    approx_bytes: usize,
}

impl EventBatchBuilder {
    /// A builder applying `limits`.
    pub fn new(limits: EventLimits) -> Self {
        Self::with_capacity(limits, 1024, 64 * 1024)
    }

    /// A builder sized for `rows` events totalling about `bytes` of strings.
    pub fn with_capacity(limits: EventLimits, rows: usize, bytes: usize) -> Self {
        let s = |share: usize| StringBuilder::with_capacity(rows, bytes / share);
        Self {
            limits,
            namespace: s(16),
            shard_id: Int32Builder::with_capacity(rows),
            seq: Int64Builder::with_capacity(rows),
            partition_key: s(8),
            entity_type: s(16),
            entity_id: s(8),
            event_type: s(16),
            version: Int64Builder::with_capacity(rows),
            ts: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone(TS_TIMEZONE),
            idempotency_key: s(8),
            payload: s(2),
            last_seq: HashMap::new(),
            len: 0,
            approx_bytes: 0,
        }
    }

    /// The limits this builder applies.
    pub fn limits(&self) -> &EventLimits {
        &self.limits
    }

    /// Number of events appended so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been appended.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Approximate bytes appended so far.
    pub fn approx_bytes(&self) -> usize {
        self.approx_bytes
    }

    /// Parses one JSON document and appends it if valid.
    pub fn push_json(&mut self, json: &[u8]) -> std::result::Result<(), EventError> {
        let raw = RawEvent::from_json(json)?;
        let valid = raw.validate(&self.limits)?;
        self.push_valid(&valid)
    }

    /// Validates and appends an owned event.
    pub fn push_event(&mut self, event: &Event) -> std::result::Result<(), EventError> {
        let valid = event.validate(&self.limits)?;
        self.push_valid(&valid)
    }

    /// Appends an event that already passed validation (checking only the
    /// per-request seq order).
    pub fn push_valid(&mut self, e: &ValidEvent<'_>) -> std::result::Result<(), EventError> {
        match self.last_seq.get_mut(&e.shard_id) {
            Some(last) if e.seq <= *last => {
                return Err(EventError::new(
                    EventErrorCode::SeqNotIncreasing,
                    format!(
                        "`seq` {} of shard {} is not greater than the previous seq {} of that \
                         shard in this request",
                        e.seq, e.shard_id, last
                    ),
                ));
            }
            Some(last) => *last = e.seq,
            None => {
                self.last_seq.insert(e.shard_id, e.seq);
            }
        }
        self.namespace.append_value(e.namespace);
        self.shard_id.append_value(e.shard_id);
        self.seq.append_value(e.seq);
        self.partition_key.append_value(&e.partition_key);
        self.entity_type.append_option(e.entity_type);
        self.entity_id.append_option(e.entity_id);
        self.event_type.append_value(e.event_type);
        self.version.append_option(e.version);
        self.ts.append_value(e.ts_micros);
        match e.idempotency_key {
            Some(k) => self.idempotency_key.append_value(k),
            None => {
                // Written straight into the builder's buffer: no String per row.
                let _ = write!(
                    self.idempotency_key,
                    "{}:{}:{}",
                    e.namespace, e.shard_id, e.seq
                );
                self.idempotency_key.append_value("");
            }
        }
        self.payload.append_option(e.payload.as_deref());
        self.len += 1;
        self.approx_bytes += e.approx_bytes();
        Ok(())
    }

    /// Takes the events appended so far as a batch and resets the builder
    /// (including the per-request seq check).
    pub fn finish(&mut self) -> EventBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.namespace.finish()),
            Arc::new(self.shard_id.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.partition_key.finish()),
            Arc::new(self.entity_type.finish()),
            Arc::new(self.entity_id.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.version.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.idempotency_key.finish()),
            Arc::new(self.payload.finish()),
        ];
        let approx_bytes = self.approx_bytes;
        self.len = 0;
        self.approx_bytes = 0;
        self.last_seq.clear();
        // The builders' types and nullability are fixed above to match the
        // schema, so this cannot fail for any input.
        let batch = RecordBatch::try_new(pending_event_schema(), columns)
            .unwrap_or_else(|e| unreachable!("builder columns match the pending schema: {e}"));
        EventBatch {
            batch,
            approx_bytes,
        }
    }
}

/// Longest raw text kept with a refused event (for dead-letter records).
pub const MAX_REJECTED_RAW_BYTES: usize = 64 * 1024;

/// An event (line, array element, object) that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedLine {
    /// Where it was in its request, as the caller counts: the 1-based line of
    /// an NDJSON body, the 0-based index of a JSON array or event list.
    pub index: usize,
    /// Why it was refused.
    pub error: EventError,
    /// The refused text, cut at [`MAX_REJECTED_RAW_BYTES`], for dead letters.
    pub raw: String,
}

impl RejectedLine {
    /// A refused event with its raw text (cut to the limit).
    pub fn new(index: usize, error: EventError, raw: &[u8]) -> Self {
        let cut = &raw[..raw.len().min(MAX_REJECTED_RAW_BYTES)];
        Self {
            index,
            error,
            raw: String::from_utf8_lossy(cut).into_owned(),
        }
    }
}

/// Appends every non-blank line of an NDJSON buffer to `builder`, returning
/// the refused lines. `first_line` is the number given to the buffer's first line.
pub fn push_ndjson(
    builder: &mut EventBatchBuilder,
    buf: &[u8],
    first_line: usize,
) -> Vec<RejectedLine> {
    let mut rejected = Vec::new();
    for (i, line) in buf.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Err(error) = builder.push_json(line) {
            rejected.push(RejectedLine::new(first_line + i, error, line));
        }
    }
    rejected
}

/// Reads the events of a record batch with the table's (or the pending)
/// schema back into owned [`Event`]s, in row order.
pub fn events_from_batch(batch: &RecordBatch) -> Result<Vec<Event>> {
    let col = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("record batch has no `{name}` column"),
            )
        })
    };
    let string = |name: &str| -> Result<_> {
        col(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| Error::new(ErrorKind::DataInvalid, format!("`{name}` is not Utf8")))
    };
    let int64 = |name: &str| -> Result<_> {
        col(name)?
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| Error::new(ErrorKind::DataInvalid, format!("`{name}` is not Int64")))
    };
    let namespace = string(columns::NAMESPACE)?;
    let shard_id = col(columns::SHARD_ID)?
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| Error::new(ErrorKind::DataInvalid, "`shard_id` is not Int32"))?;
    let seq = int64(columns::SEQ)?;
    let partition_key = string(columns::PARTITION_KEY)?;
    let entity_type = string(columns::ENTITY_TYPE)?;
    let entity_id = string(columns::ENTITY_ID)?;
    let event_type = string(columns::EVENT_TYPE)?;
    let version = int64(columns::VERSION)?;
    let ts = col(columns::TS)?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| Error::new(ErrorKind::DataInvalid, "`ts` is not Timestamp(µs)"))?;
    let idempotency_key = string(columns::IDEMPOTENCY_KEY)?;
    let payload = string(columns::PAYLOAD)?;
    let position = match batch.column_by_name(columns::POSITION) {
        Some(_) => Some(int64(columns::POSITION)?),
        None => None,
    };
    let opt =
        |a: &arrow::array::StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_owned());
    (0..batch.num_rows())
        .map(|i| {
            let ts_micros = ts.value(i);
            let ts = chrono::DateTime::from_timestamp_micros(ts_micros).ok_or_else(|| {
                Error::new(
                    ErrorKind::DataInvalid,
                    format!("`ts` {} is out of range", format_ts_micros(ts_micros)),
                )
            })?;
            Ok(Event {
                namespace: namespace.value(i).to_owned(),
                shard_id: shard_id.value(i),
                seq: seq.value(i),
                partition_key: partition_key.value(i).to_owned(),
                entity_type: opt(entity_type, i),
                entity_id: opt(entity_id, i),
                event_type: event_type.value(i).to_owned(),
                version: version.is_valid(i).then(|| version.value(i)),
                ts,
                idempotency_key: Some(idempotency_key.value(i).to_owned()),
                payload: opt(payload, i),
                position: position.map(|p| p.value(i)),
            })
        })
        .collect()
}

/// Adds the `position` column to a pending batch, giving the table's schema.
pub fn with_positions(pending: &RecordBatch, positions: ArrayRef) -> Result<RecordBatch> {
    let mut columns = pending.columns().to_vec();
    columns.push(positions);
    RecordBatch::try_new(event_schema(), columns).map_err(|e| {
        Error::new(
            ErrorKind::Unexpected,
            "cannot add positions to a pending batch",
        )
        .with_source(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::push_json_array;

    fn line(ns: &str, shard: i32, seq: i64) -> String {
        format!(
            r#"{{"namespace":"{ns}","shard_id":{shard},"seq":{seq},"partition_key":"k{seq}","event_type":"thing.created","ts":"2026-01-01T00:00:00Z","payload":{{"n":{seq}}}}}"#
        )
    }

    #[test]
    fn bad_lines_are_refused_alone() {
        let mut b = EventBatchBuilder::new(EventLimits::default());
        let text = [
            line("a", 1, 1),
            "{broken".to_owned(),
            line("a", 1, 2),
            String::new(),
            line("", 1, 3),
            line("b", 2, 1),
        ]
        .join("\n");
        let rejected = push_ndjson(&mut b, text.as_bytes(), 1);
        assert_eq!(
            rejected.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![2, 5]
        );
        assert_eq!(rejected[0].error.code, EventErrorCode::MalformedJson);
        assert_eq!(rejected[1].error.code, EventErrorCode::EmptyField);
        let batch = b.finish();
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.seqs(), &[1, 2, 1]);
        let events = events_from_batch(batch.record_batch()).expect("readable");
        assert_eq!(events[2].namespace, "b");
        assert_eq!(events[0].idempotency_key.as_deref(), Some("a:1:1"));
        assert_eq!(events[1].payload.as_deref(), Some(r#"{"n":2}"#));
    }

    #[test]
    fn seq_must_increase_per_shard_within_a_request() {
        let mut b = EventBatchBuilder::new(EventLimits::default());
        let text = [
            line("a", 1, 5),
            line("a", 2, 1),
            line("a", 1, 5),
            line("a", 1, 4),
            line("a", 1, 6),
        ]
        .join("\n");
        let rejected = push_ndjson(&mut b, text.as_bytes(), 1);
        assert_eq!(
            rejected
                .iter()
                .map(|r| (r.index, r.error.code))
                .collect::<Vec<_>>(),
            vec![
                (3, EventErrorCode::SeqNotIncreasing),
                (4, EventErrorCode::SeqNotIncreasing)
            ]
        );
        assert_eq!(b.finish().seqs(), &[5, 1, 6]);
        // `finish` starts a new request: the same seqs are accepted again.
        assert!(b.push_json(line("a", 1, 5).as_bytes()).is_ok());
    }

    #[test]
    fn json_arrays_are_judged_element_by_element() {
        let mut b = EventBatchBuilder::new(EventLimits::default());
        let body = format!(
            "[{}, {{\"namespace\": 1}}, {}]",
            line("a", 1, 1),
            line("a", 1, 2)
        );
        let rejected = push_json_array(&mut b, body.as_bytes()).expect("an array");
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].index, 1);
        assert_eq!(rejected[0].raw, r#"{"namespace": 1}"#);
        assert_eq!(b.finish().len(), 2);
        assert!(push_json_array(&mut b, b"{\"not\": \"an array\"}").is_err());
    }

    #[test]
    fn positions_complete_the_table_schema() {
        let mut b = EventBatchBuilder::new(EventLimits::default());
        b.push_json(line("a", 1, 1).as_bytes()).expect("valid");
        let pending = b.finish();
        let full = with_positions(
            pending.record_batch(),
            Arc::new(arrow::array::Int64Array::from(vec![42])),
        )
        .expect("schema");
        assert_eq!(full.schema(), event_schema());
        let events = events_from_batch(&full).expect("readable");
        assert_eq!(events[0].position, Some(42));
    }

    #[test]
    fn foreign_batches_need_the_exact_schema() {
        let wrong = RecordBatch::new_empty(event_schema());
        assert!(EventBatch::try_new(wrong).is_err());
        let right = RecordBatch::new_empty(pending_event_schema());
        assert!(EventBatch::try_new(right).is_ok());
    }
}
