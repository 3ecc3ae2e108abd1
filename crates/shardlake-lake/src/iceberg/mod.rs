//! The Iceberg table format: the `events` table in a SQL catalog, data files
//! written by Iceberg's Parquet writer, snapshots produced by shardlake
//! (one append per commit; replace snapshots for compaction and manifest
//! merging) and committed with a compare-and-swap on the catalog row.
//!
//! One file per operation: [`append`](self) for the emitter,
//! `rewrite` (replace snapshots), `compact`, `merge_manifests`, `expire`
//! and `cleanup` for maintenance; `snapshot` writes what they share
//! (manifests, manifest lists, summaries) and `table` commits. `read`
//! reads a snapshot into the format-neutral [`crate::snapshot`] model.

mod append;
mod catalog;
mod cleanup;
mod committer;
mod compact;
mod expire;
mod files;
mod manifests;
mod merge_manifests;
mod read;
mod rewrite;
mod schema;
mod snapshot;
mod table;
mod writer;

pub use catalog::{CATALOG_NAME, open_sql_catalog};
pub(crate) use cleanup::lease_lost;
pub use committer::IcebergCommitter;
pub use compact::COMPACTION_PROPERTY;
pub use files::current_data_files;
pub use manifests::ManifestCache;
pub(crate) use read::IcebergReadCache;
pub use schema::{arrow_schema_with_field_ids, check_schema, field_ids, iceberg_schema};
pub use table::{
    EVENTS_TABLE, ICEBERG_NAMESPACE, IcebergEventsTable, commit_state, properties, summary,
};
