//! SKU types that round-trip through a Redis key: [`RedisSku`].

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use crate::store::Sku;

/// Most bytes one SKU may take as a Redis key (its [`RedisSku::to_redis_key`]); a longer
/// SKU is refused with [`StockError::InvalidSku`](crate::StockError::InvalidSku).
///
/// Redis itself takes keys up to 512 MiB; this bound keeps every key, stream entry and
/// script argument of one request small.
///
/// # Examples
///
/// ```
/// assert_eq!(stockledger::SKU_KEY_BYTES_MAX, 1024);
/// ```
pub const SKU_KEY_BYTES_MAX: usize = 1024;

/// A SKU type that [`RedisStore`](crate::RedisStore) can keep on a Redis server: it turns
/// into the bytes of a key and back, losslessly.
///
/// Implemented for `String` and `&'static str` (their UTF-8 bytes: spaces, quotes, `{`,
/// `}` and non-ASCII all round-trip; Redis keys are binary safe) and for the integer types
/// `u8` to `u128`, `i8` to `i128` and `usize`/`isize` (their decimal text, so `42_u64` is
/// the key `42`). Implement it for a type of your own with any lossless encoding.
///
/// A `&'static str` read back from the server (the lines of a hold that `commit`,
/// `release`, a replay or an expiry answer with, the SKUs of events) must live for
/// `'static`, and the server's bytes do not: each distinct key is copied once into memory
/// kept for the rest of the process (`Box::leak`) and interned, so the next time that key
/// is read back it is the same `&'static str`, with no new allocation. Memory grows by
/// each distinct SKU read back once, as the string literals such SKUs usually are would
/// take anyway; at most 65,536 distinct keys are interned, after which a key not yet
/// interned is refused (`None`: the store answers
/// [`StockError::Unavailable`](crate::StockError::Unavailable)). A ledger whose SKUs are
/// not a small fixed set belongs in `String` keys.
///
/// # Examples
///
/// ```
/// use stockledger::RedisSku;
///
/// let sku = String::from("café {blue} \"XL\"");
/// assert_eq!(String::from_redis_key(&sku.to_redis_key()), Some(sku));
/// assert_eq!(1004_u64.to_redis_key(), b"1004".to_vec());
/// assert_eq!(u64::from_redis_key(b"SKU1004"), None); // not a u64: refused, not guessed
/// assert_eq!(<&str>::from_redis_key(b"lamp"), Some("lamp")); // interned: 'static
/// ```
pub trait RedisSku: Sku {
    /// The bytes of this SKU's key (inside the store's namespace).
    fn to_redis_key(&self) -> Vec<u8>;

    /// The SKU whose key is `bytes`, or `None` when `bytes` is no key of this type (the
    /// store then answers [`StockError::Unavailable`](crate::StockError::Unavailable):
    /// the namespace holds data another SKU type wrote).
    fn from_redis_key(bytes: &[u8]) -> Option<Self>;
}

impl RedisSku for String {
    fn to_redis_key(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }

    fn from_redis_key(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// Most distinct `&'static str` keys read back from a server that one process interns
/// (see [`RedisSku`]): each is at most [`SKU_KEY_BYTES_MAX`] bytes, so at most 64 MiB.
const STATIC_KEYS_MAX: usize = 1 << 16;

/// The `&'static str` keys read back so far (see [`RedisSku`]).
static STATIC_KEYS: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

impl RedisSku for &'static str {
    fn to_redis_key(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }

    fn from_redis_key(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        // A panic elsewhere under this lock leaves the set as it was: still sound to use.
        let mut keys = STATIC_KEYS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&known) = keys.get(text) {
            return Some(known);
        }
        if keys.len() >= STATIC_KEYS_MAX {
            return None;
        }
        let kept: &'static str = Box::leak(text.to_owned().into_boxed_str());
        keys.insert(kept);
        Some(kept)
    }
}

macro_rules! decimal_sku {
    ($($int:ty),*) => {$(
        impl RedisSku for $int {
            fn to_redis_key(&self) -> Vec<u8> {
                self.to_string().into_bytes()
            }

            fn from_redis_key(bytes: &[u8]) -> Option<Self> {
                let text = std::str::from_utf8(bytes).ok()?;
                let sku: $int = text.parse().ok()?;
                // Only the canonical text: "+7" or "007" would be another key of SKU 7.
                (sku.to_string() == text).then_some(sku)
            }
        }
    )*};
}

decimal_sku!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_integers_round_trip_and_odd_keys_are_refused() {
        for sku in ["", "a b", "\"q'", "{ns}", "}{", "ß漢字", "\u{0}"] {
            let sku = sku.to_string();
            assert_eq!(String::from_redis_key(&sku.to_redis_key()), Some(sku));
        }
        for sku in [0_i64, -1, i64::MIN, i64::MAX] {
            assert_eq!(i64::from_redis_key(&sku.to_redis_key()), Some(sku));
        }
        assert_eq!(
            u128::from_redis_key(&u128::MAX.to_redis_key()),
            Some(u128::MAX)
        );
        for odd in [&b"007"[..], b"+7", b" 7", b"7a", b"", b"\xff"] {
            assert_eq!(u64::from_redis_key(odd), None, "{odd:?}");
        }
        assert_eq!(String::from_redis_key(b"\xff\xfe"), None);
    }

    #[test]
    fn static_str_keys_round_trip_interned_once() {
        let first = <&str>::from_redis_key("café {blue}".as_bytes()).unwrap();
        let again = <&str>::from_redis_key(&first.to_redis_key()).unwrap();
        assert_eq!(first, "café {blue}");
        assert!(std::ptr::eq(first, again), "read back twice, kept once");
        assert_eq!(<&str>::from_redis_key(b"\xff"), None);
    }
}
