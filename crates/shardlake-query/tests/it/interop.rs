//! The lake is an open format: engines that are not shardlake read the
//! table shardlake wrote and agree with shardlake's own answers.
//!
//! pyiceberg opens the table through shardlake's SQLite catalog and plans
//! and scans it itself; DuckDB reads the snapshot's data files with its own
//! Parquet reader (`tests/interop/read_lake.py`). If they cannot read
//! something shardlake writes, the writer is what gets fixed.

use std::collections::BTreeMap;
use std::process::Command;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use shardlake_lake::CompactionConfig;
use shardlake_query::CrossShardQuery;

use crate::fixture::{Fixture, config};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/read_lake.py");

/// One row of `i64` figures from shardlake.
async fn figures(engine: &CrossShardQuery) -> BTreeMap<String, i64> {
    let result = engine
        .sql(
            "SELECT count(*) AS events, count(DISTINCT namespace) AS namespaces, \
             count(DISTINCT shard_id) AS shards, sum(seq) AS seq_sum, \
             min(position) AS first_position, max(position) AS last_position, \
             count(DISTINCT partition_key) AS keys FROM events",
        )
        .without_cache()
        .await
        .expect("figures");
    let batch = &result.batches[0];
    batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            let column =
                arrow::compute::cast(column, &arrow::datatypes::DataType::Int64).expect("as i64");
            (
                field.name().clone(),
                column.as_primitive::<Int64Type>().value(0),
            )
        })
        .collect()
}

async fn per_namespace(engine: &CrossShardQuery) -> BTreeMap<String, i64> {
    let result = engine
        .sql("SELECT namespace, count(*) AS n FROM events GROUP BY namespace")
        .without_cache()
        .await
        .expect("per namespace");
    let mut out = BTreeMap::new();
    for batch in &result.batches {
        let ns =
            arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).expect("utf8");
        let ns = ns.as_string::<i32>();
        let n = batch.column(1).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            assert!(!ns.is_null(row));
            out.insert(ns.value(row).to_owned(), n.value(row));
        }
    }
    out
}

fn as_map(value: &serde_json::Value) -> BTreeMap<String, i64> {
    value
        .as_object()
        .expect("object")
        .iter()
        .filter_map(|(k, v)| v.as_i64().map(|v| (k.clone(), v)))
        .collect()
}

