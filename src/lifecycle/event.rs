//! Stock events: what changed, delivered to an [`EventSink`] after the change.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::level::StockLevel;
use crate::reservation::ReservationId;
use crate::sync::{AtomicU64, Ordering};

/// One SKU of an event: the SKU, the units the change moved, and the SKU's counts right
/// after the change (its `level.version` orders the events of one SKU).
///
/// # Examples
///
/// ```
/// use stockledger::{EventLine, StockLevel};
///
/// let line = EventLine { sku: "cable", quantity: 2, level: StockLevel { on_hand: 8, reserved: 0, version: 3 } };
/// assert_eq!(line.level.available(), 8);
/// ```
///
/// With the `serde` feature it (de)serializes as
/// `{"sku":"cable","quantity":2,"level":{"on_hand":8,"reserved":0,"version":3}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct EventLine<K> {
    /// The SKU that changed.
    pub sku: K,
    /// Units moved on this SKU by the change.
    pub quantity: u64,
    /// The SKU's counts and version right after the change.
    pub level: StockLevel,
}

/// A change to the ledger, as delivered to an [`EventSink`].
///
/// Every variant carries the version of each SKU it changed, **after** the change, so a
/// consumer can put the events of one SKU in order even though events of concurrent
/// operations may reach the sink in another order. Versions of a SKU may skip values: a
/// refused request changes nothing and sends nothing, but the optimistic store's
/// compensated partial holds and the monitor store's grants to waiters (reported in the
/// waiter's `Reserved`) bump versions too.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use stockledger::{ChannelSink, MonitorStore, StockEvent, StockStore};
///
/// let (sink, events) = ChannelSink::unbounded();
/// let store = MonitorStore::builder().event_sink(sink).build();
/// store.restock(&"lamp", 2)?;
/// store.sell(&[("lamp", 1)])?;
/// let versions: Vec<u64> = events.try_iter().flat_map(|event| {
///     event.lines().iter().map(|line| line.level.version).collect::<Vec<_>>()
/// }).collect();
/// assert_eq!(versions, [1, 2]);
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
///
/// With the `serde` feature it (de)serializes tagged by variant name, its fields under
/// `detail`: `{"event":"Restocked","detail":{"line":{"sku":"lamp","quantity":2,"level":…}}}`.
/// `Reserved`'s deadline is `ttl_ms`, the milliseconds left to live, as in
/// [`Reservation`](crate::Reservation). A hold's idempotency key, when it has one, is
/// `"key":"order-17"` in the four hold events; the field is left out without a key, and
/// JSON written before it existed reads as no key. A variant unknown to the reader is an
/// error.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "event", content = "detail"))]
pub enum StockEvent<K> {
    /// Units were added to on hand.
    Restocked {
        /// The restocked SKU.
        line: EventLine<K>,
    },
    /// A hold was opened (by `reserve`, `reserve_with` or `reserve_timeout`).
    Reserved {
        /// The new hold.
        id: ReservationId,
        /// Its lines, merged and sorted by SKU.
        lines: Vec<EventLine<K>>,
        /// Its deadline, if it has a TTL.
        #[cfg_attr(feature = "serde", serde(rename = "ttl_ms", default))]
        #[cfg_attr(feature = "serde", serde(with = "crate::serde_impls::deadline_ttl_ms"))]
        expires_at: Option<Instant>,
        /// The idempotency key the hold was made with, if any
        /// ([`ReserveOptions::idempotency_key`](crate::ReserveOptions::idempotency_key)): what
        /// a recovery from a journal needs to answer the key's retries again.
        #[cfg_attr(
            feature = "serde",
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        key: Option<Arc<str>>,
    },
    /// A hold became a sale.
    Committed {
        /// The committed hold.
        id: ReservationId,
        /// Its lines.
        lines: Vec<EventLine<K>>,
        /// The idempotency key the hold was made with, if any
        /// ([`ReserveOptions::idempotency_key`](crate::ReserveOptions::idempotency_key)): what
        /// a recovery from a journal needs to answer the key's retries again.
        #[cfg_attr(
            feature = "serde",
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        key: Option<Arc<str>>,
    },
    /// A hold was given back by `release` (or a dropped guard).
    Released {
        /// The released hold.
        id: ReservationId,
        /// Its lines.
        lines: Vec<EventLine<K>>,
        /// The idempotency key the hold was made with, if any
        /// ([`ReserveOptions::idempotency_key`](crate::ReserveOptions::idempotency_key)): what
        /// a recovery from a journal needs to answer the key's retries again.
        #[cfg_attr(
            feature = "serde",
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        key: Option<Arc<str>>,
    },
    /// A hold passed its deadline and was given back (by `expire_due`, a reaper, or a
    /// `commit`, `release` or `extend` that found it past its deadline).
    Expired {
        /// The expired hold.
        id: ReservationId,
        /// Its lines.
        lines: Vec<EventLine<K>>,
        /// The idempotency key the hold was made with, if any
        /// ([`ReserveOptions::idempotency_key`](crate::ReserveOptions::idempotency_key)): what
        /// a recovery from a journal needs to answer the key's retries again.
        #[cfg_attr(
            feature = "serde",
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        key: Option<Arc<str>>,
    },
    /// A direct sale without a hold.
    Sold {
        /// The sold lines.
        lines: Vec<EventLine<K>>,
    },
    /// A SKU's available units fell below its low-stock threshold (see
    /// [`set_low_stock_threshold`](crate::StockStore::set_low_stock_threshold)). Sent right
    /// after the event of the change that crossed it.
    LowStock {
        /// The SKU running low.
        sku: K,
        /// Its available units (`on_hand - reserved`) after the change.
        available: u64,
        /// The threshold it fell below.
        threshold: u64,
        /// The SKU's version after the change.
        version: u64,
    },
}

