//! The emitter's contract: acks after commit, duplicates, rejects, dead
//! letters, backpressure, batching, layout of the files it writes.

use std::collections::BTreeMap;
use std::time::Duration;

use shardlake_core::Event;
use shardlake_lake::{EmitInput, EmitterConfig, ErrorKind, HealthStatus, Lake};

use crate::common::{all_rows, assert_exactly, events, ts};

fn quick() -> EmitterConfig {
    EmitterConfig {
        flush_interval: Duration::from_millis(20),
        ..EmitterConfig::default()
    }
}

#[tokio::test]
async fn ack_comes_after_commit_and_resends_are_duplicates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open_local(tmp.path()).await.expect("open");
    let emitter = lake.emitter(quick()).await.expect("emitter");
    let batch = events(0..3, 40, 4);

    let ack = emitter.emit(&batch).await.expect("emit");
    assert_eq!(ack.accepted, 120);
    assert_eq!(ack.duplicates, 0);
    assert!(ack.rejected.is_empty());
    assert_eq!(ack.watermarks, BTreeMap::from([(0, 40), (1, 40), (2, 40)]));
    // Acked means committed: the table already shows it.
    let state = lake.commit_state().await.expect("state");
    assert_eq!(state.snapshot_id, ack.snapshot_id);
    assert_eq!(state.next_position, 121);
    assert_exactly(&lake, &batch).await;

    let again = emitter.emit(&batch).await.expect("emit");
    assert_eq!((again.accepted, again.duplicates), (0, 120));
    assert_eq!(again.watermarks, ack.watermarks);
    assert_eq!(again.snapshot_id, None);

    // A resend that overlaps new events: only the new ones land.
    let more = events(0..3, 50, 4);
    let ack = emitter.emit(&more).await.expect("emit");
    assert_eq!((ack.accepted, ack.duplicates), (30, 120));
    assert_exactly(&lake, &more).await;

    let m = emitter.metrics();
    assert_eq!(m.events_committed, 150);
    assert_eq!(m.events_duplicate, 240);
    assert_eq!(m.commits, 2);
    assert_eq!(m.queued_events, 0);
    emitter.close().await.expect("close");
    assert_eq!(emitter.health().status, HealthStatus::Stopped);
}

#[tokio::test]
async fn watermarks_survive_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let batch = events(0..2, 25, 2);
    {
        let lake = Lake::open_local(tmp.path()).await.expect("open");
        let emitter = lake.emitter(quick()).await.expect("emitter");
        emitter.emit(&batch).await.expect("emit");
        emitter.close().await.expect("close");
    }
    let lake = Lake::open_local(tmp.path()).await.expect("reopen");
    let state = lake.commit_state().await.expect("state");
    assert_eq!(state.watermarks, BTreeMap::from([(0, 25), (1, 25)]));
    let emitter = lake.emitter(quick()).await.expect("emitter");
    let ack = emitter.emit(&batch).await.expect("emit");
    assert_eq!((ack.accepted, ack.duplicates), (0, 50));
    assert_exactly(&lake, &batch).await;
}

#[tokio::test]
async fn bad_events_are_rejected_alone_and_dead_lettered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open_local(tmp.path()).await.expect("open");
    let emitter = lake.emitter(quick()).await.expect("emitter");
    let body = concat!(
        r#"{"namespace":"a","shard_id":1,"seq":1,"partition_key":"k","event_type":"e","ts":"2026-01-01T00:00:00Z"}"#,
        "\n",
        r#"{"namespace":"a","shard_id":1,"seq":2,"partition_key":"k","event_type":"e","ts":"never"}"#,
        "\n",
        "\n",
        r#"{"namespace":"a","shard_id":1,"seq":3,"partition_key":"k","event_type":"e","ts":"2026-01-01T00:00:00Z","payload":"nope"}"#,
        "\n",
        r#"{"namespace":"a","shard_id":1,"seq":4,"partition_key":"k","event_type":"e","ts":"2026-01-01T00:00:00Z","payload":{"ok":true}}"#,
        "\n",
        "{\"namespace\":",
    );
    let ack = emitter
        .emit(EmitInput::Ndjson(body.as_bytes()))
        .await
        .expect("emit");
    assert_eq!(ack.accepted, 2);
    let rejected: Vec<(usize, &str)> = ack.rejected.iter().map(|r| (r.index, r.code)).collect();
    assert_eq!(
        rejected,
        vec![
            (2, "invalid_timestamp"),
            (4, "invalid_payload"),
            (6, "malformed_json")
        ]
    );
    // The good events are in the lake; seq 2 and 3 are not (a later valid
    // seq 2 would now be a duplicate: rejected seqs are the shard's to fix).
    let rows = all_rows(&lake).await;
    let seqs: Vec<i64> = rows.iter().map(|(_, e)| e.seq).collect();
    assert_eq!(seqs, vec![1, 4]);
    assert_eq!(emitter.metrics().events_rejected, 3);

    let dead = std::fs::read_dir(tmp.path().join("dead-letter"))
        .expect("dead-letter dir")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read"))
        .collect::<String>();
    let records: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["code"], "invalid_timestamp");
    assert!(
        records[0]["raw"]
            .as_str()
            .expect("raw")
            .contains("\"never\"")
    );
    assert_eq!(records[2]["raw"], "{\"namespace\":");

    // A single owned event that breaks a rule is reported the same way.
    let bad = Event::new("bad/namespace", 1, 9, "k", "e", ts(0));
    let ack = emitter.emit(bad).await.expect("emit");
    assert_eq!(ack.rejected[0].code, "invalid_namespace");
    assert_eq!(ack.accepted, 0);
}

