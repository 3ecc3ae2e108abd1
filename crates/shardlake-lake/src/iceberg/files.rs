//! The live data files of a table version, read from its manifests.

use iceberg::spec::DataFile;

use super::table::IcebergEventsTable;
use crate::error::Result;

/// The data files alive in the current snapshot of `table`'s latest
/// version (none for an empty table), in manifest order.
pub async fn current_data_files(table: &IcebergEventsTable) -> Result<Vec<DataFile>> {
    let loaded = table.load().await?;
    match loaded.metadata().current_snapshot() {
        None => Ok(Vec::new()),
        Some(snapshot) => Ok(table
            .manifests()
            .live_entries(&loaded, snapshot)
            .await?
            .iter()
            .map(|e| e.data_file().clone())
            .collect()),
    }
}
