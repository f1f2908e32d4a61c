//! Hold tokens: what a client names a hold by. The store's `ReservationId`s are small
//! dense integers, so they never leave the service: each hold gets a random 128-bit token
//! that the service maps to its id and its customer. A token of another customer, or a
//! guessed one, finds nothing (404, as if the hold did not exist).
//!
//! In memory for one instance; in Redis (feature `redis`) when several instances share a
//! ledger, so a hold made through one instance can be committed through another.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use stockledger::{Reservation, ReservationId, StockError};

use crate::auth::Customer;
use crate::bodies::{to_line_bodies, LineBody, ReservationBody};

/// How long a token outlives its hold's deadline: a late commit then answers 410 (expired)
/// rather than 404.
pub(crate) const EXPIRED_GRACE: Duration = Duration::from_secs(60);

/// A new hold token: 128 bits from a cryptographically secure generator (`rand`'s
/// `ThreadRng`, ChaCha reseeded from the operating system), as 32 hex digits.
pub(crate) fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn unix_ms_now() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// What a token stands for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct HoldEntry {
    pub(crate) customer: String,
    /// The store's `ReservationId`.
    pub(crate) id: u64,
    pub(crate) lines: Vec<LineBody>,
    /// The hold's deadline, in wall-clock milliseconds (instances share it).
    pub(crate) expires_at_unix_ms: u64,
}

impl HoldEntry {
    /// The entry of `hold`, made for `customer` with the time to live `ttl` (used only if
    /// the store did not report the hold's deadline).
    pub(crate) fn new(customer: &Customer, hold: &Reservation<String>, ttl: Duration) -> Self {
        let left = hold.expires_at().map_or(ttl, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        Self {
            customer: customer.as_str().to_string(),
            id: hold.id().get(),
            lines: to_line_bodies(hold.lines()),
            expires_at_unix_ms: unix_ms_now().saturating_add(left_ms),
        }
    }

    pub(crate) fn id(&self) -> ReservationId {
        ReservationId::from_u64(self.id)
    }

    /// The body a client sees for this hold under `token`.
    pub(crate) fn body(&self, token: &str) -> ReservationBody {
        ReservationBody {
            id: token.to_string(),
            lines: self.lines.clone(),
            expires_in_ms: self.expires_at_unix_ms.saturating_sub(unix_ms_now()),
        }
    }
}

/// Where tokens are kept.
///
/// # Blocking
///
/// The Redis directory makes a round trip per call (see `App::blocking`).
pub(crate) trait HoldDirectory: Send + Sync {
    /// Records `token` for `entry`.
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] (Redis) when it could not be recorded.
    fn insert(&self, token: &str, entry: &HoldEntry) -> Result<(), StockError<String>>;

    /// The entry of `token`, whoever's it is.
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] (Redis).
    fn get(&self, token: &str) -> Result<Option<HoldEntry>, StockError<String>>;

    /// Forgets `token` (its hold was resolved).
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] (Redis).
    fn remove(&self, token: &str) -> Result<(), StockError<String>>;

    /// Forgets tokens whose hold is past its deadline by more than [`EXPIRED_GRACE`].
    fn sweep(&self);

    /// The entry of `token` if it is `customer`'s: another customer's hold is not found.
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] (Redis).
    fn find(
        &self,
        token: &str,
        customer: &Customer,
    ) -> Result<Option<HoldEntry>, StockError<String>> {
        let entry = self.get(token)?;
        Ok(entry.filter(|entry| entry.customer == customer.as_str()))
    }
}

/// Tokens of one instance, in memory.
#[derive(Debug, Default)]
pub(crate) struct MemoryHolds {
    /// The entries and their deadline index (for [`HoldDirectory::sweep`]), under one lock.
    inner: Mutex<MemoryHoldsInner>,
}

#[derive(Debug, Default)]
struct MemoryHoldsInner {
    entries: HashMap<String, HoldEntry>,
    /// `(expires_at_unix_ms, token)` of every entry.
    deadlines: BTreeSet<(u64, String)>,
}

impl HoldDirectory for MemoryHolds {
    fn insert(&self, token: &str, entry: &HoldEntry) -> Result<(), StockError<String>> {
        let mut inner = self.inner.lock().unwrap();
        inner
            .deadlines
            .insert((entry.expires_at_unix_ms, token.to_string()));
        inner.entries.insert(token.to_string(), entry.clone());
        Ok(())
    }

