#!/usr/bin/env python3
"""Postgres wire protocol benchmark: the same server, the same lake, HTTP
and Postgres side by side in one run.

1. Round trip of a cached query, one connection, p50/p99 of N runs:
   HTTP (`POST /v1/query`, keep-alive) vs psycopg 3 over the simple
   protocol (ClientCursor) and over the extended one (the default cursor,
   Parse/Bind/Execute).
2. Streaming `SELECT * FROM events`, rows per second, the server's CPU
   seconds and its peak resident memory, through:
   - psycopg `cursor.stream` (a Python tuple per row, `payload` parsed as
     JSON), text and binary;
   - a psycopg named cursor (DECLARE + FETCH FORWARD 10000), text;
   - libpq alone (`pgconn.exec_`: every row received and parsed by libpq,
     no Python object per row), text and binary: what the server and the
     wire deliver.

Usage (from the repository root; a lake made by benches/query.py):
    cargo build --release -p shardlake-cli
    .venv/bin/pip install 'psycopg[binary]==3.2.13'
    .venv/bin/python benches/postgres.py --warehouse /tmp/qb2m/lake
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import threading
import time

import psycopg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHED_SQL = "SELECT namespace, count(*), max(seq) FROM events GROUP BY 1 ORDER BY 1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--warehouse", required=True)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "shardlake"))
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--skip-round-trips", action="store_true")
    a = p.parse_args()

    http_port, pg_port = free_port(), free_port()
    env = dict(os.environ,
               SHARDLAKE_MAINTENANCE__ENABLED="false",
               # Large enough for the whole table in one answer.
               SHARDLAKE_LIMITS__MAX_ROWS="1000000000",
               SHARDLAKE_LIMITS__MAX_RESPONSE_BYTES="1000000000000",
               SHARDLAKE_LIMITS__QUERY_TIMEOUT_MS="600000")
    server = subprocess.Popen(
        [a.binary, "--warehouse", a.warehouse, "serve",
         "--listen", f"127.0.0.1:{http_port}", "--pg-listen", f"127.0.0.1:{pg_port}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        server.stdout.readline()
        server.stdout.readline()
        dsn = f"host=127.0.0.1 port={pg_port} user=bench dbname=shardlake sslmode=disable"

        # 1. Round trips of a cached query.
        conn = http.client.HTTPConnection("127.0.0.1", http_port)
        body = json.dumps({"sql": CACHED_SQL})
        def over_http():
            conn.request("POST", "/v1/query", body=body, headers={"content-type": "application/json"})
            r = conn.getresponse()
            r.read()
            assert r.status == 200, r.status
        simple = psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor)
        extended = psycopg.connect(dsn, autocommit=True)
        def over(c):
            def run():
                c.execute(CACHED_SQL).fetchall()
            return run
        results = {}
        for name, fn in [] if a.skip_round_trips else [("HTTP", over_http), ("pg simple", over(simple)), ("pg extended", over(extended))]:
            for _ in range(50):
                fn()
            times = []
            for _ in range(a.runs):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e6)
            results[name] = (percentile(times, 0.5), percentile(times, 0.99))
        if results:
            print(f"\ncached query `{CACHED_SQL}`, one connection, {a.runs} runs (µs):\n")
            print("| path | p50 | p99 | p50 vs HTTP |")
            print("|---|---|---|---|")
            base = results["HTTP"][0]
            for name, (p50, p99) in results.items():
                print(f"| {name} | {p50:.0f} | {p99:.0f} | {p50 / base:.2f}x |")

        # 2. Streaming the whole table, each client in turn.
        sql = "SELECT * FROM events"

        def stream_text():
            with extended.cursor() as cur:
                return sum(1 for _ in cur.stream(sql))

        def stream_binary():
            with extended.cursor(binary=True) as cur:
                return sum(1 for _ in cur.stream(sql))

        def named_cursor():
            n = 0
            with psycopg.connect(dsn) as conn, conn.cursor(name="all_events") as cur:
                cur.itersize = 10_000
                cur.execute(sql)
                while rows := cur.fetchmany(10_000):
                    n += len(rows)
            return n

        def libpq(fmt):
            def run():
                res = extended.pgconn.exec_params(sql.encode(), [], result_format=fmt)
                assert res.status == psycopg.pq.ExecStatus.TUPLES_OK, res.error_message
                return res.ntuples
            return run

        print(f"\n`{sql}`, one client at a time:\n")
        print("| client | rows | seconds | M rows/s | server CPU s | server peak RSS MB |")
        print("|---|---|---|---|---|---|")
        for name, fn in [("libpq, text", libpq(0)), ("libpq, binary", libpq(1)),
                         ("psycopg cursor.stream, text", stream_text),
                         ("psycopg cursor.stream, binary", stream_binary),
                         ("psycopg named cursor (FETCH 10000), text", named_cursor)]:
            peak = [rss_mb(server.pid)]
            done = threading.Event()
            def watch():
                while not done.is_set():
                    peak[0] = max(peak[0], rss_mb(server.pid))
                    time.sleep(0.05)
            watcher = threading.Thread(target=watch)
            watcher.start()
            cpu = cpu_seconds(server.pid)
            t = time.perf_counter()
            rows = fn()
            elapsed = time.perf_counter() - t
            cpu = cpu_seconds(server.pid) - cpu
            done.set()
            watcher.join()
            print(f"| {name} | {rows:,} | {elapsed:.2f} | {rows / elapsed / 1e6:.2f} | {cpu:.1f} | {peak[0]:.0f} |",
                  flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
