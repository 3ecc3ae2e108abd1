//! `shardlake migrate ...` (plan, add or remove a shard, rebalance, watch,
//! resume, roll back) and `shardlake shard serve` (an in-memory shard over
//! HTTP, to try migrations and for the runbook).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use shardlake_lake::{EmitterConfig, Lake};
use shardlake_migrate::{
    ControlStore, HttpShard, InMemoryShard, MigrationConfig, MigrationPlan, MigrationReport,
    MigrationSetup, MigrationStatus, Migrator, ShardStub, TopologyChange, analyze_balance,
    current_topology, cut_over_per_store, key_stats, migration_report, migration_reports,
    plan_change, plan_shards, publish_topology, shard_service,
};
use shardlake_query::{CrossShardQuery, QueryConfig, ReplayQuery};
use shardlake_routing::{ShardId, ShardRouter, Strategy, Topology};

use crate::lake_args::LakeArgs;

/// Replay throughput used for estimates: measured 363k events/s replaying
/// a namespace of the 10M-event benchmark lake on 2 cores, rounded down.
const DEFAULT_REPLAY_RATE: f64 = 300_000.0;

/// `shardlake migrate` subcommands.
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Record the topology in use (once per lake; later migrations start
    /// from the recorded one).
    Init {
        #[command(flatten)]
        current: CurrentTopologyArgs,
    },
    /// Show what a change would move, and the balance before and after
    /// (changes nothing).
    Plan {
        #[command(flatten)]
        change: ChangeArgs,
        #[command(flatten)]
        current: CurrentTopologyArgs,
        /// Print the plan (with every key move) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add shard ID: its keys are copied from the lake, then it takes over.
    AddShard {
        /// The new shard's id.
        shard: ShardId,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Remove shard ID: every one of its keys moves to another shard.
    RemoveShard {
        /// The shard to remove.
        shard: ShardId,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Move to the topology in FILE (new ranges, strategy or vnodes); its
    /// version is set to the next one.
    Rebalance {
        /// Topology file (JSON or TOML).
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// The recorded topology and migrations (or one migration's record).
    Status {
        /// A migration id.
        id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Continue an interrupted or failed migration.
    Resume {
        /// The migration id (see `status`).
        id: String,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Undo an unfinished migration.
    Rollback {
        /// The migration id (see `status`).
        id: String,
        #[command(flatten)]
        run: RunArgs,
    },
}

/// The change a plan describes.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ChangeArgs {
    /// Add this shard.
    #[arg(long)]
    add_shard: Option<ShardId>,
    /// Remove this shard.
    #[arg(long)]
    remove_shard: Option<ShardId>,
    /// Move to the topology in this file.
    #[arg(long)]
    rebalance_to: Option<PathBuf>,
}

/// The topology in use, for a lake that has none recorded yet (the first
/// migration records it).
#[derive(Debug, Args)]
pub struct CurrentTopologyArgs {
    /// Shards in use (ids 0..N), if the lake has no recorded topology.
    #[arg(long)]
    shards: Option<u32>,
    /// Their strategy: hash, consistent-hash or jump.
    #[arg(long, default_value = "jump")]
    strategy: String,
    /// Virtual nodes per shard for consistent-hash.
    #[arg(long, default_value_t = 150)]
    virtual_nodes: u32,
    /// The topology in use, from a file (JSON or TOML), instead.
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Replay throughput for estimates, events per second.
    #[arg(long, default_value_t = DEFAULT_REPLAY_RATE)]
    replay_rate: f64,
}

/// How to run a migration.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A shard's HTTP endpoint, `ID=URL` (repeatable): every shard that
    /// gives or takes keys.
    #[arg(long = "shard-url", value_parser = parse_shard_url)]
    shard_urls: Vec<(ShardId, String)>,
    /// Cancel (and roll back) after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// On failure, leave the migration open (resume or roll back later)
    /// instead of rolling back.
    #[arg(long)]
    no_rollback: bool,
    /// Events per apply request.
    #[arg(long, default_value_t = 5_000)]
    batch_size: usize,
    /// The run's lease, renewed while it runs: if this process dies, the
    /// migration can be resumed elsewhere once the lease ran out.
    #[arg(long, default_value_t = 30)]
    lease_secs: u64,
    /// Print the record as JSON.
    #[arg(long)]
    json: bool,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    current: CurrentTopologyArgs,
}

fn parse_shard_url(s: &str) -> Result<(ShardId, String), String> {
    let (id, url) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected ID=URL"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|_| format!("`{id}` is not a shard id"))?;
    Ok((id, url.trim().to_owned()))
}

/// `migrate ... | head` closes stdout early: not an error.
fn ignore_broken_pipe(result: anyhow::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// `topology v2: 5 shards [0, 1, 2, 3, 4], jump`.
fn describe(t: &Topology) -> String {
    format!(
        "topology v{}: {} shards {:?}, {}",
        t.version,
        t.shards.len(),
        t.shards,
        t.strategy_name()
    )
}

/// Runs a `migrate` subcommand.
pub async fn run(lake_args: &LakeArgs, command: MigrateCommand) -> anyhow::Result<()> {
    ignore_broken_pipe(run_command(lake_args, command).await)
}

async fn run_command(lake_args: &LakeArgs, command: MigrateCommand) -> anyhow::Result<()> {
    // Recording the first topology may start a lake; everything else
    // works on one that exists.
    let lake = if matches!(command, MigrateCommand::Init { .. }) {
        lake_args.open_or_create().await?
    } else {
        lake_args.open_existing().await?
    };
    let engine = CrossShardQuery::open(&lake, QueryConfig::default()).await?;
    let mut out = std::io::stdout().lock();
    match command {
        MigrateCommand::Init { current } => {
            let t = topology_in_use(&lake, &current, true).await?;
            writeln!(out, "{}", describe(&t))?;
            Ok(())
        }
        MigrateCommand::Plan {
            change,
            current,
            json,
        } => {
            let from = topology_in_use(&lake, &current, false).await?;
            let plan = plan(&engine, &from, &change, current.replay_rate).await?;
            if json {
                serde_json::to_writer_pretty(&mut out, &plan).map_err(std::io::Error::from)?;
                writeln!(out)?;
            } else {
                print_plan(&mut out, &engine, &plan).await?;
            }
            Ok(())
        }
        MigrateCommand::AddShard { shard, run } => {
            let change = ChangeArgs {
                add_shard: Some(shard),
                remove_shard: None,
                rebalance_to: None,
            };
            start(&lake, engine, &change, run, &mut out).await
        }
        MigrateCommand::RemoveShard { shard, run } => {
            let change = ChangeArgs {
                add_shard: None,
                remove_shard: Some(shard),
                rebalance_to: None,
            };
            start(&lake, engine, &change, run, &mut out).await
        }
        MigrateCommand::Rebalance { to, run } => {
            let change = ChangeArgs {
                add_shard: None,
                remove_shard: None,
                rebalance_to: Some(to),
            };
            start(&lake, engine, &change, run, &mut out).await
        }
        MigrateCommand::Status { id, json } => status(&lake, id.as_deref(), json, &mut out).await,
        MigrateCommand::Resume { id, run } => {
            let report = stored(&lake, &id).await?;
            check_endpoints(&run.shard_urls, !(run.quiet || run.json)).await?;
            let migrator =
                migrator(&lake, engine, &report.plan, plan_shards(&report.plan), &run).await?;
            let report = until_interrupted(&lake, &migrator, &run, migrator.resume(&id)).await?;
            finish(&report, run.json, &mut out)
        }
        MigrateCommand::Rollback { id, run } => {
            let mut report = stored(&lake, &id).await?;
            // Whether cutover happened, as the rollback itself will decide.
            cut_over_per_store(&ControlStore::open(&lake).await?, &mut report).await?;
            let needed = report.rollback_shards();
            let migrator = migrator(&lake, engine, &report.plan, needed, &run).await?;
            let report = migrator.rollback(&id).await?;
            // Success here is a migration rolled back, not one completed.
            finish_as(&report, run.json, &mut out, MigrationStatus::RolledBack)
        }
    }
}

async fn stored(lake: &Lake, id: &str) -> anyhow::Result<MigrationReport> {
    migration_report(&ControlStore::open(lake).await?, id)
        .await?
        .with_context(|| format!("no migration `{id}` (see `shardlake migrate status`)"))
}

/// The recorded topology; else the one the flags describe, recorded if
/// `record` (the first migration of a lake records where it starts).
async fn topology_in_use(
    lake: &Lake,
    args: &CurrentTopologyArgs,
    record: bool,
) -> anyhow::Result<Topology> {
    let control = ControlStore::open(lake).await?;
    let given = match (&args.topology, args.shards) {
        (Some(path), _) => Some(Topology::parse(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?),
        (None, Some(n)) => Some(Topology::new(
            n,
            strategy(&args.strategy, args.virtual_nodes)?,
        )),
        (None, None) => None,
    };
    match (current_topology(&control).await?, given) {
        (Some(recorded), Some(given))
            if (&recorded.shards, &recorded.strategy) != (&given.shards, &given.strategy) =>
        {
            bail!(
                "the lake records topology version {} ({} shards, {}); the flags describe another. \
                 Drop --shards/--topology, or plan from the recorded one",
                recorded.version,
                recorded.shards.len(),
                recorded.strategy_name()
            )
        }
        (Some(recorded), _) => Ok(recorded),
        (None, Some(given)) => {
            if record {
                publish_topology(&control, &given).await?;
            }
            Ok(given)
        }
        (None, None) => bail!(
            "this lake has no recorded topology yet: give the one in use with \
             --shards N [--strategy jump|hash|consistent-hash] or --topology FILE"
        ),
    }
}

fn strategy(name: &str, virtual_nodes: u32) -> anyhow::Result<Strategy> {
    Ok(match name {
        "hash" => Strategy::Hash,
        "jump" => Strategy::Jump,
        "consistent-hash" | "consistent" => Strategy::ConsistentHash { virtual_nodes },
        other => bail!(
            "unknown strategy `{other}` (hash, consistent-hash, jump; ranges need --topology)"
        ),
    })
}

async fn plan(
    engine: &CrossShardQuery,
    from: &Topology,
    change: &ChangeArgs,
    rate: f64,
) -> anyhow::Result<MigrationPlan> {
    let change = match change {
        ChangeArgs {
            add_shard: Some(id),
            ..
        } => TopologyChange::AddShard(*id),
        ChangeArgs {
            remove_shard: Some(id),
            ..
        } => TopologyChange::RemoveShard(*id),
        ChangeArgs {
            rebalance_to: Some(path),
            ..
        } => TopologyChange::RebalanceTo(Topology::parse(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?),
        _ => bail!("say what changes: --add-shard, --remove-shard or --rebalance-to"),
    };
    Ok(plan_change(engine, from, change, rate).await?)
}

async fn print_plan(
    out: &mut impl Write,
    engine: &CrossShardQuery,
    plan: &MigrationPlan,
) -> anyhow::Result<()> {
    let describe = |t: &Topology| {
        format!(
            "v{} ({}, {} shards)",
            t.version,
            t.strategy_name(),
            t.shards.len()
        )
    };
    writeln!(
        out,
        "topology {} -> {}",
        describe(&plan.from),
        describe(&plan.to)
    )?;
    let share = if plan.keys_total == 0 {
        0.0
    } else {
        plan.moves.len() as f64 * 100.0 / plan.keys_total as f64
    };
    writeln!(
        out,
        "moves {} of {} keys ({share:.1}%): {} events, {:.1} KB; estimated {:.1} s of replay",
        plan.moves.len(),
        plan.keys_total,
        plan.events_to_move,
        plan.bytes_to_move as f64 / 1e3,
        plan.estimated_duration_ms as f64 / 1e3
    )?;
    for (shard, keys) in &plan.destinations {
        writeln!(out, "  to shard {shard}: {keys} keys")?;
    }
    let keys = key_stats(engine).await?;
    for (label, t) in [("before", &plan.from), ("after", &plan.to)] {
        let b = analyze_balance(t, &keys)?;
        let hottest = b.counts.iter().max_by_key(|(_, c)| *c);
        writeln!(
            out,
            "balance {label} (events per shard): max deviation {:.1}% from the mean, hottest shard {}",
            b.max_deviation_pct,
            hottest.map_or("-".to_owned(), |(s, c)| format!("{s} ({c} events)"))
        )?;
    }
    Ok(())
}

/// Plans a change from the recorded topology and runs it.
async fn start(
    lake: &Lake,
    engine: CrossShardQuery,
    change: &ChangeArgs,
    run: RunArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let control = ControlStore::open(lake).await?;
    if let Some(open) = migration_reports(&control)
        .await?
        .into_iter()
        .find(|r| r.status.is_open())
    {
        bail!(
            "migration {} is unfinished ({}, phase {}): run `shardlake migrate resume {}` or \
             `shardlake migrate rollback {}` first",
            open.id,
            open.status.as_str(),
            open.phase,
            open.id,
            open.id
        );
    }
    let talk = !(run.quiet || run.json);
    check_endpoints(&run.shard_urls, talk).await?;
    let from = topology_in_use(lake, &run.current, true).await?;
    if talk {
        eprintln!("planning: reading the key statistics of the lake...");
    }
    let plan = plan(&engine, &from, change, run.current.replay_rate).await?;
    let migrator = migrator(lake, engine, &plan, plan_shards(&plan), &run).await?;
    let report = until_interrupted(lake, &migrator, &run, migrator.execute(plan)).await?;
    finish(&report, run.json, out)
}

/// Runs `work` until it ends or SIGINT/SIGTERM arrives. On a signal the
/// run stops where it is (dropping it cancels its requests: the same as a
/// crash, which a migration resumes from at any point), its lease is
/// released so a resume can start at once, and the way on is printed;
/// the command exits 130.
async fn until_interrupted(
    lake: &Lake,
    migrator: &Migrator,
    run: &RunArgs,
    work: impl Future<Output = shardlake_migrate::Result<MigrationReport>>,
) -> anyhow::Result<MigrationReport> {
    tokio::select! {
        report = work => Ok(report?),
        () = crate::serve::shutdown_signal() => {
            let control = ControlStore::open(lake).await?;
            let open = migration_reports(&control)
                .await?
                .into_iter()
                .find(|r| r.status.is_open());
            let Some(open) = open else {
                eprintln!("interrupted before the migration was recorded: nothing changed");
                std::process::exit(130);
            };
            control.release_lease(&open.id, migrator.runner()).await?;
            let urls: String = run
                .shard_urls
                .iter()
                .map(|(id, url)| format!(" --shard-url {id}={url}"))
                .collect();
            eprintln!(
                "interrupted: migration {} stopped in phase {} ({} events copied so far); \
                 continue with `shardlake migrate resume {}{urls}` or undo it with \
                 `shardlake migrate rollback {}{urls}`",
                open.id, open.phase, open.events_copied, open.id, open.id
            );
            std::process::exit(130);
        }
    }
}

/// Asks every `--shard-url` endpoint a question that changes nothing (the
/// digests of no keys) before anything is planned or claimed: a wrong URL
/// is an error naming the shard, not a migration that fails midway and
/// must then be rolled back against a shard that never existed.
async fn check_endpoints(endpoints: &[(ShardId, String)], talk: bool) -> anyhow::Result<()> {
    const ANSWER_WITHIN: Duration = Duration::from_secs(5);
    if talk && !endpoints.is_empty() {
        eprintln!("checking {} shard endpoints...", endpoints.len());
    }
    let checks = endpoints.iter().map(|(id, url)| async move {
        let shard = HttpShard::new(*id, url.clone());
        match tokio::time::timeout(ANSWER_WITHIN, shard.digests(&[])).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("shard {id} at {url}: {e}")),
            Err(_) => Some(format!(
                "shard {id} at {url}: no answer within {} s",
                ANSWER_WITHIN.as_secs()
            )),
        }
    });
    let problems: Vec<String> = futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect();
    if !problems.is_empty() {
        bail!(
            "{}; nothing was planned or changed (check --shard-url)",
            problems.join("; ")
        );
    }
    Ok(())
}

/// Every shard `plan` moves keys from or to: a run talks to all of them.
/// A migrator whose shards are the `--shard-url` endpoints (which must
/// cover `needed`), with a progress bar.
async fn migrator(
    lake: &Lake,
    engine: CrossShardQuery,
    plan: &MigrationPlan,
    needed: BTreeSet<ShardId>,
    run: &RunArgs,
) -> anyhow::Result<Migrator> {
    let setup = MigrationSetup::new(
        run.shard_urls.iter().cloned(),
        MigrationConfig {
            timeout: Duration::from_secs(run.timeout_secs),
            batch_size: run.batch_size.max(1),
            rollback_on_failure: !run.no_rollback,
            lease: Duration::from_secs(run.lease_secs.max(1)),
            ..MigrationConfig::default()
        },
    );
    let missing = setup.missing_endpoints(needed);
    if !missing.is_empty() {
        bail!(
            "the migration needs the endpoints of shards {missing:?}: pass --shard-url ID=URL for each"
        );
    }
    let bar = if run.quiet || run.json {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(plan.events_to_move.max(1));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {msg:12} {wide_bar} {pos}/{len} events",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    };
    Ok(setup
        .migrator(lake, engine, plan)
        .await?
        .on_progress(move |p| {
            bar.set_message(p.phase.as_str());
            bar.set_length(p.events_total.max(p.events_done).max(1));
            bar.set_position(p.events_done);
            if matches!(p.phase, shardlake_migrate::Phase::Complete) {
                bar.finish_and_clear();
            }
        }))
}

/// Prints the record; fails (exit 1) unless the migration completed.
fn finish(report: &MigrationReport, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    finish_as(report, json, out, MigrationStatus::Completed)
}

/// Prints the record; fails (exit 1) unless the migration ended `wanted`.
fn finish_as(
    report: &MigrationReport,
    json: bool,
    out: &mut impl Write,
    wanted: MigrationStatus,
) -> anyhow::Result<()> {
    let printed = if json {
        serde_json::to_writer_pretty(&mut *out, report)
            .map_err(|e| anyhow::Error::from(std::io::Error::from(e)))
            .and_then(|()| Ok(writeln!(out)?))
    } else {
        print_report(out, report)
    };
    // The outcome decides the exit code, not whether stdout was still open.
    ignore_broken_pipe(printed)?;
    if report.status != wanted {
        bail!(
            "migration {} {}",
            report.id,
            match &report.error {
                Some(e) => format!("{}: {}", report.status.as_str(), e.message),
                None => report.status.as_str().to_owned(),
            }
        );
    }
    Ok(())
}

fn print_report(out: &mut impl Write, r: &MigrationReport) -> anyhow::Result<()> {
    writeln!(
        out,
        "migration {}: {} (phase {}, attempt {}, {:.1} s)",
        r.id,
        r.status.as_str(),
        r.phase,
        r.attempts,
        r.duration_ms as f64 / 1e3
    )?;
    writeln!(
        out,
        "  topology v{} -> v{}; {} keys moved ({} found during catch-up), {} verified",
        r.plan.from.version,
        r.plan.to.version,
        r.plan.moves.len(),
        r.keys_discovered,
        r.keys_verified
    )?;
    writeln!(
        out,
        "  {} events copied, {} already present; {} catch-up rounds; {} writes buffered, {} flushed",
        r.events_copied, r.events_skipped, r.catch_up_rounds, r.writes_buffered, r.writes_flushed
    )?;
    if let Some(e) = &r.error {
        writeln!(out, "  failed in {}: {} ({})", e.phase, e.message, e.code)?;
    }
    if let Some(rb) = &r.rollback {
        writeln!(
            out,
            "  rolled back: {} keys dropped from the new owners, {} writes returned{}",
            rb.keys_dropped,
            rb.writes_returned,
            rb.topology_restored_as
                .map(|v| format!(", previous layout republished as v{v}"))
                .unwrap_or_default()
        )?;
        for p in &rb.problems {
            writeln!(out, "  rollback problem: {p}")?;
        }
    }
    for p in &r.cleanup_problems {
        writeln!(out, "  cleanup problem: {p}")?;
    }
    Ok(())
}

async fn status(
    lake: &Lake,
    id: Option<&str>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let control = ControlStore::open(lake).await?;
    if let Some(id) = id {
        let report = stored(lake, id).await?;
        if json {
            serde_json::to_writer_pretty(&mut *out, &report).map_err(std::io::Error::from)?;
            writeln!(out)?;
        } else {
            print_report(out, &report)?;
        }
        return Ok(());
    }
    let topology = current_topology(&control).await?;
    let reports = migration_reports(&control).await?;
    if json {
        serde_json::to_writer_pretty(
            &mut *out,
            &serde_json::json!({"topology": topology, "migrations": reports}),
        )
        .map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    match &topology {
        Some(t) => writeln!(out, "{}", describe(t))?,
        None => writeln!(out, "no topology recorded yet")?,
    }
    if reports.is_empty() {
        writeln!(out, "no migrations")?;
    }
    for r in &reports {
        writeln!(
            out,
            "{}  {:11}  {:12}  v{}->v{}  {} keys  {:.1} s",
            r.id,
            r.status.as_str(),
            r.phase.as_str(),
            r.plan.from.version,
            r.plan.to.version,
            r.plan.moves.len(),
            r.duration_ms as f64 / 1e3
        )?;
    }
    Ok(())
}

/// `shardlake shard serve`: an in-memory shard over HTTP. Writes go to the
/// lake as shard `id`; with `hydrate`, it first rebuilds the state of the
/// keys it owns under the recorded topology from the lake.
pub async fn serve_shard(
    lake_args: &LakeArgs,
    id: ShardId,
    listen: std::net::SocketAddr,
    hydrate: bool,
) -> anyhow::Result<()> {
    let lake = lake_args.open_or_create().await?;
    let emitter = Arc::new(lake.emitter(EmitterConfig::default()).await?);
    let last_seq = lake.commit_state().await?.watermark(id as i32);
    let shard = Arc::new(InMemoryShard::with_emitter(
        id,
        Arc::clone(&emitter),
        last_seq,
    ));
    if hydrate {
        let control = ControlStore::open(&lake).await?;
        let topology = current_topology(&control)
            .await?
            .context("--hydrate needs a recorded topology (run a `migrate` command first)")?;
        let router = ShardRouter::new(topology)?;
        let engine = CrossShardQuery::open(&lake, QueryConfig::default()).await?;
        let mut stream = engine
            .replay(ReplayQuery::default())
            .without_cache()
            .stream()
            .await?;
        let mut applied = 0;
        while let Some(batch) = futures::StreamExt::next(&mut stream).await {
            let mine: Vec<_> = shardlake_core::events_from_batch(&batch?)?
                .into_iter()
                .filter(|e| router.shard_of(&e.partition_key).ok() == Some(id))
                .collect();
            applied += shard.apply(&mine).await?.applied;
        }
        tracing::info!(shard = id, events = applied, "hydrated from the lake");
    }
    let app = axum::Router::new().nest("/shard", shard_service(shard as Arc<dyn ShardStub>));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    // One line on stdout that scripts (and the tests) wait for.
    println!("shard {id} serving http://{}/shard", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::serve::shutdown_signal())
        .await?;
    emitter.close().await?;
    Ok(())
}