impl<K> StockEvent<K> {
    /// The SKU lines of the event; empty for [`LowStock`](Self::LowStock), which names its
    /// SKU and version in its own fields.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{EventLine, StockEvent, StockLevel};
    ///
    /// let line = EventLine { sku: 'a', quantity: 1, level: StockLevel::default() };
    /// let event = StockEvent::Restocked { line: line.clone() };
    /// assert_eq!(event.lines(), &[line]);
    /// ```
    pub fn lines(&self) -> &[EventLine<K>] {
        match self {
            StockEvent::Restocked { line } => std::slice::from_ref(line),
            StockEvent::Reserved { lines, .. }
            | StockEvent::Committed { lines, .. }
            | StockEvent::Released { lines, .. }
            | StockEvent::Expired { lines, .. }
            | StockEvent::Sold { lines } => lines,
            StockEvent::LowStock { .. } => &[],
        }
    }
}

/// Receives the [`StockEvent`]s of a store (set with the builder's
/// [`event_sink`](crate::StoreBuilder::event_sink)).
///
/// The store calls `on_event` on the thread that made the change, **after** the change and
/// after every internal lock is released, so a sink may call back into the store. The
/// events of one operation arrive together and in order (the change, then any `LowStock`);
/// events of concurrent operations may interleave: order them per SKU by the versions they
/// carry. A sink that blocks delays only the caller whose change it reports; a sink that
/// panics unwinds into that caller after the change is complete.
///
/// What a sink may do: anything. It runs with no internal lock held and with no hold
/// half resolved, so it may panic, block, log the store (`{store:?}`), or call back into the
/// store, including resolving other holds; an expiry sweep
/// ([`expire_due`](crate::StockStore::expire_due), a [`Reaper`](crate::Reaper)) expires
/// every hold of the sweep before the sink hears of any. A `LowStock` event follows every
/// visible crossing of the threshold (available from at or above it to below it): by a
/// sale, a hold, a grant to a waiter, or a partial multi-line hold that is then given back.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use stockledger::{EventSink, PessimisticStore, StockEvent, StockStore};
///
/// #[derive(Default)]
/// struct Log(Mutex<Vec<String>>);
///
/// impl EventSink<&'static str> for Log {
///     fn on_event(&self, event: &StockEvent<&'static str>) {
///         self.0.lock().unwrap().push(format!("{event:?}"));
///     }
/// }
///
/// let log = Arc::new(Log::default());
/// let store = PessimisticStore::builder().event_sink(log.clone()).build();
/// store.restock(&"desk", 1)?;
/// assert!(log.0.lock().unwrap()[0].starts_with("Restocked"));
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
pub trait EventSink<K>: Send + Sync {
    /// Handles one event.
    fn on_event(&self, event: &StockEvent<K>);
}

