//! The lake's one storage client: its configuration ([`ObjectStorageConfig`],
//! local disk or S3) and Iceberg's file IO over it ([`ObjectStoreStorage`]).

mod config;
mod iceberg_io;

pub use config::{ObjectStorageConfig, StorageRetryConfig};
pub use iceberg_io::{ObjectStoreStorage, ObjectStoreStorageFactory};
