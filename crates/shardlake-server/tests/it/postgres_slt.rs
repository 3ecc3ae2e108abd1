//! The sqllogictest suite (`sql/**/*.slt`) once more, through the Postgres
//! wire protocol: a server over the fixture lake (the same commits as the
//! engine's suite, so plans print the same), one tokio-postgres connection
//! per file. Values come back in binary, are decoded to the Arrow type they
//! came from and printed as DataFusion prints them, so the files' expected
//! results hold unchanged; an error is `code: message`, as the engine
//! prints its own, the code from the error's detail.

use arrow::array::{Array, Date32Array, Float32Array, Float64Array, TimestampMicrosecondArray};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use shardlake_lake::{Lake, ObjectStorageConfig, TableFormat};
use shardlake_testkit::slt::{self, Answer, Backend};
use sqllogictest::DefaultColumnType;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls};

use crate::support::TestServer;

/// Microseconds from 1970-01-01 to 2000-01-01, Postgres's epoch.
const POSTGRES_EPOCH_US: i64 = 946_684_800_000_000;

/// A value as the server sent it, whatever its type.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

struct Postgres(Client);

fn be<const N: usize>(raw: &[u8]) -> Result<[u8; N], String> {
    raw.try_into()
        .map_err(|_| format!("{} bytes where {N} were expected", raw.len()))
}

/// `array`'s one value as DataFusion displays it.
fn displayed(array: &dyn Array) -> Result<String, String> {
    let formatter =
        ArrayFormatter::try_new(array, &FormatOptions::default()).map_err(|e| e.to_string())?;
    Ok(formatter.value(0).to_string())
}

/// A binary `numeric` as text with its display scale (what DataFusion
/// prints for the Decimal128 it came from).
fn numeric(raw: &[u8]) -> Result<String, String> {
    let word = |i: usize| -> Result<i16, String> {
        Ok(i16::from_be_bytes(be(raw
            .get(i..i + 2)
            .ok_or("short numeric")?)?))
    };
    let (ndigits, weight, sign, dscale) = (word(0)?, word(2)?, word(4)? as u16, word(6)?);
    if sign == 0xC000 {
        return Ok("NaN".into());
    }
    let digits: Vec<i16> = (0..ndigits as usize)
        .map(|i| word(8 + 2 * i))
        .collect::<Result<_, _>>()?;
    // Base-10000 digits: the integer part is digits[0..=weight].
    let mut integer = String::new();
    for i in 0..=weight.max(0) as usize {
        let d = if (weight as i64) < 0 {
            0
        } else {
            *digits.get(i).unwrap_or(&0)
        };
        if integer.is_empty() {
            integer = d.to_string();
        } else {
            integer.push_str(&format!("{d:04}"));
        }
    }
    let mut fraction = String::new();
    let first_fraction = (weight as i64 + 1).max(0) as usize;
    let leading_zero_groups = (-(weight as i64) - 1).max(0) as usize;
    fraction.push_str(&"0000".repeat(leading_zero_groups));
    for d in digits.iter().skip(first_fraction) {
        fraction.push_str(&format!("{d:04}"));
    }
    let scale = dscale.max(0) as usize;
    fraction.truncate(scale);
    while fraction.len() < scale {
        fraction.push('0');
    }
    let sign = if sign == 0x4000 { "-" } else { "" };
    Ok(match scale {
        0 => format!("{sign}{integer}"),
        _ => format!("{sign}{integer}.{fraction}"),
    })
}

