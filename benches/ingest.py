#!/usr/bin/env python3
"""Ingest benchmark: `shardlake ingest` of N generated NDJSON events, side by
side with DuckDB converting the same file to zstd Parquet in the same run.

DuckDB's NDJSON -> Parquet conversion is the floor: parse JSON, write
Parquet, nothing else. shardlake additionally validates every event,
deduplicates against per-shard watermarks, stamps positions, sorts each
namespace by (partition_key, position), writes Iceberg data files with field
ids and statistics, and commits Iceberg snapshots with compare-and-swap.

Usage (from the repository root, after `cargo build --release`):
    python3 -m venv .venv && .venv/bin/pip install -r benches/requirements.txt
    .venv/bin/python benches/ingest.py --events 1000000
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "shardlake")


def run(args, **kw):
    return subprocess.run(args, check=True, **kw)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--namespaces", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} missing: run `cargo build --release` first")
    work = a.workdir or tempfile.mkdtemp(prefix="shardlake-bench-")
    src = os.path.join(work, "events.ndjson")
    with open(src, "wb") as f:
        run([BIN, "generate", "--events", str(a.events), "--shards", str(a.shards),
             "--namespaces", str(a.namespaces), "--seed", "1"], stdout=f)
    size_mb = os.path.getsize(src) / 1e6

    shard_runs, files = [], []
    for i in range(a.runs):
        wh = os.path.join(work, f"lake-{i}")
        t = time.perf_counter()
        out = run([BIN, "--warehouse", wh, "ingest", src, "--json"], capture_output=True).stdout
        shard_runs.append(time.perf_counter() - t)
        summary = json.loads(out)
        assert summary["accepted"] == a.events, summary
        data = os.path.join(wh, "warehouse", "shardlake", "events", "data")
        files = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data) for f in fs]
        commits = summary["emitter"]["commits"]
        if i < a.runs - 1:
            shutil.rmtree(wh)

    import duckdb
    duck_runs = []
    for i in range(a.runs):
        out = os.path.join(work, f"duck-{i}.parquet")
        con = duckdb.connect()
        t = time.perf_counter()
        con.execute(f"COPY (SELECT * FROM read_ndjson('{src}')) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
        duck_runs.append(time.perf_counter() - t)
        con.close()
        os.remove(out)

    s, d = sorted(shard_runs)[len(shard_runs) // 2], sorted(duck_runs)[len(duck_runs) // 2]
    print(f"input: {a.events} events, {a.shards} shards, {a.namespaces} namespaces, {size_mb:.0f} MB NDJSON")
    print(f"{'engine':<40} {'median s':>9} {'events/s':>12} {'MB/s':>8}")
    print(f"{'shardlake ingest (exactly-once Iceberg)':<40} {s:>9.2f} {a.events / s:>12,.0f} {size_mb / s:>8.0f}")
    print(f"{'duckdb read_ndjson -> parquet':<40} {d:>9.2f} {a.events / d:>12,.0f} {size_mb / d:>8.0f}")
    print(f"ratio shardlake/duckdb: {s / d:.2f}x time")
    print(f"shardlake: {commits} commits, {len(files)} data files, "
          f"sizes {min(files) / 1e6:.1f}-{max(files) / 1e6:.1f} MB, total {sum(files) / 1e6:.1f} MB")
    if not a.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
