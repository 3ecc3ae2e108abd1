//! Writing one new Iceberg snapshot by hand: its manifests, its manifest
//! list, its summary and the metadata update that makes it current.
//!
//! iceberg-rust 0.10 offers only `fast_append`, which commits through the
//! catalog (reloading and re-parsing the table's metadata on every commit)
//! and can neither replace files nor merge manifests. Every snapshot
//! shardlake writes (the emitter's appends in [`super::append`], the
//! replace snapshots of compaction and manifest merging in
//! [`super::rewrite`]) is produced here instead and committed with
//! [`super::IcebergEventsTable::commit`], the same compare-and-swap the SQL
//! catalog uses. The files follow the Iceberg v2 spec and Java's naming
//! (`<uuid>-m<n>.avro` manifests, `snap-<id>-1-<uuid>.avro` lists), and are
//! read by pyiceberg and DuckDB in the interop test.

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::spec::{
    DataFile, MAIN_BRANCH, ManifestFile, ManifestListWriter, ManifestWriter, ManifestWriterBuilder,
    Operation, Snapshot, SnapshotReference, SnapshotRetention, SnapshotSummaryCollector, Summary,
    TableMetadata, TableMetadataBuilder,
};
use iceberg::table::Table;

use super::manifests::InFlightFiles;
use crate::error::Result;

/// Summary totals Iceberg keeps up to date on every snapshot.
const TOTALS: [(&str, &str, &str); 4] = [
    ("total-data-files", "added-data-files", "deleted-data-files"),
    ("total-records", "added-records", "deleted-records"),
    ("total-files-size", "added-files-size", "removed-files-size"),
    (
        "total-delete-files",
        "added-delete-files",
        "removed-delete-files",
    ),
];

/// A snapshot being written on top of `base`'s current snapshot.
pub(crate) struct SnapshotWriter<'a> {
    base: &'a Table,
    snapshot_id: i64,
    sequence_number: i64,
    uuid: uuid::Uuid,
    manifests_started: u32,
    /// Every file written for this snapshot (removed again if it is not committed).
    written: Vec<String>,
    /// Registers them as in flight until the writer is dropped.
    in_flight: InFlightFiles,
    tracked: Vec<String>,
}

impl Drop for SnapshotWriter<'_> {
    fn drop(&mut self) {
        for path in &self.tracked {
            self.in_flight.remove(path);
        }
    }
}

impl<'a> SnapshotWriter<'a> {
    /// A snapshot with a fresh id and the next sequence number of `base`,
    /// its files registered in `in_flight` while it lives.
    pub(crate) fn new(base: &'a Table, in_flight: &InFlightFiles) -> Self {
        let metadata = base.metadata();
        Self {
            base,
            snapshot_id: new_snapshot_id(metadata),
            sequence_number: metadata.last_sequence_number() + 1,
            uuid: uuid::Uuid::new_v4(),
            manifests_started: 0,
            written: Vec::new(),
            in_flight: in_flight.clone(),
            tracked: Vec::new(),
        }
    }

    /// Notes a file about to be written for this snapshot.
    fn start_file(&mut self, path: &str) {
        self.in_flight.add(path);
        self.tracked.push(path.to_owned());
        self.written.push(path.to_owned());
    }

    /// The new snapshot's id.
    pub(crate) fn snapshot_id(&self) -> i64 {
        self.snapshot_id
    }

    /// A writer for one more data manifest of this snapshot.
    pub(crate) fn manifest(&mut self) -> Result<ManifestWriter> {
        let metadata = self.base.metadata();
        let path = format!(
            "{}/metadata/{}-m{}.avro",
            metadata.location(),
            self.uuid,
            self.manifests_started
        );
        self.manifests_started += 1;
        self.start_file(&path);
        Ok(ManifestWriterBuilder::new(
            self.base.file_io().new_output(&path)?,
            Some(self.snapshot_id),
            Arc::clone(metadata.current_schema()),
            (**metadata.default_partition_spec()).clone(),
        )
        .build_v2_data())
    }

    /// A manifest of `files` as added by this snapshot (`None` for none).
    pub(crate) async fn added_manifest(
        &mut self,
        files: impl IntoIterator<Item = DataFile>,
    ) -> Result<Option<ManifestFile>> {
        let mut files = files.into_iter().peekable();
        if files.peek().is_none() {
            return Ok(None);
        }
        let mut writer = self.manifest()?;
        for file in files {
            writer.add_file(file, self.sequence_number)?;
        }
        Ok(Some(writer.write_manifest_file().await?))
    }

