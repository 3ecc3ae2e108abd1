//! The Postgres wire protocol through a real driver (tokio-postgres) over
//! a real socket: simple and extended protocol, parameters, types, portals,
//! refusals, auth, tenant scope and cancel.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::auth::{SHAPES, as_admin};
use crate::support::{ACME, ADMIN, TestServer, WRITER, tokens};

/// A server with tokens and the Postgres listener on a free loopback port,
/// holding the fixture.
async fn start() -> TestServer {
    let server = TestServer::start(|c| {
        c.tokens = tokens();
        c.postgres.listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    server.ingest_fixture(Some(ADMIN)).await;
    server
}

/// Connects with `password` (a token).
async fn connect(server: &TestServer, password: &str) -> Result<Client, tokio_postgres::Error> {
    let pg = server.pg.expect("the Postgres listener is on");
    let (client, connection) = tokio_postgres::Config::new()
        .host(pg.ip().to_string())
        .port(pg.port())
        .user("analyst")
        .dbname("shardlake")
        .password(password)
        .connect(NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The SQLSTATE of a failed call.
fn state_of(e: &tokio_postgres::Error) -> SqlState {
    e.code()
        .cloned()
        .unwrap_or_else(|| panic!("not a server error: {e}"))
}

/// The detail of a failed call (where shardlake puts its error code).
fn detail_of(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .and_then(|d| d.detail())
        .unwrap_or_default()
        .to_owned()
}

/// The rows of a simple-protocol query, as text.
async fn text_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Whether a Postgres text value is the value HTTP answered as JSON.
fn same_value(http: &Value, pg: Option<&str>) -> bool {
    match (http, pg) {
        (Value::Null, None) => true,
        (Value::Number(n), Some(text)) => text.parse::<f64>().ok() == n.as_f64(),
        (Value::Bool(b), Some(text)) => text == if *b { "t" } else { "f" },
        (Value::String(s), Some(text)) if s == text => true,
        // Timestamps: RFC 3339 over HTTP, `2026-01-01 00:00:00+00` here.
        (Value::String(s), Some(text)) => {
            let http = chrono::DateTime::parse_from_rfc3339(s).ok();
            let pg = chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z").ok();
            http.is_some() && http == pg
        }
        _ => false,
    }
}

#[tokio::test]
async fn queries_types_parameters_and_refusals_over_the_wire() {
    let server = start().await;
    let mut client = connect(&server, ADMIN).await.expect("connects");

    // Simple protocol.
    assert_eq!(
        text_rows(&client, "SELECT count(*) FROM events").await,
        vec![vec![Some("3000".to_owned())]]
    );
    // Extended protocol, a parameter of each kind the SQL gives a type.
    let row = client
        .query_one(
            "SELECT count(*) AS n FROM events WHERE namespace = $1 AND seq > $2",
            &[&"tenant-001", &0i64],
        )
        .await
        .expect("query");
    assert_eq!(row.get::<_, i64>("n"), 724);
    let http = server
        .rows(
            Some(ADMIN),
            "SELECT count(*) AS n FROM events WHERE namespace = 'tenant-002' AND seq > 10",
        )
        .await;
    let ours = client
        .query_one(
            "SELECT count(*) AS n FROM events WHERE namespace = $1 AND seq > $2",
            &[&"tenant-002", &10i64],
        )
        .await
        .expect("query");
    assert_eq!(serde_json::json!(ours.get::<_, i64>("n")), http[0][0]);

    // Every column of `events` with its Postgres type; values as HTTP has them.
    let sql = "SELECT namespace, shard_id, seq, partition_key, event_type, ts, payload, entity_id, version, position \
               FROM events ORDER BY position LIMIT 20";
    let statement = client.prepare(sql).await.expect("prepares");
    let types: Vec<&Type> = statement.columns().iter().map(|c| c.type_()).collect();
    assert_eq!(
        types,
        vec![
            &Type::TEXT,
            &Type::INT4,
            &Type::INT8,
            &Type::TEXT,
            &Type::TEXT,
            &Type::TIMESTAMPTZ,
            &Type::JSON,
            &Type::TEXT,
            &Type::INT8,
            &Type::INT8
        ]
    );
    let rows = client.query(&statement, &[]).await.expect("rows");
    let expected = server.rows(Some(ADMIN), sql).await;
    assert_eq!(rows.len(), expected.len());
    for (row, want) in rows.iter().zip(&expected) {
        // HTTP rows are arrays in the statement's column order.
        let want = want.as_array().expect("row as array");
        assert_eq!(
            row.get::<_, String>("namespace"),
            want[0].as_str().expect("ns")
        );
        assert_eq!(
            i64::from(row.get::<_, i32>("shard_id")),
            want[1].as_i64().expect("shard")
        );
        assert_eq!(row.get::<_, i64>("seq"), want[2].as_i64().expect("seq"));
        let ts: chrono::DateTime<chrono::Utc> = row.get("ts");
        let http_ts =
            chrono::DateTime::parse_from_rfc3339(want[5].as_str().expect("ts")).expect("rfc3339");
        assert_eq!(ts, http_ts);
        let payload: Option<Value> = row.get("payload");
        let http_payload = match &want[6] {
            Value::Null => None,
            Value::String(s) => Some(serde_json::from_str::<Value>(s).expect("json payload")),
            other => Some(other.clone()),
        };
        assert_eq!(payload, http_payload);
        assert_eq!(
            row.get::<_, Option<String>>("entity_id").as_deref(),
            want[7].as_str()
        );
        assert_eq!(row.get::<_, Option<i64>>("version"), want[8].as_i64());
        assert_eq!(
            row.get::<_, i64>("position"),
            want[9].as_i64().expect("position")
        );
    }
    // NULLs and aggregate types: avg is float8, as in Postgres.
    let row = client
        .query_one(
            "SELECT CAST(NULL AS BIGINT) AS nothing, avg(seq) AS mean FROM events",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(row.get::<_, Option<i64>>("nothing"), None);
    assert!(row.get::<_, f64>("mean") > 0.0);
    // A timestamp parameter.
    let row = client
        .query_one(
            "SELECT count(*) AS n FROM events WHERE ts >= $1",
            &[
                &chrono::DateTime::parse_from_rfc3339("2000-01-01T00:00:00Z")
                    .expect("ts")
                    .with_timezone(&chrono::Utc),
            ],
        )
        .await
        .expect("query");
    assert_eq!(row.get::<_, i64>("n"), 3000);

    // Refusals keep the session usable; the detail carries the code.
    let err = client
        .simple_query("DROP TABLE events")
        .await
        .expect_err("refused");
    assert_eq!(state_of(&err), SqlState::INSUFFICIENT_PRIVILEGE);
    let detail = detail_of(&err);
    assert!(detail.contains("statement_not_allowed"), "{detail}");
    let err = client
        .execute("INSERT INTO events (namespace) VALUES ('x')", &[])
        .await
        .expect_err("refused");
    assert_eq!(state_of(&err), SqlState::INSUFFICIENT_PRIVILEGE);
    let err = client
        .simple_query("SET datafusion.execution.target_partitions = 1")
        .await
        .expect_err("refused");
    assert_eq!(state_of(&err), SqlState::INSUFFICIENT_PRIVILEGE);
    let err = client
        .simple_query("COPY events TO STDOUT")
        .await
        .expect_err("refused");
    assert_eq!(state_of(&err), SqlState::FEATURE_NOT_SUPPORTED);
    let err = client
        .simple_query("SELECT 1; SELECT 2")
        .await
        .expect_err("refused");
    assert_eq!(state_of(&err), SqlState::FEATURE_NOT_SUPPORTED);
    let err = client.simple_query("SELEC 1").await.expect_err("syntax");
    assert_eq!(state_of(&err), SqlState::SYNTAX_ERROR);
    let err = client
        .query("SELECT * FROM nowhere", &[])
        .await
        .expect_err("no table");
    assert_eq!(state_of(&err), SqlState::UNDEFINED_TABLE);
    // What drivers send on connect is accepted, and SHOW says it back.
    client
        .batch_execute("SET application_name = 'reports'")
        .await
        .expect("set");
    client
        .batch_execute("SET extra_float_digits = 3")
        .await
        .expect("set");
    client
        .batch_execute("SET search_path TO public")
        .await
        .expect("set");
    assert_eq!(
        text_rows(&client, "SHOW application_name").await,
        vec![vec![Some("reports".to_owned())]]
    );
    let version = client
        .query_one("SHOW server_version", &[])
        .await
        .expect("show");
    assert!(version.get::<_, String>(0).contains("shardlake"));
    // Transactions are accepted (every query is read-only).
    let transaction = client.transaction().await.expect("begin");
    let n: i64 = transaction
        .query_one("SELECT count(*) FROM things", &[])
        .await
        .expect("things")
        .get(0);
    assert!(n > 0);
    transaction.commit().await.expect("commit");
    assert_eq!(
        text_rows(&client, "SELECT 1").await,
        vec![vec![Some("1".to_owned())]]
    );

    // Counted in /metrics, errors by code.
    let metrics = server.metrics(Some(ADMIN)).await;
    assert!(metrics.contains("shardlake_pg_queries_total"), "{metrics}");
    assert!(
        metrics.contains("shardlake_pg_errors_total{code=\"statement_not_allowed\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shardlake_pg_connections_open 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_portal_streams_in_fetches() {
    let server = start().await;
    let mut client = connect(&server, ADMIN).await.expect("connects");
    let transaction = client.transaction().await.expect("begin");
    let statement = transaction
        .prepare("SELECT position FROM events ORDER BY position")
        .await
        .expect("prepare");
    let portal = transaction.bind(&statement, &[]).await.expect("bind");
    let mut positions = Vec::new();
    let mut fetches = 0;
    loop {
        let rows = transaction
            .query_portal(&portal, 1000)
            .await
            .expect("fetch");
        fetches += 1;
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= 1000);
        positions.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
    }
    assert_eq!(positions.len(), 3000);
    assert!(fetches >= 3, "{fetches}");
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    transaction.commit().await.expect("commit");
    // The streamed rows are counted as HTTP's are.
    let metrics = server.metrics(Some(ADMIN)).await;
    assert!(
        metrics.contains("shardlake_query_rows_returned_total 3000"),
        "{metrics}"
    );
}

#[tokio::test]
async fn passwords_are_tokens_and_scope_holds_over_the_wire() {
    let server = start().await;
    let err = connect(&server, "not-a-token-at-all")
        .await
        .expect_err("refused");
    assert_eq!(state_of(&err), SqlState::INVALID_PASSWORD);
    let err = connect(&server, WRITER)
        .await
        .expect_err("no query permission");
    assert_eq!(state_of(&err), SqlState::INSUFFICIENT_PRIVILEGE);

    // The HTTP tenant shapes: the acme token sees only tenant-001.
    let acme = connect(&server, ACME).await.expect("connects");
    for shape in SHAPES {
        let ours = text_rows(&acme, shape).await;
        let expected = server.rows(Some(ADMIN), &as_admin(shape)).await;
        assert_eq!(ours.len(), expected.len(), "shape: {shape}");
        for (row, want) in ours.iter().zip(&expected) {
            let want = want.as_array().expect("row as array");
            assert_eq!(row.len(), want.len(), "shape: {shape}");
            for (cell, value) in row.iter().zip(want) {
                assert!(
                    same_value(value, cell.as_deref()),
                    "shape: {shape}: {cell:?} vs {value}"
                );
            }
        }
        for row in &ours {
            for other in ["tenant-000", "tenant-002", "tenant-003"] {
                assert!(
                    !row.iter().flatten().any(|c| c.contains(other)),
                    "{shape} leaked {other}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_cancel_request_stops_the_running_query() {
    let server = start().await;
    let client = connect(&server, ADMIN).await.expect("connects");
    let cancel = client.cancel_token();
    // 9 M rows streaming: cancelled after the first ones arrive, the
    // rest never come and the error says why.
    let rows = client
        .query_raw(
            "SELECT a.seq, b.position FROM events a, events b",
            std::iter::empty::<i64>(),
        )
        .await
        .expect("starts");
    futures::pin_mut!(rows);
    let mut received = 0u64;
    while received < 10 {
        rows.next().await.expect("a row").expect("a row");
        received += 1;
    }
    cancel.cancel_query(NoTls).await.expect("cancel sent");
    let err = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match rows.next().await {
                Some(Ok(_)) => received += 1,
                Some(Err(e)) => break e,
                None => panic!("the result ended without an error after {received} rows"),
            }
        }
    })
    .await
    .expect("the query stops");
    assert_eq!(state_of(&err), SqlState::QUERY_CANCELED);
    // Cancelled, not timed out (which has the same SQLSTATE).
    let detail = detail_of(&err);
    assert!(detail.contains("query_cancelled"), "{detail}");
    assert!(received < 9_000_000, "{received}");
    // The connection goes on, and the cancelled query gave back its slot.
    assert_eq!(
        text_rows(&client, "SELECT 2").await,
        vec![vec![Some("2".to_owned())]]
    );
}

/// The `psql` of this machine (Debian's postgresql-client), or a failure
/// that says how to get it.
fn psql() -> std::path::PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("psql"))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "psql not found: install Debian's postgresql-client \
             (`bash .ci/test-env` does, or `apt-get install postgresql-client`)"
        )
    })
}

#[tokio::test]
async fn psql_lists_describes_queries_and_keeps_going_after_errors() {
    let server = start().await;
    let pg = server.pg.expect("the Postgres listener is on");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/scripts/psql_session.sql"
    );
    let output = tokio::process::Command::new(psql())
        // -X: no ~/.psqlrc; errors do not stop the script (ON_ERROR_STOP off).
        .args([
            "-X",
            "-h",
            &pg.ip().to_string(),
            "-p",
            &pg.port().to_string(),
        ])
        .args(["-U", "analyst", "-d", "shardlake", "-f", script])
        .env("PGPASSWORD", ADMIN)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .expect("runs psql");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let both = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    // \dt: the table; \dv: `things` is a view; \d events: every column
    // with its Postgres type.
    assert!(stdout.contains(" public | events | table"), "{both}");
    assert!(stdout.contains(" public | things | view"), "{both}");
    assert!(stdout.contains("Table \"public.events\""), "{both}");
    for (column, pg_type) in [
        ("namespace", "text"),
        ("shard_id", "integer"),
        ("seq", "bigint"),
        ("ts", "timestamp with time zone"),
        ("payload", "text"),
        ("position", "bigint"),
    ] {
        let described = stdout.lines().any(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            cells.len() > 1 && cells[0] == column && cells[1] == pg_type
        });
        assert!(described, "\\d events: {column} is not {pg_type}\n{both}");
    }
    // Queries on both tables answer what HTTP answers.
    let events = server
        .rows(Some(ADMIN), "SELECT count(*) FROM events")
        .await;
    let things = server
        .rows(Some(ADMIN), "SELECT count(*) FROM things")
        .await;
    let counted = |header: &str, want: &Value| {
        let mut lines = stdout.lines().skip_while(|l| l.trim() != header);
        let value = lines.nth(2).map(str::trim).unwrap_or_default().to_owned();
        assert_eq!(value, want.to_string(), "{header}\n{both}");
    };
    counted("events", &events[0][0]);
    counted("things", &things[0][0]);
    assert!(stdout.contains(" tenant-001 |"), "{both}");
    // The unknown table and the DROP fail with their codes, and the
    // session goes on to the last query.
    assert!(
        stderr.contains("no_such_table") && stderr.contains("shardlake error code: invalid_query"),
        "{both}"
    );
    assert!(
        stderr.contains("ERROR:  only queries can run here")
            && stderr.contains("shardlake error code: statement_not_allowed"),
        "{both}"
    );
    assert!(stdout.contains(" still here"), "{both}");
    assert!(
        output.status.success(),
        "psql exited with {}\n{both}",
        output.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_parameters_and_a_named_cursor_stream_what_http_answers() {
    let server = TestServer::start(|c| {
        c.tokens = tokens();
        c.postgres.listen = Some("127.0.0.1:0".parse().expect("addr"));
        // A million rows through a cursor: more than the default row limit,
        // and a debug build may take a while.
        c.limits.max_rows = 2_000_000;
        c.limits.query_timeout_ms = 600_000;
    })
    .await;
    server.ingest_fixture(Some(ADMIN)).await;
    let pg = server.pg.expect("the Postgres listener is on");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/scripts/psycopg_client.py"
    );
    let output = tokio::process::Command::new(shardlake_testkit::python())
        .arg(script)
        .args([pg.ip().to_string(), pg.port().to_string(), ADMIN.to_owned()])
        .output()
        .await
        .expect("runs python");
    assert!(
        output.status.success(),
        "psycopg_client.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs: Value = serde_json::from_slice(&output.stdout).expect("the script prints JSON");

    // Server-side parameters: the rows HTTP answers for the same SQL.
    let http = server
        .rows(
            Some(ADMIN),
            "SELECT namespace, seq, ts, payload, version FROM events \
             WHERE namespace = 'tenant-001' AND seq > 5 ORDER BY position LIMIT 50",
        )
        .await;
    let rows = theirs["parameters"].as_array().expect("rows");
    assert_eq!(rows.len(), http.len());
    assert_eq!(rows.len(), 50);
    for (row, want) in rows.iter().zip(&http) {
        assert_eq!(row[0], want[0]);
        assert_eq!(row[1].as_str(), Some(want[1].to_string().as_str()));
        let ts = chrono::DateTime::parse_from_str(
            row[2].as_str().expect("ts"),
            "%Y-%m-%d %H:%M:%S%.f%:z",
        )
        .expect("psycopg's datetime");
        let http_ts =
            chrono::DateTime::parse_from_rfc3339(want[2].as_str().expect("ts")).expect("rfc3339");
        assert_eq!(ts, http_ts);
        // psycopg decoded `payload` as JSON (a dict), as `json` says.
        let payload: Option<Value> = row[3]
            .as_str()
            .map(|s| serde_json::from_str(s).expect("json"));
        let http_payload = want[3]
            .as_str()
            .map(|s| serde_json::from_str::<Value>(s).expect("json"));
        assert_eq!(payload, http_payload);
        assert_eq!(
            row[4].as_str().map(str::to_owned),
            want[4].as_i64().map(|v| v.to_string())
        );
    }

    // The named cursor read every row, in batches, and the rows are the
    // ones HTTP counts and sums for the same SQL.
    let cursor = &theirs["cursor"];
    let http = server
        .rows(
            Some(ADMIN),
            "SELECT count(*), sum(CAST(e.position AS DECIMAL(38,0)) * g.value) % 1000000007 \
             FROM events e CROSS JOIN generate_series(1, 334) AS g(value) WHERE e.seq >= 0",
        )
        .await;
    let count = http[0][0].as_u64().expect("count");
    assert!(
        count >= 1_000_000,
        "{count} rows: the cursor should stream a million"
    );
    assert_eq!(cursor["rows"].as_u64(), Some(count));
    let checksum = match &http[0][1] {
        Value::String(s) => s.parse::<u64>().expect("decimal"),
        other => other.as_u64().expect("checksum"),
    };
    assert_eq!(cursor["checksum"].as_u64(), Some(checksum));
    // One FETCH per 10 000 rows, and the last one empty.
    assert_eq!(cursor["fetches"].as_u64(), Some(count.div_ceil(10_000) + 1));
    assert_eq!(
        cursor["types"],
        serde_json::json!([Type::INT8.oid(), Type::INT8.oid()])
    );

    // A binary cursor decodes to the same values.
    let http = server
        .rows(
            Some(ADMIN),
            "SELECT position, ts FROM events WHERE namespace = 'tenant-002' ORDER BY position LIMIT 5",
        )
        .await;
    let binary = theirs["binary_cursor"].as_array().expect("rows");
    assert_eq!(binary.len(), 5);
    for (row, want) in binary.iter().zip(&http) {
        assert_eq!(row[0].as_str(), Some(want[0].to_string().as_str()));
        let ts = chrono::DateTime::parse_from_str(
            row[1].as_str().expect("ts"),
            "%Y-%m-%d %H:%M:%S%.f%:z",
        )
        .expect("psycopg's datetime");
        assert_eq!(
            ts,
            chrono::DateTime::parse_from_rfc3339(want[1].as_str().expect("ts")).expect("rfc3339")
        );
    }
}

#[tokio::test]
async fn dbeaver_metabase_and_grafana_connect_and_list_tables() {
    use crate::postgres_clients_corpus::{DBEAVER_QUERIES, GRAFANA_QUERIES, METABASE_QUERIES};
    let server = start().await;
    let client = connect(&server, ADMIN).await.expect("connects");
    let mut failures = Vec::new();
    for (tool, queries) in [
        ("DBeaver", DBEAVER_QUERIES),
        ("Metabase", METABASE_QUERIES),
        ("Grafana", GRAFANA_QUERIES),
    ] {
        for sql in queries {
            if let Err(e) = client.simple_query(sql).await {
                failures.push(format!(
                    "{tool}: {}\n{sql}",
                    e.as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    // Metabase's table list names both tables.
    let listing = METABASE_QUERIES
        .iter()
        .find(|q| q.contains("estimated_row_count"))
        .expect("Metabase's table list");
    let tables: Vec<Vec<Option<String>>> = text_rows(&client, listing).await;
    let names: Vec<(&str, &str)> = tables
        .iter()
        .map(|r| (r[1].as_deref().unwrap_or(""), r[2].as_deref().unwrap_or("")))
        .collect();
    assert!(names.contains(&("events", "TABLE")), "{names:?}");
    assert!(names.contains(&("things", "VIEW")), "{names:?}");
}

#[tokio::test]
async fn cursors_need_a_transaction_time_out_and_close_with_discard() {
    let server = TestServer::start(|c| {
        c.tokens = tokens();
        c.postgres.listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.limits.query_timeout_ms = 1_000;
        c.limits.max_concurrent_queries = 1;
        c.limits.queue_wait_ms = 100;
    })
    .await;
    server.ingest_fixture(Some(ADMIN)).await;
    let client = connect(&server, ADMIN).await.expect("connects");
    // WITHOUT HOLD outside a transaction block: refused, as Postgres does.
    let e = client
        .simple_query("DECLARE c CURSOR FOR SELECT * FROM events")
        .await
        .expect_err("outside a transaction");
    assert_eq!(state_of(&e), SqlState::NO_ACTIVE_SQL_TRANSACTION);

    // A cursor nobody reads from keeps its query slot only until its
    // query's timeout: then it fails, every later FETCH says so, and the
    // slot (the only one) is free for another query.
    client.simple_query("BEGIN").await.expect("begin");
    // (3M rows: the query is still running, blocked on its reader, when the
    // cursor goes idle.)
    client
        .simple_query(
            "DECLARE idle CURSOR FOR SELECT e.seq, g.value FROM events e \
             CROSS JOIN generate_series(1, 1000) AS g(value)",
        )
        .await
        .expect("declare");
    assert_eq!(
        text_rows(&client, "FETCH 2 FROM idle").await.len(),
        2,
        "rows before the timeout"
    );
    let other = connect(&server, ADMIN).await.expect("connects");
    let e = other
        .simple_query("SELECT count(*) FROM events WHERE seq > 1")
        .await
        .expect_err("the only slot is the cursor's");
    assert_eq!(state_of(&e), SqlState::TOO_MANY_CONNECTIONS);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for _ in 0..2 {
        let e = client
            .simple_query("FETCH 2 FROM idle")
            .await
            .expect_err("past the timeout");
        assert_eq!(state_of(&e), SqlState::QUERY_CANCELED);
        let detail = detail_of(&e);
        assert!(detail.contains("query_timeout"), "{detail}");
    }
    assert_eq!(
        text_rows(&other, "SELECT count(*) FROM events WHERE seq > 1")
            .await
            .len(),
        1,
        "the slot is free again"
    );
    client.simple_query("ROLLBACK").await.expect("rollback");

    // WITH HOLD outlives its transaction; DISCARD ALL closes it.
    client
        .simple_query("DECLARE kept CURSOR WITH HOLD FOR SELECT seq FROM events")
        .await
        .expect("declare with hold");
    assert_eq!(text_rows(&client, "FETCH 1 FROM kept").await.len(), 1);
    client.simple_query("DISCARD ALL").await.expect("discard");
    let e = client
        .simple_query("FETCH 1 FROM kept")
        .await
        .expect_err("closed by DISCARD ALL");
    assert_eq!(state_of(&e), SqlState::INVALID_CURSOR_NAME);
}
