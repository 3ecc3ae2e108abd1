//! `shardlake query`: SQL over the lake through the query engine.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use shardlake_lake::Lake;
use shardlake_query::distributed::ClusterConfig;
use shardlake_query::{CrossShardQuery, QueryConfig, SqlQuery};

use crate::output;

/// Which snapshot a command reads: `--snapshot` or `--as-of`, else the
/// current one.
#[derive(Debug, Clone, Copy, Default)]
pub enum TimeTravel {
    /// The current snapshot.
    #[default]
    Now,
    /// A retained snapshot by id.
    Snapshot(i64),
    /// The snapshot current at this time.
    AsOf(chrono::DateTime<chrono::Utc>),
}

impl TimeTravel {
    /// From the flags (clap refuses both at once).
    pub fn new(snapshot: Option<i64>, as_of: Option<&str>) -> anyhow::Result<Self> {
        Ok(match (snapshot, as_of) {
            (Some(id), _) => Self::Snapshot(id),
            (None, Some(at)) => Self::AsOf(
                chrono::DateTime::parse_from_rfc3339(at)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "--as-of {at:?} is not an RFC 3339 time (2026-12-01T10:00:00Z): {e}"
                        )
                    })?
                    .with_timezone(&chrono::Utc),
            ),
            (None, None) => Self::Now,
        })
    }

    fn apply(self, query: SqlQuery) -> SqlQuery {
        match self {
            Self::Now => query,
            Self::Snapshot(id) => query.at_snapshot(id),
            Self::AsOf(at) => query.as_of(at),
        }
    }
}

/// Runs statements against the lake and writes their results: what
/// `shardlake query` does with an argument, a file, stdin or a REPL.
pub struct Runner {
    engine: CrossShardQuery,
    at: TimeTravel,
    output: output::Options,
}

/// `query` as a coordinator: the workers its large queries run on.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// A query worker (`shardlake worker`) to run large queries on; repeat
    /// for several.
    #[arg(long = "worker", value_name = "URL")]
    workers: Vec<url::Url>,
    /// Run on the workers only queries whose scans read at least this many
    /// bytes; 0: every query that reads files.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    min_scan_bytes: u64,
    /// The cluster secret the workers demand.
    #[arg(long, env = "SHARDLAKE_DISTRIBUTED__SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
}

impl ClusterArgs {
    /// The engine's cluster settings, checked as the server checks its own.
    pub fn config(self) -> anyhow::Result<ClusterConfig> {
        let settings = shardlake_server::DistributedSettings {
            workers: self.workers,
            min_scan_bytes: self.min_scan_bytes,
            secret: self.cluster_secret,
            ..Default::default()
        };
        settings.check().map_err(anyhow::Error::msg)?;
        Ok(settings.cluster())
    }
}

impl Runner {
    /// A runner over `lake`; `timeout` cancels each statement; `cluster`
    /// names the workers large queries run on.
    pub async fn open(
        lake: &Lake,
        timeout: Option<Duration>,
        at: TimeTravel,
        output: output::Options,
        cluster: ClusterConfig,
    ) -> anyhow::Result<Self> {
        let engine = CrossShardQuery::open(
            lake,
            QueryConfig {
                default_timeout: timeout,
                cluster,
                ..QueryConfig::default()
            },
        )
        .await?;
        Ok(Self { engine, at, output })
    }

    /// Runs every statement of `sql` in order, stopping at the first error.
    pub async fn run_script(&self, sql: &str, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
        let statements = shardlake_query::split_statements(sql)?;
        if statements.is_empty() {
            anyhow::bail!("no SQL statement given");
        }
        for statement in statements {
            let mut stream = self.at.apply(self.engine.sql(statement)).stream().await?;
            output::write_stream(out, &self.output, &mut stream).await?;
            out.flush()?;
        }
        Ok(())
    }
}

