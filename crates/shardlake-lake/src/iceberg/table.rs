//! The Iceberg `events` table: created on first use, schema-checked on every
//! load, and the place where commit state (watermarks, next position) lives.
//!
//! Commit state is stored in *table properties*, updated in the same metadata
//! commit as the snapshot that adds the data. Properties (unlike snapshot
//! summaries) hold only the current value, survive snapshot expiration, and
//! cost one map entry per shard, not one per shard per snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use iceberg::table::Table;
use iceberg::{Catalog, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::SqlCatalog;
use sqlx::SqlitePool;

use super::catalog::{CATALOG_NAME, open_sql_catalog};
use super::schema::{check_schema, iceberg_schema, partition_spec, sort_order};
use crate::commit::{CommitState, FIRST_POSITION};
use crate::error::{Error, ErrorKind, Result};
use crate::warehouse::Warehouse;

/// Iceberg namespace holding shardlake's tables.
pub const ICEBERG_NAMESPACE: &str = "shardlake";
/// Name of the events table.
pub const EVENTS_TABLE: &str = "events";

/// Table properties written by shardlake.
pub mod properties {
    /// JSON object `{"<shard_id>": <highest committed seq>}`.
    pub const WATERMARKS: &str = "shardlake.watermarks";
    /// Position the next committed event gets.
    pub const NEXT_POSITION: &str = "shardlake.next-position";
    /// Version of shardlake's table layout.
    pub const LAYOUT_VERSION: &str = "shardlake.layout-version";
}

/// Snapshot summary properties written by shardlake on each commit.
pub mod summary {
    /// Unique id of the commit attempt that produced the snapshot.
    pub const COMMIT_ID: &str = "shardlake.commit-id";
    /// Position of the first event of the snapshot.
    pub const FIRST_POSITION: &str = "shardlake.first-position";
    /// Position after the last event of the snapshot.
    pub const NEXT_POSITION: &str = "shardlake.next-position";
}

/// Handle on the Iceberg `events` table of a warehouse.
#[derive(Debug, Clone)]
pub struct IcebergEventsTable {
    catalog: Arc<SqlCatalog>,
    // A direct connection to the catalog database, for the one cheap question
    // the Iceberg catalog API cannot answer without reading and parsing the
    // metadata file: "which metadata file is current?".
    pool: SqlitePool,
    ident: TableIdent,
    warehouse: Warehouse,
}

impl IcebergEventsTable {
    /// Opens the table, creating namespace and table on first use, and checks
    /// its schema. Safe to race with another process doing the same.
    pub async fn open(warehouse: &Warehouse) -> Result<Self> {
        let catalog = open_sql_catalog(warehouse).await?;
        let namespace = NamespaceIdent::new(ICEBERG_NAMESPACE.to_owned());
        let ident = TableIdent::new(namespace.clone(), EVENTS_TABLE.to_owned());
        // Losing a creation race with another opener is fine: check again.
        if !catalog.namespace_exists(&namespace).await?
            && let Err(e) = catalog.create_namespace(&namespace, HashMap::new()).await
            && !catalog.namespace_exists(&namespace).await?
        {
            return Err(e.into());
        }
        if !catalog.table_exists(&ident).await? {
            let creation = TableCreation::builder()
                .name(EVENTS_TABLE.to_owned())
                .schema((*iceberg_schema()).clone())
                .partition_spec(partition_spec()?)
                .sort_order(sort_order()?)
                .properties([
                    ("write.format.default".to_owned(), "parquet".to_owned()),
                    (
                        "write.parquet.compression-codec".to_owned(),
                        "zstd".to_owned(),
                    ),
                    (properties::LAYOUT_VERSION.to_owned(), "1".to_owned()),
                ])
                .build();
            if let Err(e) = catalog.create_table(&namespace, creation).await
                && !catalog.table_exists(&ident).await?
            {
                return Err(e.into());
            }
        }
        let pool = SqlitePool::connect(&warehouse.catalog_uri())
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Storage, "cannot open the catalog database").with_source(e)
            })?;
        let table = Self {
            catalog,
            pool,
            ident,
            warehouse: warehouse.clone(),
        };
        table.check_location().await?;
        table.load().await?;
        Ok(table)
    }

    /// Refuses a catalog whose table lives in another store than the one
    /// configured (say, a lake created on local disk opened with an S3
    /// location): every read would fail later with a less helpful error.
    async fn check_location(&self) -> Result<()> {
        let metadata = self.current_metadata_location().await?;
        let root = self.warehouse.root();
        if metadata.starts_with(root.as_str()) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::DataInvalid,
            format!(
                "the catalog in {} belongs to a lake stored at {metadata}, but storage is \
                 configured at {root}; open it with the storage location it was created with",
                self.warehouse.data_dir().display()
            ),
        ))
    }

    /// Loads the current version of the table and checks its schema.
    pub async fn load(&self) -> Result<Table> {
        let table = self.catalog.load_table(&self.ident).await?;
        check_schema(table.metadata().current_schema())?;
        Ok(table)
    }

    /// Location of the table's current metadata file: one indexed catalog
    /// lookup, no file I/O. Changes with every commit.
    pub async fn current_metadata_location(&self) -> Result<String> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT metadata_location FROM iceberg_tables \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?",
        )
        .bind(CATALOG_NAME)
        .bind(self.ident.namespace().join("."))
        .bind(self.ident.name())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::new(ErrorKind::Storage, "catalog lookup failed").with_source(e))?;
        row.and_then(|(location,)| location).ok_or_else(|| {
            Error::new(
                ErrorKind::Storage,
                format!(
                    "table {} has no metadata location in the catalog",
                    self.ident
                ),
            )
        })
    }

    /// Makes `new` the table's metadata file if `expected` still is
    /// (compare-and-swap in the catalog database, the same statement the
    /// SQL catalog commits with). Returns whether it swapped.
    pub(crate) async fn swap_metadata_location(&self, expected: &str, new: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? \
             AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = ?",
        )
        .bind(new)
        .bind(expected)
        .bind(CATALOG_NAME)
        .bind(self.ident.namespace().join("."))
        .bind(self.ident.name())
        .bind(expected)
        .execute(&self.pool)
        .await
        .map_err(|e| Error::new(ErrorKind::Storage, "catalog update failed").with_source(e))?;
        Ok(done.rows_affected() == 1)
    }

    /// The current version of the table: `known` itself if nothing was
    /// committed since it was loaded, else a fresh (schema-checked) load.
    pub async fn refresh(&self, known: &Table) -> Result<Table> {
        let current = self.current_metadata_location().await?;
        if known.metadata_location() == Some(current.as_str()) {
            return Ok(known.clone());
        }
        self.load().await
    }

    /// The subscription checkpoints kept in the same catalog database.
    pub async fn checkpoints(&self) -> Result<crate::checkpoint::Checkpoints> {
        crate::checkpoint::Checkpoints::open(self.pool.clone()).await
    }

    /// The control tables (topologies, migrations) in the same catalog
    /// database.
    pub async fn control(&self) -> Result<crate::control::ControlStore> {
        crate::control::ControlStore::open(self.pool.clone()).await
    }

    /// The catalog the table lives in.
    pub fn catalog(&self) -> Arc<dyn Catalog> {
        Arc::clone(&self.catalog) as Arc<dyn Catalog>
    }

    /// The table's identifier.
    pub fn ident(&self) -> &TableIdent {
        &self.ident
    }

    /// The warehouse the table lives in.
    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }
}

