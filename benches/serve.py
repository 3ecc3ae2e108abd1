#!/usr/bin/env python3
"""Serving benchmark: the HTTP path of `shardlake serve`, measured with wrk
on loopback, for one or more server binaries side by side on the same lake
in one run (e.g. the previous release and this one).

For each binary, on a copy of the same lake:

1. cached query latency, 1 connection (wrk -t1 -c1), p50/p99;
2. cached query throughput, 32 connections (wrk -t2 -c32), p50/p99;
3. cached p99 while 4 clients run CPU-heavy uncached queries;
4. the ETag revalidation (If-None-Match -> 304), 1 connection, p50;
5. `SELECT repeat('x', 2000000000)` with timeout_ms 5000: time to the
   answer, and /healthz latency meanwhile;
6. HTTP ingest, 4 parallel clients with bodies of 20,000 events, each
   client owning its shards; and `shardlake ingest` of the same file.

Usage (from the repository root):
    cargo build --release -p shardlake-cli
    apt-get install wrk
    python3 benches/serve.py --workdir /tmp/shardlake-serve \\
        --binary new=target/release/shardlake [--binary old=/path/to/old/shardlake]
"""
import argparse
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time

CACHED_SQL = "SELECT namespace, count(*), max(seq) FROM events GROUP BY 1 ORDER BY 1"
HEAVY_SQL = ("SELECT partition_key, count(*), max(ts), min(seq) FROM events "
             "GROUP BY 1 ORDER BY 2 DESC LIMIT 10")
STUCK_SQL = "SELECT repeat('x', 2000000000)"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body, headers=None, timeout=600):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"content-type": "application/json"}
    h.update(headers or {})
    conn.request("POST", path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), data


def get(port, path, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status


def lua_script(path, body, etag=None):
    headers = 'wrk.headers["Content-Type"] = "application/json"\n'
    if etag:
        headers += 'wrk.headers["If-None-Match"] = %s\n' % json.dumps(etag)
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = %s\n%s' % (json.dumps(body), headers))


def parse_wrk(out):
    """Requests/s and latency percentiles (ms) from `wrk --latency`."""
    def ms(text):
        m = re.match(r"([\d.]+)(us|ms|s)", text)
        v = float(m.group(1))
        return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]
    res = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for p in ("50", "99"):
        res["p" + p + "_ms"] = ms(re.search(r"\s%s%%\s+(\S+)" % p, out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non_2xx_3xx"] = int(non2xx.group(1)) if non2xx else 0
    res["requests"] = int(re.search(r"(\d+) requests in", out).group(1))
    return res


def wrk(port, script, threads, conns, seconds):
    out = subprocess.run(
        ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % seconds, "--latency",
         "-s", script, "http://127.0.0.1:%d/v1/query" % port],
        check=True, capture_output=True, text=True).stdout
    return parse_wrk(out)


class Server:
    def __init__(self, binary, warehouse, log):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--warehouse", warehouse, "serve", "--listen", "127.0.0.1:%d" % self.port],
            stdout=subprocess.PIPE, stderr=log,
            env=dict(os.environ, SHARDLAKE_MAINTENANCE__ENABLED="false",
                     SHARDLAKE_LIMITS__MAX_BODY_BYTES=str(64 * 1024 * 1024)))
        self.proc.stdout.readline()  # the banner: ready

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # stuck work that never yields
            self.proc.kill()
            self.proc.wait()


def generate(cli, workdir, events):
    path = os.path.join(workdir, "events.ndjson")
    if not os.path.exists(path):
        with open(path, "wb") as f:
            subprocess.run([cli, "generate", "--events", str(events), "--shards", "16",
                            "--namespaces", "8", "--seed", "1"], stdout=f, check=True)
    return path


def split_by_shard(path, clients, per_body):
    """Bodies of `per_body` events for each of `clients` clients; client i
    sends the events of shards s with s % clients == i, in order."""
    lines = [[] for _ in range(clients)]
    with open(path, "rb") as f:
        for line in f:
            shard = json.loads(line)["shard_id"]
            lines[shard % clients].append(line)
    bodies = []
    for ls in lines:
        bodies.append([b"".join(ls[i:i + per_body]) for i in range(0, len(ls), per_body)])
    return bodies, sum(len(ls) for ls in lines)


def http_ingest(port, bodies):
    errors = []

    def client(chunks):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        for body in chunks:
            conn.request("POST", "/v1/events", body=body,
                         headers={"content-type": "application/x-ndjson"})
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                errors.append((r.status, data[:200]))
        conn.close()

    threads = [threading.Thread(target=client, args=(b,)) for b in bodies]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, errors


