//! The sqllogictest harness: every `sql/**/*.slt` file of the repository,
//! each through a fresh connection of a [`Backend`] (the engine in process,
//! or a server over the Postgres protocol), over the fixture lake.
//!
//! Values print as DataFusion displays them (`NULL` for nulls, `(empty)`
//! for empty strings): a backend hands back cells in that form. `EXPLAIN`
//! plans print one line per row, with the warehouse path replaced by
//! `<warehouse>` and file lists collapsed to their group count and required
//! guarantees (printed in hash order) dropped, so plans are stable across
//! machines, runs and backends.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use async_trait::async_trait;
use regex::Regex;
use sqllogictest::{DBOutput, DefaultColumnType};

/// A query's answer as the harness compares it.
#[derive(Debug, Default)]
pub struct Answer {
    /// Each column's kind (integer, floating point or text).
    pub types: Vec<DefaultColumnType>,
    /// Each row's cells, displayed as DataFusion displays them.
    pub rows: Vec<Vec<String>>,
}

/// Something that runs SQL: one connection of it per `.slt` file.
#[async_trait]
pub trait Backend: Send + 'static {
    /// Runs `sql`; an error is its message (what `statement error <regex>`
    /// matches).
    async fn run(&mut self, sql: &str) -> Result<Answer, String>;
}

/// The `.slt` files of the repository (`sql/`), sorted.
pub fn slt_files() -> Vec<PathBuf> {
    fn under(dir: &Path, files: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                under(&path, files);
            } else if path.extension().is_some_and(|e| e == "slt") {
                files.push(path);
            }
        }
    }
    let dir = crate::workspace_root().join("sql");
    let mut files = Vec::new();
    under(&dir, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no .slt files under {}", dir.display());
    files
}

/// Runs `file` with connections from `connect`, `warehouse` being the path
/// plans print for the lake's root. `SHARDLAKE_TEST_SLT_COMPLETE=1`
/// rewrites the expected results with what the backend returns (review the
/// diff before committing it). Returns the failure, if any.
pub async fn run_file<B, F, Fut>(file: &Path, warehouse: &str, connect: F) -> Result<(), String>
where
    B: Backend,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = B> + Send + 'static,
{
    let connect = std::sync::Arc::new(connect);
    let warehouse = warehouse.to_owned();
    let mut runner = sqllogictest::Runner::new(move || {
        let connect = std::sync::Arc::clone(&connect);
        let warehouse = warehouse.clone();
        async move {
            Ok::<_, SltError>(Db {
                backend: connect().await,
                warehouse,
            })
        }
    });
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
            .map_err(|e| format!("{}: {e}", file.display()))
    } else {
        runner
            .run_file_async(file)
            .await
            .map_err(|e| format!("{}:\n{e}", file.display()))
    }
}

/// A cell as the harness prints it: `NULL`, `(empty)`, or the text.
pub fn cell(value: Option<&str>) -> String {
    match value {
        None => "NULL".into(),
        Some("") => "(empty)".into(),
        Some(text) => text.to_owned(),
    }
}

struct Db<B> {
    backend: B,
    warehouse: String,
}

/// A failed statement, as sqllogictest reports it.
#[derive(Debug)]
pub struct SltError(String);

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

fn is_explain(sql: &str) -> bool {
    sql.trim_start().to_ascii_uppercase().starts_with("EXPLAIN")
}

impl<B> Db<B> {
    fn normalize(&self, text: &str) -> String {
        let text = text.replace(&self.warehouse, "<warehouse>");
        let text = GUARANTEES.replace_all(&text, "");
        FILE_GROUPS
            .replace_all(&text, "file_groups={$1 groups}")
            .into_owned()
    }
}

#[async_trait]
impl<B: Backend> sqllogictest::AsyncDB for Db<B> {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        let answer = self.backend.run(sql).await.map_err(SltError)?;
        if !is_explain(sql) {
            return Ok(DBOutput::Rows {
                types: answer.types,
                rows: answer.rows,
            });
        }
        // [plan_type, plan] -> one row per plan line, the first line led
        // by its plan type.
        let mut rows = Vec::new();
        for cells in &answer.rows {
            let (Some(kind), Some(plan)) = (cells.first(), cells.get(1)) else {
                return Err(SltError(format!("an EXPLAIN row of {} cells", cells.len())));
            };
            for (i, line) in plan.lines().enumerate() {
                let line = self.normalize(line);
                rows.push(vec![if i == 0 {
                    format!("{kind} {line}")
                } else {
                    line
                }]);
            }
        }
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Text],
            rows,
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "shardlake"
    }
}
