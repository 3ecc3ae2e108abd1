//! `shardlake files`: the live data files of a snapshot, for readers
//! outside shardlake. A table's directory also holds the files compaction
//! replaced (kept for time travel until expiry and cleanup remove them), so
//! `read_parquet('.../data/*/*.parquet')` can count rows twice; this list is
//! exactly what the engine reads.

use std::io::Write;

use serde_json::json;
use shardlake_lake::Lake;
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
        FilesFormat::Json => {
            let files: Vec<_> = live
                .files
                .iter()
                .zip(&locations)
                .map(|(f, location)| {
                    json!({
                        "location": location,
                        "namespace": f.namespace,
                        "rows": f.rows,
                        "bytes": f.size,
                    })
                })
                .collect();
            let doc = json!({
                "snapshot_id": live.snapshot_id.map(|id| id.to_string()),
                "files": files,
            });
            writeln!(out, "{doc}")?;
        }
        FilesFormat::Duckdb => writeln!(out, "{}", duckdb_statement(&locations))?,
    }
    Ok(())
}

/// Why compaction with these settings found nothing to do, and what would.
pub async fn why_nothing_to_compact(
    lake: &Lake,
    small_file_mib: u64,
    min_files: usize,
) -> anyhow::Result<String> {
    let engine = CrossShardQuery::open(lake, QueryConfig::default()).await?;
    let live = engine.live_files(None, None, &Scope::All).await?;
    let small = small_file_mib * 1024 * 1024;
    let mut per_namespace: std::collections::BTreeMap<&str, usize> = Default::default();
    for file in live.files.iter().filter(|f| f.size < small) {
        *per_namespace.entry(file.namespace.as_str()).or_default() += 1;
    }
    let most = per_namespace
        .iter()
        .max_by_key(|(namespace, n)| (**n, std::cmp::Reverse(**namespace)));
    Ok(match most {
        None => format!(
            "no data file is smaller than {small_file_mib} MiB ({} files in all)",
            live.files.len()
        ),
        Some((namespace, n)) if *n >= 2 => format!(
            "no namespace has {min_files} files smaller than {small_file_mib} MiB \
             (--min-files); the most is {n}, in {namespace}: --min-files {n} would compact it"
        ),
        Some(_) => format!(
            "every namespace has at most one file smaller than {small_file_mib} MiB: \
             already compact"
        ),
    })
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
