//! `shardlake`: the command line of the shardlake lake.
//!
//! Every command takes `--warehouse DIR` (default `./shardlake-data`, or
//! `SHARDLAKE_WAREHOUSE`): the embedded default keeps a SQLite catalog and
//! the table files under that one directory.

mod demo;
mod generate;
mod ingest;
mod output;
mod query;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Map;
use shardlake_lake::{EmitterConfig, Lake};
use tracing_subscriber::EnvFilter;

use crate::generate::GenerateSpec;
use crate::output::Format;

/// shardlake: exactly-once event ingestion into an Iceberg lake, and global SQL over it.
#[derive(Debug, Parser)]
#[command(name = "shardlake", version, about)]
struct Cli {
    /// Data directory: SQLite catalog plus table files.
    #[arg(
        long,
        global = true,
        env = "SHARDLAKE_WAREHOUSE",
        default_value = "./shardlake-data"
    )]
    warehouse: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print deterministic synthetic events as NDJSON.
    Generate {
        /// Number of events.
        #[arg(long, default_value_t = 10_000)]
        events: u64,
        /// Number of shards emitting them.
        #[arg(long, default_value_t = 8)]
        shards: u32,
        /// Number of namespaces (tenants), sizes skewed.
        #[arg(long, default_value_t = 4)]
        namespaces: u32,
        /// Random seed; the same arguments always print the same events.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Ingest NDJSON events (a file, or `-` for stdin) exactly once.
    Ingest {
        /// NDJSON file, or `-` for stdin.
        input: String,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Hide the progress bar.
        #[arg(long)]
        quiet: bool,
        /// Largest batch committed as one snapshot, in events. Smaller
        /// batches let parsing and committing overlap; larger ones make
        /// fewer, bigger files.
        #[arg(long, default_value_t = 250_000)]
        batch_events: usize,
        /// Longest wait before a partial batch is committed, in milliseconds.
        #[arg(long, default_value_t = 2_000)]
        flush_ms: u64,
    },
    /// Run SQL over the `events` and `things` tables.
    Query {
        /// The SQL statement.
        sql: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Cancel the query after this many milliseconds.
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Generate, ingest, re-send duplicates and query: a tour in under a minute.
    Demo {
        /// Number of events to generate.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
    },
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SHARDLAKE_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate {
            events,
            shards,
            namespaces,
            seed,
        } => {
            let spec = GenerateSpec {
                events,
                shards,
                namespaces,
                seed,
            };
            let stdout = std::io::stdout();
            match generate::write_ndjson(&spec, stdout.lock()) {
                // `generate | head` closes the pipe early: not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => Ok(other?),
            }
        }
        Command::Ingest {
            input,
            json,
            quiet,
            batch_events,
            flush_ms,
        } => {
            let lake = Lake::open_local(&cli.warehouse).await?;
            let emitter = lake
                .emitter(EmitterConfig {
                    max_batch_events: batch_events,
                    flush_interval: Duration::from_millis(flush_ms),
                    ..EmitterConfig::default()
                })
                .await?;
            let summary = ingest::ingest(&input, &emitter, !quiet && !json).await;
            emitter.close().await?;
            let summary = summary?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer(&mut out, &summary)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "ingested {} lines in {:.2}s ({:.0} events/s): {} accepted, {} duplicates, {} rejected; {} commits",
                    summary.lines,
                    summary.seconds,
                    summary.events_per_second,
                    summary.accepted,
                    summary.duplicates,
                    summary.rejected,
                    summary.emitter.commits,
                )?;
                for r in &summary.rejected_examples {
                    writeln!(out, "  rejected line {}: {}: {}", r.index, r.code, r.error)?;
                }
            }
            Ok(())
        }
        Command::Query {
            sql,
            format,
            timeout_ms,
        } => {
            let lake = Lake::open_local(&cli.warehouse).await?;
            let result = query::run(&lake, &sql, timeout_ms.map(Duration::from_millis)).await?;
            let mut out = std::io::stdout().lock();
            let mut extra = Map::new();
            extra.insert("stats".into(), serde_json::to_value(&result.stats)?);
            output::write(&mut out, format, &result.schema, &result.batches, extra)?;
            if format == Format::Table {
                writeln!(out, "{}", result.stats.summary())?;
            }
            Ok(())
        }
        Command::Demo { events } => demo::run(&cli.warehouse, events).await,
    }
}
