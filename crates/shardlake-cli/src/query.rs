//! `shardlake query`: SQL over the lake through the query engine.

use std::time::Duration;

use shardlake_lake::Lake;
use shardlake_query::{CrossShardQuery, QueryConfig, QueryResult};

/// Runs `sql` against the lake.
pub async fn run(lake: &Lake, sql: &str, timeout: Option<Duration>) -> anyhow::Result<QueryResult> {
    let engine = CrossShardQuery::open(
        lake,
        QueryConfig {
            default_timeout: timeout,
            ..QueryConfig::default()
        },
    )
    .await?;
    Ok(engine.sql(sql).await?)
}

/// `shardlake replay`: streams the events of `query` to stdout as NDJSON in
/// their JSON form, batch by batch (never the whole replay in memory).
pub async fn replay(lake: &Lake, query: shardlake_query::ReplayQuery) -> anyhow::Result<()> {
    use std::io::Write;

    use futures::StreamExt;

    let engine = CrossShardQuery::open(lake, QueryConfig::default()).await?;
    let mut stream = engine.replay(query).without_cache().stream().await?;
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
