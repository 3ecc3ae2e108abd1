//! The flags every command uses to find the lake: the local data directory
//! (catalog database, dead letters) and where table files live.

use std::path::PathBuf;

use shardlake_lake::{Lake, ObjectStorageConfig, TableFormat};

/// Where the lake is. Credentials for S3 come from the standard `AWS_*`
/// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...), never from
/// flags, which other users of the machine can read.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Lake (every command)")]
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
    /// The catalog database, to share one lake between servers:
    /// `postgres://user:password@host/db` (default: `<warehouse>/catalog.db`).
    /// Best given as SHARDLAKE_CATALOG__URL, which other users of the
    /// machine cannot read.
    #[arg(
        long = "catalog",
        global = true,
        env = "SHARDLAKE_CATALOG__URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub catalog: Option<String>,
    /// Where the table files live: `s3://bucket/prefix` or `file:///dir`
    /// (default: `<warehouse>/warehouse`).
    #[arg(
        long,
        global = true,
        env = "SHARDLAKE_STORAGE__LOCATION",
        value_name = "URL"
    )]
    pub storage: Option<String>,
    /// Table format of a new lake: `iceberg` (the default: snapshots,
    /// concurrent writers, compaction) or `parquet` (Hive-style files, one
    /// writer). An existing lake opens in its own format.
    #[arg(long = "table-format", global = true, env = "SHARDLAKE_FORMAT")]
    pub table_format: Option<TableFormat>,
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

    /// Opens the existing lake, in its own format, for a command that
    /// reads it: a directory without a lake is an error, never a new empty
    /// lake that answers every question with nothing.
    pub async fn open_existing(&self) -> anyhow::Result<Lake> {
        Ok(Lake::open_existing_in(
            &self.warehouse,
            &self.storage_config(),
            self.catalog.as_deref(),
            self.table_format,
        )
        .await?)
    }

    /// Opens the lake, creating it if there is none (for commands that
    /// write), and says so on stderr when it did.
    pub async fn open_or_create(&self) -> anyhow::Result<Lake> {
        let (lake, created) = Lake::open_or_create_in(
            &self.warehouse,
            &self.storage_config(),
            self.catalog.as_deref(),
            self.table_format,
        )
        .await?;
        if created {
            let at = match &self.catalog {
                Some(url) => format!("in the catalog at {}", shardlake_lake::db::redact(url)),
                None => format!("at {}", lake.warehouse().data_dir().display()),
            };
            eprintln!("created a new {} lake {at}", lake.format());
        }
        Ok(lake)
    }
}
