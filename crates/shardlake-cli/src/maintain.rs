//! `shardlake maintain` (compaction, manifest merging, snapshot expiry,
//! cleanup, once, with a progress display and a report) and `shardlake
//! snapshots` (what time travel can reach).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use shardlake_lake::maintenance::Progress;
use shardlake_lake::{Action, Lake, MaintenanceConfig, MaintenanceReport};
use shardlake_query::{CrossShardQuery, QueryConfig, Scope};
use shardlake_server::ServerConfig;

/// The settings of one `maintain` run: the `[maintenance]` and
/// `[compaction]` sections of a config file (or the defaults), with flags
/// on top.
#[derive(Debug, Clone, clap::Args)]
pub struct MaintainArgs {
    /// Actions to run, in this order whatever the order given (default:
    /// all of them).
    #[arg(value_enum)]
    pub actions: Vec<ActionArg>,
    /// Report what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Take `[maintenance]` and `[compaction]` from this server
    /// configuration file.
    #[arg(long, env = "SHARDLAKE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Expire snapshots replaced more than this many seconds ago.
    #[arg(long)]
    pub retention_secs: Option<u64>,
    /// Always keep this many of the newest snapshots.
    #[arg(long)]
    pub min_snapshots: Option<usize>,
    /// Never delete a file younger than this many seconds.
    #[arg(long)]
    pub grace_secs: Option<u64>,
    /// Files smaller than this many MiB are compaction candidates.
    #[arg(long)]
    pub small_file_mib: Option<u64>,
    /// Compact a namespace once it has at least this many small files.
    #[arg(long)]
    pub min_files: Option<usize>,
}

/// A maintenance action, as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ActionArg {
    /// Rewrite small data files into large sorted ones.
    Compact,
    /// Merge small manifests (Iceberg).
    MergeManifests,
    /// Expire snapshots past the retention window.
    Expire,
    /// Delete files no retained snapshot references.
    Cleanup,
}

impl From<ActionArg> for Action {
    fn from(a: ActionArg) -> Self {
        match a {
            ActionArg::Compact => Action::Compact,
            ActionArg::MergeManifests => Action::MergeManifests,
            ActionArg::Expire => Action::Expire,
            ActionArg::Cleanup => Action::Cleanup,
        }
    }
}

impl MaintainArgs {
    fn config(&self) -> anyhow::Result<MaintenanceConfig> {
        let mut config = match &self.config {
            Some(file) => {
                let server = ServerConfig::load(Some(file)).context("loading the configuration")?;
                server.check().map_err(anyhow::Error::msg)?;
                server.maintenance_config()
            }
            None => MaintenanceConfig::default(),
        };
        if let Some(secs) = self.retention_secs {
            config.retention.retention = Duration::from_secs(secs);
        }
        if let Some(n) = self.min_snapshots {
            config.retention.min_snapshots_to_keep = n.max(1);
        }
        if let Some(secs) = self.grace_secs {
            config.orphan_grace = Duration::from_secs(secs);
        }
        if let Some(compaction) = &mut config.compaction {
            if let Some(mib) = self.small_file_mib {
                compaction.small_file_bytes = mib * 1024 * 1024;
            }
            if let Some(n) = self.min_files {
                compaction.min_small_files = n;
            }
        }
        Ok(config)
    }
}

