//! The sqllogictest harness: every `sql/**/*.slt` file runs in its own engine
//! (an isolated session) over the fixture lake.
//!
//! Values print as DataFusion displays them (`NULL` for nulls, `(empty)` for
//! empty strings). `EXPLAIN` plans print one line per row, with the
//! warehouse path replaced by `<warehouse>` and file lists collapsed to
//! their group count and required guarantees (printed in hash order)
//! dropped, so plans are stable across machines and runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use regex::Regex;
use shardlake_lake::TableFormat;
use shardlake_query::{CrossShardQuery, QueryConfig};
use sqllogictest::{DBOutput, DefaultColumnType};

use crate::fixture::Fixture;

struct LakeDb {
    engine: CrossShardQuery,
    warehouse: String,
}

#[derive(Debug)]
struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SltError {}

// DataFusion prints required guarantees from a hash map: order varies.
static GUARANTEES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r", required_guarantees=\[[^\]]*\]").expect("regex"));

static FILE_GROUPS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"file_groups=\{(\d+) groups?: \[.*?\]\]\}").expect("regex"));

fn cell(array: &dyn Array, formatter: &ArrayFormatter<'_>, row: usize) -> String {
    if array.is_null(row) {
        return "NULL".into();
    }
    let text = formatter.value(row).to_string();
    if text.is_empty() {
        "(empty)".into()
    } else {
        text
    }
}

fn is_explain(sql: &str) -> bool {
    sql.trim_start().to_ascii_uppercase().starts_with("EXPLAIN")
}

fn column_type(t: &DataType) -> DefaultColumnType {
    if t.is_integer() {
        DefaultColumnType::Integer
    } else if t.is_floating() || matches!(t, DataType::Decimal128(..)) {
        DefaultColumnType::FloatingPoint
    } else {
        DefaultColumnType::Text
    }
}

impl LakeDb {
    fn normalize(&self, text: &str) -> String {
        let text = text.replace(&self.warehouse, "<warehouse>");
        let text = GUARANTEES.replace_all(&text, "");
        FILE_GROUPS
            .replace_all(&text, "file_groups={$1 groups}")
            .into_owned()
    }

    fn rows(&self, sql: &str, batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, SltError> {
        let options = FormatOptions::default();
        let explain = is_explain(sql);
        let mut rows = Vec::new();
        for batch in batches {
            let formatters = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SltError(e.to_string()))?;
            for r in 0..batch.num_rows() {
                let cells: Vec<String> = batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| cell(c.as_ref(), f, r))
                    .collect();
                if explain {
                    // [plan_type, plan] -> one row per plan line, the first
                    // line led by its plan type.
                    for (i, line) in cells[1].lines().enumerate() {
                        let line = self.normalize(line);
                        rows.push(vec![if i == 0 {
                            format!("{} {line}", cells[0])
                        } else {
                            line
                        }]);
                    }
                } else {
                    rows.push(cells);
                }
            }
        }
        Ok(rows)
    }
}

#[async_trait]
impl sqllogictest::AsyncDB for LakeDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        let result = self
            .engine
            .sql(sql)
            .await
            .map_err(|e| SltError(e.to_string()))?;
        let types = if is_explain(sql) {
            vec![DefaultColumnType::Text]
        } else {
            result
                .schema
                .fields()
                .iter()
                .map(|f| column_type(f.data_type()))
                .collect()
        };
        Ok(DBOutput::Rows {
            types,
            rows: self.rows(sql, &result.batches)?,
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "shardlake"
    }
}

fn slt_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(slt_files(&path));
        } else if path.extension().is_some_and(|e| e == "slt") {
            files.push(path);
        }
    }
    files.sort();
    files
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

async fn run_suite(fixture: Fixture) {
    let fixture = Arc::new(fixture);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql");
    let files = slt_files(&dir);
    assert!(!files.is_empty(), "no .slt files under {}", dir.display());
    // Plans print files by their path inside the store.
    let root = fixture.lake.warehouse().root().as_str().to_owned();
    let warehouse = fixture
        .lake
        .warehouse()
        .object_path(&root)
        .expect("root inside the store")
        .to_string();
    let mut failures = Vec::new();
    for file in &files {
        let engine = CrossShardQuery::open(
            &fixture.lake,
            QueryConfig {
                target_partitions: 2,
                ..QueryConfig::default()
            },
        )
        .await
        .expect("engine");
        let warehouse = warehouse.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let db = LakeDb {
                engine: engine.clone(),
                warehouse: warehouse.clone(),
            };
            async move { Ok::<_, SltError>(db) }
        });
        // SHARDLAKE_TEST_SLT_COMPLETE=1 rewrites the expected results with what
        // the engine returns (review the diff before committing it).
        if std::env::var_os("SHARDLAKE_TEST_SLT_COMPLETE").is_some() {
            runner
                .update_test_file(
                    file,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .expect("complete");
        } else if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}:\n{e}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
