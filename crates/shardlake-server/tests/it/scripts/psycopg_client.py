"""psycopg 3 against shardlake's Postgres listener (driven by postgres.rs).

Usage: psycopg_client.py HOST PORT TOKEN

Prints one JSON object:
- "parameters": the rows of a query with server-side parameters ($1, $2),
  each value as psycopg decoded it, rendered as text;
- "cursor": what a named (server-side) cursor read in batches of ITERSIZE:
  the row count, a checksum of the rows, the number of FETCHes and the
  column types psycopg was told;
- "binary_cursor": the same query's first rows through a binary cursor.
"""

import json
import sys

import psycopg

ITERSIZE = 10_000

host, port, token = sys.argv[1], sys.argv[2], sys.argv[3]
conninfo = f"host={host} port={port} user=analyst dbname=shardlake sslmode=disable"
out = {}

with psycopg.connect(conninfo, password=token) as conn:
    with conn.cursor() as cur:
        # psycopg 3 binds these on the server (extended protocol).
        cur.execute(
            "SELECT namespace, seq, ts, payload, version FROM events "
            "WHERE namespace = %s AND seq > %s ORDER BY position LIMIT 50",
            ["tenant-001", 5],
        )
        out["parameters"] = [
            [None if v is None else (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)) for v in row]
            for row in cur.fetchall()
        ]

    # A named cursor: DECLARE ... CURSOR, then FETCH FORWARD ITERSIZE until
    # the rows run out, inside the transaction psycopg opens.
    fetches = 0
    with conn.cursor(name="all_rows") as cur:
        cur.itersize = ITERSIZE
        cur.execute(
            "SELECT e.position, g.value AS k FROM events e "
            # (a table function's arguments must be constants when planned)
            "CROSS JOIN generate_series(1, 334) AS g(value) WHERE e.seq >= %s",
            [0],
        )
        types = [c.type_code for c in cur.description]
        count, checksum = 0, 0
        while True:
            rows = cur.fetchmany(ITERSIZE)
            fetches += 1
            if not rows:
                break
            for position, k in rows:
                count += 1
                checksum = (checksum + position * k) % 1_000_000_007
        out["cursor"] = {
            "rows": count,
            "checksum": checksum,
            "fetches": fetches,
            "types": types,
        }

    with conn.cursor(name="binary_rows", binary=True) as cur:
        cur.execute(
            "SELECT position, ts FROM events WHERE namespace = %s ORDER BY position LIMIT 5",
            ["tenant-002"],
        )
        out["binary_cursor"] = [[str(v) for v in row] for row in cur.fetchall()]

print(json.dumps(out))
