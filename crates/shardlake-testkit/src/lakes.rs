//! Small lakes with a known shape, for tests that need keys to plan,
//! replay or move.

use std::path::Path;
use std::time::Duration;

use shardlake_core::Event;
use shardlake_lake::{EmitterConfig, Lake, PipelineEmitter};

/// An emitter configuration that commits 1 ms after an event arrives: a
/// test's events are committed (and acked) at once.
pub fn quick_emitter_config() -> EmitterConfig {
    EmitterConfig {
        flush_interval: Duration::from_millis(1),
        ..EmitterConfig::default()
    }
}

/// An emitter of `lake` with [`quick_emitter_config`].
pub async fn quick_emitter(lake: &Lake) -> PipelineEmitter {
    lake.emitter(quick_emitter_config()).await.expect("emitter")
}

/// A local lake at `dir` holding `keys` keys `Order:o-<k>` over 3
/// namespaces (`ns-<k % 3>`), with `1 + k % 4` events each (shard 1, seq
/// in order), committed; returns the lake and the events.
pub async fn lake_with_keys(dir: &Path, keys: u32) -> (Lake, Vec<Event>) {
    let lake = Lake::open_local(dir).await.expect("lake");
    let ts = chrono::DateTime::from_timestamp(1_767_225_600, 0).expect("ts");
    let mut events = Vec::new();
    let mut seq = 0;
    for k in 0..keys {
        for v in 0..(1 + k % 4) {
            seq += 1;
            events.push(
                Event::new(
                    format!("ns-{}", k % 3),
                    1,
                    seq,
                    format!("Order:o-{k}"),
                    "thing.updated",
                    ts,
                )
                .with_entity("Order", format!("o-{k}"), i64::from(v) + 1)
                .with_payload(&serde_json::json!({"v": v, "k": k})),
            );
        }
    }
    let emitter = quick_emitter(&lake).await;
    emitter.emit(&events).await.expect("commit");
    emitter.close().await.expect("close");
    (lake, events)
}

/// The fixture of the query tests and the sqllogictest suite: 3000 events
/// over 4 namespaces and 6 shards.
pub const FIXTURE_EVENTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/events-4ns-6shards.ndjson"
);

/// Commits the fixture events into `lake` in `commits` commits (so each
/// namespace has `commits` files; 0: none) and returns them.
pub async fn commit_fixture(lake: &Lake, commits: usize) -> Vec<Event> {
    let text = std::fs::read(FIXTURE_EVENTS).expect("fixture");
    let lines: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let events: Vec<Event> = lines
        .iter()
        .map(|l| serde_json::from_slice(l).expect("fixture event"))
        .collect();
    let emitter = quick_emitter(lake).await;
    let per_commit = lines.len().div_ceil(commits.max(1));
    for chunk in lines.chunks(per_commit).take(commits) {
        let body = chunk.join(&b'\n');
        let ack = emitter
            .emit(shardlake_lake::EmitInput::Ndjson(&body))
            .await
            .expect("emit");
        assert_eq!(ack.accepted, chunk.len());
    }
    emitter.close().await.expect("close");
    events
}
