//! A background thread that expires due holds periodically.

use std::fmt;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::store::StockStore;
use crate::sync::{Arc, AtomicU64, Condvar, Mutex, Ordering};

/// A background thread that calls [`StockStore::expire_due`] every `interval`, so
/// abandoned holds give their stock back (and wake monitor waiters) without anyone
/// touching them. It stops, and its thread is joined, when the `Reaper` is dropped.
///
/// Expiry is also lazy without a reaper: a hold past its deadline cannot be committed
/// ([`StockError::Expired`](crate::StockError::Expired)). The reaper only bounds how long
/// the stock of an untouched expired hold stays held: at most about `interval` past its
/// deadline (plus scheduling delay). Its events reach the event sink on the reaper thread.
///
/// A sweep whose event sink panics does not stop the reaper: every hold of that sweep is
/// already expired when the sink hears of it (see [`StockStore::expire_due`]), the panic is
/// caught (the panic hook still reports it, on stderr by default), counted in
/// [`sweeps_panicked`](Self::sweeps_panicked), and the reaper keeps sweeping.
///
/// # Blocking
///
/// Dropping a `Reaper` wakes its thread and joins it: it blocks until a sweep under way
/// (and the event sink calls it makes) has finished, never for a whole `interval`.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use stockledger::{PessimisticStore, Reaper, ReserveOptions, StockStore};
///
/// let store = Arc::new(PessimisticStore::new());
/// store.restock(&"scarf", 1)?;
/// let reaper = Reaper::spawn(Arc::clone(&store), Duration::from_millis(1));
/// store.reserve_with(&[("scarf", 1)], &ReserveOptions::new().ttl(Duration::ZERO))?; // abandoned
/// while store.level(&"scarf").unwrap().reserved > 0 {
///     std::thread::yield_now(); // the reaper gives it back
/// }
/// drop(reaper); // stops and joins the thread
/// assert_eq!(store.stats().expirations, 1);
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
#[must_use = "dropping the reaper stops it at once"]
pub struct Reaper {
    /// `true` once the reaper must stop; the condition variable wakes it early.
    stop: Arc<(Mutex<bool>, Condvar)>,
    /// The reaper thread; `None` once joined.
    thread: Option<JoinHandle<()>>,
    /// Sweeps that panicked (in the event sink) so far.
    panicked: Arc<AtomicU64>,
}

impl Reaper {
    /// Starts a thread that calls `store.expire_due()` at once and then every `interval`
    /// until the returned `Reaper` is dropped.
    ///
    /// # Panics
    ///
    /// When `interval` is zero (the thread would spin), or when the operating system
    /// cannot start a thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use stockledger::{ManualClock, PessimisticStore, Reaper, ReserveOptions, StockStore};
    ///
    /// let clock = Arc::new(ManualClock::new());
    /// let store = Arc::new(PessimisticStore::builder().clock(clock.clone()).build());
    /// store.restock(&"tv", 1)?;
    /// store.reserve_with(&[("tv", 1)], &ReserveOptions::new().ttl(Duration::from_secs(60)))?;
    /// clock.advance(Duration::from_secs(60));
    /// let reaper = Reaper::spawn(store.clone(), Duration::from_millis(1));
    /// while store.level(&"tv").unwrap().reserved > 0 {
    ///     std::thread::yield_now(); // the reaper's first sweep expires the cart
    /// }
    /// drop(reaper); // stops and joins the thread
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn spawn<K, S>(store: std::sync::Arc<S>, interval: Duration) -> Self
    where
        S: StockStore<K> + ?Sized + 'static,
    {
        assert!(!interval.is_zero(), "a reaper needs a non-zero interval");
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let panicked = Arc::new(AtomicU64::new(0));
        let (signal, count) = (Arc::clone(&stop), Arc::clone(&panicked));
        let thread = thread::Builder::new()
            .name("stockledger-reaper".into())
            .spawn(move || Self::run(store.as_ref(), &signal, &count, interval))
            .expect("failed to start the reaper thread");
        Self {
            stop,
            thread: Some(thread),
            panicked,
        }
    }

    /// Number of sweeps so far whose [`StockStore::expire_due`] panicked (an event sink
    /// that panicked on an `Expired` event); the reaper caught each and kept sweeping.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use stockledger::{PessimisticStore, Reaper, StockStore};
    ///
    /// let store = Arc::new(PessimisticStore::<&str>::new());
    /// let reaper = Reaper::spawn(Arc::clone(&store), Duration::from_millis(1));
    /// assert_eq!(reaper.sweeps_panicked(), 0);
    /// ```
    pub fn sweeps_panicked(&self) -> u64 {
        self.panicked.load(Ordering::Relaxed)
    }

    /// The reaper loop: expire, then sleep `interval` or until stopped.
    fn run<K, S>(
        store: &S,
        signal: &(Mutex<bool>, Condvar),
        panicked: &AtomicU64,
        interval: Duration,
    ) where
        S: StockStore<K> + ?Sized,
    {
        let (stopped, wake) = signal;
        loop {
            // A panic can only come from the event sink, after every hold of the sweep was
            // expired (nothing is left half done or locked), so the store is consistent.
            let sweep = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                store.expire_due();
            }));
            if sweep.is_err() {
                panicked.fetch_add(1, Ordering::Relaxed);
            }
            let deadline = Instant::now().checked_add(interval);
            let mut stopped = stopped.lock();
            loop {
                if *stopped {
                    return;
                }
                let timed_out;
                (stopped, timed_out) = wake.wait_until(stopped, deadline);
                if timed_out && !*stopped {
                    break;
                }
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(thread) = self.thread.take() {
            // A panic on the reaper thread (say, in an event sink) already unwound there.
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for Reaper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reaper")
            .field("running", &self.thread.is_some())
            .field("sweeps_panicked", &self.sweeps_panicked())
            .finish()
    }
}