def measure_queries(name, binary, workdir, seconds, events_file):
    out = {}
    # `shardlake ingest` of the file makes the lake the queries run on (a
    # lake's catalog records absolute locations: it cannot be copied).
    wh = os.path.join(workdir, "lake-" + name)
    shutil.rmtree(wh, ignore_errors=True)
    subprocess.run([binary, "--warehouse", wh, "ingest", events_file],
                   check=True, capture_output=True)
    log = open(os.path.join(workdir, "server-%s.log" % name), "wb")
    server = Server(binary, wh, log)
    port = server.port
    try:
        body = json.dumps({"sql": CACHED_SQL})
        status, headers, _ = post(port, "/v1/query", body)
        assert status == 200, status
        script = os.path.join(workdir, "cached.lua")
        lua_script(script, body)
        out["cached_1conn"] = wrk(port, script, 1, 1, seconds)
        out["cached_32conn"] = wrk(port, script, 2, 32, seconds)

        stop = threading.Event()
        heavy_done = [0]

        def heavy():
            b = json.dumps({"sql": HEAVY_SQL, "cache": False})
            while not stop.is_set():
                post(port, "/v1/query", b)
                heavy_done[0] += 1
        hs = [threading.Thread(target=heavy) for _ in range(4)]
        for t in hs:
            t.start()
        time.sleep(1)
        out["cached_1conn_under_4_heavy"] = wrk(port, script, 1, 1, seconds)
        stop.set()
        for t in hs:
            t.join()
        out["cached_1conn_under_4_heavy"]["heavy_queries_done"] = heavy_done[0]

        etag = {k.lower(): v for k, v in headers.items()}.get("etag")
        if etag:
            script304 = os.path.join(workdir, "etag.lua")
            lua_script(script304, body, etag)
            out["etag_304_1conn"] = wrk(port, script304, 1, 1, seconds)
        else:
            out["etag_304_1conn"] = None

        # A query stuck in planning, with a 5 s timeout; health meanwhile.
        health = []
        answered = {}

        def stuck():
            t0 = time.perf_counter()
            try:
                st, _, data = post(port, "/v1/query",
                                   json.dumps({"sql": STUCK_SQL, "timeout_ms": 5000}), timeout=120)
                answered["status"] = st
                answered["body"] = data[:120].decode(errors="replace")
            except Exception as e:  # the client's own 120 s limit
                answered["status"] = "no answer: %s" % e
            answered["seconds"] = time.perf_counter() - t0
        t = threading.Thread(target=stuck)
        t.start()
        time.sleep(0.3)
        while t.is_alive() and len(health) < 600:
            t0 = time.perf_counter()
            try:
                get(port, "/healthz", timeout=10)
                health.append((time.perf_counter() - t0) * 1000)
            except Exception:
                health.append(10_000.0)
            time.sleep(0.05)
        t.join()
        health.sort()
        out["stuck_query"] = {
            "status": answered.get("status"), "seconds": round(answered.get("seconds", 0), 2),
            "healthz_p50_ms": health[len(health) // 2] if health else None,
            "healthz_max_ms": health[-1] if health else None,
        }
        # Let the stuck work finish (or give up on it) before going on.
        for _ in range(120):
            stats = json.loads(urlget(port, "/v1/stats"))
            if stats["server"]["queries_running"] == 0:
                break
            time.sleep(0.5)
    finally:
        server.stop()

    return out


def measure_ingest(name, binary, workdir, events_file, runs):
    """`shardlake ingest` of the file and HTTP ingest of the same events
    (4 clients, 20,000-event bodies), each into a fresh lake, `runs` times
    alternately; medians (this machine varies run to run)."""
    log = open(os.path.join(workdir, "server-%s.log" % name), "ab")
    n = sum(1 for _ in open(events_file, "rb"))
    bodies, _ = split_by_shard(events_file, 4, 20_000)
    cli, http_ = [], []
    errors = 0
    for run in range(runs):
        wh = os.path.join(workdir, "ingest-cli-" + name)
        shutil.rmtree(wh, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run([binary, "--warehouse", wh, "ingest", events_file],
                       check=True, capture_output=True)
        cli.append(n / (time.perf_counter() - t0))
        iw = os.path.join(workdir, "ingest-http-" + name)
        shutil.rmtree(iw, ignore_errors=True)
        server = Server(binary, iw, log)
        try:
            seconds_taken, errs = http_ingest(server.port, bodies)
        finally:
            server.stop()
        errors += len(errs)
        http_.append(n / seconds_taken)
    cli.sort()
    http_.sort()
    out = {
        "ingest_cli": {"events": n, "runs": [round(r) for r in cli],
                       "events_per_s": round(cli[len(cli) // 2])},
        "ingest_http_4clients": {"events": n, "runs": [round(r) for r in http_],
                                 "events_per_s": round(http_[len(http_) // 2]),
                                 "errors": errors},
    }
    out["http_vs_cli"] = round(out["ingest_http_4clients"]["events_per_s"]
                               / out["ingest_cli"]["events_per_s"], 2)
    return out


def urlget(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "shardlake-serve"))
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--binary", action="append", required=True,
                    help="name=path of a shardlake binary; repeat to compare")
    ap.add_argument("--only", choices=["queries", "ingest"],
                    help="run one half of the benchmark")
    ap.add_argument("--ingest-runs", type=int, default=3,
                    help="ingest runs per binary (medians are reported)")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    binaries = [b.split("=", 1) for b in args.binary]
    cli = binaries[-1][1]
    events_file = generate(cli, args.workdir, args.events)
    results = {}
    for name, path in binaries:
        print("== %s (%s)" % (name, path), flush=True)
        out = {}
        if args.only in (None, "queries"):
            out.update(measure_queries(name, path, args.workdir, args.seconds, events_file))
        if args.only in (None, "ingest"):
            out.update(measure_ingest(name, path, args.workdir, events_file, args.ingest_runs))
        print(json.dumps(out, indent=2), flush=True)
        results[name] = out
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print("results in", os.path.join(args.workdir, "results.json"))


if __name__ == "__main__":
    main()
