//! Verifying: after the last catch-up, every moved key on its new owner
//! must match the lake (count, last position, content hash), and no old
//! owner may have committed to it after it was fenced.

use std::collections::BTreeMap;

use futures::StreamExt;
use shardlake_core::Event;
use shardlake_shard::{KeyDigest, digest_of};

use super::{Migrator, Run, by_shard};
use crate::error::{Result, internal, verification_failed};

impl Migrator {
    /// Compares each moved key on its new owner with the lake: event count,
    /// last position and content hash, at one snapshot.
    pub(super) async fn verify(&self, run: &mut Run) -> Result<()> {
        self.catch_up(run).await?;
        let Some(snapshot) = run.report.applied_snapshot else {
            return Ok(());
        };
        let moves = Self::moves(&run.report);
        let mut lake: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        for query in self.replays_of(&run.report.plan.moves, snapshot) {
            let mut stream = self.engine.replay(query).without_cache().stream().await?;
            while let Some(batch) = stream.next().await {
                let events = shardlake_core::events_from_batch(&batch?)
                    .map_err(|e| internal(format!("replayed rows: {e}")))?;
                for e in events {
                    if moves.contains_key(&e.partition_key) {
                        lake.entry(e.partition_key.clone()).or_default().push(e);
                    }
                }
            }
        }
        let mut mismatches = Vec::new();
        // An old owner that kept writing after it was fenced (a zombie that
        // missed the fence) would own the key twice.
        let fenced_at = run.report.fence_position.unwrap_or(i64::MAX);
        for (key, events) in &lake {
            let Some(&(from, _)) = moves.get(key) else {
                continue;
            };
            if let Some(e) = events
                .iter()
                .find(|e| e.shard_id == from as i32 && e.position.unwrap_or(0) > fenced_at)
            {
                mismatches.push(format!(
                    "`{key}`: old owner {from} committed seq {} at position {} after it was fenced (position {fenced_at})",
                    e.seq,
                    e.position.unwrap_or(0)
                ));
            }
        }
        let mut verified = 0;
        for (shard, keys) in by_shard(&run.report.plan.moves, |m| m.to) {
            let held = self.gate.shards().get(shard)?.digests(&keys).await?;
            for key in keys {
                let expected: Option<KeyDigest> =
                    lake.get(&key).map(|events| digest_of(events.iter()));
                let actual = held.get(&key);
                if expected.as_ref() == actual {
                    verified += 1;
                } else {
                    mismatches.push(format!(
                        "`{key}` on shard {shard}: lake {} events, shard {} events",
                        expected.map_or(0, |d| d.events),
                        actual.map_or(0, |d| d.events)
                    ));
                }
            }
        }
        run.report.keys_verified = verified;
        if mismatches.is_empty() {
            Ok(())
        } else {
            let total = mismatches.len();
            mismatches.truncate(5);
            Err(verification_failed(format!(
                "{total} key(s) differ: {}",
                mismatches.join("; ")
            )))
        }
    }
}
