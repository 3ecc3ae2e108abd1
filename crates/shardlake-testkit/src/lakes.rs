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
