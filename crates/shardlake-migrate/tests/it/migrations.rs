//! The phased migration against a real lake: shards that emit while keys
//! move, a write in every phase, failures with rollback before and after
//! cutover, a process killed in every phase and run again, and a flush
//! whose acknowledgement is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use shardlake_core::Event;
use shardlake_lake::{EmitterConfig, Lake, PipelineEmitter};
use shardlake_migrate::{
    ControlStore, InMemoryShard, KeyDigest, MigrationConfig, MigrationPlan, MigrationReport,
    MigrationStatus, Migrator, Phase, PhaseHook, ShardSet, ShardStub, Submitted, WriteGate,
    current_topology, digest_of, key_stats, migration_reports, plan_add_shard, publish_topology,
};
use shardlake_query::{CrossShardQuery, QueryConfig, ReplayQuery};
use shardlake_routing::{ShardId, ShardRouter, SharedRouter, Strategy, Topology};

const NAMESPACES: usize = 4;

/// A write of `key`: the `n`th, carried in the payload so order and
/// exactly-once can be checked from the lake. The owner stamps shard and seq.
fn write(key: &str, n: i64) -> Event {
    let k: usize = key
        .rsplit('-')
        .next()
        .and_then(|k| k.parse().ok())
        .unwrap_or(0);
    Event::new(
        format!("ns-{}", k % NAMESPACES),
        0,
        0,
        key,
        "thing.updated",
        chrono::DateTime::from_timestamp(1_767_225_600 + n, 0).expect("ts"),
    )
    .with_entity("Order", key.trim_start_matches("Order:"), n)
    .with_payload(&serde_json::json!({ "n": n }))
}

fn key(k: usize) -> String {
    format!("Order:o-{k}")
}

/// A lake, its shards (in memory, each emitting as itself), routing and
/// the write gate: the processes a migration coordinates.
struct Cluster {
    _dir: tempfile::TempDir,
    lake: Lake,
    engine: CrossShardQuery,
    emitter: Arc<PipelineEmitter>,
    shards: Arc<ShardSet>,
    stubs: BTreeMap<ShardId, Arc<InMemoryShard>>,
    /// The coordinating process's routing and write gate (replaced when
    /// it "restarts").
    process: Mutex<(Arc<SharedRouter>, Arc<WriteGate>)>,
    /// Writes acknowledged per key (the last `n`).
    written: Mutex<BTreeMap<String, i64>>,
}

impl Cluster {
    /// `shards` shards (jump hash) plus `spare` empty ones, and `keys` keys
    /// with 3 events each committed by their owners.
    async fn start(shards: u32, spare: u32, keys: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open_local(dir.path()).await.expect("lake");
        let emitter = Arc::new(
            lake.emitter(EmitterConfig {
                flush_interval: Duration::from_millis(2),
                ..EmitterConfig::default()
            })
            .await
            .expect("emitter"),
        );
        let topology = Topology::new(shards, Strategy::Jump);
        let router = ShardRouter::new(topology.clone()).expect("router");
        // Seed: each key's first 3 writes, committed as its owner.
        let mut seqs: BTreeMap<ShardId, i64> = BTreeMap::new();
        let mut seed = Vec::new();
        for k in 0..keys {
            for n in 1..=3 {
                let mut e = write(&key(k), n);
                let owner = router.shard_of(&e.partition_key).expect("route");
                let seq = seqs.entry(owner).or_insert(0);
                *seq += 1;
                (e.shard_id, e.seq) = (owner as i32, *seq);
                seed.push(e);
            }
        }
        emitter.emit(&seed).await.expect("seed");
        let control = ControlStore::open(&lake).await.expect("control");
        publish_topology(&control, &topology)
            .await
            .expect("publish");

        let set = Arc::new(ShardSet::new());
        let mut stubs = BTreeMap::new();
        for id in 0..shards + spare {
            let last = seqs.get(&id).copied().unwrap_or(0);
            let stub = Arc::new(InMemoryShard::with_emitter(id, Arc::clone(&emitter), last));
            set.insert(Arc::clone(&stub) as Arc<dyn ShardStub>);
            stubs.insert(id, stub);
        }
        let router = Arc::new(SharedRouter::new(router));
        let gate = Arc::new(WriteGate::new(
            Arc::clone(&router),
            Arc::clone(&set),
            control,
        ));
        let engine = CrossShardQuery::open(&lake, QueryConfig::default())
            .await
            .expect("engine");
        let cluster = Self {
            _dir: dir,
            lake,
            engine,
            emitter,
            shards: set,
            stubs,
            process: Mutex::new((router, gate)),
            written: Mutex::new((0..keys).map(|k| (key(k), 3)).collect()),
        };
        cluster.sync().await;
        cluster
    }

    fn router(&self) -> Arc<SharedRouter> {
        Arc::clone(&self.process.lock().expect("lock").0)
    }

    fn gate(&self) -> Arc<WriteGate> {
        Arc::clone(&self.process.lock().expect("lock").1)
    }

