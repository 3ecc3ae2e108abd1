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

use sqlx::SqlitePool;

use crate::error::{Error, ErrorKind, Result};

/// Checkpoints of all subscriptions of a lake.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    pool: SqlitePool,
}

fn storage(e: sqlx::Error) -> Error {
    Error::new(ErrorKind::Storage, "checkpoint store failed").with_source(e)
}

impl Checkpoints {
    pub(crate) async fn open(pool: SqlitePool) -> Result<Self> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS shardlake_checkpoints (
                name TEXT NOT NULL,
                partition_count INTEGER NOT NULL,
                partition_index INTEGER NOT NULL,
                position INTEGER NOT NULL,
                updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
                PRIMARY KEY (name, partition_count, partition_index)
            )",
        )
        .execute(&pool)
        .await
        .map_err(storage)?;
        Ok(Self { pool })
    }

    /// The checkpoint of partition `index` of `count` of `name`, if any.
    pub async fn get(&self, name: &str, index: u32, count: u32) -> Result<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT position FROM shardlake_checkpoints \
             WHERE name = ? AND partition_count = ? AND partition_index = ?",
        )
        .bind(name)
        .bind(i64::from(count))
        .bind(i64::from(index))
        .fetch_optional(&self.pool)
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
             WHERE name = ? GROUP BY partition_count",
        )
        .bind(name)
        .fetch_all(&self.pool)
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
            "INSERT INTO shardlake_checkpoints (name, partition_count, partition_index, position) \
             VALUES (?, ?, ?, ?) \
             ON CONFLICT (name, partition_count, partition_index) DO UPDATE SET \
             position = MAX(position, excluded.position), updated_at = CURRENT_TIMESTAMP",
        )
        .bind(name)
        .bind(i64::from(count))
        .bind(i64::from(index))
        .bind(position)
        .execute(&self.pool)
        .await
        .map_err(storage)?;
        Ok(())
    }
}
