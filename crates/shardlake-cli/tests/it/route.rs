//! `shardlake route` and `shardlake topology analyze`.

use crate::shardlake;

fn stdout_of(args: &[&str]) -> String {
    let out = shardlake().args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

#[test]
fn route_prints_the_shard_first_and_agrees_with_the_golden_vectors() {
    // testdata/routing-golden.json: "Order:ord-123" under each strategy.
    let golden: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/routing-golden.json"
        ))
        .expect("golden"),
    )
    .expect("json");
    let entry = golden["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["key"] == "Order:ord-123")
        .expect("the key is pinned");
    for (strategy, column) in [
        ("hash", "hash_16"),
        ("consistent-hash", "consistent_hash_16x150"),
        ("jump", "jump_16"),
    ] {
        let out = stdout_of(&[
            "route",
            "Order:ord-123",
            "--strategy",
            strategy,
            "--shards",
            "16",
        ]);
        let first = out.lines().next().expect("a line");
        assert_eq!(
            first,
            format!("shard={}", entry[column]),
            "{strategy}: {out}"
        );
        assert!(out.contains(&format!("strategy={strategy}")), "{out}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let topology = dir.path().join("t.toml");
    std::fs::write(
        &topology,
        r#"version = 2
shards = [0, 1]
[strategy]
kind = "range"
default_shard = 0
ranges = [{ start = "m", shard = 1 }]
"#,
    )
    .expect("write");
    let t = topology.to_str().expect("utf8");
    assert!(stdout_of(&["route", "zebra", "--topology", t]).starts_with("shard=1\n"));
    assert!(stdout_of(&["route", "apple", "--topology", t]).starts_with("shard=0\n"));
    let bad = shardlake()
        .args(["route", "k", "--strategy", "range"])
        .output()
        .expect("spawn");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--topology"));
}

#[test]
fn topology_analyze_reports_the_distribution() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.txt");
    let text: String = (0..10_000).map(|i| format!("Order:o-{i}\n")).collect();
    std::fs::write(&keys, text).expect("write");
    let out = stdout_of(&[
        "topology",
        "analyze",
        "--keys",
        keys.to_str().expect("utf8"),
        "--strategy",
        "jump",
        "--shards",
        "8",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["keys"], 10_000);
    assert_eq!(report["counts"].as_array().map(Vec::len), Some(8));
    let total: u64 = report["counts"]
        .as_array()
        .expect("counts")
        .iter()
        .map(|c| c[1].as_u64().expect("count"))
        .sum();
    assert_eq!(total, 10_000);
    assert!(report["balance_score"].as_f64().expect("score") > 0.9);
    let human = stdout_of(&[
        "topology",
        "analyze",
        "--keys",
        keys.to_str().expect("utf8"),
        "--shards",
        "4",
    ]);
    assert!(human.starts_with("strategy=hash shards=4"), "{human}");
    assert_eq!(human.lines().filter(|l| l.starts_with("shard ")).count(), 4);
}