    /// A new coordinating process: routing and fences from the control
    /// store, the same shards (other processes, they live on).
    async fn restart(&self, config: MigrationConfig) -> Migrator {
        let control = ControlStore::open(&self.lake).await.expect("control");
        let stored = current_topology(&control)
            .await
            .expect("topology")
            .expect("some");
        let router = Arc::new(SharedRouter::new(ShardRouter::new(stored).expect("router")));
        let gate = Arc::new(WriteGate::new(
            Arc::clone(&router),
            Arc::clone(&self.shards),
            control,
        ));
        *self.process.lock().expect("lock") = (router, gate);
        self.migrator(config).await
    }

    /// Submits the next write of `key`; returns what happened.
    async fn write_next(&self, key: &str) -> Submitted {
        self.write_via(&self.gate(), key).await
    }

    /// The next write of `key` through `gate` (a new key starts at 1).
    async fn write_via(&self, gate: &WriteGate, key: &str) -> Submitted {
        let n = self
            .written
            .lock()
            .expect("lock")
            .get(key)
            .copied()
            .unwrap_or(0)
            + 1;
        let outcome = gate.submit(write(key, n)).await.expect("submit");
        self.written.lock().expect("lock").insert(key.to_owned(), n);
        outcome
    }

    async fn migrator(&self, config: MigrationConfig) -> Migrator {
        Migrator::open(&self.lake, self.engine.clone(), self.gate(), config)
            .await
            .expect("migrator")
    }

    /// A plan adding shard `id` to the current topology.
    async fn plan_add(&self, id: ShardId) -> MigrationPlan {
        let keys = key_stats(&self.engine).await.expect("stats");
        let from = self.router().current().topology().clone();
        plan_add_shard(&from, id, &keys, 100_000.0).expect("plan")
    }

    /// Every event of the lake now, by key, in position order.
    async fn lake_by_key(&self) -> BTreeMap<String, Vec<Event>> {
        let mut stream = self
            .engine
            .replay(ReplayQuery::default())
            .without_cache()
            .stream()
            .await
            .expect("replay");
        let mut out: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        while let Some(b) = stream.next().await {
            for e in shardlake_core::events_from_batch(&b.expect("batch")).expect("events") {
                out.entry(e.partition_key.clone()).or_default().push(e);
            }
        }
        out
    }

    /// Brings every shard's state up to the lake for the keys it owns now
    /// (shards follow the lake, which is their write-ahead log).
    async fn sync(&self) {
        let router = self.router().current();
        let mut per_shard: BTreeMap<ShardId, Vec<Event>> = BTreeMap::new();
        for (key, events) in self.lake_by_key().await {
            let owner = router.shard_of(&key).expect("route");
            per_shard.entry(owner).or_default().extend(events);
        }
        for (shard, events) in per_shard {
            self.stubs[&shard].apply(&events).await.expect("apply");
        }
    }

    /// Every acknowledged write is in the lake exactly once, in order, and
    /// nothing else is.
    async fn assert_exactly_once(&self) -> BTreeMap<String, Vec<Event>> {
        let lake = self.lake_by_key().await;
        let written = self.written.lock().expect("lock").clone();
        assert_eq!(lake.len(), written.len(), "keys");
        for (key, last) in &written {
            let ns: Vec<i64> = lake[key]
                .iter()
                .map(|e| {
                    let p: serde_json::Value =
                        serde_json::from_str(e.payload.as_deref().expect("payload")).expect("json");
                    p["n"].as_i64().expect("n")
                })
                .collect();
            assert_eq!(
                ns,
                (1..=*last).collect::<Vec<_>>(),
                "{key}: in order, once each"
            );
        }
        lake
    }

