//! `shardlake ingest`: NDJSON into the lake through the emitter.
//!
//! The input is cut into chunks at line boundaries; chunks are parsed and
//! validated in parallel on the blocking pool, then sent to the emitter in
//! input order (the emitter commits in send order, so a shard's events never
//! overtake each other), with several chunks in flight at once.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use shardlake_core::{EventBatchBuilder, EventLimits, RejectedLine, push_json_array, push_ndjson};
use shardlake_lake::{
    AckFuture, EmitInput, EmitterMetricsSnapshot, PipelineEmitter, RejectedEvent,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt};

/// Bytes per parse chunk: big enough to amortize task overhead, small
/// enough to keep both cores busy and memory flat.
const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// What an ingest run did.
#[derive(Debug, Clone, Serialize)]
pub struct IngestSummary {
    /// Non-blank lines read.
    pub lines: u64,
    /// Events newly committed.
    pub accepted: u64,
    /// Events already in the lake (dropped).
    pub duplicates: u64,
    /// Of those, the ones whose content differs from the event the lake
    /// stores for their `(shard_id, seq)` (where it could be checked).
    pub conflicting_duplicates: u64,
    /// Events refused, with reasons (the first 20 are listed).
    pub rejected: u64,
    /// The first refused events.
    pub rejected_examples: Vec<RejectedEvent>,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Lines per second.
    pub events_per_second: f64,
    /// Emitter counters at the end.
    pub emitter: EmitterMetricsSnapshot,
}

struct Chunk {
    bytes: Vec<u8>,
    first_line: usize,
    /// A whole JSON array rather than NDJSON lines.
    array: bool,
}

/// Reads NDJSON from `input` (a file path or `-` for stdin) into `emitter`.
pub async fn ingest(
    input: &str,
    emitter: &PipelineEmitter,
    progress: bool,
) -> anyhow::Result<IngestSummary> {
    let (raw, len): (Box<dyn AsyncRead + Unpin + Send>, Option<u64>) = if input == "-" {
        (Box::new(tokio::io::stdin()), None)
    } else {
        let path = Path::new(input);
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open {input}: {e}"))?;
        let len = file.metadata().await.ok().map(|m| m.len());
        (Box::new(file), len)
    };
    let (reader, compressed) = decompressed(raw).await?;
    // The bar counts decompressed bytes: a compressed file's size is no total.
    let total = len.filter(|_| !compressed);
    let (mut reader, array) = starts_an_array(reader).await?;
    let bar = progress_bar(progress, total);
    let started = Instant::now();
    let limits = emitter.config().limits;

    // A JSON array has no line boundaries to cut it at: it is one chunk,
    // parsed as HTTP ingest parses one (rejections by 0-based index).
    let chunks = if array {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).await?;
        let chunk = Chunk {
            bytes,
            first_line: 0,
            array: true,
        };
        futures::stream::once(async move { Ok(chunk) }).boxed()
    } else {
        chunk_stream(reader).boxed()
    };
    let bar_ref = &bar;
    let acks: Vec<(AckFuture, u64)> = chunks
        .map_ok(|chunk| async move {
            let len = chunk.bytes.len() as u64;
            let parsed = tokio::task::spawn_blocking(move || parse_chunk(&chunk, limits))
                .await
                .map_err(|e| anyhow::anyhow!("parser task failed: {e}"))??;
            bar_ref.inc(len);
            Ok::<_, anyhow::Error>(parsed)
        })
        .try_buffered(3)
        .and_then(|(batch, rejected, lines)| async move {
            let ack = emitter
                .send(EmitInput::Validated(batch, rejected))
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            Ok((ack, lines))
        })
        .try_collect()
        .await?;

    let mut summary = IngestSummary {
        lines: 0,
        accepted: 0,
        duplicates: 0,
        conflicting_duplicates: 0,
        rejected: 0,
        rejected_examples: Vec::new(),
        seconds: 0.0,
        events_per_second: 0.0,
        emitter: emitter.metrics(),
    };
    bar.set_message("committing");
    // The input is exhausted: commit what is queued now instead of waiting
    // out the flush interval.
    emitter.flush().await?;
    for (ack, lines) in acks {
        let ack = ack.await.map_err(|e| anyhow::anyhow!(e))?;
        summary.lines += lines;
        summary.accepted += ack.accepted as u64;
        summary.duplicates += ack.duplicates as u64;
        summary.conflicting_duplicates += ack.conflicting_duplicates as u64;
        summary.rejected += ack.rejected.len() as u64;
        for r in ack.rejected {
            if summary.rejected_examples.len() < 20 {
                summary.rejected_examples.push(r);
            }
        }
    }
    bar.finish_and_clear();
    summary.seconds = started.elapsed().as_secs_f64();
    summary.events_per_second = summary.lines as f64 / summary.seconds.max(1e-9);
    summary.emitter = emitter.metrics();
    Ok(summary)
}

