//! Docs that run: every ```sh block of README.md and docs/*.md preceded by
//! a `<!-- runnable ... -->` line is run, in order, as a bash script with
//! `set -euo pipefail`, in one temporary directory per file, against the
//! binary under test. A doc that drifts from the binary fails here.
//!
//! Three things are adapted, nothing else: `shardlake serve` runs in the
//! background on a free loopback port (and is stopped with SIGTERM when
//! the block ends, which must exit 0), `localhost:8080` becomes that port,
//! and `curl -s` becomes `curl -sf` so an HTTP error fails the block.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The runnable blocks of `markdown`, in order.
fn runnable_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        if !line.trim_start().starts_with("<!-- runnable") {
            continue;
        }
        let fence = lines.next().unwrap_or_default();
        assert_eq!(
            fence.trim(),
            "```sh",
            "a runnable marker must precede a sh block"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(body.join("\n"));
    }
    blocks
}

/// `block` as a bash script (see the module docs).
fn script(block: &str, bin_dir: &Path, port: u16) -> String {
    let mut out = format!(
        "set -euo pipefail\nexport PATH=\"{}:$PATH\"\nSERVE=\n\
         stop() {{ if [ -n \"$SERVE\" ]; then kill -TERM \"$SERVE\"; wait \"$SERVE\"; SERVE=; fi; }}\n\
         trap 'if [ -n \"$SERVE\" ]; then kill -9 \"$SERVE\" 2>/dev/null || true; fi' EXIT\n",
        bin_dir.display()
    );
    for line in block.lines() {
        let line = line
            .replace("localhost:8080", &format!("127.0.0.1:{port}"))
            .replace("curl -s ", "curl -sf ");
        if let Some(rest) = line.trim_start().strip_prefix("shardlake serve") {
            let args = rest.split(" #").next().unwrap_or_default().trim_end();
            out.push_str(&format!(
                "shardlake serve --listen 127.0.0.1:{port}{args} > serve.log 2>&1 &\nSERVE=$!\n\
                 for _ in $(seq 300); do grep -q 'listening on' serve.log && break; sleep 0.1; done\n\
                 grep -q 'listening on' serve.log || {{ cat serve.log; exit 1; }}\n"
            ));
        } else {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push_str("stop\n");
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn run_doc(doc: &Path) -> usize {
    let text = std::fs::read_to_string(doc).expect("read the doc");
    let blocks = runnable_blocks(&text);
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_shardlake"));
    let bin_dir = binary.parent().expect("bin dir");
    for (i, block) in blocks.iter().enumerate() {
        let out = Command::new("bash")
            .arg("-c")
            .arg(script(block, bin_dir, free_port()))
            .current_dir(dir.path())
            .env_remove("SHARDLAKE_WAREHOUSE")
            .env_remove("SHARDLAKE_CONFIG")
            .env_remove("SHARDLAKE_FORMAT")
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "{} block {} failed ({:?}):\n{block}\n--- stdout\n{}\n--- stderr\n{}",
            doc.display(),
            i + 1,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    blocks.len()
}

#[test]
fn the_runnable_blocks_of_the_docs_run_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut docs = vec![root.join("README.md")];
    let mut others: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    others.sort();
    docs.extend(others);
    let ran: usize = docs.iter().map(|d| run_doc(d)).sum();
    // README's three command-line blocks, maintenance.md's time travel and
    // routing.md's tour.
    assert!(ran >= 5, "the marked blocks all ran ({ran} ran)");
}

#[test]
fn markers_pick_the_block_after_them_only() {
    let md = "intro\n```sh\nnot this\n```\n<!-- runnable -->\n```sh\na\nb\n```\ntext\n";
    assert_eq!(runnable_blocks(md), ["a\nb"]);
    let s = script(
        "shardlake serve   # comment\ncurl -s localhost:8080/x",
        Path::new("/b"),
        9,
    );
    assert!(
        s.contains("shardlake serve --listen 127.0.0.1:9 > serve.log"),
        "{s}"
    );
    assert!(s.contains("curl -sf 127.0.0.1:9/x"), "{s}");
}

/// The sample answers in docs/http-api.md carry exactly the statistics the
/// engine sends: a field added, renamed or dropped without the docs fails.
#[test]
fn the_sample_statistics_in_the_http_docs_are_the_real_fields() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("docs/http-api.md")).expect("http-api.md");
    let real: serde_json::Value =
        serde_json::to_value(shardlake_query::ScanStats::default()).expect("stats");
    let real: std::collections::BTreeSet<&String> =
        real.as_object().expect("an object").keys().collect();
    let mut samples = 0;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```json" {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let Ok(doc) = serde_json::from_str::<serde_json::Value>(&block.join("\n")) else {
            continue;
        };
        if let Some(stats) = doc.get("stats").and_then(|s| s.as_object()) {
            let documented: std::collections::BTreeSet<&String> = stats.keys().collect();
            assert_eq!(
                documented, real,
                "the stats of a sample in docs/http-api.md"
            );
            samples += 1;
        }
    }
    assert!(
        samples >= 1,
        "docs/http-api.md shows an answer with its stats"
    );
}
