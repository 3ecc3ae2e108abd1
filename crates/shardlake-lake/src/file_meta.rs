//! What every data file says about itself in its Parquet footer: which
//! shards' events it holds and their seq ranges.
//!
//! Readers use it to know exactly which shards a scan touched; the plain
//! Parquet format (no catalog) recovers watermarks from it after a crash.

use std::collections::BTreeMap;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// Parquet key-value metadata key holding the file's [`ShardRange`]s (JSON).
pub const SHARDS_KEY: &str = "shardlake.shards";

/// The events of one shard in one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRange {
    /// The shard.
    pub shard_id: i32,
    /// Lowest seq of the shard in the file.
    pub min_seq: i64,
    /// Highest seq of the shard in the file.
    pub max_seq: i64,
    /// Events of the shard in the file.
    pub events: u64,
}

/// The shard ranges of `batch` (which has `shard_id` and `seq` columns at
/// positions 1 and 2, as every event batch does), ordered by shard.
pub fn shard_ranges(batch: &RecordBatch) -> Vec<ShardRange> {
    let shards = batch.column(1).as_primitive::<Int32Type>().values();
    let seqs = batch.column(2).as_primitive::<Int64Type>().values();
    let mut ranges: BTreeMap<i32, ShardRange> = BTreeMap::new();
    for (&shard_id, &seq) in shards.iter().zip(seqs.iter()) {
        ranges
            .entry(shard_id)
            .and_modify(|r| {
                r.min_seq = r.min_seq.min(seq);
                r.max_seq = r.max_seq.max(seq);
                r.events += 1;
            })
            .or_insert(ShardRange {
                shard_id,
                min_seq: seq,
                max_seq: seq,
                events: 1,
            });
    }
    ranges.into_values().collect()
}

/// Encodes ranges as the value stored under [`SHARDS_KEY`]: a compact JSON
/// array of `[shard_id, min_seq, max_seq, events]`.
pub fn encode(ranges: &[ShardRange]) -> String {
    let rows: Vec<[i64; 4]> = ranges
        .iter()
        .map(|r| [i64::from(r.shard_id), r.min_seq, r.max_seq, r.events as i64])
        .collect();
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".to_owned())
}

/// Decodes the value stored under [`SHARDS_KEY`].
pub fn decode(value: &str) -> Result<Vec<ShardRange>> {
    let rows: Vec<[i64; 4]> = serde_json::from_str(value).map_err(|e| {
        Error::new(ErrorKind::DataInvalid, format!("bad {SHARDS_KEY} metadata")).with_source(e)
    })?;
    rows.into_iter()
        .map(|[shard, min_seq, max_seq, events]| {
            Ok(ShardRange {
                shard_id: i32::try_from(shard).map_err(|e| {
                    Error::new(ErrorKind::DataInvalid, format!("bad shard id {shard}"))
                        .with_source(e)
                })?,
                min_seq,
                max_seq,
                events: u64::try_from(events).unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let ranges = vec![
            ShardRange {
                shard_id: 0,
                min_seq: 3,
                max_seq: 90,
                events: 12,
            },
            ShardRange {
                shard_id: 7,
                min_seq: 1,
                max_seq: 1,
                events: 1,
            },
        ];
        let text = encode(&ranges);
        assert_eq!(text, "[[0,3,90,12],[7,1,1,1]]");
        assert_eq!(decode(&text).expect("decodes"), ranges);
        assert!(decode("{}").is_err());
    }
}
