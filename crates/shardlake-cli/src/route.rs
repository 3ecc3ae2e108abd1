//! `shardlake route` and `shardlake topology analyze`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use shardlake_routing::hash::{fnv1a_32, jump_key, ring_position};
use shardlake_routing::{ShardRouter, Strategy, Topology};

/// Strategies selectable on the command line (ranges need `--topology`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// FNV-1a 32 modulo the shard count.
    Hash,
    /// Hash ring with virtual nodes.
    ConsistentHash,
    /// Jump consistent hash.
    Jump,
    /// Ranges (from `--topology`).
    Range,
}

/// Which topology to route with.
#[derive(Debug, Args)]
pub struct TopologyArgs {
    /// Strategy, with `--shards` (ignored with `--topology`).
    #[arg(long, value_enum, default_value_t = StrategyArg::Hash)]
    strategy: StrategyArg,
    /// Number of shards (ids 0..N).
    #[arg(long, default_value_t = 16)]
    shards: u32,
    /// Virtual nodes per shard for consistent-hash.
    #[arg(long, default_value_t = 150)]
    virtual_nodes: u32,
    /// A topology file (JSON or TOML), instead of the flags.
    #[arg(long)]
    topology: Option<PathBuf>,
}

impl TopologyArgs {
    fn router(&self) -> anyhow::Result<ShardRouter> {
        let topology = match &self.topology {
            Some(path) => Topology::parse(
                &std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            )?,
            None => Topology::new(
                self.shards,
                match self.strategy {
                    StrategyArg::Hash => Strategy::Hash,
                    StrategyArg::ConsistentHash => Strategy::ConsistentHash {
                        virtual_nodes: self.virtual_nodes,
                    },
                    StrategyArg::Jump => Strategy::Jump,
                    StrategyArg::Range => {
                        anyhow::bail!("the range strategy needs its ranges: pass --topology FILE")
                    }
                },
            ),
        };
        Ok(ShardRouter::new(topology)?)
    }
}

/// Prints `shard=<id>` on the first line, then why.
pub fn route(key: &str, args: &TopologyArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let router = args.router()?;
    let shard = router.route(key)?;
    let t = router.topology();
    writeln!(out, "shard={shard}")?;
    writeln!(
        out,
        "strategy={} shards={} topology_version={}",
        t.strategy_name(),
        t.shards.len(),
        t.version
    )?;
    let bytes = key.as_bytes();
    match &t.strategy {
        Strategy::Hash => writeln!(
            out,
            "fnv1a_32({key:?}) = {} ; {} % {} = {} -> shards[{}] = {shard}",
            fnv1a_32(bytes),
            fnv1a_32(bytes),
            t.shards.len(),
            fnv1a_32(bytes) % t.shards.len() as u32,
            fnv1a_32(bytes) % t.shards.len() as u32,
        )?,
        Strategy::ConsistentHash { virtual_nodes } => writeln!(
            out,
            "ring position {:#010x} (fmix32 of fnv1a_32); the next of {} x {virtual_nodes} virtual nodes clockwise belongs to shard {shard}",
            ring_position(bytes),
            t.shards.len(),
        )?,
        Strategy::Jump => writeln!(
            out,
            "jump consistent hash of {:#018x} (splitmix64 of fnv1a_64) over {} buckets",
            jump_key(bytes),
            t.shards.len()
        )?,
        Strategy::Range { .. } => writeln!(
            out,
            "the range containing the key's compared value, else the default shard"
        )?,
    }
    Ok(())
}

/// Prints the distribution report of the keys in `file` (one per line).
pub fn analyze(
    file: &Path,
    args: &TopologyArgs,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let router = args.router()?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let keys = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let report = router.distribution(keys);
    if json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "strategy={} shards={} topology_version={}",
            router.topology().strategy_name(),
            router.topology().shards.len(),
            router.topology().version
        )?;
        write!(out, "{}", report.render())?;
    }
    Ok(())
}
