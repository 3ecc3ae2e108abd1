//! What users run: read-only SQL, clear errors, `things`, JSON payloads,
//! the typed calls and streaming.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use futures::StreamExt;
use shardlake_query::{
    AggregateFunction, AggregateQuery, Aggregation, AnsweredFrom, Condition, ErrorKind,
    EventsQuery, Op, OrderBy, ThingsQuery,
};

use crate::fixture::{Fixture, config};

#[tokio::test]
async fn anything_but_a_query_is_refused_before_it_runs() {
    let fixture = Fixture::build(1).await;
    let engine = fixture.engine(config()).await;
    let outside = fixture.dir.path().join("escape.csv");
    let refused = [
        "CREATE TABLE t AS SELECT 1".to_owned(),
        "CREATE VIEW v AS SELECT * FROM events".to_owned(),
        "DROP TABLE events".to_owned(),
        "INSERT INTO events SELECT * FROM events".to_owned(),
        "DELETE FROM events".to_owned(),
        format!("COPY (SELECT * FROM events) TO '{}'", outside.display()),
        format!(
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '{}'",
            outside.display()
        ),
        "SET datafusion.execution.batch_size = 1".to_owned(),
        "EXPLAIN ANALYZE INSERT INTO events SELECT * FROM events".to_owned(),
    ];
    for sql in refused {
        let err = engine.sql(&sql).await.expect_err(&sql);
        assert_eq!(err.kind(), ErrorKind::NotAllowed, "{sql}: {err}");
    }
    assert!(!outside.exists(), "nothing was written outside the lake");
    // Queries, EXPLAIN and SHOW are fine.
    engine
        .sql("EXPLAIN SELECT * FROM events WHERE namespace = 'a'")
        .await
        .expect("explain");
    engine.sql("SHOW TABLES").await.expect("show");
}

#[tokio::test]
async fn bad_sql_is_an_invalid_query_with_a_useful_message() {
    let fixture = Fixture::build(1).await;
    let engine = fixture.engine(config()).await;
    for (sql, needle) in [
        ("SELECT nope FROM events", "nope"),
        ("SELEC 1", "SELEC"),
        ("SELECT * FROM missing_table", "missing_table"),
        ("SELECT 1; SELECT 2", "statement"),
    ] {
        let err = engine.sql(sql).await.expect_err(sql);
        assert!(
            matches!(err.kind(), ErrorKind::InvalidQuery | ErrorKind::NotAllowed),
            "{sql}: {err}"
        );
        assert!(
            err.message()
                .to_lowercase()
                .contains(&needle.to_lowercase()),
            "{sql}: {err}"
        );
    }
}

#[tokio::test]
async fn things_is_the_latest_state_of_live_entities_and_prunes_by_namespace() {
    let fixture = Fixture::build(3).await;
    let engine = fixture.engine(config()).await;
    let truth = fixture.things();
    let ns = "tenant-001";
    let result = engine
        .sql(format!(
            "SELECT namespace, \"type\", id, version, payload FROM things WHERE namespace = '{ns}' ORDER BY \"type\", id"
        ))
        .await
        .expect("things");
    let want: Vec<_> = truth.iter().filter(|((n, _, _), _)| n == ns).collect();
    assert_eq!(result.num_rows(), want.len());
    let mut i = 0;
    for batch in &result.batches {
        let (types, ids) = (
            batch.column(1).as_string::<i32>(),
            batch.column(2).as_string::<i32>(),
        );
        let versions = batch.column(3).as_primitive::<Int64Type>();
        let payloads = batch.column(4).as_string::<i32>();
        for r in 0..batch.num_rows() {
            let ((_, t, id), e) = want[i];
            assert_eq!((types.value(r), ids.value(r)), (t.as_str(), id.as_str()));
            assert_eq!(Some(versions.value(r)), e.version);
            assert_eq!(
                payloads.is_valid(r).then(|| payloads.value(r)),
                e.payload.as_deref()
            );
            i += 1;
        }
    }
    // Deleted entities are gone; pruning still applies through the view.
    assert_eq!(result.stats.partitions_scanned, 1);
    assert_eq!(result.stats.partitions_pruned, 3);
}

