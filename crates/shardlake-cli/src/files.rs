//! `shardlake files`: the live data files of a snapshot, for readers
//! outside shardlake. A table's directory also holds the files compaction
//! replaced (kept for time travel until expiry and cleanup remove them), so
//! `read_parquet('.../data/*/*.parquet')` can count rows twice; this list is
//! exactly what the engine reads.

use std::io::Write;

use shardlake_lake::Lake;
use shardlake_query::format::live_files_json;
use shardlake_query::{CrossShardQuery, QueryConfig, Scope};

use crate::query::TimeTravel;

/// How the list is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FilesFormat {
    /// One path (or URL, for object storage) per line.
    Paths,
    /// `{"snapshot_id", "files": [{"location", "namespace", "rows", "bytes"}]}`.
    Json,
    /// A DuckDB statement reading exactly these files.
    Duckdb,
}

/// Prints the live files of the snapshot `at` chose, of one namespace or all.
pub async fn files(
    lake: &Lake,
    at: TimeTravel,
    namespace: Option<String>,
    format: FilesFormat,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let engine = CrossShardQuery::open(lake, QueryConfig::default()).await?;
    let scope = namespace.map_or(Scope::All, |n| Scope::namespaces([n]));
    let (snapshot_id, as_of) = match at {
        TimeTravel::Now => (None, None),
        TimeTravel::Snapshot(id) => (Some(id), None),
        TimeTravel::AsOf(t) => (None, Some(t)),
    };
    let live = engine.live_files(snapshot_id, as_of, &scope).await?;
    let locations: Vec<String> = live.files.iter().map(|f| local_path(&f.location)).collect();
    match format {
        FilesFormat::Paths => {
            for location in &locations {
                writeln!(out, "{location}")?;
            }
        }
        FilesFormat::Json => writeln!(out, "{}", live_files_json(&live, local_path))?,
        FilesFormat::Duckdb => writeln!(out, "{}", duckdb_statement(&locations))?,
    }
    Ok(())
}

/// A `file://` URL as the local path DuckDB, pyarrow and shells expect;
/// other URLs (`s3://...`) as they are.
fn local_path(location: &str) -> String {
    url::Url::parse(location)
        .ok()
        .filter(|u| u.scheme() == "file")
        .and_then(|u| u.to_file_path().ok())
        .map_or_else(|| location.to_owned(), |p| p.display().to_string())
}

/// `SELECT * FROM read_parquet([...])` over `locations`. Hive partitioning
/// stays off: `namespace` is a column of every file already.
fn duckdb_statement(locations: &[String]) -> String {
    if locations.is_empty() {
        // DuckDB refuses an empty list; an empty lake reads as no rows.
        return "SELECT NULL LIMIT 0;".to_owned();
    }
    let list: Vec<String> = locations
        .iter()
        .map(|l| format!("'{}'", l.replace('\'', "''")))
        .collect();
    format!("SELECT * FROM read_parquet([{}]);", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_become_paths_and_quotes_are_escaped() {
        assert_eq!(
            local_path("file:///tmp/a%20b/x.parquet"),
            "/tmp/a b/x.parquet"
        );
        assert_eq!(local_path("s3://bucket/x.parquet"), "s3://bucket/x.parquet");
        assert_eq!(
            duckdb_statement(&["/tmp/o'k.parquet".to_owned()]),
            "SELECT * FROM read_parquet(['/tmp/o''k.parquet']);"
        );
    }
}
