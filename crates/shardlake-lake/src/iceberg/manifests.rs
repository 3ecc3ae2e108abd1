//! Manifest lists and manifests, parsed once per process.
//!
//! Both are immutable once written (their names are unique), so they are
//! cached by path. Everything on the write side reads through this cache:
//! the committer finds its parent's manifests here (usually the list it
//! wrote itself), compaction and manifest merging find the entries they
//! rewrite, expiry and cleanup find what every retained snapshot
//! references. A new snapshot therefore costs the reads of what is new in
//! it, not of the whole table.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use iceberg::spec::{ManifestEntryRef, ManifestFile, ManifestList, Snapshot};
use iceberg::table::Table;

use crate::error::Result;
use crate::in_flight::{InFlight, Watch};

/// Manifests read at once.
pub(super) const MANIFEST_CONCURRENCY: usize = 8;

/// Parsed manifest lists and manifest entries by path, bounded by the number
/// of entries they hold.
#[derive(Debug, Clone)]
pub struct ManifestCache {
    lists: moka::sync::Cache<String, Arc<Vec<ManifestFile>>>,
    manifests: moka::sync::Cache<String, Arc<Vec<ManifestEntryRef>>>,
}

impl Default for ManifestCache {
    fn default() -> Self {
        Self::new(200_000)
    }
}

impl ManifestCache {
    /// A cache holding at most about `entries` manifest entries (and as many
    /// manifest-list entries).
    pub fn new(entries: u64) -> Self {
        let weigh = |n: usize| u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        Self {
            lists: moka::sync::Cache::builder()
                .max_capacity(entries)
                .weigher(move |_: &String, v: &Arc<Vec<ManifestFile>>| weigh(v.len()))
                .build(),
            manifests: moka::sync::Cache::builder()
                .max_capacity(entries)
                .weigher(move |_: &String, v: &Arc<Vec<ManifestEntryRef>>| weigh(v.len()))
                .build(),
        }
    }

    /// The manifests of `snapshot` (its manifest list).
    pub async fn manifest_list(
        &self,
        table: &Table,
        snapshot: &Snapshot,
    ) -> Result<Arc<Vec<ManifestFile>>> {
        let path = snapshot.manifest_list();
        if let Some(list) = self.lists.get(path) {
            return Ok(list);
        }
        let bytes = table.file_io().new_input(path)?.read().await?;
        let list = ManifestList::parse_with_version(&bytes, table.metadata().format_version())?;
        let list = Arc::new(list.consume_entries().into_iter().collect::<Vec<_>>());
        self.lists.insert(path.to_owned(), Arc::clone(&list));
        Ok(list)
    }

    /// Records a manifest list this process wrote, so nobody reads it back.
    pub(crate) fn remember_list(&self, path: &str, manifests: Arc<Vec<ManifestFile>>) {
        self.lists.insert(path.to_owned(), manifests);
    }

    /// Every entry of `manifest` (alive or deleted).
    pub async fn entries(
        &self,
        table: &Table,
        manifest: &ManifestFile,
    ) -> Result<Arc<Vec<ManifestEntryRef>>> {
        if let Some(entries) = self.manifests.get(&manifest.manifest_path) {
            return Ok(entries);
        }
        let loaded = manifest.load_manifest(table.file_io()).await?;
        let (entries, _) = loaded.into_parts();
        let entries = Arc::new(entries);
        self.manifests
            .insert(manifest.manifest_path.clone(), Arc::clone(&entries));
        Ok(entries)
    }

    /// The entries of each of `manifests`, in order.
    pub async fn entries_of(
        &self,
        table: &Table,
        manifests: &[ManifestFile],
    ) -> Result<Vec<Arc<Vec<ManifestEntryRef>>>> {
        // Owned futures: borrowing ones defeat `Send` inference for the
        // tasks that await this.
        futures::stream::iter(manifests.to_vec())
            .map(|m| {
                let (cache, table) = (self.clone(), table.clone());
                async move { cache.entries(&table, &m).await }
            })
            .buffered(MANIFEST_CONCURRENCY)
            .try_collect()
            .await
    }

    /// The live (added or existing) entries of `snapshot`, in manifest order.
    pub async fn live_entries(
        &self,
        table: &Table,
        snapshot: &Snapshot,
    ) -> Result<Vec<ManifestEntryRef>> {
        let list = self.manifest_list(table, snapshot).await?;
        Ok(self
            .entries_of(table, &list)
            .await?
            .iter()
            .flat_map(|entries| entries.iter().filter(|e| e.is_alive()).cloned())
            .collect())
    }
}

/// Names of the files this process is writing for commits that have not
/// been swapped in yet (manifests, manifest lists, metadata files). Cleanup
/// never deletes them, whatever the grace period: they are nobody's
/// leftovers yet (see [`crate::in_flight`]). A file is registered before it
/// is written and forgotten once its commit landed or was given up.
#[derive(Debug, Clone, Default)]
pub struct InFlightFiles(InFlight);

impl InFlightFiles {
    /// Registers `location` (before writing it).
    pub(crate) fn add(&self, location: &str) {
        self.0.add(file_name(location));
    }

    /// Forgets `location`.
    pub(crate) fn remove(&self, location: &str) {
        self.0.remove(file_name(location));
    }

    /// Remembers every file in flight from now until the watch drops
    /// (asked by file name).
    pub(crate) fn watch(&self) -> Watch {
        self.0.watch()
    }
}

/// The last segment of a location.
pub(crate) fn file_name(location: &str) -> &str {
    location.rsplit('/').next().unwrap_or(location)
}
