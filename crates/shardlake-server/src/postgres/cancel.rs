//! Cancel requests: a client asks, on a second connection, to stop the
//! query its first connection is running, naming that connection by the
//! process id and secret key it was given at startup.
//!
//! pgwire's own `ConnectionManager` stops only the planning phase (its
//! select covers `do_query`, not the rows sent after it), so shardlake keeps
//! its own registry: each connection's running query holds a
//! [`CancellationToken`] that planning and the row stream both watch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pgwire::api::cancel::CancelHandler;
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::SecretKey;
use tokio_util::sync::CancellationToken;

/// A connection's process id and secret key (as bytes).
type Key = (i32, Vec<u8>);

/// The connections that may be cancelled, by process id and secret key.
#[derive(Debug, Default)]
pub(super) struct Cancels {
    connections: Mutex<HashMap<Key, Arc<RunningQuery>>>,
}

/// The query a connection runs now (the token of the latest one).
#[derive(Debug, Default)]
pub(super) struct RunningQuery {
    current: Mutex<CancellationToken>,
}

impl RunningQuery {
    /// A new query starts: the token that cancels it.
    pub(super) fn start(&self) -> CancellationToken {
        let token = CancellationToken::new();
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = token.clone();
        token
    }

    fn cancel(&self) {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cancel();
    }
}

/// A connection's entry in [`Cancels`], removed when the connection ends
/// (it lives in the connection's session extensions).
#[derive(Debug)]
pub(super) struct Registration {
    key: Key,
    cancels: Arc<Cancels>,
    pub(super) query: Arc<RunningQuery>,
}

impl Cancels {
    /// Registers the connection given `pid` and `secret`.
    pub(super) fn register(self: &Arc<Self>, pid: i32, secret: &SecretKey) -> Registration {
        let query = Arc::new(RunningQuery::default());
        let key = (pid, key_bytes(secret));
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), Arc::clone(&query));
        Registration {
            key,
            cancels: Arc::clone(self),
            query,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cancels
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// A secret key as bytes: startup hands out a 4-byte key as `I32`, and a
/// cancel request may decode the same 4 bytes as `Bytes`.
fn key_bytes(key: &SecretKey) -> Vec<u8> {
    match key {
        SecretKey::I32(k) => k.to_be_bytes().to_vec(),
        SecretKey::Bytes(b) => b.to_vec(),
    }
}

/// pgwire's cancel callback over [`Cancels`]. A request naming no live
/// connection (a wrong key, a connection gone) does nothing, as in Postgres.
#[derive(Debug)]
pub(super) struct CancelByKey(pub(super) Arc<Cancels>);

#[async_trait]
impl CancelHandler for CancelByKey {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let running = self
            .0
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(request.pid, key_bytes(&request.secret_key)))
            .cloned();
        if let Some(running) = running {
            running.cancel();
        }
    }
}
