//! Record batches as Postgres `DataRow`s, column by column.
//!
//! arrow-pg encodes cell by cell: for every value it matches the Arrow type,
//! downcasts the array, clones the field's format options and, for a
//! timestamp, parses the column's time zone and formats through chrono's
//! `strftime`. A `SELECT *` of `events` spent most of its server time
//! there (docs/benchmarks.md, "Postgres wire protocol"). The columns
//! shardlake's tables are made of (int4, int8, text and json, bool,
//! timestamptz in UTC) are encoded here instead: each array downcast once
//! per batch, every row written into one buffer and split off (no
//! allocation per row), integers through `itoa`, timestamps from their
//! microseconds. The bytes are exactly arrow-pg's (a test compares them);
//! a batch with any other column, or a timestamp outside years 1-9999 (whose
//! text Postgres writes with `BC` or more digits), goes to arrow-pg whole.

use std::sync::Arc;

use arrow::array::{
    Array, AsArray, BooleanArray, Int32Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use arrow_pg::datatypes::encode_recordbatch;
use bytes::{BufMut, BytesMut};
use pgwire::api::Type;
use pgwire::api::results::{FieldFormat, FieldInfo};
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;

/// Microseconds from 1970-01-01 to 2000-01-01, Postgres's epoch.
const POSTGRES_EPOCH_US: i64 = 946_684_800_000_000;
/// The first and last microsecond of years 1 to 9999.
const FIRST_US: i64 = -62_135_596_800_000_000;
const LAST_US: i64 = 253_402_300_799_999_999;

/// `batch`'s rows for a client that was told `fields`.
pub(super) fn rows(fields: &Arc<Vec<FieldInfo>>, batch: RecordBatch) -> PgWireResult<Vec<DataRow>> {
    match columns(fields, &batch) {
        Some(columns) => Ok(encode(&columns, batch.num_rows())),
        None => encode_recordbatch(Arc::clone(fields), batch).collect(),
    }
}

/// A column this module encodes, downcast once.
enum Column<'a> {
    Int4(&'a Int32Array, FieldFormat),
    Int8(&'a Int64Array, FieldFormat),
    /// Text or JSON: the same bytes in both formats.
    Text(Texts<'a>),
    Bool(&'a BooleanArray, FieldFormat),
    /// A timestamptz in UTC, in microseconds.
    TimestampUtc(&'a TimestampMicrosecondArray, FieldFormat),
}

enum Texts<'a> {
    Utf8(&'a arrow::array::StringArray),
    Large(&'a arrow::array::LargeStringArray),
    View(&'a arrow::array::StringViewArray),
}

impl Texts<'_> {
    fn value(&self, row: usize) -> Option<&str> {
        match self {
            Texts::Utf8(a) => a.is_valid(row).then(|| a.value(row)),
            Texts::Large(a) => a.is_valid(row).then(|| a.value(row)),
            Texts::View(a) => a.is_valid(row).then(|| a.value(row)),
        }
    }
}

/// The columns of `batch` if every one can be encoded here.
fn columns<'a>(fields: &[FieldInfo], batch: &'a RecordBatch) -> Option<Vec<Column<'a>>> {
    if fields.len() != batch.num_columns() {
        return None;
    }
    fields
        .iter()
        .zip(batch.columns())
        .map(|(field, array)| {
            let format = field.format();
            let pg = field.datatype();
            Some(match (array.data_type(), pg) {
                (DataType::Int32, &Type::INT4) => {
                    Column::Int4(array.as_primitive::<Int32Type>(), format)
                }
                (DataType::Int64, &Type::INT8) => {
                    Column::Int8(array.as_primitive::<Int64Type>(), format)
                }
                (DataType::Boolean, &Type::BOOL) => Column::Bool(array.as_boolean(), format),
                (DataType::Utf8, &Type::TEXT | &Type::VARCHAR | &Type::JSON) => {
                    Column::Text(Texts::Utf8(array.as_string::<i32>()))
                }
                (DataType::LargeUtf8, &Type::TEXT | &Type::VARCHAR | &Type::JSON) => {
                    Column::Text(Texts::Large(array.as_string::<i64>()))
                }
                (DataType::Utf8View, &Type::TEXT | &Type::VARCHAR | &Type::JSON) => {
                    Column::Text(Texts::View(array.as_string_view()))
                }
                (DataType::Timestamp(TimeUnit::Microsecond, Some(tz)), &Type::TIMESTAMPTZ)
                    if is_utc(tz) =>
                {
                    let array = array.as_primitive::<TimestampMicrosecondType>();
                    let within = arrow::compute::min(array)
                        .zip(arrow::compute::max(array))
                        .is_none_or(|(min, max)| min >= FIRST_US && max <= LAST_US);
                    if !within {
                        return None;
                    }
                    Column::TimestampUtc(array, format)
                }
                _ => return None,
            })
        })
        .collect()
}

/// A time zone arrow-pg formats as `+00`.
fn is_utc(tz: &str) -> bool {
    matches!(tz, "+00:00" | "+00")
}

/// Every row of `columns`, written into one buffer and split off per row.
fn encode(columns: &[Column<'_>], rows: usize) -> Vec<DataRow> {
    let count = i16::try_from(columns.len()).unwrap_or(i16::MAX);
    let mut buffer = BytesMut::with_capacity(rows * columns.len() * 16);
    let mut out = Vec::with_capacity(rows);
    let mut digits = itoa::Buffer::new();
    for row in 0..rows {
        for column in columns {
            match column {
                Column::Int4(a, format) => match a.is_valid(row) {
                    false => buffer.put_i32(-1),
                    true if *format == FieldFormat::Binary => {
                        buffer.put_i32(4);
                        buffer.put_i32(a.value(row));
                    }
                    true => put_bytes(&mut buffer, digits.format(a.value(row)).as_bytes()),
                },
                Column::Int8(a, format) => match a.is_valid(row) {
                    false => buffer.put_i32(-1),
                    true if *format == FieldFormat::Binary => {
                        buffer.put_i32(8);
                        buffer.put_i64(a.value(row));
                    }
                    true => put_bytes(&mut buffer, digits.format(a.value(row)).as_bytes()),
                },
                Column::Text(texts) => match texts.value(row) {
                    None => buffer.put_i32(-1),
                    Some(text) => put_bytes(&mut buffer, text.as_bytes()),
                },
                Column::Bool(a, format) => match a.is_valid(row) {
                    false => buffer.put_i32(-1),
                    true if *format == FieldFormat::Binary => {
                        buffer.put_i32(1);
                        buffer.put_u8(u8::from(a.value(row)));
                    }
                    true => put_bytes(&mut buffer, if a.value(row) { b"t" } else { b"f" }),
                },
                Column::TimestampUtc(a, format) => match a.is_valid(row) {
                    false => buffer.put_i32(-1),
                    true if *format == FieldFormat::Binary => {
                        buffer.put_i32(8);
                        buffer.put_i64(a.value(row) - POSTGRES_EPOCH_US);
                    }
                    true => {
                        let text = timestamptz_text(a.value(row));
                        put_bytes(&mut buffer, &text);
                    }
                },
            }
        }
        out.push(DataRow::new(buffer.split(), count));
    }
    out
}

/// A value: its length, then its bytes.
fn put_bytes(buffer: &mut BytesMut, bytes: &[u8]) {
    buffer.put_i32(i32::try_from(bytes.len()).unwrap_or(i32::MAX));
    buffer.put_slice(bytes);
}

/// `YYYY-MM-DD HH:MM:SS.ffffff+00` for `micros` since 1970 in UTC (years 1
/// to 9999), as Postgres's ISO DateStyle writes a timestamptz.
fn timestamptz_text(micros: i64) -> [u8; 29] {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let mut out = *b"0000-00-00 00:00:00.000000+00";
    let mut put = |at: usize, width: usize, mut value: i64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    put(20, 6, fraction);
    out
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, Float64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use pgwire::api::portal::Format;

    use super::*;

    /// A batch with every kind of column `events` has, NULLs, and
    /// timestamps across the epochs, leap days and the ends of the range.
    fn batch(timestamps: Vec<Option<i64>>) -> RecordBatch {
        let n = timestamps.len();
        let text: Vec<Option<String>> = (0..n)
            .map(|i| (i % 3 != 1).then(|| format!("ns-{i} é \"q\"")))
            .collect();
        let schema = Schema::new(vec![
            Field::new("namespace", DataType::Utf8, true),
            Field::new("shard_id", DataType::Int32, true),
            Field::new("seq", DataType::Int64, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
            Field::new("payload", DataType::Utf8, true),
            Field::new("empty", DataType::Utf8View, true),
        ]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(text.clone())),
            Arc::new(Int32Array::from(
                (0..n)
                    .map(|i| (i % 4 != 2).then_some([i32::MIN, -1, 0, i32::MAX][i % 4]))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                (0..n)
                    .map(|i| (i % 5 != 3).then_some([i64::MIN, -7, 0, 42, i64::MAX][i % 5]))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(BooleanArray::from(
                (0..n)
                    .map(|i| (i % 3 != 0).then_some(i % 2 == 0))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMicrosecondArray::from(timestamps).with_timezone("+00:00")),
            Arc::new(StringArray::from(
                (0..n)
                    .map(|i| (i % 2 == 0).then(|| format!(r#"{{"k": {i}}}"#)))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(arrow::array::StringViewArray::from(
                (0..n)
                    .map(|i| (i % 2 == 1).then_some(""))
                    .collect::<Vec<_>>(),
            )),
        ];
        RecordBatch::try_new(Arc::new(schema), columns).expect("batch")
    }

    fn timestamps() -> Vec<Option<i64>> {
        vec![
            Some(0),
            None,
            Some(1_767_225_600_684_000), // 2026-01-01 00:00:00.684
            Some(-1),                    // 1969-12-31 23:59:59.999999
            Some(951_782_400_000_001),   // 2000-02-29 00:00:00.000001
            Some(POSTGRES_EPOCH_US - 123_456_789), // before Postgres's epoch
            Some(FIRST_US),
            Some(LAST_US),
            Some(4_102_444_799_999_999),  // 2099-12-31 23:59:59.999999
            Some(-2_208_988_800_000_000), // 1900-01-01
        ]
    }

    #[test]
    fn the_same_bytes_as_arrow_pg_in_text_and_binary() {
        let batch = batch(timestamps());
        for format in [Format::UnifiedText, Format::UnifiedBinary] {
            let mut fields =
                super::super::types::fields(batch.schema().as_ref(), &format).expect("fields");
            // `payload` is json, as types::fields says for events'.
            fields[5] =
                FieldInfo::new("payload".into(), None, None, Type::JSON, fields[5].format());
            let fields = Arc::new(fields);
            assert!(columns(&fields, &batch).is_some(), "all columns are ours");
            let ours = rows(&fields, batch.clone()).expect("ours");
            let theirs: Vec<DataRow> = encode_recordbatch(Arc::clone(&fields), batch.clone())
                .collect::<PgWireResult<_>>()
                .expect("arrow-pg");
            assert_eq!(ours.len(), theirs.len());
            for (row, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!(a, b, "{format:?}: row {row} differs");
            }
        }
    }

    #[test]
    fn other_columns_and_far_timestamps_go_to_arrow_pg() {
        // A year past 9999: Postgres writes it with five digits.
        let far = batch(vec![Some(LAST_US + 1)]);
        let fields = Arc::new(
            super::super::types::fields(far.schema().as_ref(), &Format::UnifiedText)
                .expect("fields"),
        );
        assert!(columns(&fields, &far).is_none());
        assert_eq!(rows(&fields, far).expect("rows").len(), 1);
        // A float column.
        let floats = RecordBatch::try_from_iter([(
            "mean",
            Arc::new(Float64Array::from(vec![0.1, 2.5])) as ArrayRef,
        )])
        .expect("batch");
        let fields = Arc::new(
            super::super::types::fields(floats.schema().as_ref(), &Format::UnifiedText)
                .expect("fields"),
        );
        assert!(columns(&fields, &floats).is_none());
        assert_eq!(rows(&fields, floats).expect("rows").len(), 2);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(&timestamptz_text(-1), b"1969-12-31 23:59:59.999999+00");
    }
}