#[tokio::test]
async fn try_emit_refuses_when_the_queue_is_full_and_emit_waits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open_local(tmp.path()).await.expect("open");
    let emitter = lake
        .emitter(EmitterConfig {
            max_queued_bytes: 1,
            flush_interval: Duration::from_secs(3600),
            ..EmitterConfig::default()
        })
        .await
        .expect("emitter");
    let first = emitter
        .try_emit(&events(0..1, 5, 1))
        .expect("room for one request");
    let err = emitter
        .try_emit(&events(1..2, 5, 1))
        .err()
        .expect("queue is full");
    assert_eq!(err.kind(), ErrorKind::QueueFull);
    // `emit` waits instead of refusing; it can only proceed after a flush.
    let second_events = events(2..3, 5, 1);
    let second = emitter.emit(&second_events).into_future();
    tokio::pin!(second);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut second)
            .await
            .is_err(),
        "emit must wait for room"
    );
    emitter.flush().await.expect("flush");
    assert_eq!(first.await.expect("ack").accepted, 5);
    let second = tokio::time::timeout(Duration::from_secs(30), async {
        // The waiting emit got room when the first batch committed; its own
        // batch commits at the next flush.
        let flusher = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            emitter.flush().await
        };
        let (ack, flushed) = tokio::join!(&mut second, flusher);
        flushed.expect("flush");
        ack
    })
    .await
    .expect("no hang")
    .expect("ack");
    assert_eq!(second.accepted, 5);
}

#[tokio::test]
async fn a_lone_request_is_acked_within_the_flush_interval() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open_local(tmp.path()).await.expect("open");
    let emitter = lake
        .emitter(EmitterConfig {
            flush_interval: Duration::from_millis(100),
            ..EmitterConfig::default()
        })
        .await
        .expect("emitter");
    let event = events(0..1, 1, 1).remove(0);
    let ack = tokio::time::timeout(Duration::from_secs(30), emitter.emit(event))
        .await
        .expect("acked without a flush call")
        .expect("ack");
    assert_eq!(ack.accepted, 1);
}

#[tokio::test]
async fn commits_batch_requests_across_shards() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open_local(tmp.path()).await.expect("open");
    let emitter = lake
        .emitter(EmitterConfig {
            flush_interval: Duration::from_secs(3600),
            ..EmitterConfig::default()
        })
        .await
        .expect("emitter");
    // 16 shards, each sending its own requests: one flush, one snapshot.
    let all = events(0..16, 10, 3);
    let mut acks = Vec::new();
    for shard in 0..16 {
        let mine: Vec<Event> = all
            .iter()
            .filter(|e| e.shard_id == shard)
            .cloned()
            .collect();
        acks.push(emitter.send(&mine).await.expect("send"));
    }
    emitter.flush().await.expect("flush");
    let mut snapshots = std::collections::HashSet::new();
    for ack in acks {
        let ack = ack.await.expect("ack");
        assert_eq!(ack.accepted, 10);
        snapshots.insert(ack.snapshot_id);
    }
    assert_eq!(snapshots.len(), 1, "one snapshot for all shards");
    assert_eq!(emitter.metrics().commits, 1);
    let table = lake
        .iceberg_table()
        .expect("iceberg")
        .load()
        .await
        .expect("load");
    assert_eq!(table.metadata().snapshots().count(), 1);
}

#[tokio::test]
async fn files_are_partitioned_by_namespace_and_sorted_by_key_then_position() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open_local(tmp.path()).await.expect("open");
    let emitter = lake.emitter(quick()).await.expect("emitter");
    for round in 0..3 {
        let batch: Vec<Event> = events(0..4, 30, 3)
            .into_iter()
            .filter(|e| (e.seq - 1) / 10 == round)
            .collect();
        emitter.emit(&batch).await.expect("emit");
    }
    let rows = all_rows(&lake).await;
    assert_eq!(rows.len(), 120);
    let mut by_file: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for (file, e) in rows {
        by_file.entry(file).or_default().push(e);
    }
    // 3 commits x 3 namespaces.
    assert_eq!(by_file.len(), 9);
    for (file, rows) in by_file {
        // The footer says exactly which shards' events the file holds.
        let path = url::Url::parse(&file)
            .expect("url")
            .to_file_path()
            .expect("path");
        let reader = parquet::file::reader::SerializedFileReader::new(
            std::fs::File::open(&path).expect("open"),
        )
        .expect("parquet");
        let kv = parquet::file::reader::FileReader::metadata(&reader)
            .file_metadata()
            .key_value_metadata()
            .cloned()
            .unwrap_or_default();
        let shards = kv
            .iter()
            .find(|k| k.key == shardlake_lake::file_meta::SHARDS_KEY)
            .and_then(|k| k.value.clone())
            .expect("shard metadata");
        let mut want: BTreeMap<i32, (i64, i64, u64)> = BTreeMap::new();
        for e in &rows {
            let w = want.entry(e.shard_id).or_insert((i64::MAX, i64::MIN, 0));
            *w = (w.0.min(e.seq), w.1.max(e.seq), w.2 + 1);
        }
        let got: BTreeMap<i32, (i64, i64, u64)> = shardlake_lake::file_meta::decode(&shards)
            .expect("decodes")
            .into_iter()
            .map(|r| (r.shard_id, (r.min_seq, r.max_seq, r.events)))
            .collect();
        assert_eq!(got, want, "{file}");

        let ns = &rows[0].namespace;
        assert!(file.contains(&format!("/data/namespace={ns}/")), "{file}");
        assert!(
            rows.iter().all(|e| &e.namespace == ns),
            "one namespace per file"
        );
        let keys: Vec<(String, i64)> = rows
            .iter()
            .map(|e| (e.partition_key.clone(), e.position.expect("position")))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(
            keys, sorted,
            "{file} is not sorted by (partition_key, position)"
        );
    }
}
