//! The hashes routing is built on. Every one of them is pinned by the golden
//! vectors in `testdata/routing-golden.json`: changing any of them moves
//! keys between shards, which needs a migration, not a code change.
//!
//! - `hash`: FNV-1a 32-bit over the key's UTF-8 bytes, modulo the shard
//!   count (the project's one hash, [`shardlake_core::hash`]).
//! - `consistent-hash`: ring positions are FNV-1a 32 followed by the
//!   MurmurHash3 32-bit finalizer. FNV-1a alone barely changes between
//!   `shard-3#17` and `shard-3#18`, which clusters virtual nodes on the ring;
//!   the finalizer spreads them (and keys) uniformly.
//! - `jump`: jump consistent hash (Lamping & Veach, 2014) seeded by FNV-1a
//!   64-bit with the SplitMix64 finalizer.

pub use shardlake_core::hash::fnv1a_32;

const FNV64_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a (64-bit) of `bytes`.
#[inline]
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash = FNV64_OFFSET_BASIS;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV64_PRIME);
    }
    hash
}

/// MurmurHash3's 32-bit finalizer: every input bit affects every output bit.
#[inline]
pub fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// SplitMix64's finalizer.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Position of `bytes` on the consistent-hash ring.
#[inline]
pub fn ring_position(bytes: &[u8]) -> u32 {
    fmix32(fnv1a_32(bytes))
}

/// Jump consistent hash: the bucket of `key` among `buckets` (> 0). Growing
/// from n to n+1 buckets moves a key only to the new bucket, and about
/// 1/(n+1) of all keys move.
#[inline]
pub fn jump_bucket(key: u64, buckets: u32) -> u32 {
    let mut key = key;
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let shifted = ((key >> 33) + 1) as f64;
        j = (((b + 1) as f64) * ((1u64 << 31) as f64 / shifted)) as i64;
    }
    // `b` is in 0..buckets, so it fits.
    b as u32
}

/// The jump-hash seed of a key's bytes.
#[inline]
pub fn jump_key(bytes: &[u8]) -> u64 {
    mix64(fnv1a_64(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_vectors() {
        // FNV-1a 64 reference values (draft-eastlake-fnv).
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
        // Jump hash: one bucket takes everything; results stay in range.
        assert_eq!(jump_bucket(12345, 1), 0);
        for k in 0..1000u64 {
            assert!(jump_bucket(mix64(k), 7) < 7);
        }
    }
}
