//! `shardlake serve`: the HTTP API (and the Postgres wire protocol, when
//! asked) until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use shardlake_server::{Server, ServerConfig};

use crate::lake_args::LakeArgs;

/// `serve`'s flags that override the configuration.
#[derive(Debug, Default)]
pub struct Flags {
    /// `listen`.
    pub listen: Option<SocketAddr>,
    /// `[postgres] listen`.
    pub pg_listen: Option<SocketAddr>,
    /// Added to `[distributed] workers`.
    pub workers: Vec<url::Url>,
}

/// Loads the configuration (file, then environment, then flags), serves,
/// and shuts down gracefully on a signal: stop accepting, finish in-flight
/// requests, commit what the emitter holds, exit 0.
pub async fn run(
    config: Option<&Path>,
    flags: Flags,
    warehouse: Option<PathBuf>,
    lake_args: &LakeArgs,
) -> anyhow::Result<()> {
    let mut config = ServerConfig::load(config).context("loading the configuration")?;
    if let Some(listen) = flags.listen {
        config.listen = listen;
    }
    if let Some(pg_listen) = flags.pg_listen {
        config.postgres.listen = Some(pg_listen);
    }
    config.distributed.workers.extend(flags.workers);
    if let Some(warehouse) = warehouse {
        config.warehouse = warehouse;
    }
    lake_args.apply_to(&mut config.storage);
    if let Some(catalog) = &lake_args.catalog {
        config.catalog.url = Some(catalog.clone());
    }
    if let Some(format) = lake_args.table_format {
        config.format = Some(format);
    }
    let server = Server::bind(config).await?;
    let auth = if server.requires_tokens() {
        "bearer tokens required"
    } else {
        "no tokens configured: authentication is OFF, loopback only"
    };
    // One line on stdout that scripts (and the tests) wait for.
    println!(
        "shardlake listening on http://{} ({auth})",
        server.local_addr()
    );
    println!("web console on http://{}/console/", server.local_addr());
    if let Some(pg) = server.postgres_addr() {
        println!("shardlake listening for Postgres on postgres://{pg}");
    }
    let distributed = &server.state().config().distributed;
    if !distributed.workers.is_empty() {
        println!(
            "coordinating {} workers (queries reading at least {} bytes run on them)",
            distributed.workers.len(),
            distributed.min_scan_bytes
        );
    }
    server.serve(shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
