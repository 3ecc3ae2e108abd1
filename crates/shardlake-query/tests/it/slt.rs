//! The sqllogictest suite (`sql/**/*.slt`, harness in
//! `shardlake_testkit::slt`) through the engine in process: every file in
//! its own engine (an isolated session) over the fixture lake, on local
//! disk and S3, in both table formats. The server's tests run the same files
//! over the Postgres protocol.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use shardlake_lake::TableFormat;
use shardlake_query::{CrossShardQuery, QueryConfig};
use shardlake_testkit::slt::{self, Answer, Backend};
use sqllogictest::DefaultColumnType;

use crate::fixture::Fixture;

/// The engine, as a backend of the harness.
struct Engine(CrossShardQuery);

fn column_type(t: &DataType) -> DefaultColumnType {
    if t.is_integer() {
        DefaultColumnType::Integer
    } else if t.is_floating() || matches!(t, DataType::Decimal128(..)) {
        DefaultColumnType::FloatingPoint
    } else {
        DefaultColumnType::Text
    }
}

fn rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, String> {
    let options = FormatOptions::default();
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        for r in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| {
                        let text = (!c.is_null(r)).then(|| f.value(r).to_string());
                        slt::cell(text.as_deref())
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

async fn answer(engine: &CrossShardQuery, sql: &str) -> Result<Answer, String> {
    let result = engine.sql(sql).await.map_err(|e| e.to_string())?;
    Ok(Answer {
        types: result
            .schema
            .fields()
            .iter()
            .map(|f| column_type(f.data_type()))
            .collect(),
        rows: rows(&result.batches)?,
    })
}

#[async_trait]
impl Backend for Engine {
    async fn run(&mut self, sql: &str) -> Result<Answer, String> {
        answer(&self.0, sql).await
    }
}

/// A coordinator with workers, as a backend: every query of the suite runs
/// on the workers when it reads files, except `EXPLAIN`, whose answer is a
/// plan and so differs by design when distributed (it shows the stages:
/// `distributed::distributed_answers_and_statistics_equal_the_local_run`
/// checks that); those few are answered by a local engine over the same
/// lake so the files' plans still check the local planner.
struct Cluster {
    coordinator: CrossShardQuery,
    local: CrossShardQuery,
}

#[async_trait]
impl Backend for Cluster {
    async fn run(&mut self, sql: &str) -> Result<Answer, String> {
        let explain = sql.trim_start().to_ascii_uppercase().starts_with("EXPLAIN");
        let engine = if explain {
            &self.local
        } else {
            &self.coordinator
        };
        answer(engine, sql).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_suite() {
    run_suite(Fixture::build(4).await).await;
}

/// The same files, with the table files on S3: one suite, two stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_suite_on_s3() {
    let fixture = Fixture::on_s3(4).await;
    assert_eq!(fixture.lake.warehouse().root().scheme(), "s3");
    run_suite(fixture).await;
}

/// The same files over a plain-Parquet lake: one suite, two formats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_suite_parquet() {
    let fixture = Fixture::parquet(4).await;
    assert_eq!(fixture.lake.format(), TableFormat::Parquet);
    run_suite(fixture).await;
}

/// Both at once: plain Parquet on S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_suite_parquet_on_s3() {
    run_suite(Fixture::on_s3_as(TableFormat::Parquet, 4).await).await;
}

/// The suite through two workers (`shardlake worker`'s server on loopback
/// sockets), the table files on S3: the same answers as in process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_suite_distributed_on_s3() {
    let fixture = Arc::new(Fixture::on_s3(4).await);
    let secret = crate::distributed::SECRET;
    let a = crate::distributed::TestWorker::start(&fixture, Some(secret)).await;
    let b = crate::distributed::TestWorker::start(&fixture, Some(secret)).await;
    let mut failures = Vec::new();
    let warehouse = store_root(&fixture);
    for file in &slt::slt_files() {
        let coordinator = crate::distributed::coordinator(&fixture, &[&a, &b], secret).await;
        let local = local_engine(&fixture).await;
        let connect = move || {
            let (coordinator, local) = (coordinator.clone(), local.clone());
            async move { Cluster { coordinator, local } }
        };
        if let Err(e) = slt::run_file(file, &warehouse, connect).await {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The root of the fixture's store as plans print file paths.
fn store_root(fixture: &Fixture) -> String {
    let root = fixture.lake.warehouse().root().as_str().to_owned();
    fixture
        .lake
        .warehouse()
        .object_path(&root)
        .expect("root inside the store")
        .to_string()
}

async fn local_engine(fixture: &Fixture) -> CrossShardQuery {
    CrossShardQuery::open(
        &fixture.lake,
        QueryConfig {
            target_partitions: 2,
            ..QueryConfig::default()
        },
    )
    .await
    .expect("engine")
}

async fn run_suite(fixture: Fixture) {
    let fixture = Arc::new(fixture);
    // Plans print files by their path inside the store.
    let warehouse = store_root(&fixture);
    let mut failures = Vec::new();
    for file in &slt::slt_files() {
        let engine = local_engine(&fixture).await;
        let connect = move || {
            let engine = engine.clone();
            async move { Engine(engine) }
        };
        if let Err(e) = slt::run_file(file, &warehouse, connect).await {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
