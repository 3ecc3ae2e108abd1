"""Reads a lake written by shardlake with engines that are not shardlake.

pyiceberg opens the events table through shardlake's own SQL catalog, the
SQLite file or the PostgreSQL database several servers share (the SQL
catalog schema is shared by pyiceberg and iceberg-rust), and scans
it; DuckDB reads the data files the Iceberg snapshot lists with its own
Parquet reader. Both compute the same figures, printed as one JSON object
for the Rust test to compare with shardlake's answers.

usage: read_lake.py CATALOG WAREHOUSE_URL      (an Iceberg lake; CATALOG is
                                                 the SQLite file or a
                                                 SQLAlchemy URL such as
                                                 postgresql+psycopg://...)
       read_lake.py --parquet TABLE_DIR         (a plain-Parquet lake:
                                                 DuckDB and pyarrow read
                                                 the Hive layout)
"""

import json
import os
import sys

import duckdb
import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog

FIGURES = """
    SELECT count(*) AS events,
           count(DISTINCT namespace) AS namespaces,
           count(DISTINCT shard_id) AS shards,
           sum(seq) AS seq_sum,
           min(position) AS first_position,
           max(position) AS last_position,
           count(DISTINCT partition_key) AS keys
    FROM lake
"""
PER_NAMESPACE = "SELECT namespace, count(*) AS n FROM lake GROUP BY namespace ORDER BY namespace"


def figures(con):
    row = con.execute(FIGURES).fetchone()
    names = [d[0] for d in con.description]
    out = {name: int(value) for name, value in zip(names, row)}
    out["per_namespace"] = {ns: int(n) for ns, n in con.execute(PER_NAMESPACE).fetchall()}
    return out


def parquet_lake(table_dir):
    """A plain-Parquet lake, read as Hive-partitioned files."""
    import pyarrow.dataset as ds

    glob = f"{table_dir}/*/*.parquet"
    con = duckdb.connect()
    con.execute(
        f"CREATE VIEW lake AS SELECT * FROM read_parquet('{glob}', hive_partitioning = true)"
    )
    by_duckdb = figures(con)
    some_ns = sorted(by_duckdb["per_namespace"])[0]
    plan = con.execute(
        f"EXPLAIN ANALYZE SELECT count(*) FROM lake WHERE namespace = '{some_ns}'"
    ).fetchall()
    dataset = ds.dataset(table_dir, format="parquet", partitioning="hive")
    con2 = duckdb.connect()
    con2.register("lake", dataset.to_table())
    by_pyarrow = figures(con2)
    print(json.dumps({
        "duckdb": by_duckdb,
        "pyarrow": by_pyarrow,
        "pruned_namespace": some_ns,
        "duckdb_plan": "\n".join(str(row[1]) for row in plan),
        "partitioning_fields": [f.name for f in dataset.partitioning.schema],
    }))


def main():
    if sys.argv[1] == "--parquet":
        return parquet_lake(sys.argv[2])
    catalog_db, warehouse = sys.argv[1], sys.argv[2]
    uri = catalog_db if "://" in catalog_db else f"sqlite:///{catalog_db}"
    catalog = SqlCatalog("shardlake", uri=uri, warehouse=warehouse)
    table = catalog.load_table("shardlake.events")

    # pyiceberg: its own scan planning (manifests, partition spec, field ids).
    scanned = table.scan().to_arrow()
    con = duckdb.connect()
    con.register("lake", scanned)
    by_pyiceberg = figures(con)

    # A pruned scan, planned by pyiceberg from the partition spec.
    some_ns = sorted(by_pyiceberg["per_namespace"])[0]
    filtered = table.scan(row_filter=f"namespace == '{some_ns}'")
    planned = list(filtered.plan_files())
    pruned_rows = filtered.to_arrow().num_rows

    # DuckDB: its own Parquet reader over the snapshot's data files.
    files = [task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()]
    con2 = duckdb.connect()
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con2.execute(f"CREATE VIEW lake AS SELECT * FROM read_parquet([{listed}])")
    by_duckdb = figures(con2)

    # The statistics shardlake writes into manifests, as pyiceberg reads
    # them: per-file record counts, and namespace bounds equal to the
    # file's partition value.
    files_meta = table.inspect.files().to_pylist()
    bounds_match = all(
        f["readable_metrics"]["namespace"]["lower_bound"] == f["partition"]["namespace"]
        and f["readable_metrics"]["namespace"]["upper_bound"] == f["partition"]["namespace"]
        and f["readable_metrics"]["position"]["lower_bound"] is not None
        for f in files_meta
    )

    snapshot = table.current_snapshot()
    # What the lifecycle leaves behind must still be a valid table: every
    # retained snapshot scannable, every metadata-log entry present.
    retained = [s.snapshot_id for s in table.snapshots()]
    retained_rows = {
        str(s): table.scan(snapshot_id=s).to_arrow().num_rows for s in retained
    }
    log_files = [m.metadata_file.removeprefix("file://") for m in table.metadata.metadata_log]
    print(json.dumps({
        "retained_snapshots": retained,
        "retained_rows": retained_rows,
        "metadata_log_files_exist": all(os.path.exists(f) for f in log_files),
        "manifests": len(snapshot.manifests(table.io)),
        "manifest_record_count": sum(f["record_count"] for f in files_meta),
        "namespace_bounds_match_partitions": bounds_match,
        "pyiceberg": by_pyiceberg,
        "duckdb": by_duckdb,
        "data_files": len(files),
        "pruned_namespace": some_ns,
        "pruned_files": len(planned),
        "pruned_rows": pruned_rows,
        "snapshot_id": snapshot.snapshot_id,
        "format_version": table.format_version,
        "partition_spec": str(table.spec()),
        "schema_field_ids": {f.name: f.field_id for f in table.schema().fields},
        "sort_order": str(table.sort_order()),
        "sort_order_id": table.sort_order().order_id,
        # Every data file says it is written in the table's sort order.
        "file_sort_order_ids": sorted({f["sort_order_id"] for f in files_meta}, key=str),
        "summary_operation": str(snapshot.summary.operation.value),
        "added_records": int(snapshot.summary.get("added-records") or 0),
        "total_records": int(snapshot.summary.get("total-records") or -1),
        "null_payloads": int(pc.sum(pc.is_null(scanned["payload"])).as_py() or 0),
    }))


if __name__ == "__main__":
    main()
