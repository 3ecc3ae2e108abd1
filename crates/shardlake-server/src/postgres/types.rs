//! Arrow values as Postgres values, and the other way for parameters.
//!
//! Result columns are described by `arrow-pg` (int8, text, timestamptz,
//! float8, numeric, ...) and encoded by [`super::encode`] (arrow-pg for
//! what it does not encode itself). The one column it cannot know is
//! `payload`: text in Arrow, JSON to a Postgres client, so it is described
//! as `json` (whose text and binary forms are both the JSON text).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema};
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, into_pg_type};
use datafusion_common::ScalarValue;
use futures::{Stream, StreamExt};
use pgwire::api::Type;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::results::FieldInfo;
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;
use shardlake_core::schema::columns;
use shardlake_query::Description;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::{encode, errors};
use crate::error::ApiError;

/// The Postgres description of `schema`'s columns, each in the format the
/// client asked for.
pub(super) fn fields(schema: &Schema, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    let fields = arrow_schema_to_pg_fields(schema, format, None)?;
    Ok(fields
        .into_iter()
        .zip(schema.fields())
        .map(|(info, field)| {
            if field.name() == columns::PAYLOAD
                && matches!(
                    field.data_type(),
                    DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
                )
            {
                FieldInfo::new(
                    info.name().to_owned(),
                    info.table_id(),
                    info.column_id(),
                    Type::JSON,
                    info.format(),
                )
            } else {
                info
            }
        })
        .collect())
}

/// The Postgres type of a parameter whose use decided `data_type`; a
/// parameter nothing decides (`SELECT $1`) is text, as Postgres infers.
pub(super) fn parameter_type(data_type: Option<&DataType>) -> PgWireResult<Type> {
    match data_type {
        None | Some(DataType::Null) => Ok(Type::TEXT),
        Some(t) => into_pg_type(t),
    }
}

/// The values bound to `portal`'s parameters, each decoded as the type the
/// client declared (or the statement's own), then cast to the type its use
/// in the query asks for.
pub(super) fn parameters<S: Clone>(
    portal: &Portal<S>,
    description: &Description,
) -> PgWireResult<Vec<ScalarValue>> {
    let declared = &portal.statement.parameter_types;
    (0..portal.parameter_len())
        .map(|i| {
            let wanted = description.parameters.get(i).cloned().flatten();
            let pg_type = match declared.get(i).cloned().flatten() {
                Some(t) if t != Type::UNKNOWN => t,
                _ => parameter_type(wanted.as_ref())?,
            };
            let value = decode(portal, i, &pg_type)?;
            match wanted {
                Some(t) if t != value.data_type() && !value.is_null() => {
                    value.cast_to(&t).map_err(|e| {
                        errors::error(
                            "22P02",
                            "invalid_query",
                            format!("parameter ${}: `{value}` is not a valid {t}: {e}", i + 1),
                        )
                    })
                }
                Some(t) if value.is_null() => ScalarValue::try_from(&t).map_err(|e| {
                    errors::error(
                        "22023",
                        "invalid_query",
                        format!("parameter ${}: {e}", i + 1),
                    )
                }),
                _ => Ok(value),
            }
        })
        .collect()
}

/// Parameter `i` of `portal` (text or binary) as a value of `pg_type`.
fn decode<S: Clone>(portal: &Portal<S>, i: usize, pg_type: &Type) -> PgWireResult<ScalarValue> {
    let utc = || Some(Arc::from("+00:00"));
    Ok(match *pg_type {
        Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, pg_type)?),
        Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(i, pg_type)?),
        Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(i, pg_type)?),
        Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, pg_type)?),
        Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(i, pg_type)?),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, pg_type)?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            ScalarValue::Utf8(portal.parameter::<String>(i, pg_type)?)
        }
        Type::JSON | Type::JSONB => ScalarValue::Utf8(
            portal
                .parameter::<serde_json::Value>(i, pg_type)?
                .map(|v| v.to_string()),
        ),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<chrono::DateTime<chrono::FixedOffset>>(i, pg_type)?
                .map(|t| t.timestamp_micros()),
            utc(),
        ),
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<chrono::NaiveDateTime>(i, pg_type)?
                .map(|t| t.and_utc().timestamp_micros()),
            None,
        ),
        Type::DATE => ScalarValue::Date32(
            portal
                .parameter::<chrono::NaiveDate>(i, pg_type)?
                .map(|d| (d - chrono::NaiveDate::default()).num_days() as i32),
        ),
        ref other => {
            return Err(errors::error(
                "0A000",
                "invalid_query",
                format!(
                    "parameter ${} has type {other}, which shardlake does not take; send it as text",
                    i + 1
                ),
            ));
        }
    })
}

/// Postgres rows of `batches` as they come, encoded per batch. Stops with
/// the cancel error as soon as `cancel` fires (dropping the batches'
/// source, which stops the query), never with a silently short result.
pub(super) fn rows<S>(
    fields: Arc<Vec<FieldInfo>>,
    batches: S,
    cancel: CancellationToken,
) -> impl Stream<Item = PgWireResult<DataRow>> + Send + 'static
where
    S: Stream<Item = Result<RecordBatch, ApiError>> + Send + 'static,
{
    let encoded = batches.flat_map(move |batch| {
        let rows = batch
            .map_err(|e| errors::from_api(&e))
            .and_then(|batch| encode::rows(&fields, batch));
        let (rows, failed) = match rows {
            Ok(rows) => (rows, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        futures::stream::iter(rows.into_iter().map(Ok).chain(failed.map(Err)))
    });
    Cancellable {
        inner: Box::pin(encoded),
        cancelled: Box::pin(cancel.cancelled_owned()),
        done: false,
    }
}

/// A stream that ends with the cancel error once its token fires.
struct Cancellable<S> {
    inner: Pin<Box<S>>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    done: bool,
}

impl<S: Stream<Item = PgWireResult<DataRow>>> Stream for Cancellable<S> {
    type Item = PgWireResult<DataRow>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.cancelled.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(errors::cancelled())));
        }
        let next = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Err(_)) | None) = &next {
            self.done = true;
        }
        next
    }
}