/// `reader`, decompressed if it starts like gzip or zstd (whatever the file
/// is called), and whether it was.
async fn decompressed(
    reader: Box<dyn AsyncRead + Unpin + Send>,
) -> anyhow::Result<(Box<dyn AsyncRead + Unpin + Send>, bool)> {
    use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
    let mut reader = tokio::io::BufReader::new(reader);
    let head = reader.fill_buf().await?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        let mut decoder = GzipDecoder::new(reader);
        // `cat a.gz b.gz` is one valid gzip file of two members.
        decoder.multiple_members(true);
        (Box::new(decoder), true)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let mut decoder = ZstdDecoder::new(reader);
        decoder.multiple_members(true);
        (Box::new(decoder), true)
    } else {
        (Box::new(reader), false)
    })
}

/// Whether `reader`'s first non-blank byte is `[`: a JSON array of events
/// (the shape HTTP ingest accepts too) rather than NDJSON.
async fn starts_an_array(
    reader: Box<dyn AsyncRead + Unpin + Send>,
) -> anyhow::Result<(Box<dyn AsyncRead + Unpin + Send>, bool)> {
    let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, reader);
    let first = loop {
        let head = reader.fill_buf().await?;
        if head.is_empty() {
            break None;
        }
        match head.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => break Some(head[i]),
            None => {
                let n = head.len();
                reader.consume(n);
            }
        }
    };
    Ok((Box::new(reader), first == Some(b'[')))
}

fn parse_chunk(
    chunk: &Chunk,
    limits: EventLimits,
) -> anyhow::Result<(shardlake_core::EventBatch, Vec<RejectedLine>, u64)> {
    let rows = chunk.bytes.len() / 300 + 16;
    let mut builder = EventBatchBuilder::with_capacity(limits, rows, chunk.bytes.len());
    let rejected = if chunk.array {
        push_json_array(&mut builder, &chunk.bytes).map_err(|e| {
            anyhow::anyhow!("the input is not a JSON array of events: {}", e.message)
        })?
    } else {
        push_ndjson(&mut builder, &chunk.bytes, chunk.first_line)
    };
    let lines = (builder.len() + rejected.len()) as u64;
    Ok((builder.finish(), rejected, lines))
}

struct Reader {
    reader: Box<dyn AsyncRead + Unpin + Send>,
    carry: Vec<u8>,
    next_line: usize,
    done: bool,
}

/// Splits a byte stream into chunks ending at line boundaries.
fn chunk_stream(
    reader: Box<dyn AsyncRead + Unpin + Send>,
) -> impl futures::Stream<Item = anyhow::Result<Chunk>> {
    let state = Reader {
        reader,
        carry: Vec::new(),
        next_line: 1,
        done: false,
    };
    futures::stream::try_unfold(state, |mut st| async move {
        loop {
            if st.done {
                return Ok(None);
            }
            let mut buf = std::mem::take(&mut st.carry);
            let start = buf.len();
            buf.resize(start + CHUNK_BYTES, 0);
            let mut filled = start;
            // Fill the buffer (reads may return less than asked).
            while filled < buf.len() {
                let n = st.reader.read(&mut buf[filled..]).await?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            let eof = filled < buf.len();
            buf.truncate(filled);
            if buf.is_empty() {
                return Ok(None);
            }
            if !eof {
                // Keep the partial last line for the next chunk.
                match buf.iter().rposition(|b| *b == b'\n') {
                    Some(nl) => st.carry = buf.split_off(nl + 1),
                    None => {
                        st.carry = buf;
                        continue;
                    }
                }
            }
            st.done = eof;
            let lines =
                buf.iter().filter(|b| **b == b'\n').count() + usize::from(!buf.ends_with(b"\n"));
            let chunk = Chunk {
                bytes: buf,
                first_line: st.next_line,
                array: false,
            };
            st.next_line += lines;
            return Ok(Some((chunk, st)));
        }
    })
}

fn progress_bar(enabled: bool, total: Option<u64>) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