/// Runs `read_lake.py` with `args` in the test virtualenv; its JSON.
fn read_lake(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let output = Command::new(shardlake_testkit::python())
        .arg(SCRIPT)
        .args(args)
        .output()
        .expect("run the interop script");
    assert!(
        output.status.success(),
        "read_lake.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

/// Each reader's figures and per-namespace counts equal shardlake's.
fn assert_agree(
    theirs: &serde_json::Value,
    readers: &[&str],
    ours: &BTreeMap<String, i64>,
    ours_per_ns: &BTreeMap<String, i64>,
) {
    for reader in readers {
        let mut got = as_map(&theirs[reader]);
        got.retain(|k, _| k != "per_namespace");
        assert_eq!(&got, ours, "{reader} disagrees with shardlake");
        assert_eq!(
            &as_map(&theirs[reader]["per_namespace"]),
            ours_per_ns,
            "{reader}: per-namespace counts differ"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_and_duckdb_read_what_shardlake_wrote() {
    // Three commits, then one compaction: the snapshot history holds both
    // `append` and `replace` snapshots, and the manifests both kinds of entry.
    let fixture = Fixture::build(3).await;
    let report = fixture
        .lake
        .compact(&CompactionConfig {
            min_small_files: 2,
            ..CompactionConfig::default()
        })
        .await
        .expect("compact");
    assert!(report.files_removed > report.files_added, "{report:?}");
    let engine = fixture.engine(config()).await;
    let ours = figures(&engine).await;
    let ours_per_ns = per_namespace(&engine).await;
    assert_eq!(ours["events"], fixture.events.len() as i64);

    let warehouse = fixture.lake.warehouse();
    let catalog_db = warehouse.data_dir().join("catalog.db");
    let theirs = read_lake(&[catalog_db.as_os_str(), warehouse.root_location().as_ref()]);
    assert_agree(&theirs, &["pyiceberg", "duckdb"], &ours, &ours_per_ns);

    // pyiceberg sees shardlake's snapshot, layout and metadata as written.
    let snapshot = fixture
        .lake
        .commit_state()
        .await
        .expect("state")
        .snapshot_id
        .expect("a snapshot");
    assert_eq!(theirs["snapshot_id"], snapshot);
    assert_eq!(theirs["format_version"], 2);
    assert_eq!(theirs["summary_operation"], "replace");
    assert_eq!(theirs["total_records"], ours["events"]);
    assert_eq!(theirs["manifest_record_count"], ours["events"]);
    assert_eq!(theirs["namespace_bounds_match_partitions"], true);
    let spec = theirs["partition_spec"].as_str().expect("spec");
    assert!(
        spec.contains("namespace") && spec.contains("identity"),
        "{spec}"
    );
    let sort = theirs["sort_order"].as_str().expect("sort order");
    assert!(
        sort.contains("partition_key") || sort.contains(" 4 "),
        "{sort}"
    );
    assert_eq!(theirs["sort_order_id"], 1);
    assert_eq!(theirs["file_sort_order_ids"], serde_json::json!([1]));
    let ids = as_map(&theirs["schema_field_ids"]);
    assert_eq!(ids.len(), 12, "{ids:?}");
    assert_eq!(ids["namespace"], 1);
    assert_eq!(ids["position"], 12);
    // Partition pruning, planned by pyiceberg from shardlake's partition
    // values: one namespace's scan reads only that namespace's files.
    let ns = theirs["pruned_namespace"].as_str().expect("namespace");
    assert_eq!(theirs["pruned_rows"], ours_per_ns[ns]);
    let pruned = theirs["pruned_files"].as_i64().expect("files");
    let all = theirs["data_files"].as_i64().expect("files");
    assert!(pruned > 0 && pruned < all, "{pruned} of {all} files");
}

/// pyiceberg (through SQLAlchemy and psycopg) opens the table through the
/// PostgreSQL catalog several servers share, and reads what shardlake's
/// engine reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_reads_a_lake_cataloged_in_postgres() {
    let (fixture, url) = Fixture::on_postgres(3).await;
    assert!(!fixture.dir.path().join("catalog.db").exists());
    let engine = fixture.engine(config()).await;
    let ours = figures(&engine).await;
    let ours_per_ns = per_namespace(&engine).await;
    assert_eq!(ours["events"], fixture.events.len() as i64);
    let sqlalchemy = url.replacen("postgres://", "postgresql+psycopg://", 1);
    let warehouse = fixture.lake.warehouse();
    let theirs = read_lake(&[
        std::ffi::OsStr::new(&sqlalchemy),
        warehouse.root_location().as_ref(),
    ]);
    assert_agree(&theirs, &["pyiceberg", "duckdb"], &ours, &ours_per_ns);
    let snapshot = fixture
        .lake
        .commit_state()
        .await
        .expect("state")
        .snapshot_id;
    assert_eq!(theirs["snapshot_id"], snapshot.expect("a snapshot"));
}

/// After the whole lifecycle (manifests merged, every old snapshot
/// expired, unreachable files deleted), pyiceberg and DuckDB still read
/// the table, every snapshot shardlake retains is scannable by pyiceberg,
/// and the metadata log points only at files that exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_and_duckdb_read_the_lake_after_merging_expiry_and_cleanup() {
    use std::collections::HashMap;
    use std::time::Duration;

    use shardlake_lake::iceberg::properties;
    use shardlake_lake::{Action, MaintenanceConfig, RetentionConfig};

    let fixture = Fixture::build(6).await;
    let table = fixture.lake.iceberg_table().expect("iceberg");
    table
        .set_properties(HashMap::from([
            (
                properties::MANIFEST_MIN_COUNT_TO_MERGE.to_owned(),
                "3".to_owned(),
            ),
            (
                properties::METADATA_PREVIOUS_VERSIONS_MAX.to_owned(),
                "2".to_owned(),
            ),
        ]))
        .await
        .expect("properties");
    let maintenance = MaintenanceConfig {
        compaction: None,
        retention: RetentionConfig {
            retention: Duration::ZERO,
            min_snapshots_to_keep: 2,
        },
        orphan_grace: Duration::ZERO,
    };
    let report = fixture
        .lake
        .maintain(&maintenance, &Action::ALL, false, &|_| {})
        .await
        .expect("maintenance");
    assert!(
        report.manifests.as_ref().is_some_and(|m| m.merged),
        "{report:?}"
    );
    assert!(
        report.snapshots_expired() > 0 && report.files_removed() > 0,
        "{report:?}"
    );

    let engine = fixture.engine(config()).await;
    let ours = figures(&engine).await;
    let ours_per_ns = per_namespace(&engine).await;
    let warehouse = fixture.lake.warehouse();
    let catalog_db = warehouse.data_dir().join("catalog.db");
    let theirs = read_lake(&[catalog_db.as_os_str(), warehouse.root_location().as_ref()]);
    assert_agree(&theirs, &["pyiceberg", "duckdb"], &ours, &ours_per_ns);
    assert_eq!(theirs["manifests"], 1, "merged into one manifest");
    assert_eq!(theirs["metadata_log_files_exist"], true);
    let retained: Vec<i64> = fixture
        .lake
        .snapshots()
        .await
        .expect("snapshots")
        .iter()
        .map(|s| s.snapshot_id)
        .collect();
    let mut theirs_retained: Vec<i64> = theirs["retained_snapshots"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(serde_json::Value::as_i64)
        .collect();
    theirs_retained.sort_unstable();
    let mut ours_sorted = retained.clone();
    ours_sorted.sort_unstable();
    assert_eq!(theirs_retained, ours_sorted);
    assert_eq!(retained.len(), 2);
    for id in retained {
        let n = theirs["retained_rows"][id.to_string()].as_i64();
        let at = engine
            .sql("SELECT count(*) FROM events")
            .at_snapshot(id)
            .without_cache()
            .await
            .expect("ours at the snapshot");
        let ours_n = at.batches[0].column(0).as_primitive::<Int64Type>().value(0);
        assert_eq!(n, Some(ours_n), "snapshot {id}");
    }
}

/// A plain-Parquet lake is a Hive-partitioned directory of Parquet files:
/// DuckDB and pyarrow read it as such (the namespace from the directory
/// names, pruned by it) and agree with shardlake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_and_pyarrow_read_a_parquet_lake_as_hive_partitions() {
    let fixture = Fixture::parquet(3).await;
    let engine = fixture.engine(config()).await;
    let ours = figures(&engine).await;
    let ours_per_ns = per_namespace(&engine).await;
    let table_dir = fixture
        .lake
        .warehouse()
        .root()
        .join("events")
        .expect("url")
        .to_file_path()
        .expect("local");
    let theirs = read_lake(&["--parquet".as_ref(), table_dir.as_os_str()]);
    assert_agree(&theirs, &["duckdb", "pyarrow"], &ours, &ours_per_ns);
    assert_eq!(
        theirs["partitioning_fields"],
        serde_json::json!(["namespace"])
    );
    // DuckDB prunes by directory: one namespace's query reads one
    // namespace's files (3 commits: 3 of 12).
    let plan = theirs["duckdb_plan"].as_str().expect("plan");
    assert!(plan.contains("Scanning Files: 3/12"), "{plan}");
}