    /// Writes the manifest list of `manifests` (newest first) and returns
    /// the snapshot over it, with `summary` completed by the totals carried
    /// from the parent.
    pub(crate) async fn finish(
        &mut self,
        manifests: &[ManifestFile],
        operation: Operation,
        summary: HashMap<String, String>,
    ) -> Result<(Snapshot, Arc<Vec<ManifestFile>>)> {
        let metadata = self.base.metadata();
        let parent = metadata.current_snapshot();
        let path = format!(
            "{}/metadata/snap-{}-1-{}.avro",
            metadata.location(),
            self.snapshot_id,
            self.uuid
        );
        self.start_file(&path);
        let mut list = ManifestListWriter::v2(
            self.base.file_io().new_output(&path)?.writer().await?,
            self.snapshot_id,
            parent.map(|p| p.snapshot_id()),
            self.sequence_number,
        );
        list.add_manifests(manifests.iter().cloned())?;
        list.close().await?;
        // The list as readers will see it: sequence numbers assigned.
        let listed: Vec<ManifestFile> = manifests
            .iter()
            .cloned()
            .map(|mut m| {
                if m.sequence_number < 0 {
                    m.sequence_number = self.sequence_number;
                }
                if m.min_sequence_number < 0 {
                    m.min_sequence_number = self.sequence_number;
                }
                m
            })
            .collect();
        let snapshot = Snapshot::builder()
            .with_snapshot_id(self.snapshot_id)
            .with_parent_snapshot_id(parent.map(|p| p.snapshot_id()))
            .with_sequence_number(self.sequence_number)
            .with_timestamp_ms(
                chrono::Utc::now()
                    .timestamp_millis()
                    .max(metadata.last_updated_ms()),
            )
            .with_manifest_list(path)
            .with_summary(Summary {
                operation,
                additional_properties: with_totals(summary, parent.map(|p| p.summary())),
            })
            .with_schema_id(metadata.current_schema_id())
            .build();
        Ok((snapshot, Arc::new(listed)))
    }

    /// Removes every file written for this snapshot: it was not committed
    /// and nothing references them. Best effort; cleanup catches the rest.
    pub(crate) async fn discard(&mut self) {
        for path in self.written.drain(..) {
            if let Err(e) = self.base.file_io().delete(&path).await {
                tracing::debug!(error = %e, path, "could not remove an uncommitted file");
            }
        }
    }

    /// Forgets the written files (they are committed now).
    pub(crate) fn committed(&mut self) {
        self.written.clear();
    }
}

/// `builder` with `snapshot` added and made `main`'s head.
pub(crate) fn add_as_main(
    builder: TableMetadataBuilder,
    snapshot: Snapshot,
) -> Result<TableMetadataBuilder> {
    let snapshot_id = snapshot.snapshot_id();
    Ok(builder.add_snapshot(snapshot)?.set_ref(
        MAIN_BRANCH,
        SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
    )?)
}

/// The summary of adding `added` and removing `removed` (files and rows
/// counts, sizes, changed partitions), before totals.
pub(crate) fn change_summary<'f>(
    base: &Table,
    added: impl IntoIterator<Item = &'f DataFile>,
    removed: impl IntoIterator<Item = &'f DataFile>,
) -> HashMap<String, String> {
    let metadata = base.metadata();
    let schema = Arc::clone(metadata.current_schema());
    let spec = Arc::clone(metadata.default_partition_spec());
    let mut collector = SnapshotSummaryCollector::default();
    for file in added {
        collector.add_file(file, Arc::clone(&schema), Arc::clone(&spec));
    }
    for file in removed {
        collector.remove_file(file, Arc::clone(&schema), Arc::clone(&spec));
    }
    collector.build()
}

/// `summary` with Iceberg's `total-*` properties: the parent's totals plus
/// what this snapshot added, minus what it removed.
fn with_totals(
    mut summary: HashMap<String, String>,
    parent: Option<&Summary>,
) -> HashMap<String, String> {
    let number = |map: &HashMap<String, String>, key: &str| {
        map.get(key)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    for (total, added, removed) in TOTALS {
        let before = parent.map_or(0, |p| number(&p.additional_properties, total));
        let after = before + number(&summary, added) - number(&summary, removed);
        summary.insert(total.to_owned(), after.max(0).to_string());
    }
    summary
        .entry("total-position-deletes".to_owned())
        .or_insert_with(|| "0".to_owned());
    summary
        .entry("total-equality-deletes".to_owned())
        .or_insert_with(|| "0".to_owned());
    summary
}

/// A snapshot id not used by `metadata` (positive, random, as iceberg does).
fn new_snapshot_id(metadata: &TableMetadata) -> i64 {
    loop {
        let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((hi ^ lo) & i64::MAX as u64) as i64;
        if id != 0 && metadata.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_carry_the_parents_and_apply_this_snapshots_changes() {
        let parent = Summary {
            operation: Operation::Append,
            additional_properties: HashMap::from([
                ("total-data-files".to_owned(), "10".to_owned()),
                ("total-records".to_owned(), "1000".to_owned()),
            ]),
        };
        let this = HashMap::from([
            ("added-data-files".to_owned(), "2".to_owned()),
            ("deleted-data-files".to_owned(), "5".to_owned()),
            ("added-records".to_owned(), "70".to_owned()),
            ("deleted-records".to_owned(), "70".to_owned()),
        ]);
        let totals = with_totals(this, Some(&parent));
        assert_eq!(totals["total-data-files"], "7");
        assert_eq!(totals["total-records"], "1000");
        assert_eq!(totals["total-files-size"], "0");
        let first = with_totals(
            HashMap::from([("added-records".to_owned(), "3".to_owned())]),
            None,
        );
        assert_eq!(first["total-records"], "3");
    }
}
