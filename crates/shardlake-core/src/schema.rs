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

/// Stable field ids of the columns (Iceberg's field ids, also written into
/// every data file's Parquet schema as `PARQUET:field_id`, in either table
/// format). Never renumber: ids are how readers find columns across schema
/// versions.
pub mod field_ids {
    /// `namespace`
    pub const NAMESPACE: i32 = 1;
    /// `shard_id`
    pub const SHARD_ID: i32 = 2;
    /// `seq`
    pub const SEQ: i32 = 3;
    /// `partition_key`
    pub const PARTITION_KEY: i32 = 4;
    /// `entity_type`
    pub const ENTITY_TYPE: i32 = 5;
    /// `entity_id`
    pub const ENTITY_ID: i32 = 6;
    /// `event_type`
    pub const EVENT_TYPE: i32 = 7;
    /// `version`
    pub const VERSION: i32 = 8;
    /// `ts`
    pub const TS: i32 = 9;
    /// `idempotency_key`
    pub const IDEMPOTENCY_KEY: i32 = 10;
    /// `payload`
    pub const PAYLOAD: i32 = 11;
    /// `position`
    pub const POSITION: i32 = 12;

    /// Every column's id in table order, indexed like
    /// [`super::event_schema`]'s fields.
    pub const IN_TABLE_ORDER: [i32; 12] = [
        NAMESPACE,
        SHARD_ID,
        SEQ,
        PARTITION_KEY,
        ENTITY_TYPE,
        ENTITY_ID,
        EVENT_TYPE,
        VERSION,
        TS,
        IDEMPOTENCY_KEY,
        PAYLOAD,
        POSITION,
    ];
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

    #[test]
    fn every_column_has_its_own_field_id() {
        let ids = field_ids::IN_TABLE_ORDER;
        assert_eq!(ids.len(), event_schema().fields().len());
        // The ids the table was created with: 1..=12 in column order.
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(*id as usize, i + 1, "{}", event_schema().field(i).name());
        }
        assert_eq!(ids[11], field_ids::POSITION);
    }
}
