//! Where table files live, and how to reach them: local disk or any
//! S3-compatible object store (AWS, MinIO, moto, R2...).
//!
//! One [`ObjectStorageConfig`] builds one `object_store` client. The lake
//! hands that client to the Iceberg file IO and to DataFusion, so writes,
//! scans and metadata reads share credentials, retries and timeouts
//! (ADR 0001).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};
use url::Url;

use super::DurableLocalFileSystem;
use crate::error::{Error, ErrorKind, Result};

/// Where the lake's table files are stored and how the client behaves.
///
/// Unset fields fall back to the standard `AWS_*` environment variables
/// (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...), then to the
/// defaults below.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectStorageConfig {
    /// `s3://bucket/prefix` or `file:///abs/dir`. `None`: the `warehouse/`
    /// directory inside the local data directory (the embedded default).
    pub location: Option<String>,
    /// S3 endpoint URL, for S3-compatible servers (`http://127.0.0.1:9000`).
    pub endpoint: Option<String>,
    /// S3 region (default `us-east-1` when neither this nor `AWS_REGION`
    /// is set).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key. Never printed by `Debug`.
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials. Never printed by `Debug`.
    pub session_token: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), which MinIO and moto
    /// need; `false` for virtual-hosted style (`bucket.endpoint/key`).
    pub path_style: bool,
    /// Allow plain `http://` endpoints. `None`: allowed exactly when the
    /// endpoint is `http://`.
    pub allow_http: Option<bool>,
    /// How requests are retried and timed out.
    pub retry: StorageRetryConfig,
    /// On local disk, `fsync` every file the lake writes (and its
    /// directory) before the commit that references it, so an
    /// acknowledged commit survives power loss. Off only for throwaway
    /// lakes (benchmarks of the cost). S3 writes are durable when the PUT
    /// returns, so this does not apply there.
    pub fsync: bool,
}

/// Retry and timeout policy of object storage requests.
///
/// `object_store` retries 5xx answers, 429s, connection errors and
/// timeouts (for writes too: S3 PUTs are idempotent), with exponential
/// backoff, until either bound below is reached. The emitter retries a
/// whole commit on top of that ([`crate::RetryPolicy`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageRetryConfig {
    /// Retries of one request (0 disables retrying).
    pub max_retries: usize,
    /// Give up retrying a request this long after its first attempt.
    pub retry_timeout_ms: u64,
    /// First backoff.
    pub initial_backoff_ms: u64,
    /// Longest backoff.
    pub max_backoff_ms: u64,
    /// Timeout of one request, from sending it to the end of its body.
    pub request_timeout_ms: u64,
    /// Timeout of establishing a connection.
    pub connect_timeout_ms: u64,
}

impl Default for StorageRetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 10,
            // Bounded well below object_store's 3 minutes: a query against
            // a store that is down should fail within a minute, not hang.
            retry_timeout_ms: 60_000,
            initial_backoff_ms: 100,
            max_backoff_ms: 5_000,
            request_timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
        }
    }
}

impl Default for ObjectStorageConfig {
    fn default() -> Self {
        Self {
            location: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            path_style: true,
            allow_http: None,
            retry: StorageRetryConfig::default(),
            fsync: true,
        }
    }
}

impl fmt::Debug for ObjectStorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("ObjectStorageConfig")
            .field("location", &self.location)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("path_style", &self.path_style)
            .field("allow_http", &self.allow_http)
            .field("retry", &self.retry)
            .field("fsync", &self.fsync)
            .finish()
    }
}

/// A built store and the directory URL of the table files inside it.
pub(crate) struct OpenedStore {
    /// The client.
    pub store: Arc<dyn ObjectStore>,
    /// Root of the table files, ending in `/`.
    pub root: Url,
}

impl ObjectStorageConfig {
    /// Table files in `location` (`s3://bucket/prefix` or `file:///dir`).
    pub fn at(location: impl Into<String>) -> Self {
        Self {
            location: Some(location.into()),
            ..Self::default()
        }
    }

    /// Whether the table files are on S3-compatible storage.
    pub fn is_s3(&self) -> bool {
        self.location
            .as_deref()
            .is_some_and(|l| l.starts_with("s3://") || l.starts_with("s3a://"))
    }