/// The maintained fold and the view's SQL give the same `things`, every
/// column; a budget the folds do not fit in derives it from the events.
#[tokio::test]
async fn maintained_things_equal_derived_things_in_every_column() {
    let fixture = Fixture::build(3).await;
    let maintained = fixture.engine(config()).await;
    let derived = fixture
        .engine(shardlake_query::QueryConfig {
            things_state_bytes: 1,
            ..config()
        })
        .await;
    for sql in [
        "SELECT * FROM things ORDER BY namespace, \"type\", id",
        "SELECT * FROM things WHERE namespace IN ('tenant-000', 'tenant-002') AND events > 1 ORDER BY namespace, \"type\", id",
        "SELECT \"type\", count(*), max(version), min(created_at) FROM things GROUP BY 1 ORDER BY 1",
    ] {
        let kept = maintained
            .sql(sql)
            .without_cache()
            .await
            .expect("maintained");
        let made = derived.sql(sql).without_cache().await.expect("derived");
        assert_eq!(kept.stats.answered_from, AnsweredFrom::State, "{sql}");
        assert_eq!(made.stats.answered_from, AnsweredFrom::Scan, "{sql}");
        assert!(kept.num_rows() > 0, "{sql}");
        let concat = |r: &shardlake_query::QueryResult| {
            arrow::compute::concat_batches(&r.batches[0].schema(), &r.batches).expect("concat")
        };
        assert_eq!(concat(&kept), concat(&made), "{sql}");
    }
}

