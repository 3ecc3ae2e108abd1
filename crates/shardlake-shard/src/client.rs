//! The HTTP shard protocol, client side: [`HttpShard`] drives a shard
//! served by [`shard_service`](crate::shard_service) in another process.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use shardlake_core::Event;
use shardlake_routing::ShardId;

use crate::error::{Error, Result, key_fenced, shard_failed};
use crate::stub::{ApplyAck, KeyDigest, ShardStub};

/// A shard behind HTTP: `POST {base}/apply` with a JSON array of events
/// (answer `{"applied", "skipped"}`), `POST {base}/digests`, `/drop`,
/// `/fence`, `/unfence` with a JSON array of keys, `GET {base}/accepts?key=`,
/// `POST {base}/drain`, `POST {base}/write` with a JSON array of events
/// (the shard emits them as itself). Transient failures (connection errors, 5xx, 429)
/// are retried with exponential backoff.
#[derive(Debug, Clone)]
pub struct HttpShard {
    id: ShardId,
    base: String,
    client: reqwest::Client,
    attempts: u32,
}

impl HttpShard {
    /// A shard at `base` (e.g. `http://10.0.0.7:9000/shard`).
    pub fn new(id: ShardId, base: impl Into<String>) -> Self {
        Self {
            id,
            base: base.into().trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            attempts: 5,
        }
    }

    fn fail(&self, message: String) -> Error {
        shard_failed(self.id, message)
    }

    /// Sends a request, retrying transient failures. Only idempotent
    /// requests are retried after they may have reached the shard (5xx,
    /// 429, a connection lost mid-request); the others only when the
    /// connection was never made.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T> {
        self.send(true, request).await
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        idempotent: bool,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T> {
        let mut backoff = Duration::from_millis(50);
        let mut last = String::new();
        for _ in 0..self.attempts {
            match request().send().await {
                Ok(r) if r.status().is_success() => {
                    return r
                        .json()
                        .await
                        .map_err(|e| self.fail(format!("bad answer: {e}")));
                }
                Ok(r) if r.status().as_u16() == 429 => last = "HTTP 429".into(),
                Ok(r) if r.status().is_server_error() && idempotent => {
                    last = format!("HTTP {}", r.status());
                }
                Ok(r) => {
                    let status = r.status();
                    #[derive(serde::Deserialize, Default)]
                    struct Answer {
                        error: String,
                        message: String,
                        key: Option<String>,
                    }
                    let answer: Answer = r.json().await.unwrap_or_default();
                    if let ("key_fenced", Some(key)) = (answer.error.as_str(), answer.key) {
                        return Err(key_fenced(self.id, key));
                    }
                    return Err(self.fail(format!("HTTP {status}: {}", answer.message)));
                }
                Err(e) if idempotent || e.is_connect() => last = e.to_string(),
                Err(e) => {
                    return Err(self.fail(format!(
                        "the outcome is unknown (not retried, a retry could apply it twice): {e}"
                    )));
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        Err(self.fail(format!("gave up after {} attempts: {last}", self.attempts)))
    }
}

#[async_trait]
impl ShardStub for HttpShard {
    fn id(&self) -> ShardId {
        self.id
    }

    async fn apply(&self, events: &[Event]) -> Result<ApplyAck> {
        #[derive(serde::Deserialize)]
        struct Ack {
            applied: usize,
            skipped: usize,
        }
        let url = format!("{}/apply", self.base);
        let ack: Ack = self.call(|| self.client.post(&url).json(events)).await?;
        Ok(ApplyAck {
            applied: ack.applied,
            skipped: ack.skipped,
        })
    }

    async fn digests(&self, keys: &[String]) -> Result<BTreeMap<String, KeyDigest>> {
        #[derive(serde::Deserialize)]
        struct Digest {
            events: u64,
            last_position: i64,
            content_hash: String,
        }
        let url = format!("{}/digests", self.base);
        let raw: BTreeMap<String, Digest> = self.call(|| self.client.post(&url).json(keys)).await?;
        raw.into_iter()
            .map(|(k, d)| {
                let hash = u128::from_str_radix(&d.content_hash, 16)
                    .map_err(|_| self.fail(format!("bad content hash for `{k}`")))?;
                Ok((
                    k,
                    KeyDigest {
                        events: d.events,
                        last_position: d.last_position,
                        content_hash: hash,
                    },
                ))
            })
            .collect()
    }

    async fn drop_keys(&self, keys: &[String]) -> Result<()> {
        let url = format!("{}/drop", self.base);
        self.call::<serde_json::Value>(|| self.client.post(&url).json(keys))
            .await
            .map(|_| ())
    }

    async fn set_accepting(&self, keys: &[String], accepting: bool) -> Result<()> {
        let url = format!(
            "{}/{}",
            self.base,
            if accepting { "unfence" } else { "fence" }
        );
        self.call::<serde_json::Value>(|| self.client.post(&url).json(keys))
            .await
            .map(|_| ())
    }

    async fn accepts(&self, key: &str) -> Result<bool> {
        let url = format!("{}/accepts", self.base);
        self.call(|| self.client.get(&url).query(&[("key", key)]))
            .await
    }

    async fn drain(&self) -> Result<()> {
        let url = format!("{}/drain", self.base);
        self.call::<serde_json::Value>(|| self.client.post(&url))
            .await
            .map(|_| ())
    }

    async fn write(&self, events: &[Event]) -> Result<()> {
        // Not idempotent: the shard stamps a new seq each time.
        let url = format!("{}/write", self.base);
        self.send::<serde_json::Value>(false, || self.client.post(&url).json(events))
            .await
            .map(|_| ())
    }
}