    /// Builds the client. `default_local` is the directory used when no
    /// location is configured.
    pub(crate) fn open(&self, default_local: &std::path::Path) -> Result<OpenedStore> {
        let Some(location) = self.location.as_deref() else {
            return local(default_local, self.fsync);
        };
        let url = Url::parse(location).map_err(|e| {
            Error::new(
                ErrorKind::DataInvalid,
                format!(
                    "storage location {location:?} is not a URL (s3://bucket/prefix or file:///dir)"
                ),
            )
            .with_source(e)
        })?;
        match url.scheme() {
            "file" => {
                let dir = url.to_file_path().map_err(|()| {
                    Error::new(
                        ErrorKind::DataInvalid,
                        format!("storage location {location:?} is not a local directory"),
                    )
                })?;
                local(&dir, self.fsync)
            }
            "s3" | "s3a" => self.s3(&url),
            other => Err(Error::new(
                ErrorKind::DataInvalid,
                format!(
                    "storage location {location:?}: scheme {other:?} is not supported (use s3:// or file://)"
                ),
            )),
        }
    }

    fn s3(&self, url: &Url) -> Result<OpenedStore> {
        let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("storage location {url} names no bucket"),
            )
        })?;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(endpoint) = &endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
        }
        let region = self
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_owned());
        builder = builder.with_region(region);
        if let Some(id) = &self.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &self.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &self.session_token {
            builder = builder.with_token(token);
        }
        let allow_http = self.allow_http.unwrap_or_else(|| {
            endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://"))
        });
        let retry = &self.retry;
        let options = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_timeout(Duration::from_millis(retry.request_timeout_ms))
            .with_connect_timeout(Duration::from_millis(retry.connect_timeout_ms));
        let store = builder
            .with_virtual_hosted_style_request(!self.path_style)
            .with_client_options(options)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(retry.initial_backoff_ms),
                    max_backoff: Duration::from_millis(retry.max_backoff_ms),
                    base: 2.0,
                },
                max_retries: retry.max_retries,
                retry_timeout: Duration::from_millis(retry.retry_timeout_ms),
            })
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::DataInvalid,
                    format!("cannot configure S3 storage for {url}"),
                )
                .with_source(e)
            })?;
        let mut root = Url::parse(&format!("s3://{bucket}/")).map_err(|e| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("bad bucket name {bucket:?}"),
            )
            .with_source(e)
        })?;
        let prefix = url.path().trim_matches('/');
        if !prefix.is_empty() {
            root.set_path(&format!("/{prefix}/"));
        }
        Ok(OpenedStore {
            store: Arc::new(store),
            root,
        })
    }
}

fn local(dir: &std::path::Path, fsync: bool) -> Result<OpenedStore> {
    let dir = crate::warehouse::ensure_dir(dir, "warehouse")?;
    let root = Url::from_directory_path(&dir).map_err(|()| {
        Error::new(
            ErrorKind::DataInvalid,
            format!(
                "warehouse directory {} is not an absolute path",
                dir.display()
            ),
        )
    })?;
    let store: Arc<dyn ObjectStore> = if fsync {
        Arc::new(DurableLocalFileSystem::new())
    } else {
        Arc::new(LocalFileSystem::new())
    };
    Ok(OpenedStore { store, root })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_secrets() {
        let config = ObjectStorageConfig {
            secret_access_key: Some("hunter2".into()),
            session_token: Some("tok".into()),
            ..ObjectStorageConfig::at("s3://b/p")
        };
        let text = format!("{config:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("tok\""),
            "{text}"
        );
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn s3_root_keeps_the_prefix_and_bad_locations_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = ObjectStorageConfig {
            endpoint: Some("http://127.0.0.1:1".into()),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ..ObjectStorageConfig::at("s3://bucket/some/prefix/")
        };
        let opened = config.open(tmp.path()).expect("s3 store");
        assert_eq!(opened.root.as_str(), "s3://bucket/some/prefix/");
        let bare = ObjectStorageConfig {
            location: Some("s3://bucket".into()),
            ..config.clone()
        };
        assert_eq!(
            bare.open(tmp.path()).expect("s3").root.as_str(),
            "s3://bucket/"
        );
        for bad in ["gs://bucket/x", "not a url", "s3:///nobucket"] {
            let err = ObjectStorageConfig::at(bad)
                .open(tmp.path())
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(err.kind(), ErrorKind::DataInvalid, "{bad}: {err}");
        }
        let local = ObjectStorageConfig::default()
            .open(&tmp.path().join("w"))
            .expect("local");
        assert!(local.root.as_str().starts_with("file:///"));
        assert!(local.root.as_str().ends_with("/w/"));
    }
}
