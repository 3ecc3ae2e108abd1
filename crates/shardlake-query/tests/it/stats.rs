//! Every scan statistic checked against ground truth on the fixture lake.

use std::collections::BTreeSet;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use shardlake_query::{AnsweredFrom, QueryResult, Scope};

use crate::fixture::{Fixture, config};

fn single_i64(result: &QueryResult) -> i64 {
    let batch: &RecordBatch = result
        .batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .expect("a row");
    batch.column(0).as_primitive::<Int64Type>().value(0)
}

/// Bytes and rows of the data files of `ns` in the current snapshot.
async fn namespace_files(fixture: &Fixture, ns: &str) -> (usize, u64) {
    let engine = fixture.engine(config()).await;
    let snapshot = engine.current_snapshot().await.expect("snapshot");
    let files: Vec<_> = snapshot
        .files
        .iter()
        .filter(|f| f.namespace == ns)
        .collect();
    (files.len(), files.iter().map(|f| f.size).sum())
}

#[tokio::test]
async fn a_namespace_filter_scans_only_that_namespace() {
    let fixture = Fixture::build(4).await;
    let engine = fixture.engine(config()).await;
    let ns = "tenant-002";
    let truth = fixture.in_namespace(ns);
    let shards: BTreeSet<i32> = truth.iter().map(|e| e.shard_id).collect();

    // Reads real columns: `namespace` itself is known from file statistics
    // (one value per file) and costs no I/O.
    let result = engine
        .sql(format!(
            "SELECT count(*), count(DISTINCT entity_id), sum(version) FROM events WHERE namespace = '{ns}'"
        ))
        .await
        .expect("query");
    assert_eq!(single_i64(&result), truth.len() as i64);
    let s = &result.stats;
    let (ns_files, ns_bytes) = namespace_files(&fixture, ns).await;
    assert_eq!(s.partitions_total, 4);
    assert_eq!(s.partitions_scanned, 1);
    assert_eq!(s.partitions_covered, 1);
    assert_eq!(s.partitions_pruned, 3);
    assert_eq!(s.files_total, 16, "4 commits x 4 namespaces");
    assert_eq!(s.files_scanned, ns_files);
    assert_eq!(ns_files, 4);
    assert_eq!(s.files_pruned, 12);
    assert!(
        s.bytes_scanned > 0 && s.bytes_scanned <= ns_bytes,
        "{} > {ns_bytes}",
        s.bytes_scanned
    );
    assert_eq!(s.rows_scanned, truth.len() as u64);
    assert_eq!(s.rows_returned, 1);
    // Namespace alone needs no data: the answer comes from metadata.
    let metadata_only = engine
        .sql(format!(
            "SELECT count(*) FROM events WHERE namespace = '{ns}'"
        ))
        .await
        .expect("query");
    assert_eq!(single_i64(&metadata_only), truth.len() as i64);
    assert_eq!(metadata_only.stats.bytes_scanned, 0);
    assert_eq!(metadata_only.stats.files_scanned, 0);
    // The answer covers one partition, from its metadata, and the filter
    // ruled out the other three.
    assert_eq!(metadata_only.stats.answered_from, AnsweredFrom::Metadata);
    assert_eq!(
        (
            metadata_only.stats.partitions_scanned,
            metadata_only.stats.partitions_covered,
            metadata_only.stats.partitions_pruned
        ),
        (0, 1, 3)
    );
    assert_eq!(s.shards_queried, shards.len());
    assert!(!s.cache_hit);
    let current = engine
        .current_snapshot()
        .await
        .expect("snapshot")
        .snapshot_id;
    assert_eq!(s.snapshot_ids, current.into_iter().collect::<Vec<_>>());
    assert!(s.elapsed_ms > 0.0);
}

#[tokio::test]
async fn count_star_without_filters_is_answered_from_metadata() {
    let fixture = Fixture::build(4).await;
    let engine = fixture.engine(config()).await;
    let result = engine
        .sql("SELECT count(*) FROM events")
        .without_cache()
        .await
        .expect("query");
    assert_eq!(single_i64(&result), fixture.events.len() as i64);
    // Row counts come from the manifests: no file is read.
    assert_eq!(result.stats.files_scanned, 0);
    assert_eq!(result.stats.bytes_scanned, 0);
    assert_eq!(result.stats.rows_scanned, 0);
    assert_eq!(result.stats.files_total, 16);
    assert_eq!(result.stats.files_pruned, 16);
    // Every partition is covered, none by reading it.
    assert_eq!(result.stats.answered_from, AnsweredFrom::Metadata);
    assert_eq!(
        (
            result.stats.partitions_scanned,
            result.stats.partitions_covered,
            result.stats.partitions_pruned
        ),
        (0, 4, 0)
    );
}

#[tokio::test]
async fn full_scans_read_every_file_and_every_shard() {
    let fixture = Fixture::build(4).await;
    let engine = fixture.engine(config()).await;
    let result = engine
        .sql("SELECT event_type, count(*) FROM events GROUP BY event_type")
        .await
        .expect("query");
    let s = &result.stats;
    assert_eq!(s.files_scanned, 16);
    assert_eq!(s.partitions_scanned, 4);
    assert_eq!((s.partitions_covered, s.partitions_pruned), (4, 0));
    assert_eq!(s.answered_from, AnsweredFrom::Scan);
    assert_eq!(s.shards_queried, 6);
    assert_eq!(s.rows_scanned, fixture.events.len() as u64);
    assert_eq!(s.rows_returned, 3);
    let total: u64 = engine
        .current_snapshot()
        .await
        .expect("snapshot")
        .files
        .iter()
        .map(|f| f.size)
        .sum();
    assert!(
        s.bytes_scanned < total,
        "only the event_type column chunks are read"
    );
}