    /// The moved keys' state on their new owners equals the lake's, no old
    /// owner holds them, and every key is held by its router owner alone.
    async fn assert_owned_once(&self, report: &MigrationReport) {
        for m in &report.plan.moves {
            assert!(
                !self.stubs[&m.from].keys().contains(&m.key),
                "old owner {} still holds {}",
                m.from,
                m.key
            );
        }
        self.sync().await;
        let lake = self.lake_by_key().await;
        let router = self.router().current();
        let mut holders: BTreeMap<String, Vec<ShardId>> = BTreeMap::new();
        for (id, stub) in &self.stubs {
            for k in stub.keys() {
                holders.entry(k).or_default().push(*id);
            }
        }
        for key in lake.keys() {
            assert_eq!(
                holders.get(key),
                Some(&vec![router.shard_of(key).expect("route")]),
                "{key} is held by its owner alone"
            );
        }
        for m in &report.plan.moves {
            let held = self.stubs[&m.to]
                .digests(std::slice::from_ref(&m.key))
                .await
                .expect("digests");
            let expected: KeyDigest = digest_of(lake[&m.key].iter());
            assert_eq!(held.get(&m.key), Some(&expected), "{}", m.key);
            assert_eq!(
                self.stubs[&m.to].latest(&m.key).map(|e| e.position),
                Some(lake[&m.key].last().and_then(|e| e.position)),
                "the state is the latest event"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adding_a_ninth_shard_while_eight_emit_moves_every_key_exactly_once() {
    let cluster = Arc::new(Cluster::start(8, 1, 400).await);
    let plan = cluster.plan_add(8).await;
    assert!(plan.moves.len() > 20, "{} keys move", plan.moves.len());
    assert!(plan.moves.iter().all(|m| m.to == 8));

    // Eight writers (one per shard's keys, so each key's writes are
    // sequential) keep writing through the gate during the whole migration.
    let stop = Arc::new(AtomicBool::new(false));
    let buffered = Arc::new(AtomicI64::new(0));
    let mut writers = Vec::new();
    for w in 0..8usize {
        let (cluster, stop, buffered) = (
            Arc::clone(&cluster),
            Arc::clone(&stop),
            Arc::clone(&buffered),
        );
        writers.push(tokio::spawn(async move {
            let mine: Vec<String> = (0..400).filter(|k| k % 8 == w).map(key).collect();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Submitted::Buffered { .. } = cluster.write_next(&mine[i % mine.len()]).await
                {
                    buffered.fetch_add(1, Ordering::Relaxed);
                }
                i += 7;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let phases = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&phases);
    let migrator = cluster
        .migrator(MigrationConfig {
            batch_size: 97,
            ..MigrationConfig::default()
        })
        .await
        .on_progress(move |p| {
            let mut seen = seen.lock().expect("lock");
            if seen.last() != Some(&p.phase) {
                seen.push(p.phase);
            }
        });
    let report = migrator.execute(plan.clone()).await.expect("start");
    assert_eq!(report.status, MigrationStatus::Completed, "{report:#?}");
    assert_eq!(report.keys_verified, report.plan.moves.len());
    assert!(report.events_copied >= plan.events_to_move);
    assert_eq!(
        *phases.lock().expect("lock"),
        vec![
            Phase::Initializing,
            Phase::Copying,
            Phase::CatchingUp,
            Phase::Fencing,
            Phase::Cutover,
            Phase::Flushing,
            Phase::Verifying,
            Phase::Complete
        ]
    );
    // Writers keep going under the new topology for a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    assert_eq!(report.writes_buffered, report.writes_flushed);
    assert_eq!(
        report.writes_flushed,
        buffered.load(Ordering::Relaxed) as u64
    );

    assert_eq!(cluster.router().current().topology().version, 2);
    let control = ControlStore::open(&cluster.lake).await.expect("control");
    assert_eq!(
        current_topology(&control).await.expect("topology"),
        Some(plan.to.clone())
    );
    cluster.assert_exactly_once().await;
    cluster.assert_owned_once(&report).await;
    // The same plan again is the same, completed migration.
    let again = migrator.execute(plan).await.expect("again");
    assert_eq!(
        (again.id, again.status),
        (report.id, MigrationStatus::Completed)
    );
    cluster.emitter.close().await.expect("close");
}

/// Writes one key in every phase and records what happened to it.
struct WriteEveryPhase {
    cluster: Arc<Cluster>,
    key: String,
    outcomes: Mutex<Vec<(Phase, Submitted)>>,
    /// Makes the new owner fail (apply) from this phase on.
    fail_from: Option<(Phase, ShardId)>,
}

#[async_trait]
impl PhaseHook for WriteEveryPhase {
    async fn before(&self, phase: Phase, _: &MigrationReport) {
        if matches!(phase, Phase::Complete | Phase::RollingBack) {
            return;
        }
        if let Some((from, shard)) = self.fail_from
            && phase == from
        {
            self.cluster.stubs[&shard].fail_after(0);
        }
        let outcome = self.cluster.write_next(&self.key).await;
        self.outcomes.lock().expect("lock").push((phase, outcome));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_every_phase_is_applied_once_and_in_order() {
    let cluster = Arc::new(Cluster::start(4, 1, 120).await);
    let plan = cluster.plan_add(4).await;
    let moving = plan.moves[0].clone();
    let hook = Arc::new(WriteEveryPhase {
        cluster: Arc::clone(&cluster),
        key: moving.key.clone(),
        outcomes: Mutex::default(),
        fail_from: None,
    });
    let report = cluster
        .migrator(MigrationConfig::default())
        .await
        .with_hook(Arc::clone(&hook) as Arc<dyn PhaseHook>)
        .execute(plan)
        .await
        .expect("start");
    assert_eq!(report.status, MigrationStatus::Completed, "{report:#?}");
    let outcomes = hook.outcomes.lock().expect("lock").clone();
    let delivered = |shard| Submitted::Delivered { shard };
    let phases: Vec<Phase> = outcomes.iter().map(|(p, _)| *p).collect();
    assert_eq!(phases.len(), 7, "{phases:?}");
    // The hook runs as each phase starts: the fence goes up during
    // `fencing` and comes down at the end of `flushing`.
    for (phase, outcome) in &outcomes {
        match phase {
            Phase::Initializing | Phase::Copying | Phase::CatchingUp | Phase::Fencing => {
                assert_eq!(outcome, &delivered(moving.from), "{phase}")
            }
            Phase::Cutover | Phase::Flushing => {
                assert!(
                    matches!(outcome, Submitted::Buffered { .. }),
                    "{phase}: {outcome:?}"
                )
            }
            _ => assert_eq!(outcome, &delivered(moving.to), "{phase}"),
        }
    }
    assert_eq!((report.writes_buffered, report.writes_flushed), (2, 2));
    cluster.assert_exactly_once().await;
    cluster.assert_owned_once(&report).await;
}

#[tokio::test]
async fn a_target_failing_mid_copy_rolls_back_without_a_trace() {
    let cluster = Arc::new(Cluster::start(4, 1, 300).await);
    let plan = cluster.plan_add(4).await;
    cluster.stubs[&4].fail_after(2);
    let report = cluster
        .migrator(MigrationConfig {
            batch_size: 10,
            ..MigrationConfig::default()
        })
        .await
        .execute(plan.clone())
        .await
        .expect("start");
    assert_eq!(report.status, MigrationStatus::RolledBack, "{report:#?}");
    assert!(report.rolled_back);
    let error = report.error.as_ref().expect("error");
    assert_eq!(
        (error.phase, error.code.as_str()),
        (Phase::Copying, "shard_error")
    );
    let rollback = report.rollback.as_ref().expect("rollback");
    assert_eq!(rollback.keys_dropped, plan.moves.len());
    assert_eq!(rollback.topology_restored_as, None, "never cut over");
    assert!(rollback.problems.is_empty(), "{rollback:?}");
    assert!(
        cluster.stubs[&4].keys().is_empty(),
        "no trace on the target"
    );
    assert_eq!(cluster.router().current().topology(), &plan.from);
    assert!(
        !cluster
            .gate()
            .is_fenced(&plan.moves[0].key)
            .await
            .expect("fenced")
    );
    // Writes go to the old owners again.
    assert_eq!(
        cluster.write_next(&plan.moves[0].key).await,
        Submitted::Delivered {
            shard: plan.moves[0].from
        }
    );

    // Fixed, the same plan runs again (a new attempt) and completes.
    cluster.stubs[&4].fail_after(usize::MAX);
    let report = cluster
        .migrator(MigrationConfig::default())
        .await
        .execute(plan)
        .await
        .expect("again");
    assert_eq!(
        (report.status, report.attempts),
        (MigrationStatus::Completed, 2)
    );
    cluster.assert_exactly_once().await;
    cluster.assert_owned_once(&report).await;
}

#[tokio::test]
async fn a_rollback_needs_only_the_shards_that_received_events() {
    // Shard 4 is planned but was never registered (a wrong or missing
    // endpoint): the run fails before sending it anything, and the
    // rollback must not wait for a shard that holds nothing.
    let cluster = Cluster::start(4, 0, 60).await;
    let plan = cluster.plan_add(4).await;
    let report = cluster
        .migrator(MigrationConfig::default())
        .await
        .execute(plan.clone())
        .await
        .expect("start");
    assert_eq!(report.status, MigrationStatus::RolledBack, "{report:#?}");
    assert_eq!(
        report.error.as_ref().map(|e| e.phase),
        Some(Phase::Initializing)
    );
    let rollback = report.rollback.as_ref().expect("rollback");
    assert!(rollback.problems.is_empty(), "{rollback:?}");
    assert_eq!(rollback.keys_dropped, 0, "nothing was sent anywhere");
    assert_eq!(report.shards_sent_to, Some(BTreeSet::new()));
    assert_eq!(cluster.router().current().topology(), &plan.from);
    // The keys are free again: the old owners take their writes.
    assert_eq!(
        cluster.write_next(&plan.moves[0].key).await,
        Submitted::Delivered {
            shard: plan.moves[0].from
        }
    );
}

/// A target that applies slowly (so the record saves its counters), then
/// stops answering, as if the migrating process died mid-copy.
struct HangsMidCopy {
    inner: Arc<InMemoryShard>,
    answered: AtomicI64,
    hung: tokio::sync::Notify,
}

#[async_trait]
impl ShardStub for HangsMidCopy {
    fn id(&self) -> ShardId {
        self.inner.id()
    }
    async fn apply(
        &self,
        events: &[Event],
    ) -> shardlake_migrate::Result<shardlake_migrate::ApplyAck> {
        let ack = self.inner.apply(events).await?;
        if self.answered.fetch_add(1, Ordering::Relaxed) >= 2 {
            // Applied, never acknowledged: the dead run counted none of it.
            self.hung.notify_one();
            std::future::pending::<()>().await;
        }
        // Past the record's save interval.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(ack)
    }
    async fn digests(
        &self,
        keys: &[String],
    ) -> shardlake_migrate::Result<BTreeMap<String, KeyDigest>> {
        self.inner.digests(keys).await
    }
    async fn drop_keys(&self, keys: &[String]) -> shardlake_migrate::Result<()> {
        self.inner.drop_keys(keys).await
    }
    async fn set_accepting(
        &self,
        keys: &[String],
        accepting: bool,
    ) -> shardlake_migrate::Result<()> {
        self.inner.set_accepting(keys, accepting).await
    }
    async fn accepts(&self, key: &str) -> shardlake_migrate::Result<bool> {
        self.inner.accepts(key).await
    }
    async fn drain(&self) -> shardlake_migrate::Result<()> {
        self.inner.drain().await
    }
    async fn write(&self, events: &[Event]) -> shardlake_migrate::Result<()> {
        self.inner.write(events).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_add_up_across_a_resumed_copy() {
    let cluster = Cluster::start(4, 1, 200).await;
    let plan = cluster.plan_add(4).await;
    let hanging = Arc::new(HangsMidCopy {
        inner: Arc::clone(&cluster.stubs[&4]),
        answered: AtomicI64::new(0),
        hung: tokio::sync::Notify::new(),
    });
    cluster
        .shards
        .insert(Arc::clone(&hanging) as Arc<dyn ShardStub>);
    let config = || MigrationConfig {
        batch_size: 10,
        lease: Duration::from_secs(1),
        ..MigrationConfig::default()
    };
    let doomed = cluster.migrator(config()).await;
    let task = tokio::spawn({
        let plan = plan.clone();
        async move { doomed.execute(plan).await }
    });
    hanging.hung.notified().await;
    task.abort();
    assert!(task.await.is_err(), "killed");
    let control = ControlStore::open(&cluster.lake).await.expect("control");
    let dead = migration_reports(&control)
        .await
        .expect("reports")
        .remove(0);
    assert!(
        dead.events_copied >= 20,
        "the dead run saved counters: {dead:#?}"
    );

    let target = Arc::clone(&cluster.stubs[&4]) as Arc<dyn ShardStub>;
    cluster.shards.insert(target);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let report = cluster
        .restart(config())
        .await
        .execute(plan.clone())
        .await
        .expect("resume");
    assert_eq!(
        (report.status, report.attempts),
        (MigrationStatus::Completed, 2),
        "{report:#?}"
    );
    // Every event moved is counted once: applied by one of the attempts,
    // or found on the target by the resume and not counted before.
    assert!(report.events_skipped > 0, "{report:#?}");
    assert_eq!(
        report.events_copied + report.events_skipped,
        report.plan.events_to_move,
        "{report:#?}"
    );
    cluster.assert_exactly_once().await;
    cluster.assert_owned_once(&report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_cutover_restores_routing_and_keeps_the_buffered_writes() {
    let cluster = Arc::new(Cluster::start(4, 1, 120).await);
    let plan = cluster.plan_add(4).await;
    let moving = plan.moves[0].clone();
    // The new owner stops applying at verification, after the buffered
    // writes were delivered to it.
    let hook = Arc::new(WriteEveryPhase {
        cluster: Arc::clone(&cluster),
        key: moving.key.clone(),
        outcomes: Mutex::default(),
        fail_from: Some((Phase::Verifying, 4)),
    });
    let report = cluster
        .migrator(MigrationConfig::default())
        .await
        .with_hook(Arc::clone(&hook) as Arc<dyn PhaseHook>)
        .execute(plan.clone())
        .await
        .expect("start");
    assert_eq!(report.status, MigrationStatus::RolledBack, "{report:#?}");
    assert_eq!(
        report.error.as_ref().map(|e| e.phase),
        Some(Phase::Verifying)
    );
    let rollback = report.rollback.clone().expect("rollback");
    assert_eq!(rollback.topology_restored_as, Some(3));
    assert!(rollback.problems.is_empty(), "{rollback:?}");
    let current = cluster.router().current().topology().clone();
    assert_eq!((current.version, &current.shards), (3, &plan.from.shards));
    assert!(
        cluster.stubs[&4].keys().is_empty(),
        "no trace on the target"
    );
    // Every write (old owner, buffered, new owner) is in the lake once, in
    // order, and the old owner got back everything the new one committed.
    let lake = cluster.assert_exactly_once().await;
    let held = cluster.stubs[&moving.from]
        .digests(std::slice::from_ref(&moving.key))
        .await
        .expect("digests");
    assert_eq!(
        held.get(&moving.key),
        Some(&digest_of(lake[&moving.key].iter()))
    );
    // The old owner takes the key's next write.
    assert_eq!(
        cluster.write_next(&moving.key).await,
        Submitted::Delivered { shard: moving.from }
    );
    cluster.assert_exactly_once().await;
}

/// Stops the migration at one phase as if its process died there.
struct DieAt {
    phase: Phase,
    cluster: Arc<Cluster>,
    key: String,
    reached: tokio::sync::Notify,
}

#[async_trait]
impl PhaseHook for DieAt {
    async fn before(&self, phase: Phase, _: &MigrationReport) {
        if phase == self.phase {
            // A write arrives, then the process "dies" (never returns).
            self.cluster.write_next(&self.key).await;
            self.reached.notify_one();
            std::future::pending::<()>().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_killed_in_any_phase_completes_when_run_again() {
    let cluster = Arc::new(Cluster::start(3, 6, 150).await);
    let phases = [
        Phase::Copying,
        Phase::CatchingUp,
        Phase::Fencing,
        Phase::Cutover,
        Phase::Flushing,
        Phase::Verifying,
    ];
    for (i, phase) in phases.into_iter().enumerate() {
        let plan = cluster.plan_add(3 + i as ShardId).await;
        let moving = plan.moves[0].key.clone();
        let hook = Arc::new(DieAt {
            phase,
            cluster: Arc::clone(&cluster),
            key: moving.clone(),
            reached: tokio::sync::Notify::new(),
        });
        // Long enough that the refusal below cannot miss it on a loaded
        // machine, short enough to wait out.
        let short_lease = || MigrationConfig {
            lease: Duration::from_secs(2),
            ..MigrationConfig::default()
        };
        let doomed = cluster
            .migrator(short_lease())
            .await
            .with_hook(Arc::clone(&hook) as Arc<dyn PhaseHook>);
        let task = tokio::spawn({
            let plan = plan.clone();
            async move { doomed.execute(plan).await }
        });
        hook.reached.notified().await;
        task.abort();
        assert!(task.await.is_err(), "{phase}: killed");
        let dead_gate = cluster.gate();

        let migrator = cluster.restart(short_lease()).await;
        // The dead run still holds its lease: nobody else may drive the
        // migration until it runs out.
        let err = migrator.execute(plan.clone()).await.expect_err("leased");
        assert_eq!(err.code(), "migration_in_progress", "{phase}: {err}");
        // Past the lease, counted from its last renewal before the kill.
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        let fenced = cluster.gate().is_fenced(&moving).await.expect("fenced");
        assert_eq!(
            fenced,
            matches!(phase, Phase::Cutover | Phase::Flushing),
            "{phase}: the fence survives the crash"
        );
        // A write arriving before the re-run is buffered (or routed) by the
        // new process like any other.
        cluster.write_next(&moving).await;
        let report = migrator.execute(plan.clone()).await.expect("run again");
        assert_eq!(
            report.status,
            MigrationStatus::Completed,
            "{phase}: {report:#?}"
        );
        assert_eq!(report.attempts, 2, "{phase}");
        assert_eq!(cluster.router().current().topology(), &plan.to);
        // The dead process's gate, fenced or not, follows the store: its
        // stale fence is dropped and the write goes to the new owner.
        assert_eq!(
            cluster.write_via(&dead_gate, &moving).await,
            Submitted::Delivered {
                shard: plan.moves[0].to
            },
            "{phase}"
        );
        cluster.assert_exactly_once().await;
        cluster.assert_owned_once(&report).await;
    }
    let control = ControlStore::open(&cluster.lake).await.expect("control");
    let reports = migration_reports(&control).await.expect("reports");
    assert_eq!(reports.len(), phases.len());
    assert!(
        reports
            .iter()
            .all(|r| r.status == MigrationStatus::Completed)
    );
}

/// A shard whose writes become durable but whose answer is lost once.
struct LosesOneAck {
    inner: Arc<InMemoryShard>,
    lose: AtomicBool,
}

#[async_trait]
impl ShardStub for LosesOneAck {
    fn id(&self) -> ShardId {
        self.inner.id()
    }
    async fn apply(
        &self,
        events: &[Event],
    ) -> shardlake_migrate::Result<shardlake_migrate::ApplyAck> {
        self.inner.apply(events).await
    }
    async fn digests(
        &self,
        keys: &[String],
    ) -> shardlake_migrate::Result<BTreeMap<String, KeyDigest>> {
        self.inner.digests(keys).await
    }
    async fn drop_keys(&self, keys: &[String]) -> shardlake_migrate::Result<()> {
        self.inner.drop_keys(keys).await
    }
    async fn set_accepting(
        &self,
        keys: &[String],
        accepting: bool,
    ) -> shardlake_migrate::Result<()> {
        self.inner.set_accepting(keys, accepting).await
    }
    async fn accepts(&self, key: &str) -> shardlake_migrate::Result<bool> {
        self.inner.accepts(key).await
    }
    async fn drain(&self) -> shardlake_migrate::Result<()> {
        self.inner.drain().await
    }
    async fn write(&self, events: &[Event]) -> shardlake_migrate::Result<()> {
        self.inner.write(events).await?;
        if self.lose.swap(false, Ordering::Relaxed) {
            return Err(shardlake_migrate::shard_failed(
                self.id(),
                "connection reset (after the commit)",
            ));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_whose_answer_was_lost_is_not_delivered_twice() {
    let cluster = Arc::new(Cluster::start(4, 1, 120).await);
    cluster.shards.insert(Arc::new(LosesOneAck {
        inner: Arc::clone(&cluster.stubs[&4]),
        lose: AtomicBool::new(true),
    }));
    let plan = cluster.plan_add(4).await;
    let hook = Arc::new(WriteEveryPhase {
        cluster: Arc::clone(&cluster),
        key: plan.moves[0].key.clone(),
        outcomes: Mutex::default(),
        fail_from: None,
    });
    // Without rollback the failure leaves the migration open...
    let config = MigrationConfig {
        rollback_on_failure: false,
        ..MigrationConfig::default()
    };
    let migrator = cluster
        .migrator(config)
        .await
        .with_hook(Arc::clone(&hook) as Arc<dyn PhaseHook>);
    let report = migrator.execute(plan.clone()).await.expect("start");
    assert_eq!(report.status, MigrationStatus::Failed, "{report:#?}");
    assert_eq!(
        report.error.as_ref().map(|e| e.phase),
        Some(Phase::Flushing)
    );
    assert!(report.fenced && report.cut_over && report.flush_started);
    // ... and resuming finds the writes in the lake instead of resending.
    let report = migrator.resume(&report.id).await.expect("resume");
    assert_eq!(report.status, MigrationStatus::Completed, "{report:#?}");
    cluster.assert_exactly_once().await;
    cluster.assert_owned_once(&report).await;
    let distinct: BTreeSet<_> = report.plan.moves.iter().map(|m| &m.key).collect();
    assert_eq!(distinct.len(), report.plan.moves.len());
}

#[tokio::test]
async fn one_migration_per_key_and_stale_plans_are_refused() {
    let cluster = Arc::new(Cluster::start(4, 2, 100).await);
    let first = cluster.plan_add(4).await;
    // A different next topology from the same version: a stale plan once
    // the first is under way, and its keys overlap.
    let other = cluster.plan_add(5).await;
    let control = ControlStore::open(&cluster.lake).await.expect("control");
    let claimed = control
        .claim_keys("someone-else", &[other.moves[0].key.clone()])
        .await
        .expect("claim");
    assert!(claimed.is_empty());
    let err = cluster
        .migrator(MigrationConfig::default())
        .await
        .execute(other.clone())
        .await
        .expect_err("busy");
    assert_eq!(err.code(), "keys_busy", "{err}");
    assert!(err.to_string().contains(&other.moves[0].key), "{err}");
    control.release_keys("someone-else").await.expect("release");

    let report = cluster
        .migrator(MigrationConfig::default())
        .await
        .execute(first)
        .await
        .expect("first");
    assert!(report.succeeded());
    let err = cluster
        .migrator(MigrationConfig::default())
        .await
        .execute(other)
        .await
        .expect_err("stale");
    assert_eq!(err.code(), "invalid_plan", "{err}");
    assert!(err.to_string().contains("plan again"), "{err}");
}

/// Never lets the catch-up end.
struct Slow;

#[async_trait]
impl PhaseHook for Slow {
    async fn before(&self, phase: Phase, _: &MigrationReport) {
        if phase == Phase::Copying {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
}

#[tokio::test]
async fn a_timeout_cancels_the_work_and_rolls_back() {
    let cluster = Arc::new(Cluster::start(4, 1, 100).await);
    let plan = cluster.plan_add(4).await;
    let migrator = cluster
        .migrator(MigrationConfig {
            timeout: Duration::from_millis(500),
            ..MigrationConfig::default()
        })
        .await
        .with_hook(Arc::new(Slow));
    // The guard catches a wait that was not cancelled (the hook sleeps far
    // longer); it is not a speed check.
    let report = tokio::time::timeout(Duration::from_secs(60), migrator.execute(plan.clone()))
        .await
        .expect("the timeout did not cancel the wait")
        .expect("start");
    assert_eq!(report.status, MigrationStatus::RolledBack, "{report:#?}");
    let error = report.error.expect("error");
    assert_eq!(
        (error.code.as_str(), error.phase),
        ("migration_timeout", Phase::Copying)
    );
    assert!(cluster.stubs[&4].keys().is_empty());
    assert_eq!(cluster.router().current().topology(), &plan.from);
}

/// An old owner that misses the fence and keeps writing a moving key.
struct Zombie {
    cluster: Arc<Cluster>,
    key: String,
    owner: ShardId,
}

#[async_trait]
impl PhaseHook for Zombie {
    async fn before(&self, phase: Phase, _: &MigrationReport) {
        if phase == Phase::Cutover {
            let mut e = write(&self.key, 99);
            (e.shard_id, e.seq) = (self.owner as i32, 1_000_000);
            self.cluster
                .emitter
                .emit(e)
                .await
                .expect("the zombie's write lands");
        }
    }
}

#[tokio::test]
async fn an_old_owner_writing_after_the_fence_fails_verification() {
    let cluster = Arc::new(Cluster::start(4, 1, 100).await);
    let plan = cluster.plan_add(4).await;
    let zombie = Arc::new(Zombie {
        cluster: Arc::clone(&cluster),
        key: plan.moves[0].key.clone(),
        owner: plan.moves[0].from,
    });
    let report = cluster
        .migrator(MigrationConfig::default())
        .await
        .with_hook(zombie)
        .execute(plan.clone())
        .await
        .expect("start");
    assert_eq!(report.status, MigrationStatus::RolledBack, "{report:#?}");
    let error = report.error.expect("error");
    assert_eq!(
        (error.code.as_str(), error.phase),
        ("verification_failed", Phase::Verifying)
    );
    assert!(
        error.message.contains("after it was fenced"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains(&plan.moves[0].key),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn keys_written_after_planning_move_too_and_bad_writes_are_refused_at_the_gate() {
    let cluster = Arc::new(Cluster::start(4, 1, 100).await);
    let plan = cluster.plan_add(4).await;
    // A key the plan has never seen, that the next topology gives shard 4,
    // written (once) between planning and the migration.
    let next = ShardRouter::new(plan.to.clone()).expect("router");
    let born = (1000..)
        .map(key)
        .find(|k| next.shard_of(k) == Ok(4))
        .expect("a key for shard 4");
    let old_owner = cluster.router().current().shard_of(&born).expect("route");
    assert_eq!(
        cluster.write_next(&born).await,
        Submitted::Delivered { shard: old_owner }
    );
    let report = cluster
        .migrator(MigrationConfig::default())
        .await
        .execute(plan.clone())
        .await
        .expect("start");
    assert_eq!(report.status, MigrationStatus::Completed, "{report:#?}");
    assert_eq!(report.keys_discovered, 1);
    assert_eq!(report.plan.moves.len(), plan.moves.len() + 1);
    assert!(
        cluster.stubs[&4].keys().contains(&born),
        "the new key moved"
    );
    cluster.assert_exactly_once().await;
    cluster.assert_owned_once(&report).await;

    // A write the lake would refuse is refused before it is routed or
    // buffered.
    let mut bad = write(&born, 2);
    bad.namespace = String::new();
    let err = cluster.gate().submit(bad).await.expect_err("invalid");
    assert_eq!(err.code(), "invalid_write", "{err}");
}

/// Runs maintenance that expires every unpinned snapshot when `phase`
/// starts, and records what the migration's copy snapshot was pinned by.
struct ExpireEverythingAt {
    phase: Phase,
    cluster: Arc<Cluster>,
    key: String,
    seen: Mutex<Option<(i64, Vec<String>)>>,
}

#[async_trait]
impl PhaseHook for ExpireEverythingAt {
    async fn before(&self, phase: Phase, report: &MigrationReport) {
        if phase != self.phase {
            return;
        }
        // Commits after the copy snapshot, so it is no longer current.
        self.cluster.write_next(&self.key).await;
        self.cluster.write_next(&self.key).await;
        let config = shardlake_lake::MaintenanceConfig {
            compaction: Some(shardlake_lake::CompactionConfig {
                small_file_bytes: u64::MAX,
                min_small_files: 2,
                max_attempts: 10,
            }),
            retention: shardlake_lake::RetentionConfig {
                retention: Duration::ZERO,
                min_snapshots_to_keep: 1,
            },
            orphan_grace: Duration::ZERO,
        };
        self.cluster
            .lake
            .maintain(&config, &shardlake_lake::Action::ALL, false, &|_| {})
            .await
            .expect("maintenance");
        let s0 = report.copy_snapshot.expect("the copy snapshot is chosen");
        let pinned_by = self
            .cluster
            .lake
            .snapshots()
            .await
            .expect("snapshots")
            .into_iter()
            .find(|s| s.snapshot_id == s0)
            .map(|s| s.pinned_by)
            .unwrap_or_default();
        *self.seen.lock().expect("lock") = Some((s0, pinned_by));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_migration_pins_its_snapshots_against_expiry_until_it_completes() {
    let cluster = Arc::new(Cluster::start(4, 1, 120).await);
    let plan = cluster.plan_add(4).await;
    let hook = Arc::new(ExpireEverythingAt {
        phase: Phase::CatchingUp,
        cluster: Arc::clone(&cluster),
        key: plan.moves[0].key.clone(),
        seen: Mutex::default(),
    });
    let report = cluster
        .migrator(MigrationConfig::default())
        .await
        .with_hook(Arc::clone(&hook) as Arc<dyn PhaseHook>)
        .execute(plan)
        .await
        .expect("start");
    assert_eq!(report.status, MigrationStatus::Completed, "{report:#?}");
    let (s0, pinned_by) = hook.seen.lock().expect("lock").clone().expect("hook ran");
    assert_eq!(
        pinned_by,
        vec![format!("migration:{}", report.id)],
        "the copy snapshot survived expiry, pinned by the migration"
    );
    cluster.assert_exactly_once().await;
    cluster.assert_owned_once(&report).await;
    // Finished: the pins are gone and the snapshot expires like any other.
    let pins = cluster.lake.pins().list().await.expect("pins");
    assert!(
        !pins.iter().any(|p| p.holder.starts_with("migration:")),
        "{pins:?}"
    );
    let config = shardlake_lake::MaintenanceConfig {
        compaction: None,
        retention: shardlake_lake::RetentionConfig {
            retention: Duration::ZERO,
            min_snapshots_to_keep: 1,
        },
        orphan_grace: Duration::ZERO,
    };
    cluster
        .lake
        .maintain(&config, &[shardlake_lake::Action::Expire], false, &|_| {})
        .await
        .expect("maintenance");
    let retained: Vec<i64> = cluster
        .lake
        .snapshots()
        .await
        .expect("snapshots")
        .iter()
        .map(|s| s.snapshot_id)
        .collect();
    assert!(!retained.contains(&s0), "{retained:?}");
}
