//! CrossShardQuery: global SQL over every shard's events in the lake.
//!
//! Each query pins the table's current snapshot, plans files from Iceberg
//! metadata (namespace partition pruning, then column statistics), scans
//! them with DataFusion's own Parquet scan on every core, and returns honest
//! scan statistics computed from what the scans did. Results are cached per
//! caller scope, normalized query and snapshot, so a commit is never hidden
//! by the cache.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use shardlake_lake::Lake;
//! use shardlake_query::{CrossShardQuery, QueryConfig};
//!
//! let lake = Lake::open_local("./shardlake-data").await?;
//! let engine = CrossShardQuery::open(&lake, QueryConfig::default()).await?;
//! let result = engine
//!     .sql("SELECT namespace, count(*) FROM events GROUP BY namespace")
//!     .with_timeout(Duration::from_secs(5))
//!     .await?;
//! println!("{} rows, {}", result.num_rows(), result.stats.summary());
//! # Ok(())
//! # }
//! ```

mod cache;
mod context;
pub mod distributed;
mod engine;
mod error;
pub mod format;
mod optimizer;
mod precomputed;
mod provider;
mod recorder;
mod scope;
mod script;
mod snapshot;
mod stats;
pub mod subscription;
pub mod typed;
pub mod udf;

pub use cache::{CacheConfig, CacheMetrics};
pub use engine::{
    CrossShardQuery, Description, EngineMetrics, POSTGRES_VERSION, PreparedQuery, QueryConfig,
    QueryResult, QueryStream, ResultLimit, SqlDialect, SqlQuery,
};
pub use error::{Error, ErrorKind, Result};
pub use provider::THINGS_SQL;
pub use scope::Scope;
pub use script::{is_complete, split_statements};
pub use snapshot::{ColumnBounds, LakeFile, SnapshotFiles};
pub use stats::{AnsweredFrom, ScanStats};
pub use subscription::{Subscription, SubscriptionConfig};
pub use typed::{
    AggregateFunction, AggregateQuery, AggregateSource, Aggregation, Condition, EventsQuery, Op,
    OrderBy, PartitionOf, ReplayQuery, ThingsQuery,
};