#[tokio::test]
async fn a_key_filter_reads_a_fraction_of_its_namespace() {
    // Small pages so that the fixture spans many: page-index pruning at work.
    let fixture = Fixture::small_pages(1).await;
    let engine = fixture.engine(config()).await;
    // The busiest key of the busiest namespace.
    let ns = "tenant-000";
    let mut counts = std::collections::BTreeMap::new();
    for e in fixture.in_namespace(ns) {
        *counts.entry(e.partition_key.clone()).or_insert(0u64) += 1;
    }
    let (key, n) = counts.iter().max_by_key(|(_, n)| **n).expect("a key");
    let result = engine
        .sql(format!(
            "SELECT seq, position FROM events WHERE namespace = '{ns}' AND partition_key = '{key}' ORDER BY position"
        ))
        .await
        .expect("query");
    assert_eq!(result.stats.rows_returned, *n);
    assert_eq!(result.stats.files_scanned, 1);
    let ns_rows = fixture.in_namespace(ns).len() as u64;
    // Sorted files + page index: only the key's pages are decoded.
    assert!(
        result.stats.rows_scanned < ns_rows / 2,
        "{} of {ns_rows} rows decoded",
        result.stats.rows_scanned
    );
}

#[tokio::test]
async fn a_scope_sees_only_its_namespaces_and_prunes_the_rest() {
    let fixture = Fixture::build(2).await;
    let engine = fixture.engine(config()).await;
    let result = engine
        .sql("SELECT namespace, count(DISTINCT partition_key) AS n FROM events GROUP BY namespace ORDER BY namespace")
        .with_scope(Scope::namespaces(["tenant-001", "tenant-003"]))
        .await
        .expect("query");
    let namespaces: Vec<String> = result
        .batches
        .iter()
        .flat_map(|b| {
            let col = b.column(0).as_string::<i32>().clone();
            (0..b.num_rows()).map(move |i| col.value(i).to_owned())
        })
        .collect();
    assert_eq!(namespaces, vec!["tenant-001", "tenant-003"]);
    assert_eq!(result.stats.partitions_scanned, 2);
    assert_eq!(result.stats.files_scanned, 4);
    // Totals count only what the scope may see: the other two namespaces
    // and their files are not even mentioned.
    assert_eq!(result.stats.partitions_total, 2);
    assert_eq!(result.stats.partitions_pruned, 0);
    assert_eq!(result.stats.files_total, 4);
}

#[tokio::test]
async fn grouped_counts_come_from_statistics_within_the_scope() {
    let fixture = Fixture::build(4).await;
    let engine = fixture.engine(config()).await;
    let sql =
        "SELECT namespace, count(*), max(seq) FROM events GROUP BY namespace ORDER BY namespace";
    let scoped = engine
        .sql(sql)
        .with_scope(Scope::namespaces(["tenant-001", "tenant-003"]))
        .without_cache()
        .await
        .expect("scoped query");
    // Answered from the files' statistics: nothing read...
    assert_eq!(scoped.stats.answered_from, AnsweredFrom::Metadata);
    assert_eq!(scoped.stats.bytes_scanned, 0);
    // ...and exactly what a scan of the scope's events says.
    let mut expected = std::collections::BTreeMap::<&str, (i64, i64)>::new();
    for e in &fixture.events {
        if e.namespace == "tenant-001" || e.namespace == "tenant-003" {
            let entry = expected
                .entry(e.namespace.as_str())
                .or_insert((0, i64::MIN));
            entry.0 += 1;
            entry.1 = entry.1.max(e.seq);
        }
    }
    let mut got = Vec::new();
    for b in &scoped.batches {
        let ns = b.column(0).as_string::<i32>();
        let n = b.column(1).as_primitive::<Int64Type>();
        let seq = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            got.push((ns.value(i).to_owned(), (n.value(i), seq.value(i))));
        }
    }
    let expected: Vec<(String, (i64, i64))> = expected
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(got, expected);
    // Answers are kept per aggregate and files: the same query again gives
    // the same answer, the same aggregate over other files (another scope)
    // its own.
    let again = engine
        .sql(sql)
        .with_scope(Scope::namespaces(["tenant-001", "tenant-003"]))
        .without_cache()
        .await
        .expect("again");
    assert_eq!(again.batches, scoped.batches);
    let other = engine
        .sql(sql)
        .with_scope(Scope::namespaces(["tenant-002"]))
        .without_cache()
        .await
        .expect("other scope");
    let other_count = other.batches[0]
        .column(1)
        .as_primitive::<Int64Type>()
        .value(0);
    assert_eq!(
        other_count as usize,
        fixture.in_namespace("tenant-002").len()
    );
    // A filter the statistics cannot decide turns the same query into a scan.
    let scanned = engine
        .sql(
            "SELECT namespace, count(*), max(seq) FROM events WHERE seq >= 0 \
             GROUP BY namespace ORDER BY namespace",
        )
        .with_scope(Scope::namespaces(["tenant-001", "tenant-003"]))
        .without_cache()
        .await
        .expect("scanned query");
    assert_eq!(scanned.stats.answered_from, AnsweredFrom::Scan);
    assert_eq!(
        scanned.batches.iter().map(|b| b.num_rows()).sum::<usize>(),
        2
    );
}
