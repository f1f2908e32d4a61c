//! The builder every store shares: clock, event sink, idempotency retention.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use super::backend::Lifecycle;
use super::clock::{Clock, SystemClock};
use super::event::{EventSink, Events};
use super::idempotency::{IDEMPOTENCY_KEYS_MAX, IDEMPOTENCY_RETENTION};
use super::registry::Registry;
use crate::durability::snapshot::Snapshot;
use crate::stats::Stats;
use crate::store::Sku;

/// Settings of a new store of type `S` with SKU type `K`, from `S::builder()`
/// ([`PessimisticStore::builder`](crate::PessimisticStore::builder),
/// [`OptimisticStore::builder`](crate::OptimisticStore::builder),
/// [`MonitorStore::builder`](crate::MonitorStore::builder),
/// [`AdaptiveStore::builder`](crate::AdaptiveStore::builder)); `.build()` makes the store.
///
/// The settings here are shared by every store;
/// [`retries_max`](StoreBuilder::retries_max) is the optimistic store's own,
/// [`wait_units_max`](StoreBuilder::wait_units_max) the monitor store's. `S::new()` is
/// `S::builder().build()`: the [`SystemClock`], no event sink,
/// [`IDEMPOTENCY_RETENTION`] and [`IDEMPOTENCY_KEYS_MAX`].
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use stockledger::{ChannelSink, ManualClock, MonitorStore, StockStore};
///
/// let clock = Arc::new(ManualClock::new());
/// let (sink, events) = ChannelSink::unbounded();
/// let store = MonitorStore::builder()
///     .clock(clock.clone())
///     .event_sink(sink)
///     .idempotency_retention(Duration::from_secs(3600))
///     .idempotency_keys_max(10_000)
///     .build();
/// store.restock(&"SKU1001".to_string(), 10)?;
/// assert_eq!(events.len(), 1);
/// # Ok::<(), stockledger::StockError<String>>(())
/// ```
#[must_use = "a builder does nothing until `.build()`"]
pub struct StoreBuilder<K, S> {
    /// The time source of deadlines.
    clock: Arc<dyn Clock>,
    /// Where events go, if anywhere.
    event_sink: Option<Arc<dyn EventSink<K>>>,
    /// How long resolved idempotency keys are remembered.
    idempotency_retention: Duration,
    /// How many resolved idempotency keys are remembered at most.
    idempotency_keys_max: usize,
    /// Compare-and-swap attempts per SKU update (optimistic store only).
    pub(crate) retries_max: u32,
    /// When a SKU turns hot or cold (adaptive store only).
    pub(crate) temperature: crate::temperature::Temperature,
    /// Units beyond a SKU's on hand one waiter may wait for (monitor store only).
    pub(crate) wait_units_max: u64,
    /// Whether the store gets a snapshot gate (`snapshots`, or a `restore`).
    snapshots: bool,
    /// The state to build the store in (`restore`), validated for the store's limits.
    pub(crate) restored: Option<Snapshot<K>>,
    store: PhantomData<fn() -> S>,
}

impl<K: Sku, S> StoreBuilder<K, S> {
    /// The default settings, with `retries_max` for the optimistic store.
    pub(crate) fn new(retries_max: u32) -> Self {
        Self {
            clock: Arc::new(SystemClock),
            event_sink: None,
            idempotency_retention: IDEMPOTENCY_RETENTION,
            idempotency_keys_max: IDEMPOTENCY_KEYS_MAX,
            retries_max,
            temperature: crate::temperature::Temperature::DEFAULT,
            wait_units_max: crate::wait::WAIT_UNITS_MAX,
            snapshots: false,
            restored: None,
            store: PhantomData,
        }
    }