/// An [`EventSink`] that forwards clones of the events into a crossbeam channel, so another
/// thread can consume them.
///
/// Sending never blocks the store's caller: it uses `try_send`, and an event that finds a
/// bounded channel full, or its receiver gone, is dropped and counted in
/// [`dropped`](Self::dropped).
///
/// # Examples
///
/// ```
/// use stockledger::{ChannelSink, OptimisticStore, StockEvent, StockStore};
///
/// let (sink, events) = ChannelSink::bounded(1);
/// let store = OptimisticStore::builder().event_sink(sink.clone()).build();
/// store.restock(&"fan", 3)?;
/// store.restock(&"fan", 3)?; // the channel is full: dropped, not blocked
/// assert!(matches!(events.try_recv(), Ok(StockEvent::Restocked { .. })));
/// assert_eq!(sink.dropped(), 1);
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
pub struct ChannelSink<K> {
    /// Where the events go.
    sender: crossbeam_channel::Sender<StockEvent<K>>,
    /// Events dropped because the channel was full or disconnected.
    dropped: AtomicU64,
}

impl<K> ChannelSink<K> {
    /// A sink sending into `sender`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use stockledger::{ChannelSink, PessimisticStore, StockEvent, StockStore};
    ///
    /// let (sender, receiver) = crossbeam_channel::unbounded();
    /// let store = PessimisticStore::builder().event_sink(Arc::new(ChannelSink::new(sender))).build();
    /// store.restock(&"tv", 1)?;
    /// assert!(matches!(receiver.try_recv(), Ok(StockEvent::Restocked { .. })));
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn new(sender: crossbeam_channel::Sender<StockEvent<K>>) -> Self {
        Self {
            sender,
            dropped: AtomicU64::new(0),
        }
    }

    /// A sink on a new unbounded channel, and the channel's receiver. Nothing is dropped
    /// while the receiver lives; events pile up in memory if it is not drained.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{ChannelSink, OptimisticStore, StockStore};
    ///
    /// let (sink, events) = ChannelSink::unbounded();
    /// let store = OptimisticStore::builder().event_sink(sink).build();
    /// store.restock(&"tv", 3)?;
    /// store.sell(&[("tv", 1)])?;
    /// assert_eq!(events.try_iter().count(), 2); // Restocked, Sold
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn unbounded() -> (Arc<Self>, crossbeam_channel::Receiver<StockEvent<K>>) {
        let (sender, receiver) = crossbeam_channel::unbounded();
        (Arc::new(Self::new(sender)), receiver)
    }

    /// A sink on a new channel of `capacity` events, and the channel's receiver. Events
    /// that find it full are dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{ChannelSink, MonitorStore, StockStore};
    ///
    /// let (sink, events) = ChannelSink::bounded(1);
    /// let store = MonitorStore::builder().event_sink(sink.clone()).build();
    /// store.restock(&"tv", 1)?;
    /// store.restock(&"tv", 1)?; // the channel is full: dropped, never blocking
    /// assert_eq!((events.len(), sink.dropped()), (1, 1));
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn bounded(capacity: usize) -> (Arc<Self>, crossbeam_channel::Receiver<StockEvent<K>>) {
        let (sender, receiver) = crossbeam_channel::bounded(capacity);
        (Arc::new(Self::new(sender)), receiver)
    }

    /// Events dropped so far because the channel was full or its receiver gone.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{ChannelSink, PessimisticStore, StockStore};
    ///
    /// let (sink, events) = ChannelSink::unbounded();
    /// drop(events); // nobody listens any more
    /// let store = PessimisticStore::builder().event_sink(sink.clone()).build();
    /// store.restock(&"tv", 1)?;
    /// assert_eq!(sink.dropped(), 1);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl<K: Clone + Send> EventSink<K> for ChannelSink<K> {
    fn on_event(&self, event: &StockEvent<K>) {
        if self.sender.try_send(event.clone()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<K> fmt::Debug for ChannelSink<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSink")
            .field("queued", &self.sender.len())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// The event side of a store: its sink, if any. Without a sink nothing is collected or
/// allocated.
pub(crate) struct Events<K> {
    sink: Option<Arc<dyn EventSink<K>>>,
}

impl<K> Events<K> {
    pub(crate) fn new(sink: Option<Arc<dyn EventSink<K>>>) -> Self {
        Self { sink }
    }

    /// Whether anyone listens: the stores skip building events (and reading thresholds)
    /// when not.
    pub(crate) fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Delivers `events` in order. Call only with no internal lock held.
    pub(crate) fn deliver(&self, events: &[StockEvent<K>]) {
        if let Some(sink) = &self.sink {
            for event in events {
                sink.on_event(event);
            }
        }
    }
}

impl<K> fmt::Debug for Events<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("sink", &self.sink.is_some())
            .finish()
    }
}