/// Runs `shardlake maintain`.
pub async fn maintain(lake: &Lake, args: &MaintainArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let actions: Vec<Action> = if args.actions.is_empty() {
        Action::ALL.to_vec()
    } else {
        args.actions.iter().map(|&a| a.into()).collect()
    };
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    };
    let show = |p: Progress| match p {
        Progress::Started(a) => bar.set_message(format!("{}...", a.as_str())),
        Progress::Finished(a) => bar.println(format!("{} done", a.as_str())),
    };
    let report = lake.maintain(&config, &actions, args.dry_run, &show).await;
    bar.finish_and_clear();
    let report = report?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_report(&mut out, &report)?;
    }
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn write_report(out: &mut impl Write, report: &MaintenanceReport) -> std::io::Result<()> {
    if let Some(why) = &report.skipped {
        return writeln!(out, "skipped: {why}");
    }
    let (did, deleted) = if report.dry_run {
        ("would rewrite", "would delete")
    } else {
        ("rewrote", "deleted")
    };
    if let Some(c) = &report.compaction {
        match (&c.skipped, c.files_removed) {
            (Some(why), _) => writeln!(out, "compaction: skipped: {why}")?,
            (None, 0) => writeln!(out, "compaction: nothing to compact")?,
            (None, _) if report.dry_run => writeln!(
                out,
                "compaction: {did} {} files ({:.1} MB) in {} namespaces, {} rows",
                c.files_removed,
                mb(c.bytes_removed),
                c.namespaces,
                c.rows
            )?,
            (None, _) => writeln!(
                out,
                "compaction: {did} {} files ({:.1} MB) in {} namespaces into {} files ({:.1} MB), {} rows",
                c.files_removed,
                mb(c.bytes_removed),
                c.namespaces,
                c.files_added,
                mb(c.bytes_added),
                c.rows
            )?,
        }
    }
    if let Some(m) = &report.manifests {
        if m.merged {
            writeln!(
                out,
                "manifests: {} -> {}{}",
                m.manifests.before,
                m.manifests.after,
                if report.dry_run { " (would merge)" } else { "" }
            )?;
        } else {
            writeln!(out, "manifests: {} (no merge due)", m.manifests.before)?;
        }
    }
    if let Some(e) = &report.expiry {
        writeln!(
            out,
            "expiry: {} {} snapshots, {} retained ({} kept for pins){}",
            if report.dry_run {
                "would expire"
            } else {
                "expired"
            },
            e.snapshots_expired,
            e.snapshots_retained,
            e.snapshots_pinned,
            if e.files_deleted > 0 {
                format!(", {deleted} {} superseded files", e.files_deleted)
            } else {
                String::new()
            }
        )?;
    }
    if let Some(c) = &report.cleanup
        && let Some(why) = &c.skipped
    {
        writeln!(out, "cleanup: skipped: {why}")?;
    } else if let Some(c) = &report.cleanup {
        writeln!(
            out,
            "cleanup: {deleted} {} of {} files ({:.1} MB: {} data, {} metadata); {} unreachable kept (younger than the grace period)",
            c.files_deleted,
            c.files_listed,
            mb(c.bytes_deleted),
            c.data_files_deleted,
            c.metadata_files_deleted,
            c.files_kept_young
        )?;
    }
    writeln!(out, "done in {:.2} s", report.duration_ms / 1e3)
}

/// Runs `shardlake snapshots`.
pub async fn snapshots(lake: &Lake, json: bool) -> anyhow::Result<()> {
    let snapshots = lake.snapshots().await?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &snapshots)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<20}  {:<24}  {:<16}  {:>12}  {:>13}  pinned by",
        "snapshot_id", "committed_at", "operation", "total_rows", "next_position"
    )?;
    for s in &snapshots {
        writeln!(
            out,
            "{:<20}  {:<24}  {:<16}  {:>12}  {:>13}  {}{}",
            s.snapshot_id,
            s.committed_at,
            s.operation,
            s.total_rows.map(|n| n.to_string()).unwrap_or_default(),
            s.next_position.map(|n| n.to_string()).unwrap_or_default(),
            s.pinned_by.join(","),
            if s.current { "  (current)" } else { "" }
        )?;
    }
    writeln!(out, "{} retained snapshots", snapshots.len())?;
    Ok(())
}

/// Why compaction with these settings found nothing to do, and what would.
pub async fn why_nothing_to_compact(
    lake: &Lake,
    small_file_mib: u64,
    min_files: usize,
) -> anyhow::Result<String> {
    let engine = CrossShardQuery::open(lake, QueryConfig::default()).await?;
    let live = engine.live_files(None, None, &Scope::All).await?;
    let small = small_file_mib * 1024 * 1024;
    let mut per_namespace: std::collections::BTreeMap<&str, usize> = Default::default();
    for file in live.files.iter().filter(|f| f.size < small) {
        *per_namespace.entry(file.namespace.as_str()).or_default() += 1;
    }
    let most = per_namespace
        .iter()
        .max_by_key(|(namespace, n)| (**n, std::cmp::Reverse(**namespace)));
    Ok(match most {
        None => format!(
            "no data file is smaller than {small_file_mib} MiB ({} files in all)",
            live.files.len()
        ),
        Some((namespace, n)) if *n >= 2 => format!(
            "no namespace has {min_files} files smaller than {small_file_mib} MiB \
             (--min-files); the most is {n}, in {namespace}: --min-files {n} would compact it"
        ),
        Some(_) => format!(
            "every namespace has at most one file smaller than {small_file_mib} MiB: \
             already compact"
        ),
    })
}
