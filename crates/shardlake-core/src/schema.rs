//! The Arrow schema of the one event shape (README, "The event").
//!
//! Two schemas exist: [`event_schema`] is the table's (all twelve columns) and
//! [`pending_event_schema`] is what shards hand in (everything but `position`,
//! which only the committer assigns).

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Column names, in table order.
pub mod columns {
    /// Tenant; the table's identity partition.
    pub const NAMESPACE: &str = "namespace";
    /// The emitting shard.
    pub const SHARD_ID: &str = "shard_id";
    /// Per-shard sequence number, strictly increasing in emission order.
    pub const SEQ: &str = "seq";
    /// Routing key (entity, customer, saga, global, ...).
    pub const PARTITION_KEY: &str = "partition_key";
    /// Entity type, e.g. `Customer`.
    pub const ENTITY_TYPE: &str = "entity_type";
    /// Entity id.
    pub const ENTITY_ID: &str = "entity_id";
    /// Event type, e.g. `thing.created`.
    pub const EVENT_TYPE: &str = "event_type";
    /// Per-entity version.
    pub const VERSION: &str = "version";
    /// Event time, microseconds, UTC.
    pub const TS: &str = "ts";
    /// Idempotency key; defaults to `namespace:shard_id:seq`.
    pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
    /// Entity data or delta, JSON text.
    pub const PAYLOAD: &str = "payload";
    /// Global commit order within the table, stamped by the committer.
    pub const POSITION: &str = "position";
}

/// The time zone every `ts` is stored in: UTC, spelled as Iceberg's Arrow
/// mapping of `timestamptz` spells it, so table, files and scans agree exactly.
pub const TS_TIMEZONE: &str = "+00:00";

/// Arrow type of the `ts` column.
pub fn ts_data_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(TS_TIMEZONE.into()))
}

fn pending_fields() -> Vec<Field> {
    use columns::*;
    vec![
        Field::new(NAMESPACE, DataType::Utf8, false),
        Field::new(SHARD_ID, DataType::Int32, false),
        Field::new(SEQ, DataType::Int64, false),
        Field::new(PARTITION_KEY, DataType::Utf8, false),
        Field::new(ENTITY_TYPE, DataType::Utf8, true),
        Field::new(ENTITY_ID, DataType::Utf8, true),
        Field::new(EVENT_TYPE, DataType::Utf8, false),
        Field::new(VERSION, DataType::Int64, true),
        Field::new(TS, ts_data_type(), false),
        Field::new(IDEMPOTENCY_KEY, DataType::Utf8, false),
        Field::new(PAYLOAD, DataType::Utf8, true),
    ]
}

static EVENT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = pending_fields();
    fields.push(Field::new(columns::POSITION, DataType::Int64, false));
    Arc::new(Schema::new(fields))
});

static PENDING_EVENT_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| Arc::new(Schema::new(pending_fields())));

/// The table's schema: all twelve columns, `position` last.
pub fn event_schema() -> SchemaRef {
    Arc::clone(&EVENT_SCHEMA)
}

/// The schema of events not yet committed: the table's schema without `position`.
pub fn pending_event_schema() -> SchemaRef {
    Arc::clone(&PENDING_EVENT_SCHEMA)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_is_table_schema_without_position() {
        let table = event_schema();
        let pending = pending_event_schema();
        assert_eq!(table.fields().len(), 12);
        assert_eq!(pending.fields().len(), 11);
        for (a, b) in table.fields().iter().zip(pending.fields().iter()) {
            assert_eq!(a, b);
        }
        assert_eq!(table.field(11).name(), columns::POSITION);
        assert!(!table.field(11).is_nullable());
    }
}
