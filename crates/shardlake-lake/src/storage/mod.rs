//! The lake's one storage client: its configuration ([`ObjectStorageConfig`],
//! local disk or S3), durable local writes ([`DurableLocalFileSystem`]) and
//! Iceberg's file IO over it ([`ObjectStoreStorage`]).

mod config;
mod durable;
mod iceberg_io;

pub use config::{ObjectStorageConfig, StorageRetryConfig};
pub use durable::DurableLocalFileSystem;
pub use iceberg_io::{ObjectStoreStorage, ObjectStoreStorageFactory};
