//! shardlake's event model: the one event shape of the system, its Arrow
//! schema, its JSON form and the validation every event passes on its way in.
//!
//! ```
//! use shardlake_core::{EventBatchBuilder, EventLimits, push_ndjson};
//!
//! let ndjson = br#"{"namespace":"acme","shard_id":0,"seq":1,"partition_key":"Order:o-1","event_type":"thing.created","ts":"2026-01-01T00:00:00Z","payload":{"total":3}}
//! {"namespace":"acme","shard_id":0,"seq":0,"partition_key":"Order:o-1","event_type":"thing.updated","ts":"2026-01-01T00:00:01Z"}"#;
//! let mut builder = EventBatchBuilder::new(EventLimits::default());
//! let rejected = push_ndjson(&mut builder, ndjson, 1);
//! assert_eq!(rejected.len(), 1);
//! assert_eq!(rejected[0].error.code.as_str(), "invalid_seq");
//! let batch = builder.finish();
//! assert_eq!(batch.len(), 1);
//! ```

mod batch;
mod body;
mod error;
mod event;
pub mod hash;
pub mod json_id;
pub mod schema;
pub mod serde_duration;

pub use batch::{
    EventBatch, EventBatchBuilder, MAX_REJECTED_RAW_BYTES, RejectedLine, events_from_batch,
    push_ndjson, with_positions,
};
pub use body::{BodyForm, BodyParser, push_json_array};
pub use error::{ConcurrencyError, Error, ErrorKind, Result};
pub use event::{
    Event, EventError, EventErrorCode, EventLimits, JsonStr, MAX_NAMESPACE_BYTES, RawEvent,
    ValidEvent, default_idempotency_key, format_ts_micros, parse_ts_micros, rfc3339_micros,
    validate_namespace,
};
pub use schema::{event_schema, pending_event_schema};
