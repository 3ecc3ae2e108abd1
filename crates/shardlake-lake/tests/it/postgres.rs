//! The lake with its catalog and control state on PostgreSQL (the test
//! kit's server, a fresh database per test) and its files on S3 (moto):
//! two `Lake`s opened from different data directories are two servers on
//! one lake. Their commits race on the catalog row's compare-and-swap; pins,
//! checkpoints and the maintenance lease are shared through the database.

use std::time::Duration;

use shardlake_core::Event;
use shardlake_lake::{EmitterConfig, Lake, MaintenanceConfig, maintenance::Action};
use shardlake_testkit::{moto, postgres};

use crate::common::{assert_exactly, events};

/// Opens (creating on first use) the lake in the PostgreSQL database
/// `url` with files under `prefix` of `bucket`, as a server whose local
/// data directory is `dir` would.
async fn open(dir: &std::path::Path, url: &str, bucket: &shardlake_testkit::S3Bucket) -> Lake {
    let (lake, _created) = Lake::open_or_create_in(dir, &bucket.storage("lake"), Some(url), None)
        .await
        .expect("open the lake on postgres");
    lake
}

/// Emits `events` in batches of `batch`, in order; (accepted, duplicates).
async fn emit_all(lake: Lake, events: Vec<Event>, batch: usize) -> (u64, u64) {
    let emitter = lake
        .emitter(EmitterConfig {
            flush_interval: Duration::from_millis(5),
            ..EmitterConfig::default()
        })
        .await
        .expect("emitter");
    let (mut accepted, mut duplicates) = (0, 0);
    for chunk in events.chunks(batch) {
        let ack = emitter.emit(chunk).await.expect("emit");
        accepted += ack.accepted as u64;
        duplicates += ack.duplicates as u64;
    }
    emitter.close().await.expect("close");
    (accepted, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_catalog_commit_overlapping_shards_exactly_once() {
    let url = postgres().database().await;
    let bucket = moto().bucket().await;
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    // Both create the lake at once: one creates it, the other opens it.
    let (a, b) = tokio::join!(
        open(a_dir.path(), &url, &bucket),
        open(b_dir.path(), &url, &bucket)
    );
    assert!(
        !a_dir.path().join("catalog.db").exists(),
        "no local catalog"
    );

    // Shards 0..6 go to A, 2..8 to B: shards 2..6 reach both servers, in
    // order on each, as a shard that retries on another server would send.
    let all = events(0..8, 300, 3);
    let to = |range: std::ops::Range<i32>| -> Vec<Event> {
        all.iter()
            .filter(|e| range.contains(&e.shard_id))
            .cloned()
            .collect()
    };
    let (for_a, for_b) = (to(0..6), to(2..8));
    let overlap = all.iter().filter(|e| (2..6).contains(&e.shard_id)).count() as u64;
    let (ra, rb) = tokio::join!(
        tokio::spawn(emit_all(a.clone(), for_a, 97)),
        tokio::spawn(emit_all(b.clone(), for_b, 89)),
    );
    let ((acc_a, dup_a), (acc_b, dup_b)) = (ra.expect("a"), rb.expect("b"));
    assert_eq!(acc_a + acc_b, all.len() as u64, "every event accepted once");
    assert_eq!(dup_a + dup_b, overlap, "every second copy is a duplicate");
    assert_exactly(&a, &all).await;
    assert_exactly(&b, &all).await;
    let state = b.commit_state().await.expect("state");
    for shard in 0..8 {
        assert_eq!(state.watermarks.get(&shard), Some(&300), "shard {shard}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_checkpoints_and_the_maintenance_lease_are_shared_through_postgres() {
    let url = postgres().database().await;
    let bucket = moto().bucket().await;
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let a = open(a_dir.path(), &url, &bucket).await;
    let (accepted, _) = emit_all(a.clone(), events(0..2, 50, 2), 25).await;
    assert_eq!(accepted, 100);
    let b = open(b_dir.path(), &url, &bucket).await;

    // Durable pins and leases written by one server are seen by the other;
    // a lease only grows; a 64-bit snapshot id survives.
    let big = i64::MAX - 7;
    a.pins().set("migration:m1", &[big, 3]).await.expect("set");
    a.pins()
        .lease("replay-cursor", 9, Duration::from_secs(3600))
        .await
        .expect("lease");
    b.pins()
        .lease("replay-cursor", 9, Duration::from_secs(1))
        .await
        .expect("shorter renewal");
    let pins = b.pins().list().await.expect("list");
    let held: Vec<(String, i64)> = pins
        .iter()
        .map(|p| (p.holder.clone(), p.snapshot_id))
        .collect();
    assert_eq!(
        held,
        vec![
            ("migration:m1".to_owned(), 3),
            ("replay-cursor".to_owned(), 9),
            ("migration:m1".to_owned(), big),
        ]
    );
    let lease_end = pins[1].expires_at_ms.expect("a lease");
    assert!(
        lease_end > chrono::Utc::now().timestamp_millis() + 3_000_000,
        "the longer lease stays"
    );
    b.pins().release("migration:m1").await.expect("release");
    assert_eq!(a.pins().list().await.expect("list").len(), 1);

    // Checkpoints: saved on one, resumed on the other, never backwards.
    let (ca, cb) = (
        a.checkpoints().await.expect("a"),
        b.checkpoints().await.expect("b"),
    );
    ca.save("proj", 0, 2, 40).await.expect("save");
    ca.save("proj", 1, 2, 25).await.expect("save");
    cb.save("proj", 0, 2, 10).await.expect("an older save");
    assert_eq!(cb.get("proj", 0, 2).await.expect("get"), Some(40));
    assert_eq!(
        cb.resume_position("proj", 0, 1).await.expect("resume"),
        25,
        "a new layout starts where the complete old one is"
    );

    // One maintainer at a time across servers: a run on B while A's lease
    // (taken by hand here, as a run in progress on A holds it) is skipped.
    let config = MaintenanceConfig::default();
    let report = a
        .maintain(&config, &[Action::Expire], false, &|_| {})
        .await
        .expect("maintain on a");
    assert!(report.skipped.is_none(), "{report:?}");
    sqlx::query(
        "INSERT INTO shardlake_maintenance (name, runner, lease_until_ms) \
         VALUES ('lake', 'other-host:1:run', $1)",
    )
    .bind(chrono::Utc::now().timestamp_millis() + 60_000)
    .execute(a.database().pool())
    .await
    .expect("a lease held elsewhere");
    let report = b
        .maintain(&config, &[Action::Expire], false, &|_| {})
        .await
        .expect("maintain on b");
    let skipped = report
        .skipped
        .expect("skipped while another host holds the lease");
    assert!(skipped.contains("other-host:1:run"), "{skipped}");
}

#[tokio::test]
async fn a_missing_lake_in_a_postgres_catalog_is_refused_and_a_bad_url_named() {
    let url = postgres().database().await;
    let dir = tempfile::tempdir().expect("dir");
    let storage = shardlake_lake::ObjectStorageConfig::default();
    let err = Lake::open_existing_in(dir.path(), &storage, Some(&url), None)
        .await
        .expect_err("no lake yet");
    assert_eq!(err.kind(), shardlake_lake::ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string()
            .contains("no shardlake lake in the catalog at postgres://"),
        "{err}"
    );

    let wrong = format!(
        "postgres://shardlake:hunter2@127.0.0.1:{}/nope",
        postgres().port()
    );
    let err = Lake::open_or_create_in(dir.path(), &storage, Some(&wrong), None)
        .await
        .expect_err("no such database");
    let shown = format!("{err:#}");
    assert!(shown.contains("postgres://shardlake:***@"), "{shown}");
    assert!(
        !shown.contains("hunter2"),
        "the password is never shown: {shown}"
    );

    let err = Lake::open_or_create_in(
        dir.path(),
        &storage,
        Some(&url),
        Some(shardlake_lake::TableFormat::Parquet),
    )
    .await
    .expect_err("parquet needs its local control database");
    assert!(
        err.to_string().contains("needs the Iceberg format"),
        "{err}"
    );
}
