//! The Iceberg table format: the `events` table in a SQL catalog, data files
//! written by Iceberg's Parquet writer, one `fast_append` snapshot per commit.

mod catalog;
mod committer;
mod compact;
mod files;
mod schema;
mod table;
mod writer;

pub use catalog::{CATALOG_NAME, PinnedCatalog, open_sql_catalog};
pub use committer::IcebergCommitter;
pub use compact::{COMPACTION_PROPERTY, CompactionConfig, CompactionReport};
pub use files::{current_data_files, live_data_files};
pub use schema::{arrow_schema_with_field_ids, check_schema, field_ids, iceberg_schema};
pub use table::{
    EVENTS_TABLE, ICEBERG_NAMESPACE, IcebergEventsTable, commit_state, properties, summary,
};
