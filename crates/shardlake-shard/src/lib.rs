//! The shard protocol: what a shard implements so that a migration can move
//! keys into and out of it with no event lost or doubled.
//!
//! A shard's state is what applying its keys' events from the lake in
//! position order gives, so the protocol is small:
//!
//! - **apply** events idempotently by position (an event at or below a
//!   key's last applied position is skipped, so a re-run copy converges);
//! - **digests** per key (event count, last position, xxh3-128 of the events
//!   in order), which a migration compares with [`digest_of`] over the
//!   lake's replay;
//! - **drop** keys (rollback on the target, cleanup on the source);
//! - **fence** and **unfence** keys (a write to a fenced key is refused with
//!   an error of kind [`ErrorKind::KeyFenced`]), and ask whether a key
//!   **accepts** writes;
//! - **drain**: wait until nothing the shard accepted is still in flight;
//! - **write**: take new writes for keys the shard owns, stamping its own id
//!   and `seq` and emitting them to the lake (the write-ahead log).
//!
//! Over HTTP, under a prefix such as `/shard`:
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /apply` | events (JSON array, with positions) | `{applied, skipped}` |
//! | `POST /digests` | keys | `{key: {events, last_position, content_hash}}` (hash as 32 hex digits) |
//! | `POST /drop`, `/fence`, `/unfence` | keys | `{}` |
//! | `GET /accepts?key=` | | `true` or `false` |
//! | `POST /drain` | | `{}` |
//! | `POST /write` | events (the shard stamps its id and seq) | `{}` |
//!
//! Errors are `{error, message}`: 409 `key_fenced` (with `key`) for a write
//! to a fenced key, 400 for a body that is not what the route takes, 503 for
//! a shard that failed. The client retries 503s, 429s and lost
//! connections, except that a `write` (not idempotent: the shard stamps a
//! new seq each time) is retried only when it cannot have reached the shard.
//!
//! - [`stub`]: the [`ShardStub`] trait, [`InMemoryShard`] (materializes
//!   entity state; with an emitter it takes writes), [`KeyDigest`] and
//!   [`digest_of`];
//! - [`client`]: [`HttpShard`], a [`ShardStub`] that speaks the protocol to
//!   a shard in another process;
//! - [`service`]: [`shard_service`], the protocol's routes for any
//!   [`ShardStub`];
//! - the error constructors [`shard_failed`] and [`key_fenced`], which build
//!   the workspace's one error type (`shardlake_core::Error`).

pub mod client;
mod error;
pub mod service;
pub mod stub;

pub use client::HttpShard;
pub use error::{Error, ErrorKind, Result, key_fenced, shard_failed};
pub use service::shard_service;
pub use stub::{ApplyAck, InMemoryShard, KeyDigest, ShardStub, digest_of};
