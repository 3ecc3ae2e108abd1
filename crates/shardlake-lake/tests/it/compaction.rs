//! Compaction: many small commits become a few sorted files per namespace,
//! with every row, position and watermark unchanged, also while an emitter
//! keeps committing.

use std::collections::BTreeMap;

use shardlake_core::Event;
use shardlake_lake::iceberg::{COMPACTION_PROPERTY, current_data_files};
use shardlake_lake::{CompactionConfig, Lake};

use crate::common::{all_rows, assert_exactly, events};

use shardlake_testkit::quick_emitter_config as quick;

fn eager() -> CompactionConfig {
    CompactionConfig {
        small_file_bytes: u64::MAX,
        min_small_files: 2,
        max_attempts: 10,
    }
}

/// Rows by position: everything an event is, including where it sits.
async fn by_position(lake: &Lake) -> BTreeMap<i64, Event> {
    all_rows(lake)
        .await
        .into_iter()
        .map(|(_, e)| (e.position.expect("position"), e))
        .collect()
}

#[tokio::test]
async fn small_commits_become_one_sorted_file_per_namespace_with_nothing_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open_local(dir.path()).await.expect("lake");
    let all = events(0..4, 60, 3);
    let emitter = lake.emitter(quick()).await.expect("emitter");
    for chunk in all.chunks(12) {
        emitter.emit(chunk).await.expect("commit");
    }
    emitter.close().await.expect("close");
    let before_files = current_data_files(lake.iceberg_table().expect("iceberg"))
        .await
        .expect("files")
        .len();
    assert!(
        before_files >= 40,
        "{before_files} files: not many small commits"
    );
    let before_rows = by_position(&lake).await;
    let before_state = lake.commit_state().await.expect("state");

    let report = lake.compact(&eager()).await.expect("compacts");
    assert_eq!(report.namespaces, 3);
    assert_eq!(report.files_removed, before_files);
    assert_eq!(report.files_added, 3);
    assert_eq!(report.rows, all.len() as u64);

    let table = lake
        .iceberg_table()
        .expect("iceberg")
        .load()
        .await
        .expect("load");
    let snapshot = table.metadata().current_snapshot().expect("snapshot");
    assert_eq!(Some(snapshot.snapshot_id()), report.snapshot_id);
    assert_eq!(
        snapshot.summary().operation,
        iceberg::spec::Operation::Replace
    );
    assert_eq!(
        snapshot
            .summary()
            .additional_properties
            .get(COMPACTION_PROPERTY)
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        current_data_files(lake.iceberg_table().expect("iceberg"))
            .await
            .expect("files")
            .len(),
        3
    );
    // Every row, with its position, is still there, and nothing else.
    assert_eq!(by_position(&lake).await, before_rows);
    assert_exactly(&lake, &all).await;
    // Each new file is sorted by (partition_key, position).
    let rows = all_rows(&lake).await;
    let mut per_file: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for (file, e) in rows {
        per_file
            .entry(file)
            .or_default()
            .push((e.partition_key.clone(), e.position.expect("position")));
    }
    for (file, keys) in per_file {
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "{file} is not sorted");
    }
    // Watermarks and the next position are untouched.
    assert_eq!(
        lake.commit_state().await.expect("state").watermarks,
        before_state.watermarks
    );
    assert_eq!(
        lake.commit_state().await.expect("state").next_position,
        before_state.next_position
    );

    // Nothing left to do.
    let again = lake.compact(&eager()).await.expect("no-op");
    assert_eq!((again.snapshot_id, again.files_removed), (None, 0));

    // The emitter carries on: duplicates are still duplicates, new events
    // get the next positions.
    let emitter = lake.emitter(quick()).await.expect("emitter");
    let ack = emitter.emit(&all[..10]).await.expect("resend");
    assert_eq!((ack.accepted, ack.duplicates), (0, 10));
    let more = events(4..5, 5, 3);
    emitter.emit(&more).await.expect("more");
    emitter.close().await.expect("close");
    let everything: Vec<Event> = all.iter().chain(&more).cloned().collect();
    assert_exactly(&lake, &everything).await;
}

#[tokio::test]
async fn compaction_while_an_emitter_commits_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open_local(dir.path()).await.expect("lake");
    let all = events(0..6, 80, 4);
    let (first, rest) = all.split_at(all.len() / 2);
    let emitter = lake.emitter(quick()).await.expect("emitter");
    for chunk in first.chunks(20) {
        emitter.emit(chunk).await.expect("commit");
    }
    // Keep committing small batches while compactions run.
    let writer = {
        let rest = rest.to_vec();
        let lake = lake.clone();
        tokio::spawn(async move {
            let emitter = lake.emitter(quick()).await.expect("emitter");
            for chunk in rest.chunks(10) {
                emitter.emit(chunk).await.expect("commit");
            }
            emitter.close().await.expect("close");
        })
    };
    // Every lost race needs a writer commit inside the attempt's window:
    // the writer makes 24, so 50 attempts cannot all lose.
    let patient = CompactionConfig {
        max_attempts: 50,
        ..eager()
    };
    let mut compacted = 0;
    while !writer.is_finished() {
        let report = lake
            .compact(&patient)
            .await
            .expect("compaction never fails here");
        compacted += report.files_removed;
    }
    writer.await.expect("writer");
    emitter.close().await.expect("close");
    lake.compact(&eager()).await.expect("final compaction");
    assert!(compacted > 0, "no compaction ran alongside the writer");
    assert_exactly(&lake, &all).await;
    assert_eq!(
        current_data_files(lake.iceberg_table().expect("iceberg"))
            .await
            .expect("files")
            .len(),
        4
    );
}
