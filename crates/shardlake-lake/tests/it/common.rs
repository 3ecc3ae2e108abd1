//! Fixtures and checks shared by the lake's integration tests.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use shardlake_core::{Event, events_from_batch};
use shardlake_lake::Lake;

pub fn ts(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600 + secs, 0).expect("in range")
}

/// `per_shard` events for each shard in `shards`, spread over `namespaces`
/// namespaces and a few keys per shard, seqs 1..=per_shard.
pub fn events(shards: std::ops::Range<i32>, per_shard: i64, namespaces: usize) -> Vec<Event> {
    let mut out = Vec::new();
    for seq in 1..=per_shard {
        for shard in shards.clone() {
            let ns = format!("ns-{}", (shard as usize + seq as usize) % namespaces);
            let key = format!("Order:o-{shard}-{}", seq % 7);
            out.push(
                Event::new(ns, shard, seq, key, "thing.updated", ts(seq))
                    .with_entity("Order", format!("o-{shard}-{}", seq % 7), seq)
                    .with_payload(&serde_json::json!({"shard": shard, "seq": seq})),
            );
        }
    }
    out
}

/// Every row of the lake's current snapshot, with the file it came from.
pub async fn all_rows(lake: &Lake) -> Vec<(String, Event)> {
    let mut rows = Vec::new();
    // Through the lake's own listing and store: the same check for both
    // formats, on disk and on S3.
    for file in lake.data_files().await.expect("files") {
        let path = lake
            .warehouse()
            .object_path(&file.location)
            .expect("inside the warehouse");
        let bytes = lake
            .warehouse()
            .store()
            .get(&path)
            .await
            .expect("get data file")
            .bytes()
            .await
            .expect("read data file");
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .expect("parquet")
            .build()
            .expect("reader");
        for batch in reader {
            for e in events_from_batch(&batch.expect("batch")).expect("events") {
                rows.push((file.location.clone(), e));
            }
        }
    }
    rows
}

/// Asserts the lake holds exactly `expected` (by (shard, seq)), each once,
/// with unique positions 1..=n.
pub async fn assert_exactly(lake: &Lake, expected: &[Event]) {
    let rows = all_rows(lake).await;
    let got: Vec<(i32, i64)> = rows.iter().map(|(_, e)| (e.shard_id, e.seq)).collect();
    let unique: HashSet<(i32, i64)> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "a (shard_id, seq) appears twice");
    let want: HashSet<(i32, i64)> = expected.iter().map(|e| (e.shard_id, e.seq)).collect();
    assert_eq!(unique, want, "the lake holds other events than expected");
    let mut positions: Vec<i64> = rows
        .iter()
        .map(|(_, e)| e.position.expect("position"))
        .collect();
    positions.sort_unstable();
    let n = positions.len() as i64;
    assert_eq!(
        positions,
        (1..=n).collect::<Vec<_>>(),
        "positions are not 1..=n"
    );
}
