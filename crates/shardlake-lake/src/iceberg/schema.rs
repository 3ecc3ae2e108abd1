//! The `events` table in Iceberg terms: schema with stable field ids, identity
//! partition on `namespace`, sort order `(partition_key, position)`.

use std::sync::{Arc, LazyLock};

use iceberg::spec::{
    NestedField, NullOrder, PrimitiveType, Schema, SortDirection, SortField, SortOrder, Transform,
    Type, UnboundPartitionSpec,
};
use shardlake_core::schema::columns;

use crate::error::{Error, ErrorKind, Result};

/// Field id of each column (defined with the column names in
/// `shardlake_core::schema`, since both formats write them into data files).
pub use shardlake_core::schema::field_ids;

fn fields() -> Vec<NestedField> {
    use PrimitiveType::{Int, Long, String, Timestamptz};
    use field_ids as id;
    let p = Type::Primitive;
    vec![
        NestedField::required(id::NAMESPACE, columns::NAMESPACE, p(String)),
        NestedField::required(id::SHARD_ID, columns::SHARD_ID, p(Int)),
        NestedField::required(id::SEQ, columns::SEQ, p(Long)),
        NestedField::required(id::PARTITION_KEY, columns::PARTITION_KEY, p(String)),
        NestedField::optional(id::ENTITY_TYPE, columns::ENTITY_TYPE, p(String)),
        NestedField::optional(id::ENTITY_ID, columns::ENTITY_ID, p(String)),
        NestedField::required(id::EVENT_TYPE, columns::EVENT_TYPE, p(String)),
        NestedField::optional(id::VERSION, columns::VERSION, p(Long)),
        NestedField::required(id::TS, columns::TS, p(Timestamptz)),
        NestedField::required(id::IDEMPOTENCY_KEY, columns::IDEMPOTENCY_KEY, p(String)),
        NestedField::optional(id::PAYLOAD, columns::PAYLOAD, p(String)),
        NestedField::required(id::POSITION, columns::POSITION, p(Long)),
    ]
}

static ICEBERG_SCHEMA: LazyLock<Arc<Schema>> = LazyLock::new(|| {
    let schema = Schema::builder()
        .with_schema_id(0)
        .with_fields(fields().into_iter().map(Arc::new))
        .build()
        .unwrap_or_else(|e| unreachable!("the events schema is statically valid: {e}"));
    Arc::new(schema)
});

/// The Iceberg schema of the `events` table.
pub fn iceberg_schema() -> Arc<Schema> {
    Arc::clone(&ICEBERG_SCHEMA)
}

/// The Arrow form of [`iceberg_schema`], carrying `PARQUET:field_id` metadata
/// (what Iceberg's Parquet writer needs): built format-independently by the
/// data files both formats write, and equal to Iceberg's own conversion of
/// [`iceberg_schema`] (tested below).
pub use crate::data_file::arrow_schema_with_field_ids;

/// Identity partition on `namespace`.
pub fn partition_spec() -> Result<UnboundPartitionSpec> {
    Ok(UnboundPartitionSpec::builder()
        .with_spec_id(0)
        .add_partition_field(
            field_ids::NAMESPACE,
            columns::NAMESPACE,
            Transform::Identity,
        )?
        .build())
}

/// Files are sorted by `(partition_key, position)` inside each namespace, so a
/// key's events are contiguous (replay, key filters) and in commit order.
pub fn sort_order() -> Result<SortOrder> {
    let field = |source_id| {
        SortField::builder()
            .source_id(source_id)
            .transform(Transform::Identity)
            .direction(SortDirection::Ascending)
            .null_order(NullOrder::First)
            .build()
    };
    Ok(SortOrder::builder()
        .with_order_id(1)
        .with_sort_field(field(field_ids::PARTITION_KEY))
        .with_sort_field(field(field_ids::POSITION))
        .build(&ICEBERG_SCHEMA)?)
}

/// Refuses a table whose schema is not the events schema: a different schema
/// is a different table, and shardlake never rewrites it silently.
pub fn check_schema(actual: &Schema) -> Result<()> {
    let expected = fields();
    let mut problems = Vec::new();
    for want in &expected {
        match actual.field_by_id(want.id) {
            None => problems.push(format!("missing field {} (id {})", want.name, want.id)),
            Some(got) => {
                if got.name != want.name
                    || *got.field_type != *want.field_type
                    || got.required != want.required
                {
                    problems.push(format!(
                        "field id {}: expected {} {} {}, found {} {} {}",
                        want.id,
                        want.name,
                        want.field_type,
                        if want.required {
                            "required"
                        } else {
                            "optional"
                        },
                        got.name,
                        got.field_type,
                        if got.required { "required" } else { "optional" },
                    ));
                }
            }
        }
    }
    let extra: Vec<_> = actual
        .as_struct()
        .fields()
        .iter()
        .filter(|f| !expected.iter().any(|e| e.id == f.id))
        .map(|f| format!("unexpected field {} (id {})", f.name, f.id))
        .collect();
    problems.extend(extra);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::SchemaMismatch,
            format!(
                "the table does not have the shardlake events schema: {}",
                problems.join("; ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_form_matches_the_core_schema() {
        let ours = shardlake_core::event_schema();
        let theirs = arrow_schema_with_field_ids();
        assert_eq!(ours.fields().len(), theirs.fields().len());
        for (a, b) in ours.fields().iter().zip(theirs.fields().iter()) {
            assert_eq!(a.name(), b.name());
            assert_eq!(a.data_type(), b.data_type(), "{}", a.name());
            assert_eq!(a.is_nullable(), b.is_nullable(), "{}", a.name());
            assert!(b.metadata().contains_key("PARQUET:field_id"));
        }
    }

    #[test]
    fn arrow_form_is_icebergs_own_conversion() {
        let theirs = iceberg::arrow::schema_to_arrow_schema(&iceberg_schema()).expect("converts");
        assert_eq!(*arrow_schema_with_field_ids(), theirs);
    }

    #[test]
    fn a_different_schema_is_refused_with_details() {
        assert!(check_schema(&iceberg_schema()).is_ok());
        let mut changed = fields();
        changed[2] =
            NestedField::optional(field_ids::SEQ, "seq", Type::Primitive(PrimitiveType::Int));
        changed.push(NestedField::optional(
            99,
            "extra",
            Type::Primitive(PrimitiveType::String),
        ));
        let schema = Schema::builder()
            .with_fields(changed.into_iter().map(Arc::new))
            .build()
            .expect("valid");
        let err = check_schema(&schema).expect_err("mismatch");
        assert_eq!(err.kind(), ErrorKind::SchemaMismatch);
        assert!(err.message().contains("field id 3"), "{err}");
        assert!(err.message().contains("unexpected field extra"), "{err}");
    }
}
