//! `shardlake query`: SQL over the lake through the query engine.

use std::time::Duration;

use shardlake_lake::Lake;
use shardlake_query::{CrossShardQuery, QueryConfig, QueryResult, SqlQuery};

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

/// Runs `sql` against the lake.
pub async fn run(
    lake: &Lake,
    sql: &str,
    timeout: Option<Duration>,
    at: TimeTravel,
) -> anyhow::Result<QueryResult> {
    let engine = CrossShardQuery::open(
        lake,
        QueryConfig {
            default_timeout: timeout,
            ..QueryConfig::default()
        },
    )
    .await?;
    Ok(at.apply(engine.sql(sql)).await?)
}

/// `shardlake replay`: streams the events of `query` to stdout as NDJSON in
/// their JSON form, batch by batch (never the whole replay in memory).
pub async fn replay(
    lake: &Lake,
    at: TimeTravel,
    query: shardlake_query::ReplayQuery,
) -> anyhow::Result<()> {
    use std::io::Write;

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