    fn get(&self, token: &str) -> Result<Option<HoldEntry>, StockError<String>> {
        Ok(self.inner.lock().unwrap().entries.get(token).cloned())
    }

    fn remove(&self, token: &str) -> Result<(), StockError<String>> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(entry) = inner.entries.remove(token) {
            inner
                .deadlines
                .remove(&(entry.expires_at_unix_ms, token.to_string()));
        }
        Ok(())
    }

    fn sweep(&self) {
        let grace_ms = u64::try_from(EXPIRED_GRACE.as_millis()).unwrap_or(u64::MAX);
        let due = unix_ms_now().saturating_sub(grace_ms);
        let mut inner = self.inner.lock().unwrap();
        while let Some((deadline, token)) = inner.deadlines.first().cloned() {
            if deadline > due {
                break;
            }
            inner.deadlines.pop_first();
            inner.entries.remove(&token);
        }
    }
}

/// Tokens shared by every instance on one Redis server: `checkout:{ns}:hold:<token>`
/// holding the entry's JSON, with a Redis expiry [`EXPIRED_GRACE`] past the hold's
/// deadline (so Redis sweeps them itself).
#[cfg(feature = "redis")]
#[derive(Debug)]
pub(crate) struct RedisHolds {
    pub(crate) pool: std::sync::Arc<crate::redis_pool::RedisPool>,
}

#[cfg(feature = "redis")]
impl HoldDirectory for RedisHolds {
    fn insert(&self, token: &str, entry: &HoldEntry) -> Result<(), StockError<String>> {
        let key = self.pool.key(&format!("hold:{token}"));
        let value = serde_json::to_string(entry).expect("an entry serializes");
        let left_ms = entry.expires_at_unix_ms.saturating_sub(unix_ms_now());
        let keep_ms = left_ms.saturating_add(EXPIRED_GRACE.as_millis() as u64);
        self.pool.with(|connection| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("PX")
                .arg(keep_ms)
                .query::<()>(connection)
        })
    }

    fn get(&self, token: &str) -> Result<Option<HoldEntry>, StockError<String>> {
        let key = self.pool.key(&format!("hold:{token}"));
        let value: Option<String> = self
            .pool
            .with(|connection| redis::cmd("GET").arg(&key).query(connection))?;
        Ok(value.and_then(|value| serde_json::from_str(&value).ok()))
    }

    fn remove(&self, token: &str) -> Result<(), StockError<String>> {
        let key = self.pool.key(&format!("hold:{token}"));
        self.pool
            .with(|connection| redis::cmd("DEL").arg(&key).query::<()>(connection))
    }

    fn sweep(&self) {
        // Redis expires the keys itself.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_128_random_bits() {
        let tokens: std::collections::HashSet<String> = (0..10_000).map(|_| new_token()).collect();
        assert_eq!(tokens.len(), 10_000);
        assert!(tokens
            .iter()
            .all(|token| token.len() == 32 && token.chars().all(|c| c.is_ascii_hexdigit())));
    }

    #[test]
    fn a_token_is_found_only_with_its_customer() {
        let holds = MemoryHolds::default();
        let entry = HoldEntry {
            customer: "alice".into(),
            id: 1,
            lines: vec![],
            expires_at_unix_ms: unix_ms_now() + 60_000,
        };
        holds.insert("t", &entry).unwrap();
        let alice = Customer::for_tests("alice");
        let bob = Customer::for_tests("bob");
        assert_eq!(holds.find("t", &alice).unwrap(), Some(entry));
        assert_eq!(holds.find("t", &bob).unwrap(), None);
        assert_eq!(holds.find("u", &alice).unwrap(), None);
    }

    #[test]
    fn a_sweep_forgets_only_tokens_past_their_grace() {
        let holds = MemoryHolds::default();
        let grace_ms = EXPIRED_GRACE.as_millis() as u64;
        let entry = |expires_at_unix_ms| HoldEntry {
            customer: "alice".into(),
            id: 1,
            lines: vec![],
            expires_at_unix_ms,
        };
        holds
            .insert("old", &entry(unix_ms_now() - grace_ms - 1))
            .unwrap();
        holds.insert("late", &entry(unix_ms_now() - 1)).unwrap();
        holds.sweep();
        assert_eq!(holds.get("old").unwrap(), None);
        assert!(holds.get("late").unwrap().is_some());
    }
}
