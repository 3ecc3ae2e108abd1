//! Durable subscription checkpoints, in the catalog database.
//!
//! A subscription `name` handling partition `index` of `count` records the
//! position of the last event it has fully processed. Positions order every
//! key causally, so "everything at or below the checkpoint is done" is a
//! complete description of progress.
//!
//! Re-partitioning (1 -> n workers and back) must lose nothing: a worker
//! of a layout that has no checkpoint yet starts from the highest position
//! a *complete* earlier layout (every partition of it has a checkpoint) has
//! entirely processed, the minimum of its checkpoints. Events after that may
//! be seen again (projections are idempotent); none is skipped.

use crate::db::Database;
use crate::error::{Error, ErrorKind, Result};

/// Checkpoints of all subscriptions of a lake.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    db: Database,
}

fn storage(e: sqlx::Error) -> Error {
    Error::new(ErrorKind::Storage, "checkpoint store failed").with_source(e)
}

impl Checkpoints {
    pub(crate) async fn open(db: Database) -> Result<Self> {
        // `updated_at` is written from here (both backends spell it alike).
        db.create_tables(&["CREATE TABLE IF NOT EXISTS shardlake_checkpoints (
                name TEXT NOT NULL,
                partition_count BIGINT NOT NULL,
                partition_index BIGINT NOT NULL,
                position BIGINT NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (name, partition_count, partition_index)
            )"])
            .await?;
        Ok(Self { db })
    }

    /// The checkpoint of partition `index` of `count` of `name`, if any.
    pub async fn get(&self, name: &str, index: u32, count: u32) -> Result<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT position FROM shardlake_checkpoints \
             WHERE name = $1 AND partition_count = $2 AND partition_index = $3",
        )
        .bind(name)
        .bind(i64::from(count))
        .bind(i64::from(index))
        .fetch_optional(self.db.pool())
        .await
        .map_err(storage)?;
        Ok(row.map(|(p,)| p))
    }

    /// Where partition `index` of `count` of `name` resumes: its own
    /// checkpoint, else the highest position a complete earlier layout has
    /// entirely processed, else 0 (the beginning).
    pub async fn resume_position(&self, name: &str, index: u32, count: u32) -> Result<i64> {
        if let Some(own) = self.get(name, index, count).await? {
            return Ok(own);
        }
        let layouts: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT partition_count, COUNT(*), MIN(position) FROM shardlake_checkpoints \
             WHERE name = $1 GROUP BY partition_count",
        )
        .bind(name)
        .fetch_all(self.db.pool())
        .await
        .map_err(storage)?;
        Ok(layouts
            .into_iter()
            .filter(|(count, present, _)| count == present)
            .map(|(_, _, min)| min)
            .max()
            .unwrap_or(0))
    }

    /// Records that partition `index` of `count` of `name` has processed
    /// everything up to `position`. Never moves a checkpoint backwards.
    pub async fn save(&self, name: &str, index: u32, count: u32, position: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO shardlake_checkpoints \
             (name, partition_count, partition_index, position, updated_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name, partition_count, partition_index) DO UPDATE SET \
             position = CASE WHEN excluded.position > shardlake_checkpoints.position \
             THEN excluded.position ELSE shardlake_checkpoints.position END, \
             updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(i64::from(count))
        .bind(i64::from(index))
        .bind(position)
        .bind(crate::db::now_text())
        .execute(self.db.pool())
        .await
        .map_err(storage)?;
        Ok(())
    }
}
