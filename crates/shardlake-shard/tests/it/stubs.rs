//! Shard stubs: idempotent apply, digests that verify against the lake,
//! fencing, dropping; the HTTP stub against a real HTTP shard.

use std::sync::Arc;

use shardlake_core::Event;
use shardlake_lake::Lake;
use shardlake_query::{CrossShardQuery, QueryConfig, ReplayQuery};
use shardlake_shard::{ErrorKind, HttpShard, InMemoryShard, ShardStub, digest_of, shard_service};

/// 10 keys over 3 namespaces, 1 to 4 events each (`Order:o-3` and
/// `Order:o-7` have 4).
async fn lake_with_keys(dir: &std::path::Path) -> Lake {
    shardlake_testkit::lake_with_keys(dir, 10).await.0
}

async fn replayed(lake: &Lake, keys: &[&str]) -> Vec<Event> {
    let engine = CrossShardQuery::open(lake, QueryConfig::default())
        .await
        .expect("engine");
    let mut stream = engine
        .replay(ReplayQuery {
            partition_keys: keys.iter().map(|k| k.to_string()).collect(),
            ..ReplayQuery::default()
        })
        .stream()
        .await
        .expect("replay");
    let mut out = Vec::new();
    while let Some(b) = futures::StreamExt::next(&mut stream).await {
        out.extend(shardlake_core::events_from_batch(&b.expect("batch")).expect("events"));
    }
    out
}

async fn exercise(shard: &dyn ShardStub, lake: &Lake) {
    let keys = ["Order:o-3", "Order:o-7"];
    let events = replayed(lake, &keys).await;
    assert_eq!(events.len(), 8);
    let ack = shard.apply(&events).await.expect("apply");
    assert_eq!((ack.applied, ack.skipped), (8, 0));
    // Re-running a copy converges: nothing is applied twice.
    let ack = shard.apply(&events).await.expect("apply again");
    assert_eq!((ack.applied, ack.skipped), (0, 8));
    // Digests match the lake's own.
    let names: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    let digests = shard.digests(&names).await.expect("digests");
    for key in keys {
        let from_lake: Vec<&Event> = events.iter().filter(|e| e.partition_key == key).collect();
        assert_eq!(digests.get(key), Some(&digest_of(from_lake)), "{key}");
    }
    // Fencing and dropping.
    assert!(shard.accepts("Order:o-3").await.expect("accepts"));
    shard
        .set_accepting(&names[..1], false)
        .await
        .expect("fence");
    assert!(!shard.accepts("Order:o-3").await.expect("accepts"));
    assert!(shard.accepts("Order:o-7").await.expect("accepts"));
    shard
        .set_accepting(&names[..1], true)
        .await
        .expect("unfence");
    assert!(shard.accepts("Order:o-3").await.expect("accepts"));
    shard.drop_keys(&names[..1]).await.expect("drop");
    let left = shard.digests(&names).await.expect("digests");
    assert_eq!(left.keys().collect::<Vec<_>>(), vec!["Order:o-7"]);
    shard.drain().await.expect("drain");
}

#[tokio::test]
async fn the_in_memory_shard_materializes_and_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = lake_with_keys(dir.path()).await;
    let shard = InMemoryShard::new(3);
    exercise(&shard, &lake).await;
    let latest = shard.latest("Order:o-7").expect("state");
    assert_eq!(latest.version, Some(4), "the latest version is the state");
    shard.fail_after(0);
    assert!(shard.apply(&[]).await.is_err(), "injected failure");
}

/// A real HTTP shard serving an in-memory one.
async fn http_shard(inner: Arc<InMemoryShard>) -> String {
    let app = axum::Router::new().nest("/shard", shard_service(inner));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/shard")
}

#[tokio::test]
async fn the_http_shard_speaks_the_same_contract_over_a_real_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = lake_with_keys(dir.path()).await;
    let inner = Arc::new(InMemoryShard::new(5));
    let base = http_shard(Arc::clone(&inner)).await;
    let shard = HttpShard::new(5, base);
    exercise(&shard, &lake).await;
    assert_eq!(
        inner.keys().into_iter().collect::<Vec<_>>(),
        vec!["Order:o-7"]
    );
    // A write to a fenced key is refused as such, not as a broken shard.
    let names = vec!["Order:o-7".to_owned()];
    shard.set_accepting(&names, false).await.expect("fence");
    let write = replayed(&lake, &["Order:o-7"]).await;
    match shard.write(&write[..1]).await {
        Err(e) if e.kind() == ErrorKind::KeyFenced => {
            assert_eq!(e.context_value("key"), Some("Order:o-7"));
            assert_eq!(e.context_value("shard"), Some("5"));
        }
        other => panic!("expected a fenced refusal, got {other:?}"),
    }
    // A shard that is not there: retries, then a clear error.
    let gone = HttpShard::new(6, "http://127.0.0.1:9/shard");
    let err = gone.apply(&[]).await.expect_err("unreachable").to_string();
    assert!(err.contains("shard 6") && err.contains("gave up"), "{err}");
}
