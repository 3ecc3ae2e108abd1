//! `shardlake-bench storage`: the same ingest and queries on every
//! (format, store) pair, in one run: Iceberg and plain Parquet, on local
//! disk and on S3 (moto's server on loopback, from `.venv-test/`).
//!
//! The reference for each query is plain DataFusion (a `ListingTable` over
//! the same files, through the same object store), so a ratio says what
//! shardlake adds or saves on that store, and the S3/local ratio what the
//! store costs. moto is a Python server: its figures are an upper bound on
//! request overhead, not a prediction of AWS S3 or MinIO.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use shardlake_lake::{EmitterConfig, Lake, ObjectStorageConfig, TableFormat};
use shardlake_query::{CrossShardQuery, QueryConfig};

use crate::{events, listing_context, side_by_side};

/// The query set: metadata-only, pruned, and full scans.
const QUERIES: [(&str, &str); 4] = [
    ("count", "SELECT count(*) FROM events"),
    (
        "one_namespace",
        "SELECT count(DISTINCT partition_key) FROM events WHERE namespace = 'tenant-3'",
    ),
    (
        "by_namespace",
        "SELECT namespace, count(*), max(seq) FROM events GROUP BY namespace",
    ),
    (
        "top_keys",
        "SELECT partition_key, count(*) AS n FROM events GROUP BY partition_key ORDER BY n DESC LIMIT 10",
    ),
];

#[derive(Serialize)]
struct Setup {
    format: String,
    store: String,
    ingest_s: f64,
    events_per_s: f64,
    files: usize,
    /// (shardlake ms, ListingTable ms) per query, with the emitter still
    /// open in this process, as in `shardlake serve`.
    with_writer: BTreeMap<String, (f64, f64)>,
    /// The same once the emitter closed, as for `shardlake query` next to
    /// a server in another process.
    reader_only: BTreeMap<String, (f64, f64)>,
}

/// Runs the comparison; prints one JSON document and a markdown table.
pub async fn run(events_total: usize, batch: usize, runs: usize) -> anyhow::Result<()> {
    let bucket = shardlake_testkit::moto().bucket().await;
    let all = events(events_total, 0);
    let mut setups = Vec::new();
    for format in [TableFormat::Iceberg, TableFormat::Parquet] {
        for store in ["local", "s3"] {
            let dir = tempfile::tempdir()?;
            let storage = match store {
                "s3" => bucket.storage(&format!("{format}")),
                _ => ObjectStorageConfig::default(),
            };
            let lake = Lake::open_with(dir.path(), &storage, format).await?;
            let emitter = lake.emitter(EmitterConfig::default()).await?;
            let started = Instant::now();
            for chunk in all.chunks(batch) {
                let ack = emitter.emit(chunk).await?;
                anyhow::ensure!(ack.accepted == chunk.len(), "lost events");
            }
            emitter.flush().await?;
            let ingest_s = started.elapsed().as_secs_f64();
            let files = lake.data_files().await?.len();
            let engine = CrossShardQuery::open(&lake, QueryConfig::default()).await?;
            let listing = listing_context(&lake).await?;
            let mut with_writer = BTreeMap::new();
            for (name, sql) in QUERIES {
                let (ours, theirs, _, _) = side_by_side(&engine, &listing, sql, runs).await?;
                with_writer.insert(name.to_owned(), (ours, theirs));
            }
            emitter.close().await?;
            let mut reader_only = BTreeMap::new();
            for (name, sql) in QUERIES {
                let (ours, theirs, _, _) = side_by_side(&engine, &listing, sql, runs).await?;
                reader_only.insert(name.to_owned(), (ours, theirs));
            }
            eprintln!(
                "{format}/{store}: ingest {ingest_s:.2} s, {files} files, \
                 queries {with_writer:?}, reader only {reader_only:?}"
            );
            setups.push(Setup {
                format: format.to_string(),
                store: store.to_owned(),
                ingest_s,
                events_per_s: events_total as f64 / ingest_s,
                files,
                with_writer,
                reader_only,
            });
        }
    }
    println!("{}", serde_json::to_string_pretty(&setups)?);
    println!(
        "\n| format / store | ingest events/s | vs local | writer in process | {} |",
        {
            QUERIES
                .iter()
                .map(|(n, _)| format!("{n} ms (vs ListingTable)"))
                .collect::<Vec<_>>()
                .join(" | ")
        }
    );
    println!("|---|---|---|---|{}", "---|".repeat(QUERIES.len()));
    for s in &setups {
        let local = setups
            .iter()
            .find(|l| l.format == s.format && l.store == "local")
            .map_or(f64::NAN, |l| l.events_per_s);
        for (writer, queries) in [("yes", &s.with_writer), ("no", &s.reader_only)] {
            let cells: Vec<String> = QUERIES
                .iter()
                .map(|(n, _)| {
                    let (ours, theirs) = queries[*n];
                    format!("{ours:.1} ({:.2}x)", ours / theirs)
                })
                .collect();
            println!(
                "| {} / {} | {:.0} | {:.2}x | {writer} | {} |",
                s.format,
                s.store,
                s.events_per_s,
                s.events_per_s / local,
                cells.join(" | ")
            );
        }
    }
    Ok(())
}
