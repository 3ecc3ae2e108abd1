//! `shardlake worker`: runs the stages of distributed queries that
//! coordinators (`serve` or `query` with `[distributed] workers`) send it,
//! until SIGTERM or SIGINT. It reads the lake's files from the same object
//! store as the coordinators (`[storage]`, `--storage`, `--warehouse`) and
//! takes plans only from callers holding `[distributed] secret`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use shardlake_lake::Warehouse;
use shardlake_query::distributed::{WorkerSetup, serve_worker};
use shardlake_server::ServerConfig;

use crate::lake_args::LakeArgs;
use crate::serve::shutdown_signal;

/// Loads the configuration (file, environment, flags) and serves.
pub async fn run(
    config: Option<&Path>,
    listen: Option<SocketAddr>,
    lake_args: &LakeArgs,
    warehouse_flag: bool,
) -> anyhow::Result<()> {
    let mut config = ServerConfig::load(config).context("loading the configuration")?;
    if let Some(listen) = listen {
        config.distributed.listen = listen;
    }
    if warehouse_flag {
        config.warehouse = lake_args.warehouse.clone();
    }
    lake_args.apply_to(&mut config.storage);
    config.distributed.check().map_err(anyhow::Error::msg)?;
    let settings = &config.distributed;
    if settings.secret.is_none() && !settings.listen.ip().is_loopback() {
        anyhow::bail!(
            "a worker runs any plan it is sent and reads any object in the store: \
             listening on {} needs `distributed.secret` (or SHARDLAKE_DISTRIBUTED__SECRET)",
            settings.listen
        );
    }
    let warehouse = Warehouse::open(&config.warehouse, &config.storage)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let secret = if settings.secret.is_some() {
        "cluster secret required"
    } else {
        "no cluster secret: loopback only"
    };
    // One line on stdout that scripts (and the tests) wait for.
    println!("shardlake worker listening on http://{addr} ({secret})");
    serve_worker(
        listener,
        WorkerSetup {
            store_url: warehouse.store_url(),
            store: warehouse.store(),
            secret: settings.secret.clone(),
            memory_limit: config.limits.memory_limit_bytes,
            name: addr.to_string(),
        },
        shutdown_signal(),
    )
    .await?;
    Ok(())
}