#[tokio::test]
async fn json_payload_fields_are_queryable() {
    let fixture = Fixture::build(1).await;
    let engine = fixture.engine(config()).await;
    let truth = fixture
        .events
        .iter()
        .filter(|e| e.entity_type.as_deref() == Some("Order"))
        .filter_map(|e| e.payload.as_deref())
        .filter(|p| p.contains(r#""status":"paid""#))
        .count();
    let result = engine
        .sql(
            "SELECT count(*) FROM events WHERE entity_type = 'Order' \
             AND json_get_str(payload, 'status') = 'paid'",
        )
        .await
        .expect("json");
    let n = result.batches[0]
        .column(0)
        .as_primitive::<Int64Type>()
        .value(0);
    assert_eq!(n as usize, truth);
    let arrow = engine
        .sql("SELECT count(*) FROM events WHERE (payload->>'status') = 'paid' AND entity_type = 'Order'")
        .await
        .expect("->> operator");
    assert_eq!(arrow.batches, result.batches);
}

#[tokio::test]
async fn typed_calls_build_plans_not_sql() {
    let fixture = Fixture::build(2).await;
    let engine = fixture.engine(config()).await;
    let truth = fixture.things();

    // A value that would break naive string concatenation is just a literal.
    let hostile = engine
        .query_things(ThingsQuery {
            namespace: Some("x' OR '1'='1".into()),
            ..ThingsQuery::default()
        })
        .await
        .expect("query");
    assert_eq!(hostile.num_rows(), 0);

    let customers = engine
        .query_things(ThingsQuery {
            entity_type: Some("Customer".into()),
            namespace: Some("tenant-000".into()),
            conditions: vec![Condition::new("payload.tier", Op::Eq, "pro")],
            order_by: vec![OrderBy::asc("id")],
            limit: Some(5),
            offset: Some(1),
        })
        .await
        .expect("things");
    let want: Vec<&String> = truth
        .iter()
        .filter(|((ns, t, _), e)| {
            ns == "tenant-000"
                && t == "Customer"
                && e.payload
                    .as_deref()
                    .is_some_and(|p| p.contains(r#""tier":"pro""#))
        })
        .map(|((_, _, id), _)| id)
        .skip(1)
        .take(5)
        .collect();
    let got: Vec<String> = customers
        .batches
        .iter()
        .flat_map(|b| {
            let ids = b
                .column_by_name("id")
                .expect("id")
                .as_string::<i32>()
                .clone();
            (0..b.num_rows()).map(move |i| ids.value(i).to_owned())
        })
        .collect();
    assert_eq!(got.iter().collect::<Vec<_>>(), want);
    assert_eq!(customers.stats.partitions_scanned, 1);

    let deleted = engine
        .query_events(EventsQuery {
            event_type: Some("thing.deleted".into()),
            shard_id: Some(2),
            ..EventsQuery::default()
        })
        .await
        .expect("events");
    let want = fixture
        .events
        .iter()
        .filter(|e| e.event_type == "thing.deleted" && e.shard_id == 2)
        .count();
    assert_eq!(deleted.num_rows(), want);

    let per_type = engine
        .aggregate(AggregateQuery {
            group_by: vec!["entity_type".into()],
            aggregations: vec![
                Aggregation {
                    function: AggregateFunction::Count,
                    field: None,
                    alias: "events".into(),
                },
                Aggregation {
                    function: AggregateFunction::Max,
                    field: Some("version".into()),
                    alias: "max_version".into(),
                },
            ],
            having: vec![Condition::new("events", Op::Gt, 100)],
            order_by: vec![OrderBy::desc("events")],
            ..AggregateQuery::default()
        })
        .await
        .expect("aggregate");
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for e in &fixture.events {
        *want
            .entry(e.entity_type.clone().unwrap_or_default())
            .or_default() += 1;
    }
    want.retain(|_, n| *n > 100);
    assert_eq!(per_type.num_rows(), want.len());

    let err = engine
        .query_things(ThingsQuery {
            conditions: vec![Condition::new("no_such_field", Op::Eq, 1)],
            ..ThingsQuery::default()
        })
        .await
        .expect_err("unknown field");
    assert_eq!(err.kind(), ErrorKind::InvalidQuery);
    assert!(err.message().contains("no_such_field"));
}

#[tokio::test]
async fn streaming_yields_batches_and_then_stats() {
    let fixture = Fixture::build(2).await;
    let engine = fixture.engine(config()).await;
    let mut stream = engine
        .sql("SELECT * FROM events WHERE namespace = 'tenant-000'")
        .stream()
        .await
        .expect("stream");
    assert_eq!(stream.schema().fields().len(), 12);
    assert!(stream.stats().is_none());
    let mut rows = 0;
    while let Some(batch) = stream.next().await {
        rows += batch.expect("batch").num_rows();
    }
    assert_eq!(rows, fixture.in_namespace("tenant-000").len());
    let stats = stream.stats().expect("stats after the end");
    assert_eq!(stats.rows_returned, rows as u64);
    assert_eq!(stats.partitions_scanned, 1);
}

/// `things` checked against a fold of the events done here, at every
/// snapshot a query can pin: after each commit (pinned by id after later
/// commits), and after compaction rewrote every file (same events, new
/// files, a `replace` snapshot).
#[tokio::test]
async fn things_is_the_fold_of_the_events_at_every_snapshot() {
    use shardlake_lake::CompactionConfig;

    /// Latest event and event count per entity, deleted ones excluded.
    fn fold(events: &[shardlake_core::Event]) -> BTreeMap<(String, String, String), (i64, i64)> {
        let mut state: BTreeMap<(String, String, String), (i64, i64, bool)> = BTreeMap::new();
        for e in events {
            if let (Some(t), Some(id)) = (&e.entity_type, &e.entity_id) {
                let entry = state
                    .entry((e.namespace.clone(), t.clone(), id.clone()))
                    .or_insert((0, 0, false));
                *entry = (
                    e.version.unwrap_or_default(),
                    entry.1 + 1,
                    e.event_type == "thing.deleted",
                );
            }
        }
        state
            .into_iter()
            .filter(|(_, (_, _, deleted))| !deleted)
            .map(|(k, (version, events, _))| (k, (version, events)))
            .collect()
    }

    let fixture = Fixture::build(0).await;
    let emitter = shardlake_testkit::quick_emitter(&fixture.lake).await;
    let engine = fixture.engine(config()).await;
    let sql = "SELECT namespace, \"type\", id, version, events FROM things";
    let answer = |r: &shardlake_query::QueryResult| {
        let mut out = BTreeMap::new();
        for b in &r.batches {
            let (ns, t, id) = (
                b.column(0).as_string::<i32>(),
                b.column(1).as_string::<i32>(),
                b.column(2).as_string::<i32>(),
            );
            let (v, n) = (
                b.column(3).as_primitive::<Int64Type>(),
                b.column(4).as_primitive::<Int64Type>(),
            );
            for i in 0..b.num_rows() {
                out.insert(
                    (
                        ns.value(i).to_owned(),
                        t.value(i).to_owned(),
                        id.value(i).to_owned(),
                    ),
                    (v.value(i), n.value(i)),
                );
            }
        }
        out
    };

    // Commit by commit; remember each snapshot and what it holds.
    let mut pinned = Vec::new();
    let mut committed = 0;
    for chunk in fixture.events.chunks(fixture.events.len().div_ceil(3)) {
        emitter.emit(chunk).await.expect("emit");
        committed += chunk.len();
        let now = engine.sql(sql).latest().await.expect("things");
        assert_eq!(
            answer(&now),
            fold(&fixture.events[..committed]),
            "after {committed} events"
        );
        // Answered from the maintained fold, which read only what the
        // commit added (everything, the first time).
        assert_eq!(
            now.stats.answered_from,
            AnsweredFrom::State,
            "{:?}",
            now.stats
        );
        let read = if committed == chunk.len() {
            committed
        } else {
            chunk.len()
        };
        assert_eq!(now.stats.rows_scanned, read as u64, "{:?}", now.stats);
        let again = engine
            .sql(sql)
            .latest()
            .without_cache()
            .await
            .expect("things");
        assert_eq!(answer(&again), answer(&now));
        assert_eq!(
            (again.stats.rows_scanned, again.stats.files_scanned),
            (0, 0)
        );
        assert_eq!(again.stats.answered_from, AnsweredFrom::State);
        pinned.push((now.stats.snapshot_ids[0], committed));
    }
    emitter.close().await.expect("close");
    let report = fixture
        .lake
        .compact(&CompactionConfig {
            small_file_bytes: u64::MAX,
            min_small_files: 2,
            max_attempts: 10,
        })
        .await
        .expect("compact");
    assert!(report.files_removed > 0, "{report:?}");

    let compacted = engine
        .sql(sql)
        .latest()
        .without_cache()
        .await
        .expect("things");
    assert_ne!(compacted.stats.snapshot_ids[0], pinned[2].0);
    assert_eq!(answer(&compacted), fold(&fixture.events));
    // The compaction moved the same events into new files: the fold
    // carried over without reading them.
    assert_eq!(compacted.stats.answered_from, AnsweredFrom::State);
    assert_eq!(compacted.stats.rows_scanned, 0, "{:?}", compacted.stats);
    for (snapshot, committed) in pinned {
        let then = engine
            .sql(sql)
            .at_snapshot(snapshot)
            .without_cache()
            .await
            .expect("pinned things");
        assert_eq!(
            answer(&then),
            fold(&fixture.events[..committed]),
            "at {snapshot}"
        );
        // Older than the fold: derived from the events of that snapshot;
        // the last one before the compaction holds the fold's events.
        let expected = match committed == fixture.events.len() {
            true => AnsweredFrom::State,
            false => AnsweredFrom::Scan,
        };
        assert_eq!(then.stats.answered_from, expected, "at {snapshot}");
    }
}
