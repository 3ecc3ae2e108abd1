//! shardlake's HTTP face: global SQL, exactly-once ingestion, tenant-scoped
//! bearer tokens, limits and metrics (`shardlake serve`).
//!
//! The pieces, in request order:
//! - [`auth`]: who is calling (a bearer token's name, namespace scope and
//!   permissions). The scope is handed to the query engine, which enforces
//!   it inside the table scan, and checked against every ingested event.
//! - [`routes`]: one module per endpoint family; every failure is an
//!   [`ApiError`] with a stable code.
//! - [`encode`]: streaming result encoders (NDJSON, CSV, Arrow IPC).
//! - [`metrics`]: Prometheus metrics of requests, queries, cache, emitter
//!   and maintenance.
//! - [`maintenance`]: the background lake maintenance (compaction, manifest
//!   merging, snapshot expiry, cleanup) and what its runs did.
//! - [`server`]: binding, the loopback rule, graceful shutdown.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use shardlake_server::{Server, ServerConfig};
//!
//! let server = Server::bind(ServerConfig::default()).await?;
//! println!("listening on {}", server.local_addr());
//! server.serve(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

pub mod auth;
pub mod config;
mod encode;
mod error;
pub mod maintenance;
pub mod metrics;
mod postgres;
pub mod routes;
mod server;
mod state;

pub use config::{
    CompactionSettings, DistributedSettings, Limits, MaintenanceSettings, MigrationSettings,
    Permission, ServerConfig, ShardEndpoint, TokenConfig,
};
pub use error::ApiError;
pub use routes::app;
pub use server::{Server, ServerError};
pub use state::AppState;