/// Reads the commit state recorded in `table`'s properties.
pub fn commit_state(table: &Table) -> Result<CommitState> {
    let props = table.metadata().properties();
    let watermarks = match props.get(properties::WATERMARKS) {
        None => BTreeMap::new(),
        Some(json) => serde_json::from_str(json).map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("table property {} is not valid", properties::WATERMARKS),
            )
            .with_source(e)
        })?,
    };
    let next_position = match props.get(properties::NEXT_POSITION) {
        None => FIRST_POSITION,
        Some(n) => n.parse().map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("table property {} is not valid", properties::NEXT_POSITION),
            )
            .with_source(e)
        })?,
    };
    Ok(CommitState {
        watermarks,
        next_position,
        snapshot_id: table.metadata().current_snapshot_id(),
    })
}

/// Encodes `state` as the table properties [`commit_state`] reads.
pub fn state_properties(state: &CommitState) -> Result<Vec<(String, String)>> {
    let watermarks = serde_json::to_string(&state.watermarks).map_err(|e| {
        Error::new(ErrorKind::Unexpected, "cannot encode watermarks").with_source(e)
    })?;
    Ok(vec![
        (properties::WATERMARKS.to_owned(), watermarks),
        (
            properties::NEXT_POSITION.to_owned(),
            state.next_position.to_string(),
        ),
    ])
}
