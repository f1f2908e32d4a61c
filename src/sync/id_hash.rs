//! The hash of the ids the crate issues itself (reservation ids), for the registry's map
//! of open holds.
//!
//! An id is never chosen by a caller: the registry issues them, one by one from each
//! thread's block of the process-wide counter (`next_reservation_id`). So no input can be
//! crafted to collide, and a seeded quality hasher (foldhash's, about 10 instructions a
//! hash) buys nothing here that a multiplication does not: Fibonacci hashing (Knuth, TAOCP
//! vol. 3, 6.4: multiply by 2⁶⁴/φ), whose high bits spread consecutive ids evenly, with
//! the high half folded into the low half so that the low bits (hashbrown's bucket index)
//! depend on every bit of the id too.

use std::hash::{BuildHasher, Hasher};

/// 2⁶⁴ divided by the golden ratio, odd: the multiplier of Fibonacci hashing.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Builds an [`IdHash`]: the hasher of a map keyed by ids the crate issues (see the module
/// docs). Keys that callers choose (idempotency keys) keep the seeded [`super::Hasher`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdHasher;

impl BuildHasher for IdHasher {
    type Hasher = IdHash;

    #[inline(always)]
    fn build_hasher(&self) -> IdHash {
        IdHash(0)
    }
}

/// The state of one id's hash: what was written, mixed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdHash(u64);

impl IdHash {
    /// Mixes `word` into the state: a Fibonacci multiplication, then the high half
    /// folded into the low.
    #[inline(always)]
    fn mix(&mut self, word: u64) {
        let product = (self.0 ^ word).wrapping_mul(GOLDEN);
        self.0 = product ^ (product >> 32);
    }
}

impl Hasher for IdHash {
    /// Any other key shape, 8 bytes at a time (little endian, the last chunk zero padded);
    /// an id writes one `u64` and never comes here.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    #[inline(always)]
    fn write_u64(&mut self, id: u64) {
        self.mix(id);
    }

    #[inline(always)]
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids of `threads` threads opening `per_thread` holds each, one block of 1024
    /// consecutive ids a thread (as `next_reservation_id` deals them).
    fn block_ids(threads: u64, per_thread: u64) -> impl Iterator<Item = u64> {
        (0..threads).flat_map(move |thread| (1 + thread * 1024..).take(per_thread as usize))
    }

    /// The largest share of `ids` that one of 64 buckets gets from the `bits`-bit field
    /// of the hash at `shift`, relative to an even share (1.0: perfectly even).
    fn worst_bucket(hash: impl Fn(u64) -> u64, ids: &[u64], shift: u32) -> f64 {
        let mut buckets = [0_u32; 64];
        for &id in ids {
            buckets[((hash(id) >> shift) & 63) as usize] += 1;
        }
        let worst = buckets.iter().max().copied().unwrap_or(0);
        f64::from(worst) * 64.0 / ids.len() as f64
    }

    /// Whether `hash` spreads block ids evenly over what the holds map reads of a hash:
    /// the low bits (hashbrown's bucket), the 7 top bits (hashbrown's tag), and the bits
    /// just below them (the shard).
    fn spreads(hash: impl Fn(u64) -> u64 + Copy) -> bool {
        let ids: Vec<u64> = block_ids(16, 512).collect();
        [0, 57, 51]
            .into_iter()
            .all(|shift| worst_bucket(hash, &ids, shift) < 1.5)
    }

    fn id_hash(id: u64) -> u64 {
        IdHasher.hash_one(id)
    }

    #[test]
    fn spreads_block_ids_over_buckets_tags_and_shards() {
        assert!(spreads(id_hash));
    }

    /// Negative control: the identity hash keeps the bucket bits even but puts every id in
    /// one shard with one tag, and the check says so.
    #[test]
    fn negative_control_the_identity_hash_does_not_spread() {
        assert!(!spreads(|id| id));
    }

    #[test]
    fn hashes_other_key_shapes_without_panicking() {
        let mut hash = IdHasher.build_hasher();
        hash.write(b"a key of 19 bytes..");
        let mut other = IdHasher.build_hasher();
        other.write(b"a key of 19 bytes.!");
        assert_ne!(hash.finish(), other.finish());
    }
}
