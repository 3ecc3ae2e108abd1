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
