//! `shardlake query`: SQL over the `events` table.
//!
//! The table is registered as a DataFusion listing table over the data files
//! of the current snapshot, read from the Iceberg manifests.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use shardlake_core::event_schema;
use shardlake_lake::Lake;
use shardlake_lake::iceberg::current_data_files;

/// Runs `sql` against the lake, returning the result schema and batches.
pub async fn run(lake: &Lake, sql: &str) -> anyhow::Result<(SchemaRef, Vec<RecordBatch>)> {
    let ctx = SessionContext::new();
    let warehouse = lake.warehouse();
    ctx.register_object_store(&warehouse.store_url(), warehouse.store());
    let table = lake.events_table().load().await?;
    let files = current_data_files(&table).await?;
    if files.is_empty() {
        ctx.register_table(
            "events",
            Arc::new(MemTable::try_new(event_schema(), vec![vec![]])?),
        )?;
    } else {
        let urls = files
            .iter()
            .map(|f| ListingTableUrl::parse(f.file_path()))
            .collect::<Result<Vec<_>, _>>()?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(event_schema());
        ctx.register_table("events", Arc::new(ListingTable::try_new(config)?))?;
    }
    let df = ctx.sql(sql).await?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await?;
    Ok((schema, batches))
}
