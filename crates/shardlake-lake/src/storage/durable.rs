//! Local disk that survives power loss: `object_store`'s `LocalFileSystem`
//! plus `fsync`.
//!
//! `LocalFileSystem` publishes a file by writing a temporary file and
//! renaming it into place, and never calls `fsync`: after a power cut a
//! file it reported written may be empty, missing, or present under its
//! temporary name, while the catalog's compare-and-swap (SQLite, which does
//! `fsync`) already points at it. An acknowledged commit would then read
//! back as a broken table.
//!
//! [`DurableLocalFileSystem`] closes that gap. When a write returns, the
//! file's data and its directory entry are on disk: the file is synced,
//! then its directory, then (once per process) every ancestor directory
//! whose entry may be new, because `LocalFileSystem` creates missing
//! directories on demand and a new directory is only durable once its
//! parent is synced. Every commit writes its data files, manifests and
//! metadata through this store before the compare-and-swap, so an ack
//! follows durability. Deletes are not synced: a deleted file that comes
//! back after a crash is an orphan, which cleanup removes again.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};

/// `LocalFileSystem` whose writes are durable when they return.
#[derive(Debug, Clone)]
pub struct DurableLocalFileSystem {
    inner: Arc<LocalFileSystem>,
    syncer: Arc<Syncer>,
}

impl DurableLocalFileSystem {
    /// A durable store over the whole local filesystem (paths are absolute,
    /// as with `LocalFileSystem::new`).
    pub fn new() -> Self {
        Self {
            inner: Arc::new(LocalFileSystem::new()),
            syncer: Arc::default(),
        }
    }

    /// How many `fsync` calls this store made (files and directories): for
    /// tests and the ingest benchmark.
    pub fn syncs(&self) -> u64 {
        self.syncer.count()
    }

    async fn sync(&self, location: &Path) -> Result<()> {
        let path = self.inner.path_to_filesystem(location)?;
        let syncer = Arc::clone(&self.syncer);
        tokio::task::spawn_blocking(move || syncer.sync_file(&path))
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "DurableLocalFileSystem",
                source: Box::new(e),
            })?
            .map_err(|source| object_store::Error::Generic {
                store: "DurableLocalFileSystem",
                source: Box::new(source),
            })
    }
}

impl Default for DurableLocalFileSystem {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for DurableLocalFileSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Durable({})", self.inner)
    }
}

/// The `fsync` calls, and which directories' entries are known durable.
#[derive(Debug, Default)]
struct Syncer {
    /// Directories whose entry in their parent has been synced by this
    /// process (so a file written in them needs only its own directory
    /// synced).
    durable_dirs: Mutex<HashSet<PathBuf>>,
    count: std::sync::atomic::AtomicU64,
}

impl Syncer {
    fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn fsync(&self, path: &FsPath) -> std::io::Result<()> {
        // A read-only descriptor may be synced on Linux and macOS; the data
        // synced is the inode's, whoever wrote it.
        std::fs::File::open(path)?.sync_all()?;
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Syncs `file`, its directory, and each ancestor directory whose entry
    /// is not yet known durable.
    fn sync_file(&self, file: &FsPath) -> std::io::Result<()> {
        self.fsync(file)?;
        let Some(dir) = file.parent() else {
            return Ok(());
        };
        self.fsync(dir)?;
        let mut child = dir;
        while let Some(parent) = child.parent() {
            let known = self
                .durable_dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(child);
            if known {
                break;
            }
            self.fsync(parent)?;
            self.durable_dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(child.to_path_buf());
            child = parent;
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for DurableLocalFileSystem {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let result = self.inner.put_opts(location, payload, opts).await?;
        self.sync(location).await?;
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload {
            inner,
            location: location.clone(),
            store: self.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.sync(to).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        self.sync(to).await
    }
}

/// A multipart upload that syncs the file once it is complete.
#[derive(Debug)]
struct DurableUpload {
    inner: Box<dyn MultipartUpload>,
    location: Path,
    store: DurableLocalFileSystem,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let result = self.inner.complete().await?;
        self.store.sync(&self.location).await?;
        Ok(result)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;

    use super::*;

    #[tokio::test]
    async fn writes_sync_the_file_its_directory_and_new_ancestors_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = DurableLocalFileSystem::new();
        let base = Path::from_filesystem_path(tmp.path()).expect("path");
        let first = base.clone().join("a").join("b").join("one");
        store.put(&first, "x".into()).await.expect("put");
        let after_first = store.syncs();
        // File + its directory + every ancestor up to `/`, once.
        assert!(after_first >= 3, "{after_first}");
        let second = base.clone().join("a").join("b").join("two");
        store.put(&second, "y".into()).await.expect("put");
        assert_eq!(store.syncs() - after_first, 2, "file and directory only");
        // Multipart uploads sync on completion.
        let big = base.join("a").join("b").join("three");
        let mut upload = store.put_multipart(&big).await.expect("upload");
        upload.put_part("z".into()).await.expect("part");
        let before = store.syncs();
        upload.complete().await.expect("complete");
        assert_eq!(store.syncs() - before, 2);
        let bytes = store
            .get(&big)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(bytes.as_ref(), b"z");
    }
}
