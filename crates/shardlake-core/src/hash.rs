//! The one hash of shardlake: FNV-1a, 32-bit, over a key's UTF-8 bytes.
//!
//! Routing (key -> shard), subscription partitions (key -> partition i of n)
//! and the synthetic generator all use this function, so a key lands in the
//! same place through any of them. Changing it moves keys between shards:
//! it is pinned by golden vectors and may only change with a migration.

const FNV_OFFSET_BASIS: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// FNV-1a (32-bit) of `bytes`.
#[inline]
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    let mut hash = FNV_OFFSET_BASIS;
    for b in bytes {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The bucket of `key` among `n` buckets (`fnv1a_32(key) % n`); `n` must be > 0.
#[inline]
pub fn bucket_of(key: &str, n: u32) -> u32 {
    fnv1a_32(key.as_bytes()) % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_fnv1a_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv).
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
    }
}