    /// The clock of hold deadlines and idempotency retention (default: [`SystemClock`]).
    /// Pass an `Arc<ManualClock>` clone to drive expiry by hand in tests.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use stockledger::{ManualClock, OptimisticStore, ReserveOptions, StockError, StockStore};
    ///
    /// let clock = Arc::new(ManualClock::new());
    /// let store = OptimisticStore::builder().clock(clock.clone()).build();
    /// store.restock(&1_u32, 1)?;
    /// let hold = store.reserve_with(&[(1, 1)], &ReserveOptions::new().ttl(Duration::from_secs(5)))?;
    /// clock.advance(Duration::from_secs(5));
    /// assert_eq!(store.commit(hold.id()), Err(StockError::Expired(hold.id())));
    /// # Ok::<(), StockError<u32>>(())
    /// ```
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The sink that receives the store's [`StockEvent`](crate::StockEvent)s (default:
    /// none, and then no event is built).
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{ChannelSink, PessimisticStore, StockStore};
    ///
    /// let (sink, events) = ChannelSink::unbounded();
    /// let store = PessimisticStore::builder().event_sink(sink).build();
    /// store.restock(&"chair", 4)?;
    /// assert_eq!(events.try_iter().count(), 1);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn event_sink(mut self, sink: Arc<dyn EventSink<K>>) -> Self {
        self.event_sink = Some(sink);
        self
    }

    /// How long the idempotency key of a resolved hold is remembered (default:
    /// [`IDEMPOTENCY_RETENTION`], 24 hours). `Duration::ZERO` forgets keys as their
    /// holds resolve.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use stockledger::PessimisticStore;
    ///
    /// let store = PessimisticStore::<String>::builder()
    ///     .idempotency_retention(Duration::from_secs(600))
    ///     .build();
    /// ```
    pub fn idempotency_retention(mut self, retention: Duration) -> Self {
        self.idempotency_retention = retention;
        self
    }

    /// How many idempotency keys of resolved holds are remembered at most (default:
    /// [`IDEMPOTENCY_KEYS_MAX`]); the oldest are forgotten first. Keys of open holds do
    /// not count and are never forgotten.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::MonitorStore;
    ///
    /// let store = MonitorStore::<u64>::builder().idempotency_keys_max(1_000).build();
    /// ```
    pub fn idempotency_keys_max(mut self, keys_max: usize) -> Self {
        self.idempotency_keys_max = keys_max;
        self
    }

    /// The shared parts of the store these settings describe.
    /// Gives the store a snapshot gate, so that its `snapshot()` copies one consistent
    /// state while other threads keep changing it (a store built without one answers
    /// [`SnapshotError::Disabled`](crate::SnapshotError::Disabled)). A
    /// [`restore`](Self::restore) turns it on too.
    ///
    /// The gate is a reader-writer lock sharded per thread (crossbeam's `ShardedLock`, a
    /// big-reader lock): every change of stock or holds enters it for reading, which
    /// writes only the calling thread's own shard, and a snapshot closes it for writing
    /// while it copies. It costs each change a few nanoseconds, so it is off by default.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{PessimisticStore, StockStore};
    ///
    /// let store = PessimisticStore::builder().snapshots().build();
    /// store.restock(&"SKU1004", 3)?;
    /// let snapshot = store.snapshot().expect("built with snapshots");
    /// assert_eq!(snapshot.skus[0].on_hand, 3);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn snapshots(mut self) -> Self {
        self.snapshots = true;
        self
    }

    /// Takes the snapshot to restore, if any (a store's `build` applies it).
    pub(crate) fn take_restored(&mut self) -> Option<Snapshot<K>> {
        self.restored.take()
    }

    /// Keeps `snapshot` to build the store in that state, with a snapshot gate.
    pub(crate) fn set_restored(mut self, snapshot: Snapshot<K>) -> Self {
        self.restored = Some(snapshot);
        self.snapshots = true;
        self
    }

    pub(crate) fn lifecycle<H: Clone + Default>(self) -> Lifecycle<K, H> {
        let registry = Registry::new(
            self.clock,
            self.idempotency_retention,
            self.idempotency_keys_max,
        );
        let registry = if self.snapshots {
            registry.with_gate()
        } else {
            registry
        };
        Lifecycle {
            registry,
            events: Events::new(self.event_sink),
            stats: Stats::new(),
            deadlines: crate::lifecycle::backend::Deadlines::new(),
        }
    }
}

impl<K, S> fmt::Debug for StoreBuilder<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreBuilder")
            .field("store", &std::any::type_name::<S>())
            .field("event_sink", &self.event_sink.is_some())
            .field("idempotency_retention", &self.idempotency_retention)
            .field("idempotency_keys_max", &self.idempotency_keys_max)
            .field("retries_max", &self.retries_max)
            .field("temperature", &self.temperature)
            .field("wait_units_max", &self.wait_units_max)
            .field("snapshots", &self.snapshots)
            .field("restored", &self.restored.is_some())
            .finish_non_exhaustive()
    }
}
