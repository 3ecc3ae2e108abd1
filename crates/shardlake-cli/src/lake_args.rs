//! The flags every command uses to find the lake: the local data directory
//! (catalog database, dead letters) and where table files live.

use std::path::PathBuf;

use shardlake_lake::{Lake, ObjectStorageConfig, TableFormat};

/// Where the lake is. Credentials for S3 come from the standard `AWS_*`
/// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...), never from
/// flags, which other users of the machine can read.
#[derive(Debug, Clone, clap::Args)]
pub struct LakeArgs {
    /// Data directory: SQLite catalog, dead letters and, unless --storage
    /// says otherwise, the table files.
    #[arg(
        long,
        global = true,
        env = "SHARDLAKE_WAREHOUSE",
        default_value = "./shardlake-data"
    )]
    pub warehouse: PathBuf,
    /// Where the table files live: `s3://bucket/prefix` or `file:///dir`
    /// (default: `<warehouse>/warehouse`).
    #[arg(
        long,
        global = true,
        env = "SHARDLAKE_STORAGE__LOCATION",
        value_name = "URL"
    )]
    pub storage: Option<String>,
    /// Table format of a new lake: `iceberg` (snapshots, concurrent
    /// writers, compaction) or `parquet` (Hive-style files, one writer).
    /// An existing lake must be opened with the format it was created with.
    #[arg(
        long = "table-format",
        global = true,
        env = "SHARDLAKE_FORMAT",
        default_value = "iceberg"
    )]
    pub table_format: TableFormat,
    /// Whether `--table-format` (or `SHARDLAKE_FORMAT`) was given rather than
    /// defaulted: `serve` lets its config file choose otherwise.
    #[arg(skip)]
    pub format_given: bool,
    /// S3 endpoint, for S3-compatible servers (MinIO, moto, R2...).
    #[arg(
        long,
        global = true,
        env = "SHARDLAKE_STORAGE__ENDPOINT",
        value_name = "URL"
    )]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: `AWS_REGION`, else us-east-1).
    #[arg(long, global = true, env = "SHARDLAKE_STORAGE__REGION")]
    pub s3_region: Option<String>,
    /// Virtual-hosted-style S3 requests (`bucket.endpoint/key`) instead of
    /// path style (`endpoint/bucket/key`).
    #[arg(long, global = true)]
    pub s3_virtual_hosted: bool,
}

impl LakeArgs {
    /// Writes the storage flags that were given over `config`.
    pub fn apply_to(&self, config: &mut ObjectStorageConfig) {
        if let Some(location) = &self.storage {
            config.location = Some(location.clone());
        }
        if let Some(endpoint) = &self.s3_endpoint {
            config.endpoint = Some(endpoint.clone());
        }
        if let Some(region) = &self.s3_region {
            config.region = Some(region.clone());
        }
        if self.s3_virtual_hosted {
            config.path_style = false;
        }
    }

    /// The storage these flags describe.
    pub fn storage_config(&self) -> ObjectStorageConfig {
        let mut config = ObjectStorageConfig::default();
        self.apply_to(&mut config);
        config
    }

    /// Opens (creating on first use) the lake.
    pub async fn open(&self) -> anyhow::Result<Lake> {
        Ok(Lake::open_with(&self.warehouse, &self.storage_config(), self.table_format).await?)
    }
}
