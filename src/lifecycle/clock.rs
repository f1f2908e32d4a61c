//! The time source of hold deadlines: the system clock, or a manual one for tests.

use std::fmt;
use std::time::{Duration, Instant};

use crate::sync::{AtomicU64, Ordering};

/// A monotonic time source for hold deadlines (TTL) and idempotency retention.
///
/// A store reads its clock when it opens a hold with a TTL, when it resolves, extends or
/// expires a hold that has a deadline, and when it prunes idempotency keys. Inject one with
/// the store builder's [`clock`](crate::StoreBuilder::clock); the default is
/// [`SystemClock`]. The clock must never go back.
///
/// A clock is user code: a store reads it before it takes any internal lock and never
/// while a hold is half resolved, so a clock may log, trace, or look at the store (format
/// `{store:?}`, read a level). Holds without a deadline or an idempotency key read no clock
/// at all.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use stockledger::{Clock, ManualClock, PessimisticStore, ReserveOptions, StockStore};
///
/// let clock = Arc::new(ManualClock::new());
/// let store = PessimisticStore::builder().clock(clock.clone()).build();
/// store.restock(&"mug", 1)?;
/// let ttl = Duration::from_secs(60);
/// let hold = store.reserve_with(&[("mug", 1)], &ReserveOptions::new().ttl(ttl))?;
/// assert_eq!(hold.expires_at(), Some(clock.now() + ttl));
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
pub trait Clock: Send + Sync {
    /// The current instant. Never earlier than an instant this clock returned before.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock ([`Instant::now`]); the default clock of every store.
///
/// # Examples
///
/// ```
/// use stockledger::{Clock, SystemClock};
///
/// let earlier = SystemClock.now();
/// assert!(SystemClock.now() >= earlier);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to ([`advance`](Self::advance)): deterministic
/// expiry in tests and simulations.
///
/// It starts at the instant it was created and never goes back. Advancing it is a single
/// atomic add, so threads may share it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use stockledger::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let start = clock.now();
/// clock.advance(Duration::from_secs(90));
/// assert_eq!(clock.now() - start, Duration::from_secs(90));
/// assert_eq!(clock.now() - start, Duration::from_secs(90)); // time stands still
/// ```
pub struct ManualClock {
    /// The instant of creation.
    start: Instant,
    /// Nanoseconds advanced since `start`, saturating at `u64::MAX` (about 584 years).
    elapsed_ns: AtomicU64,
}

impl ManualClock {
    /// A clock standing at the current system instant.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use stockledger::{Clock, ManualClock};
    ///
    /// let clock = ManualClock::new();
    /// assert_eq!(clock.now(), clock.now()); // stands still until advanced
    /// ```
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            elapsed_ns: AtomicU64::new(0),
        }
    }

    /// Moves the clock forward by `by`. The total advance saturates at `u64::MAX`
    /// nanoseconds (about 584 years) instead of wrapping.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use stockledger::{Clock, ManualClock};
    ///
    /// let clock = ManualClock::new();
    /// let start = clock.now();
    /// clock.advance(Duration::from_secs(5));
    /// assert_eq!(clock.now() - start, Duration::from_secs(5));
    /// ```
    pub fn advance(&self, by: Duration) {
        let by_ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let mut elapsed_ns = self.elapsed_ns.load(Ordering::Acquire);
        loop {
            let next = elapsed_ns.saturating_add(by_ns);
            match self.elapsed_ns.compare_exchange(
                elapsed_ns,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => elapsed_ns = actual,
            }
        }
    }

    /// How far the clock was advanced since it was created.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use stockledger::ManualClock;
    ///
    /// let clock = ManualClock::new();
    /// clock.advance(Duration::from_millis(250));
    /// clock.advance(Duration::from_millis(750));
    /// assert_eq!(clock.elapsed(), Duration::from_secs(1));
    /// ```
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_ns.load(Ordering::Acquire))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        // Past `Instant`'s range (centuries away), the clock stands at its last instant.
        self.start
            .checked_add(self.elapsed())
            .unwrap_or_else(|| self.start + Duration::from_secs(u32::MAX.into()))
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("elapsed", &self.elapsed())
            .finish()
    }
}
