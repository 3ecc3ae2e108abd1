//! The SQL catalog on SQLite (the embedded default) and the one trick that
//! makes Iceberg commits conditional on the state we planned against.
//!
//! iceberg 0.10's `Transaction::commit` reloads the table and *re-applies* its
//! actions on whatever is current, so a fast-append planned against snapshot
//! S would silently land on top of another committer's snapshot T, with
//! watermarks and positions computed from S. [`PinnedCatalog`] hands the
//! transaction the table as we planned it instead, so the snapshot producer's
//! `RefSnapshotIdMatch(main == S)` requirement is checked by the real catalog
//! inside its compare-and-swap, and a moved table fails with
//! `CatalogCommitConflicts`. Conflicts are made non-retryable so our own loop
//! (re-read watermarks, re-plan, rewrite) handles them, never iceberg's.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::io::StorageFactory;
use iceberg::table::Table;
use iceberg::{
    Catalog, CatalogBuilder, Namespace, NamespaceIdent, TableCommit, TableCreation, TableIdent,
};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalog, SqlCatalogBuilder};

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
    let catalog = SqlCatalogBuilder::default()
        .uri(warehouse.catalog_uri())
        .warehouse_location(warehouse.root_location())
        .sql_bind_style(SqlBindStyle::QMark)
        .with_storage_factory(factory)
        .load(CATALOG_NAME, HashMap::new())
        .await?;
    Ok(Arc::new(catalog))
}

/// A catalog that returns a fixed version of one table from `load_table` and
/// delegates everything else, turning commit failures non-retryable.
#[derive(Debug)]
pub struct PinnedCatalog {
    inner: Arc<dyn Catalog>,
    pinned: Table,
}

impl PinnedCatalog {
    /// Pins `table` (the version a commit was planned against) over `inner`.
    pub fn new(inner: Arc<dyn Catalog>, pinned: Table) -> Self {
        Self { inner, pinned }
    }
}

fn non_retryable(e: iceberg::Error) -> iceberg::Error {
    let kind = e.kind();
    let message = e.message().to_owned();
    iceberg::Error::new(kind, message).with_source(e)
}

#[async_trait]
impl Catalog for PinnedCatalog {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> iceberg::Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> iceberg::Result<bool> {
        self.inner.namespace_exists(namespace).await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<()> {
        self.inner.drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> iceberg::Result<Table> {
        self.inner.create_table(namespace, creation).await
    }

    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        if table == self.pinned.identifier() {
            Ok(self.pinned.clone())
        } else {
            self.inner.load_table(table).await
        }
    }

    async fn drop_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.drop_table(table).await
    }

    async fn purge_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.purge_table(table).await
    }

    async fn table_exists(&self, table: &TableIdent) -> iceberg::Result<bool> {
        self.inner.table_exists(table).await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
        self.inner.rename_table(src, dest).await
    }

    async fn register_table(
        &self,
        table: &TableIdent,
        metadata_location: String,
    ) -> iceberg::Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }

    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        self.inner.update_table(commit).await.map_err(non_retryable)
    }
}
