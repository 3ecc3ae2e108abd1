//! The live data files of a table version, read from its manifests.

use futures::{StreamExt, TryStreamExt};
use iceberg::spec::{DataFile, ManifestList, Snapshot};
use iceberg::table::Table;

use crate::error::Result;

/// Manifests read at once while listing files.
const MANIFEST_CONCURRENCY: usize = 8;

/// The data files alive in `snapshot` of `table` (all data files, in
/// manifest order).
pub async fn live_data_files(table: &Table, snapshot: &Snapshot) -> Result<Vec<DataFile>> {
    let file_io = table.file_io();
    let bytes = file_io.new_input(snapshot.manifest_list())?.read().await?;
    let list = ManifestList::parse_with_version(&bytes, table.metadata().format_version())?;
    let per_manifest: Vec<Vec<DataFile>> = futures::stream::iter(list.entries().to_vec())
        .map(|manifest_file| async move {
            let manifest = manifest_file.load_manifest(file_io).await?;
            Ok::<_, crate::Error>(
                manifest
                    .entries()
                    .iter()
                    .filter(|e| e.is_alive())
                    .map(|e| e.data_file().clone())
                    .collect(),
            )
        })
        .buffered(MANIFEST_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(per_manifest.into_iter().flatten().collect())
}

/// The data files alive in the current snapshot (none for an empty table).
pub async fn current_data_files(table: &Table) -> Result<Vec<DataFile>> {
    match table.metadata().current_snapshot() {
        None => Ok(Vec::new()),
        Some(snapshot) => live_data_files(table, snapshot).await,
    }
}
