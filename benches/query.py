#!/usr/bin/env python3
"""Query benchmark: a fixed query set on the same Parquet files, side by side
in one run: shardlake's engine in process, plain DataFusion (ListingTable),
DuckDB, and (with --http) shardlake over HTTP on loopback, result cache off.

1. generates a lake of N events (shardlake generate + ingest), unless the
   work directory already holds one;
2. for each query in turn (so that a machine slowing down mid-run skews one
   query's ratios less): `shardlake-bench queries` (shardlake and
   ListingTable in one process; also cold vs cached latency), the same SQL
   in DuckDB over the same files, and with --http the query over HTTP
   (`shardlake serve` on the lake, result cache off, keep-alive client on
   loopback, whole JSON answer read); row counts are checked against
   DuckDB's;
3. prints medians, the ratios to ListingTable and DuckDB, their geomeans
   and the worst query.

Usage (from the repository root):
    cargo build --release -p shardlake-cli -p shardlake-bench
    python3 -m venv .venv && .venv/bin/pip install -r benches/requirements.txt
    .venv/bin/python benches/query.py --events 10000000 --workdir /tmp/shardlake-bench-10m
    .venv/bin/python benches/query.py --events 2000000 --http --workdir /tmp/shardlake-bench-2m
"""
import argparse
import http.client
import json
import math
import os
import socket
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
    # Shapes added so that gains are not tuned to the nine above.
    "q10_window_topk": "SELECT partition_key, count(*) AS n FROM events WHERE ts >= '{t0}' AND ts < '{t1}' "
                       "GROUP BY partition_key ORDER BY n DESC, partition_key LIMIT 10",
    "q11_key_prefix": "SELECT event_type, count(*), max(seq) FROM events WHERE partition_key LIKE 'Order:ord-0001%' "
                      "GROUP BY event_type ORDER BY event_type",
    "q12_self_join": "SELECT b.event_type, count(*) FROM events a JOIN events b "
                     "ON a.namespace = b.namespace AND a.entity_id = b.entity_id AND b.version = a.version + 1 "
                     "WHERE a.namespace = '{ns1}' AND b.namespace = '{ns1}' GROUP BY 1 ORDER BY 1",
    "q13_things_join_events": "SELECT t.\"type\", count(*) FROM things t JOIN events e "
                              "ON e.namespace = t.namespace AND e.entity_id = t.id "
                              "WHERE t.namespace = '{ns2}' AND e.namespace = '{ns2}' AND e.event_type = 'thing.updated' "
                              "GROUP BY 1 ORDER BY 1",
    # Shapes that want the rows in the files' own order, (partition_key,
    # position): a page of the replay stream, and a window over each
    # entity's events in order.
    "q14_replay_page": "SELECT partition_key, position, seq, event_type FROM events WHERE namespace = '{ns1}' "
                       "ORDER BY partition_key, position LIMIT 1000",
    "q15_entity_gaps": "SELECT count(*) FROM (SELECT seq - lag(seq) OVER (PARTITION BY partition_key ORDER BY position) "
                       "AS gap FROM events WHERE namespace = '{ns1}') WHERE gap <> 1",
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


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HttpClient:
    """`shardlake serve` on the lake (result cache off) and a keep-alive
    client on loopback: each query timed as a client sees it, whole JSON
    answer read."""

    def __init__(self, wh):
        port = free_port()
        env = dict(os.environ, SHARDLAKE_CACHE__ENABLED="false", SHARDLAKE_MAINTENANCE__ENABLED="false")
        self.server = subprocess.Popen([CLI, "--warehouse", wh, "serve", "--listen", f"127.0.0.1:{port}"],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.server.stdout.readline()  # the banner: ready
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def median(self, name, sql, runs):
        """Median milliseconds of `runs` runs after one warm-up, and the
        answer's row count."""
        body = json.dumps({"sql": sql})
        times, rows = [], None
        for i in range(runs + 1):
            t = time.perf_counter()
            self.conn.request("POST", "/v1/query", body=body, headers={"content-type": "application/json"})
            r = self.conn.getresponse()
            data = r.read()
            elapsed = (time.perf_counter() - t) * 1e3
            if r.status != 200:
                raise SystemExit(f"{name}: HTTP {r.status}: {data[:300]!r}")
            if i > 0:
                times.append(elapsed)
            rows = len(json.loads(data)["rows"])
        return statistics.median(times), rows

    def close(self):
        self.conn.close()
        self.server.terminate()
        self.server.wait()


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--shards", type=int, default=64)
    p.add_argument("--namespaces", type=int, default=16)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--workdir", default=None)
    p.add_argument("--http", action="store_true", help="also time shardlake over HTTP (cache off)")
    p.add_argument("--only", default=None, help="comma-separated query names")
    p.add_argument("--maintained", action="store_true",
                   help="run maintenance once after ingest (compaction, expiry, cleanup), as "
                        "`shardlake serve` keeps a lake: fewer, larger, sorted files")
    p.add_argument("--bin-dir", default=None, help="where shardlake and shardlake-bench are (default target/release)")
    a = p.parse_args()
    global CLI, BENCH
    if a.bin_dir:
        CLI, BENCH = os.path.join(a.bin_dir, "shardlake"), os.path.join(a.bin_dir, "shardlake-bench")
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
        if a.maintained:
            # Nothing older than the compacted snapshot is kept, so the data
            # directory holds exactly the live files every engine reads.
            t = time.perf_counter()
            run([CLI, "--warehouse", wh, "maintain", "--retention-secs", "0", "--min-snapshots", "1",
                 "--grace-secs", "0", "--min-files", "2"], stdout=subprocess.DEVNULL)
            print(f"maintained in {time.perf_counter() - t:.0f}s")

    key = sql_json(wh, "SELECT partition_key FROM events WHERE namespace = 'tenant-000' "
                       "GROUP BY partition_key ORDER BY count(*) DESC, partition_key LIMIT 1")["rows"][0]["partition_key"]
    params = {"ns0": "tenant-000", "ns1": "tenant-001", "ns2": "tenant-002", "key": key,
              "t0": "2026-01-01T02:00:00Z", "t1": "2026-01-01T03:00:00Z"}
    queries = {k: v.format(**params) for k, v in QUERIES.items()
               if a.only is None or k in a.only.split(",")}
    import duckdb
    data = os.path.join(wh, "warehouse", "shardlake", "events", "data")
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{data}/**/*.parquet', hive_partitioning = false)")
    con.execute(DUCK_THINGS)

    # Query by query, every engine in turn: a machine that slows down
    # during the run then skews one query's ratios less.
    rust, duck, duck_rows, web = {}, {}, {}, {}
    client = HttpClient(wh) if a.http else None
    qfile = os.path.join(work, "query.json")
    try:
        for name, sql in queries.items():
            with open(qfile, "w") as f:
                json.dump({name: sql}, f)
            rust.update(json.loads(run([BENCH, "queries", "--warehouse", wh, "--queries", qfile,
                                        "--runs", str(a.runs)], capture_output=True).stdout))
            duck_rows[name] = len(con.execute(sql).fetchall())
            times = []
            for _ in range(a.runs):
                t = time.perf_counter()
                con.execute(sql).fetchall()
                times.append((time.perf_counter() - t) * 1e3)
            duck[name] = statistics.median(times)
            if rust[name]["rows"] != duck_rows[name]:
                raise SystemExit(f"{name}: {rust[name]['rows']} rows from shardlake, {duck_rows[name]} from DuckDB")
            if client:
                web[name] = client.median(name, sql, a.runs)
                if web[name][1] != duck_rows[name]:
                    raise SystemExit(f"{name}: {web[name][1]} rows over HTTP, {duck_rows[name]} from DuckDB")
    finally:
        if client:
            client.close()

    files = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data) for f in fs]
    print(f"\nlake: {a.events:,} events, {a.shards} shards, {a.namespaces} namespaces, "
          f"{len(files)} files, {sum(files) / 1e6:.0f} MB; medians of {a.runs} runs (ms)\n")
    print(f"| query | shardlake | ListingTable | DuckDB | shardlake/ListingTable | shardlake/DuckDB "
          f"| cold | cached | cold/cached | files read | MB read | planning ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
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
              f"| {s['files_scanned']}/{s['files_total']} | {s['bytes_scanned'] / 1e6:.1f} "
              f"| {s.get('planning_ms', float('nan')):.2f} |")
    worst = max(zip(r_duck, queries), key=lambda p: p[0])
    print(f"\nshardlake/ListingTable: median {statistics.median(r_list):.2f}x, geomean {geomean(r_list):.2f}x; "
          f"shardlake/DuckDB: median {statistics.median(r_duck):.2f}x, geomean {geomean(r_duck):.2f}x, "
          f"worst {worst[0]:.2f}x ({worst[1]}); "
          f"cached repeat speedup: median {statistics.median(speedups):.0f}x, min {min(speedups):.0f}x")
    maintained = [n for n in queries if "shardlake_derived_ms" in rust[n]]
    if maintained:
        print("\n`things`, maintained (median) vs derived from the events on every query "
              "(things_state_bytes = 0), and the first query on a fresh engine (builds the fold):")
        print("| query | maintained | derived | derived/maintained | first query | DuckDB |")
        print("|---|---|---|---|---|---|")
        for name in maintained:
            s = rust[name]
            print(f"| {name} | {s['shardlake_ms']:.1f} | {s['shardlake_derived_ms']:.1f} "
                  f"| {s['shardlake_derived_ms'] / s['shardlake_ms']:.1f}x | {s['shardlake_first_ms']:.1f} "
                  f"| {duck[name]:.1f} |")
    if web:
        print("\n| query | shardlake over HTTP | DuckDB | HTTP/DuckDB | rows |")
        print("|---|---|---|---|---|")
        r_web = []
        for name in queries:
            ms, rows = web[name]
            r_web.append(ms / duck[name])
            print(f"| {name} | {ms:.1f} | {duck[name]:.1f} | {r_web[-1]:.2f} | {rows} |")
        worst = max(zip(r_web, queries), key=lambda p: p[0])
        print(f"\nHTTP/DuckDB: median {statistics.median(r_web):.2f}x, geomean {geomean(r_web):.2f}x, "
              f"worst {worst[0]:.2f}x ({worst[1]})")


if __name__ == "__main__":
    main()