/// A binary value of `pg_type` as DataFusion displays it.
fn cell(pg_type: &Type, raw: &[u8]) -> Result<String, String> {
    Ok(match *pg_type {
        Type::BOOL => (raw == [1]).to_string(),
        Type::INT2 => i16::from_be_bytes(be(raw)?).to_string(),
        Type::INT4 => i32::from_be_bytes(be(raw)?).to_string(),
        Type::INT8 => i64::from_be_bytes(be(raw)?).to_string(),
        Type::FLOAT4 => displayed(&Float32Array::from(vec![f32::from_be_bytes(be(raw)?)]))?,
        Type::FLOAT8 => displayed(&Float64Array::from(vec![f64::from_be_bytes(be(raw)?)]))?,
        Type::NUMERIC => numeric(raw)?,
        Type::TIMESTAMPTZ => {
            let micros = i64::from_be_bytes(be(raw)?) + POSTGRES_EPOCH_US;
            displayed(&TimestampMicrosecondArray::from(vec![micros]).with_timezone("+00:00"))?
        }
        Type::TIMESTAMP => {
            let micros = i64::from_be_bytes(be(raw)?) + POSTGRES_EPOCH_US;
            displayed(&TimestampMicrosecondArray::from(vec![micros]))?
        }
        // Days since 2000-01-01 (10 957 days after 1970-01-01).
        Type::DATE => displayed(&Date32Array::from(vec![
            i32::from_be_bytes(be(raw)?) + 10_957,
        ]))?,
        Type::TEXT | Type::VARCHAR | Type::JSON | Type::NAME | Type::BPCHAR => {
            String::from_utf8(raw.to_vec()).map_err(|e| e.to_string())?
        }
        ref other => return Err(format!("no display for Postgres type {other}")),
    })
}

fn column_type(pg_type: &Type) -> DefaultColumnType {
    match *pg_type {
        Type::INT2 | Type::INT4 | Type::INT8 => DefaultColumnType::Integer,
        Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => DefaultColumnType::FloatingPoint,
        _ => DefaultColumnType::Text,
    }
}

#[async_trait]
impl Backend for Postgres {
    async fn run(&mut self, sql: &str) -> Result<Answer, String> {
        let statement = self.0.prepare(sql).await.map_err(|e| message(&e))?;
        let rows = self
            .0
            .query(&statement, &[])
            .await
            .map_err(|e| message(&e))?;
        let columns = statement.columns();
        let mut answer = Answer {
            types: columns.iter().map(|c| column_type(c.type_())).collect(),
            rows: Vec::with_capacity(rows.len()),
        };
        for row in &rows {
            let mut cells = Vec::with_capacity(columns.len());
            for (i, column) in columns.iter().enumerate() {
                let raw: Option<Raw> = row.try_get(i).map_err(|e| e.to_string())?;
                let text = raw
                    .map(|Raw(bytes)| cell(column.type_(), &bytes))
                    .transpose()?;
                cells.push(slt::cell(text.as_deref()));
            }
            answer.rows.push(cells);
        }
        Ok(answer)
    }
}

/// `code: message`, as the engine prints an error: the code is in the
/// detail of every shardlake error over the wire.
fn message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let code = db
                .detail()
                .and_then(|d| d.strip_prefix("shardlake error code: "))
                .unwrap_or("unknown");
            format!("{code}: {}", db.message())
        }
        None => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_suite_over_postgres() {
    // The fixture lake of the engine's suite (4 commits), then a server
    // on it with the Postgres listener.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lake");
    let lake = Lake::open_with(&path, &ObjectStorageConfig::default(), TableFormat::Iceberg)
        .await
        .expect("lake");
    shardlake_testkit::commit_fixture(&lake, 4).await;
    let root = lake.warehouse().root().as_str().to_owned();
    let warehouse = lake
        .warehouse()
        .object_path(&root)
        .expect("root inside the store")
        .to_string();
    drop(lake);
    let server = TestServer::start(|c| {
        c.warehouse = path.clone();
        c.postgres.listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.query.target_partitions = 2;
    })
    .await;
    let pg = server.pg.expect("the Postgres listener is on");
    let mut failures = Vec::new();
    for file in &slt::slt_files() {
        let connect = move || async move {
            let (client, connection) = tokio_postgres::Config::new()
                .host(pg.ip().to_string())
                .port(pg.port())
                .user("slt")
                .dbname("shardlake")
                .connect(NoTls)
                .await
                .expect("connects");
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Postgres(client)
        };
        if let Err(e) = slt::run_file(file, &warehouse, connect).await {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
