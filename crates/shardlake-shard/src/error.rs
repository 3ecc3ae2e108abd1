//! The shard protocol speaks the workspace's one error type
//! (`shardlake_core::Error`, docs/adr/0004-one-error-model.md). These
//! constructors give a shard's refusals their kind and the context a caller
//! needs (the shard, the key).

use std::fmt;

pub use shardlake_core::{Error, ErrorKind, Result};
use shardlake_routing::ShardId;

/// A shard (a stub, an HTTP endpoint) failed or could not be reached.
pub fn shard_failed(shard: ShardId, message: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::ShardUnavailable,
        format!("shard {shard}: {message}"),
    )
    .with_context("shard", shard.to_string())
}

/// A shard refused a write because `key` is fenced (migrating). The key is
/// the context value `key`.
pub fn key_fenced(shard: ShardId, key: impl Into<String>) -> Error {
    let key = key.into();
    Error::new(
        ErrorKind::KeyFenced,
        format!("shard {shard}: `{key}` is migrating; its writes are fenced"),
    )
    .with_context("shard", shard.to_string())
    .with_context("key", key)
}
