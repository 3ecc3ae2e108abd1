//! A fixture lake built from `testdata/`, with ground truth to check against.

use std::collections::BTreeMap;

use shardlake_core::Event;
use shardlake_lake::{Lake, ObjectStorageConfig, TableFormat, WriterConfig};
use shardlake_query::{CrossShardQuery, QueryConfig};
use shardlake_testkit::moto;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub lake: Lake,
    pub events: Vec<Event>,
}

impl Fixture {
    /// The fixture events committed in `commits` commits (so each namespace
    /// has `commits` files).
    pub async fn build(commits: usize) -> Self {
        Self::build_with(commits, WriterConfig::default()).await
    }

    /// Like [`Self::build`] with a given file layout.
    pub async fn build_with(commits: usize, writer: WriterConfig) -> Self {
        Self::build_in(
            &ObjectStorageConfig::default(),
            TableFormat::Iceberg,
            commits,
            writer,
        )
        .await
    }

    /// Like [`Self::build`], on a fresh bucket of the test S3 server.
    pub async fn on_s3(commits: usize) -> Self {
        Self::on_s3_as(TableFormat::Iceberg, commits).await
    }

    /// Like [`Self::build`], in `format` on a fresh bucket of the test S3
    /// server.
    pub async fn on_s3_as(format: TableFormat, commits: usize) -> Self {
        let bucket = moto().bucket().await;
        Self::build_in(
            &bucket.storage("lake"),
            format,
            commits,
            WriterConfig::default(),
        )
        .await
    }

    /// Like [`Self::build`], with the catalog in a fresh database of the
    /// test PostgreSQL server (files on local disk); also returns its URL.
    pub async fn on_postgres(commits: usize) -> (Self, String) {
        let url = shardlake_testkit::postgres().database().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let (lake, created) = Lake::open_or_create_in(
            dir.path(),
            &ObjectStorageConfig::default(),
            Some(&url),
            None,
        )
        .await
        .expect("lake");
        assert!(created);
        let events = shardlake_testkit::commit_fixture(&lake, commits).await;
        (Self { dir, lake, events }, url)
    }

    /// Like [`Self::build`], as a plain-Parquet lake on local disk.
    pub async fn parquet(commits: usize) -> Self {
        Self::build_in(
            &ObjectStorageConfig::default(),
            TableFormat::Parquet,
            commits,
            WriterConfig::default(),
        )
        .await
    }

    /// The fixture events in `commits` commits, in `format`, table files in
    /// `storage`.
    pub async fn build_in(
        storage: &ObjectStorageConfig,
        format: TableFormat,
        commits: usize,
        writer: WriterConfig,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open_with(dir.path(), storage, format)
            .await
            .expect("lake")
            .with_writer_config(writer);
        // 0 commits: an empty lake (the events are returned for the test to commit).
        let events = shardlake_testkit::commit_fixture(&lake, commits).await;
        Self { dir, lake, events }
    }

    /// Like [`Self::build`] with small row groups and pages, so the fixture
    /// spans many pages and page-index pruning shows.
    pub async fn small_pages(commits: usize) -> Self {
        Self::build_with(
            commits,
            WriterConfig {
                row_group_rows: 512,
                page_rows: 64,
                ..WriterConfig::default()
            },
        )
        .await
    }

    pub async fn engine(&self, config: QueryConfig) -> CrossShardQuery {
        CrossShardQuery::open(&self.lake, config)
            .await
            .expect("engine")
    }

    pub fn in_namespace(&self, ns: &str) -> Vec<&Event> {
        self.events.iter().filter(|e| e.namespace == ns).collect()
    }

    /// Latest event per (namespace, entity_type, entity_id), by input order
    /// (which is commit order here), deleted entities excluded.
    pub fn things(&self) -> BTreeMap<(String, String, String), &Event> {
        let mut latest: BTreeMap<(String, String, String), &Event> = BTreeMap::new();
        for e in &self.events {
            if let (Some(t), Some(id)) = (&e.entity_type, &e.entity_id) {
                latest.insert((e.namespace.clone(), t.clone(), id.clone()), e);
            }
        }
        latest.retain(|_, e| e.event_type != "thing.deleted");
        latest
    }
}

/// A config with the cache on and two partitions, as on the CI machine.
pub fn config() -> QueryConfig {
    QueryConfig {
        target_partitions: 2,
        ..QueryConfig::default()
    }
}
