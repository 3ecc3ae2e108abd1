//! Waiting for a running server to reach a state.

use std::time::{Duration, Instant};

use serde_json::Value;

/// Polls `GET /v1/stats` (built by `request`, which adds the URL and any
/// token) until `ready` holds, and returns those stats. Tests wait for a
/// state this way instead of sleeping a guessed time; the one-minute
/// deadline only turns a hang into a failure.
pub async fn wait_for_stats(
    request: impl Fn() -> reqwest::RequestBuilder,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats: Value = request()
            .send()
            .await
            .expect("stats request")
            .json()
            .await
            .expect("stats json");
        if ready(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "waited a minute for {what}: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
