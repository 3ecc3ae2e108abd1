//! What a migration needs from a shard, and a shard in memory that provides
//! it ([`HttpShard`](crate::HttpShard) is the other, over HTTP).
//!
//! Applying is idempotent by `position`: an event a shard has already
//! applied for a key (position at or below the key's last) is skipped, so
//! re-running a failed copy converges instead of doubling state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;
use shardlake_core::Event;
use shardlake_lake::PipelineEmitter;
use shardlake_routing::ShardId;
use xxhash_rust::xxh3::Xxh3;

use crate::error::{Error, Result, key_fenced, shard_failed};

/// The outcome of applying a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyAck {
    /// Events applied now.
    pub applied: usize,
    /// Events skipped because the shard had them already.
    pub skipped: usize,
}

/// What a shard holds for one key: enough to verify a copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyDigest {
    /// Events applied for the key.
    pub events: u64,
    /// Position of the last one.
    pub last_position: i64,
    /// xxh3-128 over the key's events in position order (their JSON form).
    pub content_hash: u128,
}

/// A shard as a migration drives it.
#[async_trait]
pub trait ShardStub: Send + Sync {
    /// The shard's id.
    fn id(&self) -> ShardId;

    /// Applies events (each key's in position order), skipping what the
    /// shard has already applied.
    async fn apply(&self, events: &[Event]) -> Result<ApplyAck>;

    /// Digests of the given keys (absent keys are not in the map).
    async fn digests(&self, keys: &[String]) -> Result<BTreeMap<String, KeyDigest>>;

    /// Forgets the keys (rollback on the target, cleanup on the source).
    async fn drop_keys(&self, keys: &[String]) -> Result<()>;

    /// Fences (`false`) or reopens (`true`) writes to the keys.
    async fn set_accepting(&self, keys: &[String], accepting: bool) -> Result<()>;

    /// Whether the shard accepts writes to `key` now.
    async fn accepts(&self, key: &str) -> Result<bool>;

    /// Waits until nothing the shard accepted is still in flight.
    async fn drain(&self) -> Result<()>;

    /// Handles new writes for keys the shard owns: the shard stamps its own
    /// id and next `seq`, emits them to the lake and returns once they are
    /// durable. Writes for a fenced key are refused whole with
    /// an error of kind [`shardlake_core::ErrorKind::KeyFenced`]. The shard's materialized state follows the
    /// lake ([`ShardStub::apply`]): the lake is the write-ahead log.
    async fn write(&self, events: &[Event]) -> Result<()>;
}

/// One key's state in an [`InMemoryShard`].
#[derive(Debug, Clone, Default)]
struct KeyState {
    events: u64,
    last_position: i64,
    hash: Xxh3Wrapper,
    /// The entity's latest payload (materialized state).
    latest: Option<Event>,
}

#[derive(Clone, Default)]
struct Xxh3Wrapper(Xxh3);

impl std::fmt::Debug for Xxh3Wrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Xxh3")
    }
}

/// A shard held in memory: materializes each key's latest event and a
/// running digest. With an emitter it also takes writes (emitting them as
/// shard `id`). For tests and the demo.
pub struct InMemoryShard {
    id: ShardId,
    state: Mutex<HashMap<String, KeyState>>,
    fenced: Mutex<BTreeSet<String>>,
    /// Fail every `apply` after this many more calls (fault injection).
    fail_after: Mutex<Option<usize>>,
    /// The emitter and the last `seq` used; the lock keeps `seq` in
    /// emission order.
    emitter: Option<tokio::sync::Mutex<(Arc<PipelineEmitter>, i64)>>,
}

impl std::fmt::Debug for InMemoryShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryShard")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl InMemoryShard {
    /// An empty shard that takes no writes.
    pub fn new(id: ShardId) -> Self {
        Self {
            id,
            state: Mutex::default(),
            fenced: Mutex::default(),
            fail_after: Mutex::default(),
            emitter: None,
        }
    }

    /// An empty shard whose writes go to the lake through `emitter`,
    /// continuing after `last_seq` (the shard's committed watermark).
    pub fn with_emitter(id: ShardId, emitter: Arc<PipelineEmitter>, last_seq: i64) -> Self {
        Self {
            emitter: Some(tokio::sync::Mutex::new((emitter, last_seq))),
            ..Self::new(id)
        }
    }

    /// Makes `apply` fail after `calls` more successful calls.
    pub fn fail_after(&self, calls: usize) {
        *lock(&self.fail_after) = Some(calls);
    }

    /// The latest event of `key`, if any (its materialized state).
    pub fn latest(&self, key: &str) -> Option<Event> {
        lock(&self.state).get(key).and_then(|s| s.latest.clone())
    }

    /// Keys the shard holds.
    pub fn keys(&self) -> BTreeSet<String> {
        lock(&self.state).keys().cloned().collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Feeds one event into a key digest (its JSON form, then a separator).
fn feed(hash: &mut Xxh3, event: &Event) {
    hash.update(serde_json::to_string(event).unwrap_or_default().as_bytes());
    hash.update(b"\x1e");
}

/// The digest of `events` (one key's, in position order), as a shard that
/// applied exactly these would report it: for verifying against the lake.
pub fn digest_of<'a>(events: impl IntoIterator<Item = &'a Event>) -> KeyDigest {
    let mut hash = Xxh3::new();
    let (mut n, mut last) = (0, 0);
    for e in events {
        feed(&mut hash, e);
        n += 1;
        last = e.position.unwrap_or(0);
    }
    KeyDigest {
        events: n,
        last_position: last,
        content_hash: hash.digest128(),
    }
}

