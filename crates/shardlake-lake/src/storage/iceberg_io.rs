//! Iceberg's [`Storage`] over an [`ObjectStore`]: the one storage client of
//! the lake. Iceberg writes manifests, metadata and data files through it;
//! DataFusion reads the same store directly.
//!
//! Writes go through `object_store`'s buffered writer, which publishes an
//! object only when it is complete (temp file + rename on local disk, a
//! single PUT or a completed multipart upload on S3): a crash never leaves a
//! half-written file under a name the table could reference.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
    StorageFactory,
};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::crashpoint;
use crate::warehouse::to_object_path;

fn iceberg_err(e: impl std::error::Error + Send + Sync + 'static, what: &str) -> iceberg::Error {
    iceberg::Error::new(iceberg::ErrorKind::Unexpected, what.to_owned()).with_source(e)
}

fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

/// Iceberg storage backed by an object store registered at `store_url`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectStoreStorage {
    store_url: Url,
    // Live clients do not serialize; a deserialized copy refuses to work
    // instead of silently reaching a different store.
    #[serde(skip)]
    store: Option<Arc<dyn ObjectStore>>,
}

impl ObjectStoreStorage {
    /// Storage over `store`, which serves locations under `store_url`.
    pub fn new(store: Arc<dyn ObjectStore>, store_url: Url) -> Self {
        Self {
            store_url,
            store: Some(store),
        }
    }

    fn store(&self) -> iceberg::Result<&Arc<dyn ObjectStore>> {
        self.store.as_ref().ok_or_else(|| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                "object store storage was deserialized without its client",
            )
        })
    }

    fn path(&self, location: &str) -> iceberg::Result<Path> {
        to_object_path(&self.store_url, location)
            .map_err(|e| iceberg::Error::new(iceberg::ErrorKind::DataInvalid, e.to_string()))
    }
}

#[async_trait]
#[typetag::serde(name = "shardlake-object-store")]
impl Storage for ObjectStoreStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        match self.store()?.head(&self.path(path)?).await {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(iceberg_err(e, "head failed")),
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        let meta = self
            .store()?
            .head(&self.path(path)?)
            .await
            .map_err(|e| iceberg_err(e, "head failed"))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        let got = self
            .store()?
            .get(&self.path(path)?)
            .await
            .map_err(|e| iceberg_err(e, "get failed"))?;
        got.bytes().await.map_err(|e| iceberg_err(e, "get failed"))
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        Ok(Box::new(ObjectRead {
            store: Arc::clone(self.store()?),
            path: self.path(path)?,
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        self.store()?
            .put(&self.path(path)?, bs.into())
            .await
            .map_err(|e| iceberg_err(e, "put failed"))?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let location = self.path(path)?;
        let is_data_file = location.as_ref().contains("/data/");
        Ok(Box::new(ObjectWrite {
            inner: BufWriter::new(Arc::clone(self.store()?), location),
            is_data_file,
            closed: false,
        }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        match self.store()?.delete(&self.path(path)?).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(iceberg_err(e, "delete failed")),
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        let store = Arc::clone(self.store()?);
        let prefix = self.path(path)?;
        let locations = store
            .list(Some(&prefix))
            .map(|meta| meta.map(|m| m.location))
            .boxed();
        let mut deleted = store.delete_stream(locations);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(iceberg_err(e, "delete failed")),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_owned()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_owned()))
    }
}

struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    path: Path,
}

#[async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.store
            .get_range(&self.path, range)
            .await
            .map_err(|e| iceberg_err(e, "ranged get failed"))
    }
}

struct ObjectWrite {
    inner: BufWriter,
    is_data_file: bool,
    closed: bool,
}

#[async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        self.inner
            .put(bs)
            .await
            .map_err(|e| iceberg_err(e, "write failed"))?;
        if self.is_data_file {
            crashpoint::hit(crashpoint::MID_FILE);
        }
        Ok(())
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.inner
            .shutdown()
            .await
            .map_err(|e| iceberg_err(e, "completing the upload failed"))
    }
}

/// Builds [`ObjectStoreStorage`] for Iceberg's `FileIO` and catalogs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectStoreStorageFactory {
    storage: ObjectStoreStorage,
}

impl ObjectStoreStorageFactory {
    /// A factory handing out storage over `store` at `store_url`.
    pub fn new(store: Arc<dyn ObjectStore>, store_url: Url) -> Self {
        Self {
            storage: ObjectStoreStorage::new(store, store_url),
        }
    }
}

#[typetag::serde(name = "shardlake-object-store-factory")]
impl StorageFactory for ObjectStoreStorageFactory {
    fn build(&self, _config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        self.storage.store()?;
        Ok(Arc::new(self.storage.clone()))
    }
}

#[cfg(test)]
mod tests {
    use iceberg::io::FileIOBuilder;

    use super::*;
    use crate::warehouse::Warehouse;

    #[tokio::test]
    async fn file_io_round_trip_through_object_store() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let w = Warehouse::local(tmp.path()).expect("warehouse");
        let io = FileIOBuilder::new(Arc::new(ObjectStoreStorageFactory::new(
            w.store(),
            w.store_url(),
        )))
        .build();
        let loc = format!("{}t/data/a.bin", w.root());
        assert!(!io.exists(&loc).await.expect("exists"));
        let out = io.new_output(&loc).expect("output");
        let mut writer = out.writer().await.expect("writer");
        writer
            .write(Bytes::from_static(b"hello "))
            .await
            .expect("write");
        writer
            .write(Bytes::from_static(b"world"))
            .await
            .expect("write");
        writer.close().await.expect("close");
        let input = io.new_input(&loc).expect("input");
        assert_eq!(input.metadata().await.expect("meta").size, 11);
        assert_eq!(
            input.read().await.expect("read"),
            Bytes::from_static(b"hello world")
        );
        let reader = input.reader().await.expect("reader");
        assert_eq!(
            reader.read(6..11).await.expect("range"),
            Bytes::from_static(b"world")
        );
        io.delete_prefix(format!("{}t", w.root()))
            .await
            .expect("delete");
        assert!(!io.exists(&loc).await.expect("exists"));
    }
}
