//! The emitter's append: one manifest of the commit's new data files plus
//! the parent's manifests carried over as they are (Iceberg's fast append),
//! and the commit state in the same metadata update.
//!
//! The parent's manifest list comes from the process's manifest cache,
//! where it usually is already (it is the list the previous commit wrote),
//! so an append reads nothing: it writes one manifest, one manifest list
//! and the metadata file, then swaps the catalog pointer.

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::spec::{DataFile, ManifestFile, Operation};
use iceberg::table::Table;

use super::snapshot::{SnapshotWriter, add_as_main, change_summary};
use super::table::IcebergEventsTable;
use crate::error::Result;

/// Appends `files` to `base` with the table properties `properties` (the
/// new commit state) and the extra snapshot `summary` properties. `None`:
/// another commit made `base` stale, nothing changed.
pub(crate) async fn append(
    table: &IcebergEventsTable,
    base: &Table,
    files: &[DataFile],
    properties: Vec<(String, String)>,
    summary: HashMap<String, String>,
) -> Result<Option<Table>> {
    let parent: Arc<Vec<ManifestFile>> = match base.metadata().current_snapshot() {
        Some(parent) => table.manifests().manifest_list(base, parent).await?,
        None => Arc::default(),
    };
    let mut writer = SnapshotWriter::new(base, table.in_flight());
    let added = writer.added_manifest(files.iter().cloned()).await?;
    let manifests: Vec<ManifestFile> = added.into_iter().chain(parent.iter().cloned()).collect();
    let mut props = change_summary(base, files, []);
    props.extend(summary);
    let (snapshot, listed) = writer.finish(&manifests, Operation::Append, props).await?;
    let list_path = snapshot.manifest_list().to_owned();
    let properties: HashMap<String, String> = properties.into_iter().collect();
    match table
        .commit(base, |b| {
            add_as_main(b.set_properties(properties)?, snapshot)
        })
        .await?
    {
        Some(committed) => {
            writer.committed();
            table.manifests().remember_list(&list_path, listed);
            Ok(Some(committed))
        }
        None => {
            writer.discard().await;
            Ok(None)
        }
    }
}
