//! `shardlake`: the command line of the shardlake lake.
//!
//! Every command takes `--warehouse DIR` (default `./shardlake-data`, or
//! `SHARDLAKE_WAREHOUSE`): the embedded default keeps a SQLite catalog and
//! the table files under that one directory. `--storage s3://bucket/prefix`
//! (with `--s3-endpoint`, `--s3-region`) puts the table files on S3.

/// mimalloc instead of the system allocator: planning and scans allocate
/// many small objects (docs/benchmarks.md, "Queries").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod demo;
mod errors;
mod files;
mod generate;
mod ingest;
mod lake_args;
mod maintain;
mod migrate;
mod output;
mod query;
mod route;
mod serve;
mod worker;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shardlake_lake::EmitterConfig;
use tracing_subscriber::EnvFilter;

use crate::generate::GenerateSpec;
use crate::lake_args::LakeArgs;
use crate::output::Format;

/// shardlake: exactly-once event ingestion into an Iceberg lake, and global SQL over it.
#[derive(Debug, Parser)]
#[command(name = "shardlake", version, about)]
struct Cli {
    #[command(flatten)]
    lake: LakeArgs,

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
    /// Run SQL over the `events` and `things` tables: the argument, a file
    /// (`-f`), or stdin; with none of them on a terminal, an interactive
    /// session. Statements: SELECT, EXPLAIN, SHOW TABLES, DESCRIBE.
    Query {
        /// SQL: one statement or several separated by `;` (`-` reads stdin).
        #[arg(conflicts_with_all = ["file", "command"])]
        sql: Option<String>,
        /// SQL, as `-c` (psql, DuckDB): the same as giving it as the argument.
        #[arg(short = 'c', long, conflicts_with = "file")]
        command: Option<String>,
        /// Read the SQL from this file.
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Rows a table shows (the rest are counted); 0 shows all.
        #[arg(long, default_value_t = 40)]
        max_rows: usize,
        /// JSON rows as arrays of values (the shape of `/v1/query`)
        /// instead of objects.
        #[arg(long)]
        json_arrays: bool,
        /// Cancel the query after this many milliseconds.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Time travel: run against this retained snapshot (see `shardlake snapshots`).
        #[arg(long, conflicts_with = "as_of")]
        snapshot: Option<i64>,
        /// Time travel: run against the snapshot current at this RFC 3339
        /// time (e.g. 2026-12-01T10:00:00Z).
        #[arg(long)]
        as_of: Option<String>,
        #[command(flatten)]
        cluster: query::ClusterArgs,
    },
    /// Generate, ingest, re-send duplicates and query: a tour in under a minute.
    Demo {
        /// Number of events to generate.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
    },
    /// Write events to stdout as NDJSON (their JSON form), in position
    /// order: a namespace, some keys, or a shard, pinned to one snapshot.
    Replay {
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Only these partition keys (repeatable).
        #[arg(long = "partition-key")]
        partition_keys: Vec<String>,
        /// Only events of this shard.
        #[arg(long)]
        shard_id: Option<i32>,
        /// Resume after this position (the last one already processed).
        #[arg(long)]
        after_position: Option<i64>,
        /// Only events with a larger seq (with --shard-id: the shard's cursor).
        #[arg(long)]
        after_seq: Option<i64>,
        /// Read this snapshot instead of the current one.
        #[arg(long, conflicts_with = "as_of")]
        snapshot: Option<i64>,
        /// Read the snapshot current at this RFC 3339 time.
        #[arg(long)]
        as_of: Option<String>,
        /// Only events committed after this snapshot (catch-up).
        #[arg(long)]
        since_snapshot: Option<i64>,
    },
    /// Rewrite each namespace's small data files into large sorted ones
    /// (one `replace` snapshot; rows, positions and watermarks unchanged).
    Compact {
        /// Files smaller than this many MiB are candidates.
        #[arg(long, default_value_t = 32)]
        small_file_mib: u64,
        /// Compact a namespace once it has at least this many small files.
        #[arg(long, default_value_t = 8)]
        min_files: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Keep the lake's cost bounded: compact small files, merge manifests,
    /// expire old snapshots and delete unreachable files, once (the server
    /// does this in the background).
    Maintain(maintain::MaintainArgs),
    /// The live data files of the current (or a given) snapshot: what an
    /// outside reader (DuckDB, pyarrow) must read to get the same answer.
    Files {
        /// Only this namespace's files.
        #[arg(long)]
        namespace: Option<String>,
        /// The files of this retained snapshot.
        #[arg(long, conflicts_with = "as_of")]
        snapshot: Option<i64>,
        /// The files of the snapshot current at this RFC 3339 time.
        #[arg(long)]
        as_of: Option<String>,
        /// Output: paths, json, or a DuckDB statement reading them.
        #[arg(long, value_enum, default_value_t = files::FilesFormat::Paths)]
        format: files::FilesFormat,
    },
    /// List the retained snapshots (what `--snapshot` and `--as-of` reach).
    Snapshots {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the shard of a key (`shard=<id>` first), then why.
    Route {
        /// The partition key.
        key: String,
        #[command(flatten)]
        topology: route::TopologyArgs,
    },
    /// Topology tools.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// Move keys between shards: plan, add-shard, remove-shard, rebalance,
    /// status, resume, rollback (see docs/operations.md).
    Migrate {
        #[command(subcommand)]
        command: migrate::MigrateCommand,
    },
    /// Shard tools.
    Shard {
        #[command(subcommand)]
        command: ShardCommand,
    },
    /// Serve the HTTP API (SQL, ingestion, tables, stats, metrics) until
    /// SIGTERM or SIGINT, then finish in-flight requests and commit.
    Serve {
        /// Configuration file (see docs/http-api.md); `SHARDLAKE_*`
        /// variables override it, flags override both.
        #[arg(long, env = "SHARDLAKE_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Also serve the Postgres wire protocol on this address (psql,
        /// drivers, BI tools); `[postgres] listen` in the configuration.
        #[arg(long)]
        pg_listen: Option<std::net::SocketAddr>,
        /// A query worker to run large queries on (repeat for several);
        /// added to `[distributed] workers`.
        #[arg(long = "worker", value_name = "URL")]
        workers: Vec<url::Url>,
    },
    /// Run a query worker: the stages of distributed queries that
    /// coordinators (`serve` or `query` with workers) send it, until
    /// SIGTERM or SIGINT (docs/scale-out.md).
    Worker {
        /// Configuration file: `[distributed]` (`listen`, `secret`),
        /// `[storage]`, `[limits] memory_limit_bytes`.
        #[arg(long, env = "SHARDLAKE_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:7001); `[distributed]
        /// listen` in the configuration.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
}

#[derive(Debug, Subcommand)]
enum TopologyCommand {
    /// How a sample of keys (one per line) spreads over the shards.
    Analyze {
        /// File with one key per line.
        #[arg(long)]
        keys: PathBuf,
        #[command(flatten)]
        topology: route::TopologyArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ShardCommand {
    /// Serve an in-memory shard over HTTP (the protocol `migrate` drives)
    /// until SIGTERM or SIGINT: for trying migrations and the runbook.
    Serve {
        /// The shard's id (its writes are emitted as this shard).
        #[arg(long)]
        id: u32,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
        /// First rebuild the state of the keys this shard owns (under the
        /// recorded topology) from the lake.
        #[arg(long)]
        hydrate: bool,
    },
}

#[tokio::main]
async fn main() {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    // `serve` lets its config file choose the warehouse unless a flag or
    // SHARDLAKE_WAREHOUSE names one.
    let warehouse_flag =
        matches.value_source("warehouse") != Some(clap::parser::ValueSource::DefaultValue);
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logs(matches!(
        cli.command,
        Command::Serve { .. } | Command::Worker { .. }
    ));
    match run(cli, warehouse_flag).await {
        Ok(()) => {}
        // `| head` closed stdout: the reader has what it wanted.
        Err(_) if errors::stdout_closed() => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {}", errors::describe(&e));
            std::process::exit(errors::exit_code(&e));
        }
    }
}

/// Logs to stderr, filtered by `SHARDLAKE_LOG` (default: `info` for the
/// server, whose request logs are its audit trail; `warn` for one-shot
/// commands). `SHARDLAKE_LOG_FORMAT=json` writes one JSON object per line.
fn init_logs(server: bool) {
    let default = if server { "info" } else { "warn" };
    let filter = match std::env::var("SHARDLAKE_LOG") {
        Ok(directives) => EnvFilter::try_new(&directives).unwrap_or_else(|e| {
            eprintln!("warning: ignoring SHARDLAKE_LOG={directives:?} ({e}); logging at {default}");
            EnvFilter::new(default)
        }),
        Err(_) => EnvFilter::new(default),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if std::env::var("SHARDLAKE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: Cli, warehouse_flag: bool) -> anyhow::Result<()> {
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
            let lake = cli.lake.open_or_create().await?;
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
                if summary.conflicting_duplicates > 0 {
                    writeln!(
                        out,
                        "  warning: {} of the duplicates differ from the event the lake stores for their (shard_id, seq): \
                         a shard reused seq numbers for other events, which were dropped (see docs/exactly-once.md)",
                        summary.conflicting_duplicates
                    )?;
                }
            }
            // Exit status 1: a script must not mistake a partly rejected
            // input for a stored one (the rest is stored, exactly once).
            if summary.rejected > 0 {
                anyhow::bail!(
                    "{} of {} lines were rejected (the others are stored; fix those lines and ingest them again)",
                    summary.rejected,
                    summary.lines
                );
            }
            Ok(())
        }
        Command::Query {
            sql,
            command,
            file,
            format,
            max_rows,
            json_arrays,
            timeout_ms,
            snapshot,
            as_of,
            cluster,
        } => {
            let at = query::TimeTravel::new(snapshot, as_of.as_deref())?;
            let sql = query::read_sql(sql.or(command), file.as_deref())?;
            let lake = cli.lake.open_existing().await?;
            let options = output::Options {
                format,
                max_rows,
                json_arrays,
            };
            let runner = query::Runner::open(
                &lake,
                timeout_ms.map(Duration::from_millis),
                at,
                options,
                cluster.config()?,
            )
            .await?;
            match sql {
                Some(sql) => {
                    let mut out = std::io::BufWriter::new(errors::Stdout::new());
                    runner.run_script(&sql, &mut out).await?;
                    out.flush()?;
                    Ok(())
                }
                None => query::repl(&runner, &lake).await,
            }
        }
        Command::Demo { events } => demo::run(&cli.lake, events).await,
        Command::Replay {
            namespace,
            partition_keys,
            shard_id,
            after_position,
            after_seq,
            snapshot,
            as_of,
            since_snapshot,
        } => {
            let lake = cli.lake.open_existing().await?;
            let at = query::TimeTravel::new(None, as_of.as_deref())?;
            query::replay(
                &lake,
                at,
                shardlake_query::ReplayQuery {
                    namespace,
                    partition_keys,
                    shard_id,
                    after_position,
                    after_seq,
                    snapshot_id: snapshot,
                    since_snapshot,
                    ..Default::default()
                },
            )
            .await
        }
        Command::Compact {
            small_file_mib,
            min_files,
            json,
        } => {
            let lake = cli.lake.open_existing().await?;
            let report = lake
                .compact(&shardlake_lake::CompactionConfig {
                    small_file_bytes: small_file_mib * 1024 * 1024,
                    min_small_files: min_files,
                    ..Default::default()
                })
                .await?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer(&mut out, &report)?;
                writeln!(out)?;
            } else if let Some(why) = &report.skipped {
                writeln!(out, "nothing compacted: {why}")?;
            } else if report.snapshot_id.is_none() {
                let why =
                    maintain::why_nothing_to_compact(&lake, small_file_mib, min_files).await?;
                writeln!(out, "nothing to compact: {why}")?;
            } else {
                writeln!(
                    out,
                    "compacted {} namespaces: {} files ({:.1} MB) -> {} files ({:.1} MB), {} rows; snapshot {}",
                    report.namespaces,
                    report.files_removed,
                    report.bytes_removed as f64 / 1e6,
                    report.files_added,
                    report.bytes_added as f64 / 1e6,
                    report.rows,
                    report.snapshot_id.unwrap_or_default(),
                )?;
            }
            Ok(())
        }
        Command::Maintain(args) => {
            let lake = cli.lake.open_existing().await?;
            maintain::maintain(&lake, &args).await
        }
        Command::Files {
            namespace,
            snapshot,
            as_of,
            format,
        } => {
            let at = query::TimeTravel::new(snapshot, as_of.as_deref())?;
            let lake = cli.lake.open_existing().await?;
            let mut out = errors::Stdout::new();
            files::files(&lake, at, namespace, format, &mut out).await
        }
        Command::Snapshots { json } => {
            let lake = cli.lake.open_existing().await?;
            maintain::snapshots(&lake, json).await
        }
        Command::Route { key, topology } => {
            route::route(&key, &topology, &mut std::io::stdout().lock())
        }
        Command::Topology {
            command:
                TopologyCommand::Analyze {
                    keys,
                    topology,
                    json,
                },
        } => route::analyze(&keys, &topology, json, &mut std::io::stdout().lock()),
        Command::Migrate { command } => migrate::run(&cli.lake, command).await,
        Command::Shard {
            command:
                ShardCommand::Serve {
                    id,
                    listen,
                    hydrate,
                },
        } => migrate::serve_shard(&cli.lake, id, listen, hydrate).await,
        Command::Serve {
            config,
            listen,
            pg_listen,
            workers,
        } => {
            serve::run(
                config.as_deref(),
                serve::Flags {
                    listen,
                    pg_listen,
                    workers,
                },
                warehouse_flag.then_some(cli.lake.warehouse.clone()),
                &cli.lake,
            )
            .await
        }
        Command::Worker { config, listen } => {
            worker::run(config.as_deref(), listen, &cli.lake, warehouse_flag).await
        }
    }
}
