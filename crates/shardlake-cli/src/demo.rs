//! `shardlake demo`: a tour of the system on the embedded default.
//!
//! Generates events from several shards, ingests them exactly once, re-sends
//! a slice (all reported as duplicates), sends a few broken events (each
//! refused alone), and runs global queries across every shard.

use std::io::Write;
use std::time::{Duration, Instant};

use shardlake_lake::{EmitAck, EmitInput, EmitterConfig};
use shardlake_query::{CrossShardQuery, QueryConfig};

use crate::generate::{GenerateSpec, write_ndjson};
use crate::lake_args::LakeArgs;
use crate::output;

const SHARDS: u32 = 8;
const NAMESPACES: u32 = 6;

pub async fn run(lake_args: &LakeArgs, events: u64) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let lake = lake_args.open_or_create().await?;
    let before = lake.commit_state().await?;
    writeln!(
        out,
        "== shardlake demo: warehouse {}",
        lake.warehouse().data_dir().display()
    )?;
    if before.next_position > 1 {
        writeln!(
            out,
            "   (the lake already holds {} events: events it has seen before will show up as duplicates)",
            before.next_position - 1
        )?;
    }

    let spec = GenerateSpec {
        events,
        shards: SHARDS,
        namespaces: NAMESPACES,
        seed: 2026,
    };
    let mut ndjson = Vec::new();
    write_ndjson(&spec, &mut ndjson)?;
    let lines: Vec<&[u8]> = ndjson
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    writeln!(
        out,
        "\n1. generated {events} events from {SHARDS} shards in {NAMESPACES} namespaces ({:.1} MB of NDJSON)",
        ndjson.len() as f64 / 1e6
    )?;

    let emitter = lake
        .emitter(EmitterConfig {
            flush_interval: Duration::from_millis(250),
            ..EmitterConfig::default()
        })
        .await?;
    let started = Instant::now();
    // Eight requests in flight at once, as eight producers would send them.
    let mut pending = Vec::new();
    for part in lines.chunks(lines.len().div_ceil(8).max(1)) {
        let body = part.join(&b'\n');
        pending.push(emitter.send(EmitInput::Ndjson(&body)).await?);
    }
    let mut total = EmitAck::default();
    for ack in pending {
        let ack = ack.await?;
        total.accepted += ack.accepted;
        total.duplicates += ack.duplicates;
    }
    let secs = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "2. ingested in {secs:.2}s ({:.0} events/s): {} accepted, {} duplicates, {} commits",
        events as f64 / secs,
        total.accepted,
        total.duplicates,
        emitter.metrics().commits
    )?;

    let slice = &lines[lines.len() / 4..lines.len() / 4 + lines.len() / 10];
    let ack = emitter.emit(EmitInput::Ndjson(&slice.join(&b'\n'))).await?;
    writeln!(
        out,
        "3. re-sent {} events a shard had already delivered: {} accepted, {} dropped as duplicates",
        slice.len(),
        ack.accepted,
        ack.duplicates
    )?;

    let bad = concat!(
        r#"{"namespace":"","shard_id":1,"seq":999999,"partition_key":"k","event_type":"x","ts":"2026-01-01T00:00:00Z"}"#,
        "\n",
        r#"{"namespace":"tenant-000","shard_id":1,"seq":999999,"partition_key":"k","event_type":"x","ts":"last tuesday"}"#,
        "\n",
        r#"{"namespace":"tenant-000","shard_id":1,"seq":-4,"partition_key":"k","event_type":"x","ts":"2026-01-01T00:00:00Z"}"#,
        "\n",
        "{not json"
    );
    let ack = emitter.emit(EmitInput::Ndjson(bad.as_bytes())).await?;
    writeln!(
        out,
        "4. sent 4 broken events: each refused alone, with its reason (also in dead-letter/):"
    )?;
    for r in &ack.rejected {
        writeln!(out, "     line {}: {}: {}", r.index, r.code, r.error)?;
    }
    emitter.close().await?;

    let queries = [
        (
            "events per namespace (every shard's events, one global query)",
            "SELECT namespace, count(*) AS events, count(DISTINCT shard_id) AS shards FROM events GROUP BY namespace ORDER BY events DESC",
        ),
        (
            "one namespace: the other partitions are pruned",
            "SELECT event_type, count(*) AS events, count(DISTINCT entity_id) AS entities FROM events WHERE namespace = 'tenant-003' GROUP BY event_type ORDER BY event_type",
        ),
        (
            "event types",
            "SELECT event_type, count(*) AS events FROM events GROUP BY event_type ORDER BY events DESC",
        ),
        (
            "busiest entities",
            "SELECT partition_key, count(*) AS events, max(version) AS latest_version FROM events GROUP BY partition_key ORDER BY events DESC, partition_key LIMIT 5",
        ),
        (
            "current state of entities (the `things` table)",
            "SELECT \"type\", count(*) AS live, max(version) AS max_version FROM things GROUP BY \"type\" ORDER BY \"type\"",
        ),
        (
            "exactly once: rows vs distinct (shard_id, seq)",
            "SELECT count(*) AS rows, count(DISTINCT shard_id * 1000000000 + seq) AS distinct_events, max(position) AS last_position FROM events",
        ),
    ];
    let engine = CrossShardQuery::open(&lake, QueryConfig::default()).await?;
    for (i, (title, sql)) in queries.iter().enumerate() {
        let result = engine.sql(*sql).await?;
        writeln!(out, "\n{}. {title}\n   {sql}", i + 5)?;
        output::write_table(&mut out, &result.schema, &result.batches)?;
        writeln!(out, "   stats: {}", result.stats.summary())?;
    }
    let again = engine.sql(queries[0].1).await?;
    writeln!(
        out,
        "\n{}. the first query again: {}",
        queries.len() + 5,
        again.stats.summary()
    )?;
    writeln!(
        out,
        "\nnext: `shardlake serve` over this lake, then open http://127.0.0.1:8080/ for the web console"
    )?;
    Ok(())
}
