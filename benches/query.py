#!/usr/bin/env python3
"""Query benchmark: a fixed query set on the same Parquet files, three ways
in one run: shardlake's engine, plain DataFusion (ListingTable), DuckDB.

1. generates a lake of N events (shardlake generate + ingest), unless the
   work directory already holds one;
2. runs the query set with `shardlake-bench queries` (shardlake and
   ListingTable in one process; also cold vs cached latency);
3. runs the same SQL in DuckDB over the same files;
4. prints medians and the ratios shardlake/ListingTable and shardlake/DuckDB.

Usage (from the repository root):
    cargo build --release -p shardlake-cli -p shardlake-bench
    python3 -m venv .venv && .venv/bin/pip install -r benches/requirements.txt
    .venv/bin/python benches/query.py --events 10000000 --workdir /tmp/shardlake-bench-10m
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(ROOT, "target", "release", "shardlake")
BENCH = os.path.join(ROOT, "target", "release", "shardlake-bench")

QUERIES = {
    "q1_count": "SELECT count(*) FROM events",
    "q2_namespace_count": "SELECT count(*) FROM events WHERE namespace = '{ns1}'",
    "q3_namespace_window": "SELECT event_type, count(*) FROM events WHERE namespace = '{ns0}' "
                           "AND ts >= '{t0}' AND ts < '{t1}' GROUP BY event_type ORDER BY event_type",
    "q4_by_namespace": "SELECT namespace, count(*) FROM events GROUP BY namespace ORDER BY namespace",
    "q5_topk_entities": "SELECT partition_key, count(*) AS n FROM events WHERE namespace = '{ns0}' "
                        "GROUP BY partition_key ORDER BY n DESC, partition_key LIMIT 10",
    "q6_hourly": "SELECT date_trunc('hour', ts) AS h, count(*) FROM events GROUP BY 1 ORDER BY 1",
    "q7_count_distinct": "SELECT count(DISTINCT entity_id) FROM events",
    "q8_replay_key": "SELECT * FROM events WHERE namespace = '{ns0}' AND partition_key = '{key}' ORDER BY seq",
    "q9_things_namespace": "SELECT \"type\", count(*), max(version) FROM things WHERE namespace = '{ns2}' "
                           "GROUP BY \"type\" ORDER BY \"type\"",
}

DUCK_THINGS = """
CREATE VIEW things AS
SELECT entity_id AS id, entity_type AS "type", arg_max(version, position) AS version,
       arg_min(ts, position) AS created_at, arg_max(ts, position) AS updated_at, namespace,
       arg_max(payload, position) AS payload, count(*) AS events, max(position) AS position
FROM events WHERE entity_type IS NOT NULL AND entity_id IS NOT NULL
GROUP BY namespace, entity_type, entity_id
HAVING arg_max(event_type, position) <> 'thing.deleted'
"""


def run(args, **kw):
    return subprocess.run(args, check=True, **kw)


def sql_json(wh, sql):
    out = run([CLI, "--warehouse", wh, "query", "--format", "json", sql], capture_output=True).stdout
    return json.loads(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--shards", type=int, default=64)
    p.add_argument("--namespaces", type=int, default=16)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    for b in (CLI, BENCH):
        if not os.path.exists(b):
            raise SystemExit(f"{b} missing: cargo build --release -p shardlake-cli -p shardlake-bench")
    work = a.workdir or tempfile.mkdtemp(prefix="shardlake-query-bench-")
    os.makedirs(work, exist_ok=True)
    wh = os.path.join(work, "lake")
    if not os.path.exists(os.path.join(wh, "catalog.db")):
        src = os.path.join(work, "events.ndjson")
        t = time.perf_counter()
        with open(src, "wb") as f:
            run([CLI, "generate", "--events", str(a.events), "--shards", str(a.shards),
                 "--namespaces", str(a.namespaces), "--seed", "1"], stdout=f)
        print(f"generated {a.events} events in {time.perf_counter() - t:.0f}s")
        t = time.perf_counter()
        run([CLI, "--warehouse", wh, "ingest", src, "--quiet"])
        print(f"ingested in {time.perf_counter() - t:.0f}s")
        os.remove(src)

    key = sql_json(wh, "SELECT partition_key FROM events WHERE namespace = 'tenant-000' "
                       "GROUP BY partition_key ORDER BY count(*) DESC, partition_key LIMIT 1")["rows"][0][0]
    params = {"ns0": "tenant-000", "ns1": "tenant-001", "ns2": "tenant-002", "key": key,
              "t0": "2026-01-01T02:00:00Z", "t1": "2026-01-01T03:00:00Z"}
    queries = {k: v.format(**params) for k, v in QUERIES.items()}
    qfile = os.path.join(work, "queries.json")
    with open(qfile, "w") as f:
        json.dump(queries, f)
    rust = json.loads(run([BENCH, "queries", "--warehouse", wh, "--queries", qfile, "--runs", str(a.runs)],
                          capture_output=True).stdout)

    import duckdb
    data = os.path.join(wh, "warehouse", "shardlake", "events", "data")
    con = duckdb.connect()
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{data}/**/*.parquet', hive_partitioning = false)")
    con.execute(DUCK_THINGS)
    duck = {}
    for name, sql in queries.items():
        con.execute(sql).fetchall()
        times = []
        for _ in range(a.runs):
            t = time.perf_counter()
            con.execute(sql).fetchall()
            times.append((time.perf_counter() - t) * 1e3)
        duck[name] = statistics.median(times)

    files = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data) for f in fs]
    print(f"\nlake: {a.events:,} events, {a.shards} shards, {a.namespaces} namespaces, "
          f"{len(files)} files, {sum(files) / 1e6:.0f} MB; medians of {a.runs} runs (ms)\n")
    print(f"| query | shardlake | ListingTable | DuckDB | shardlake/ListingTable | shardlake/DuckDB "
          f"| cold | cached | cold/cached | files read | MB read |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    r_list, r_duck, speedups = [], [], []
    for name in queries:
        s = rust[name]
        rl, rd = s["shardlake_ms"] / s["listing_ms"], s["shardlake_ms"] / duck[name]
        cc = s["shardlake_cold_ms"] / max(s["shardlake_cached_ms"], 1e-6)
        r_list.append(rl)
        r_duck.append(rd)
        speedups.append(cc)
        print(f"| {name} | {s['shardlake_ms']:.1f} | {s['listing_ms']:.1f} | {duck[name]:.1f} | {rl:.2f} | {rd:.2f} "
              f"| {s['shardlake_cold_ms']:.1f} | {s['shardlake_cached_ms']:.3f} | {cc:.0f}x "
              f"| {s['files_scanned']}/{s['files_total']} | {s['bytes_scanned'] / 1e6:.1f} |")
    print(f"\nmedian ratio shardlake/ListingTable: {statistics.median(r_list):.2f}x; "
          f"shardlake/DuckDB: {statistics.median(r_duck):.2f}x; "
          f"cached repeat speedup: median {statistics.median(speedups):.0f}x, min {min(speedups):.0f}x")


if __name__ == "__main__":
    main()