#[async_trait]
impl ShardStub for InMemoryShard {
    fn id(&self) -> ShardId {
        self.id
    }

    async fn apply(&self, events: &[Event]) -> Result<ApplyAck> {
        {
            let mut fail = lock(&self.fail_after);
            match fail.as_mut() {
                Some(0) => {
                    return Err(shard_failed(self.id, "injected failure"));
                }
                Some(n) => *n -= 1,
                None => {}
            }
        }
        let mut state = lock(&self.state);
        let mut ack = ApplyAck::default();
        for e in events {
            let position = e.position.ok_or_else(|| {
                shard_failed(self.id, "an event without a position (not from the lake)")
            })?;
            let key = state.entry(e.partition_key.clone()).or_default();
            if position <= key.last_position {
                ack.skipped += 1;
                continue;
            }
            feed(&mut key.hash.0, e);
            key.events += 1;
            key.last_position = position;
            key.latest = Some(e.clone());
            ack.applied += 1;
        }
        Ok(ack)
    }

    async fn digests(&self, keys: &[String]) -> Result<BTreeMap<String, KeyDigest>> {
        let state = lock(&self.state);
        Ok(keys
            .iter()
            .filter_map(|k| {
                state.get(k).map(|s| {
                    (
                        k.clone(),
                        KeyDigest {
                            events: s.events,
                            last_position: s.last_position,
                            content_hash: s.hash.0.clone().digest128(),
                        },
                    )
                })
            })
            .collect())
    }

    async fn drop_keys(&self, keys: &[String]) -> Result<()> {
        let mut state = lock(&self.state);
        for k in keys {
            state.remove(k);
        }
        Ok(())
    }

    async fn set_accepting(&self, keys: &[String], accepting: bool) -> Result<()> {
        let mut fenced = lock(&self.fenced);
        for k in keys {
            if accepting {
                fenced.remove(k);
            } else {
                fenced.insert(k.clone());
            }
        }
        Ok(())
    }

    async fn accepts(&self, key: &str) -> Result<bool> {
        Ok(!lock(&self.fenced).contains(key))
    }

    async fn drain(&self) -> Result<()> {
        // Writes hold the emitter lock until their events are queued, and
        // return only once durable: taking the lock waits out the queueing.
        if let Some(emitter) = &self.emitter {
            let guard = emitter.lock().await;
            guard.0.flush().await.map_err(|e| self.shard_error(e))?;
        }
        Ok(())
    }

    async fn write(&self, events: &[Event]) -> Result<()> {
        let refuse_fenced = || {
            let fenced = lock(&self.fenced);
            match events.iter().find(|e| fenced.contains(&e.partition_key)) {
                Some(e) => Err(key_fenced(self.id, e.partition_key.clone())),
                None => Ok(()),
            }
        };
        refuse_fenced()?;
        let Some(emitter) = &self.emitter else {
            return Err(self.shard_error("this shard takes no writes"));
        };
        let ack = {
            let mut guard = emitter.lock().await;
            // Checked again under the lock `drain` takes: a write either
            // queues before the drain or sees the fence.
            refuse_fenced()?;
            let (emitter, last_seq) = &mut *guard;
            let mut stamped = events.to_vec();
            for e in &mut stamped {
                *last_seq += 1;
                e.shard_id = self.id as i32;
                e.seq = *last_seq;
                e.position = None;
            }
            emitter
                .send(stamped.as_slice())
                .await
                .map_err(|e| self.shard_error(e))?
        };
        let ack = ack.await.map_err(|e| self.shard_error(e))?;
        match ack.rejected.first() {
            Some(r) => Err(self.shard_error(format!("write {} refused: {}", r.index, r.error))),
            None => Ok(()),
        }
    }
}

impl InMemoryShard {
    fn shard_error(&self, message: impl std::fmt::Display) -> Error {
        shard_failed(self.id, message.to_string())
    }
}