/// The SQL to run: the argument (`-` for stdin), else `--file`, else stdin
/// unless it is a terminal (`None`: open the REPL).
pub fn read_sql(argument: Option<String>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    use std::io::{IsTerminal, Read};
    let read_stdin = || -> anyhow::Result<Option<String>> {
        let mut sql = String::new();
        std::io::stdin()
            .read_to_string(&mut sql)
            .context("reading SQL from stdin")?;
        Ok(Some(sql))
    };
    match (argument, file) {
        (Some(sql), _) if sql == "-" => read_stdin(),
        (Some(sql), _) => Ok(Some(sql)),
        (None, Some(path)) => {
            Ok(Some(std::fs::read_to_string(path).with_context(|| {
                format!("cannot read SQL from {}", path.display())
            })?))
        }
        (None, None) if std::io::stdin().is_terminal() => Ok(None),
        (None, None) => read_stdin(),
    }
}

/// An interactive session: statements end with `;` and may span lines;
/// `\dt` (or `.tables`) lists the tables, `\d NAME` (or `.schema NAME`)
/// describes one, `\q` (or `.quit`, Ctrl-D) leaves, Ctrl-C drops the
/// statement being typed. History is kept in `~/.shardlake_history`.
pub async fn repl(runner: &Runner, lake: &Lake) -> anyhow::Result<()> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME")
        .map(|home| std::path::PathBuf::from(home).join(".shardlake_history"));
    if let Some(path) = &history {
        // No history yet is normal.
        let _ = editor.load_history(path);
    }
    println!(
        "shardlake {}: SQL over the {} lake at {}.\nEnd statements with ;   \\dt tables   \\d NAME columns   \\q quit",
        env!("CARGO_PKG_VERSION"),
        lake.format(),
        lake.warehouse().data_dir().display()
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "shardlake> "
        } else {
            "      ...> "
        };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        // What history keeps: the line typed, or the whole statement.
        let mut entry = None;
        let sql = if buffer.is_empty() {
            match meta_command(line.trim()) {
                Some(Meta::Quit) => break,
                Some(Meta::Sql(sql)) => {
                    entry = Some(line.trim().to_owned());
                    sql
                }
                None => {
                    buffer = line;
                    if !shardlake_query::is_complete(&buffer) {
                        buffer.push('\n');
                        continue;
                    }
                    std::mem::take(&mut buffer)
                }
            }
        } else {
            buffer.push_str(&line);
            if !shardlake_query::is_complete(&buffer) {
                buffer.push('\n');
                continue;
            }
            std::mem::take(&mut buffer)
        };
        if sql.trim().is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(entry.as_deref().unwrap_or(sql.trim()));
        let mut out = std::io::stdout();
        if let Err(e) = runner.run_script(&sql, &mut out).await {
            eprintln!("error: {}", crate::errors::describe(&e));
        }
    }
    if let Some(path) = &history
        && let Err(e) = editor.save_history(path)
    {
        eprintln!(
            "warning: could not save the history to {}: {e}",
            path.display()
        );
    }
    Ok(())
}

enum Meta {
    Quit,
    Sql(String),
}

/// The REPL's backslash and dot commands.
fn meta_command(line: &str) -> Option<Meta> {
    let (command, argument) = line
        .split_once(char::is_whitespace)
        .map_or((line, ""), |(c, a)| (c, a.trim().trim_end_matches(';')));
    Some(match command {
        "\\q" | ".quit" | ".exit" | "quit" | "exit" => Meta::Quit,
        "\\dt" | ".tables" => Meta::Sql("SHOW TABLES".to_owned()),
        "\\d" | ".schema" if argument.is_empty() => Meta::Sql("SHOW TABLES".to_owned()),
        "\\d" | ".schema" => Meta::Sql(format!("DESCRIBE {argument}")),
        _ => return None,
    })
}

/// `shardlake replay`: streams the events of `query` to stdout as NDJSON in
/// their JSON form, batch by batch (never the whole replay in memory).
pub async fn replay(
    lake: &Lake,
    at: TimeTravel,
    query: shardlake_query::ReplayQuery,
) -> anyhow::Result<()> {
    use futures::StreamExt;

    let engine = CrossShardQuery::open(lake, QueryConfig::default()).await?;
    let mut stream = at
        .apply(engine.replay(query).without_cache())
        .stream()
        .await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut line = Vec::with_capacity(512);
    while let Some(batch) = stream.next().await {
        for event in shardlake_core::events_from_batch(&batch?)? {
            line.clear();
            serde_json::to_writer(&mut line, &event)?;
            line.push(b'\n');
            match out.write_all(&line) {
                // `replay | head` closes the pipe early: not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                other => other?,
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
