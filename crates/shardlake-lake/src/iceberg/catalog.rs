//! The SQL catalog on SQLite (the embedded default) or PostgreSQL (several
//! servers on one lake): the standard Iceberg
//! SQL catalog layout (`iceberg_tables`, `iceberg_namespace_properties`),
//! readable by pyiceberg's `SqlCatalog`. It creates the namespace and the
//! table; commits do not go through it. iceberg 0.10's
//! `Transaction::commit` reloads the table and re-applies its actions on
//! whatever is current (a fast-append planned against snapshot S would land
//! on top of another committer's T, with watermarks computed from S), and
//! the catalog re-reads the metadata file on every commit. shardlake writes
//! its snapshots itself and swaps the catalog row with the catalog's own
//! compare-and-swap statement instead ([`super::IcebergEventsTable`]).

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::CatalogBuilder;
use iceberg::io::StorageFactory;
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalog, SqlCatalogBuilder};

use crate::db::Backend;
use crate::error::Result;
use crate::storage::ObjectStoreStorageFactory;
use crate::warehouse::Warehouse;

/// Name of the catalog (the `catalog_name` column of the SQL catalog tables).
pub const CATALOG_NAME: &str = "shardlake";

/// Opens (creating if needed) the SQL catalog of `warehouse`.
pub async fn open_sql_catalog(warehouse: &Warehouse) -> Result<Arc<SqlCatalog>> {
    let factory: Arc<dyn StorageFactory> = Arc::new(ObjectStoreStorageFactory::new(
        warehouse.store(),
        warehouse.store_url(),
    ));
    let uri = warehouse.catalog_uri();
    // The crate writes `?` and rewrites it to `$n` for PostgreSQL.
    let bind_style = match Backend::of_url(&uri) {
        Some(Backend::Postgres) => SqlBindStyle::DollarNumeric,
        _ => SqlBindStyle::QMark,
    };
    let catalog = SqlCatalogBuilder::default()
        .uri(uri)
        .warehouse_location(warehouse.root_location())
        .sql_bind_style(bind_style)
        .with_storage_factory(factory)
        .load(CATALOG_NAME, HashMap::new())
        .await?;
    Ok(Arc::new(catalog))
}
