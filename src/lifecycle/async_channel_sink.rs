//! An event sink into an `async-channel` channel, for consumers that `.await` events
//! (feature `async-channel`).

use std::fmt;
use std::sync::Arc;

use super::event::{EventSink, StockEvent};
use crate::sync::{AtomicU64, Ordering};

/// An [`EventSink`] that forwards clones of the events into an
/// [`async_channel`](https://docs.rs/async-channel) channel, whose receiver async code
/// awaits on any executor (`events.recv().await`), beside the crossbeam-based
/// [`ChannelSink`](crate::ChannelSink) for threads. Feature `async-channel`; the crate is
/// re-exported as [`stockledger::async_channel`](crate::async_channel).
///
/// Sending never blocks (nor awaits) the store's caller: it uses `try_send`, and an event
/// that finds a bounded channel full, or every receiver gone, is dropped and counted in
/// [`dropped`](Self::dropped).
///
/// # Examples
///
/// ```
/// use stockledger::{AsyncChannelSink, MonitorStore, StockEvent, StockStore};
///
/// let (sink, events) = AsyncChannelSink::unbounded();
/// let store = MonitorStore::builder().event_sink(sink).build();
/// store.restock(&"lamp", 2)?;
/// // In a task: `while let Ok(event) = events.recv().await { .. }`.
/// let event = futures_executor::block_on(events.recv()).unwrap();
/// assert!(matches!(event, StockEvent::Restocked { .. }));
/// # Ok::<(), stockledger::StockError<&str>>(())
/// ```
pub struct AsyncChannelSink<K> {
    /// Where the events go.
    sender: async_channel::Sender<StockEvent<K>>,
    /// Events dropped because the channel was full or closed.
    dropped: AtomicU64,
}

impl<K> AsyncChannelSink<K> {
    /// A sink sending into `sender`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use stockledger::{async_channel, AsyncChannelSink, PessimisticStore, StockStore};
    ///
    /// let (sender, receiver) = async_channel::unbounded();
    /// let sink = Arc::new(AsyncChannelSink::new(sender));
    /// let store = PessimisticStore::builder().event_sink(sink).build();
    /// store.restock(&"tv", 1)?;
    /// assert_eq!(receiver.len(), 1);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn new(sender: async_channel::Sender<StockEvent<K>>) -> Self {
        Self {
            sender,
            dropped: AtomicU64::new(0),
        }
    }

    /// A sink on a new unbounded channel, and the channel's receiver. Nothing is dropped
    /// while a receiver lives; events pile up in memory if none drains them.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{AsyncChannelSink, OptimisticStore, StockStore};
    ///
    /// let (sink, events) = AsyncChannelSink::unbounded();
    /// let store = OptimisticStore::builder().event_sink(sink).build();
    /// store.restock(&"tv", 3)?;
    /// store.sell(&[("tv", 1)])?;
    /// assert_eq!(events.len(), 2); // Restocked, Sold
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn unbounded() -> (Arc<Self>, async_channel::Receiver<StockEvent<K>>) {
        let (sender, receiver) = async_channel::unbounded();
        (Arc::new(Self::new(sender)), receiver)
    }

    /// A sink on a new channel of `capacity` events, and the channel's receiver. Events
    /// that find it full are dropped.
    ///
    /// # Panics
    ///
    /// When `capacity` is 0 (`async_channel::bounded` refuses it).
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{AsyncChannelSink, MonitorStore, StockStore};
    ///
    /// let (sink, events) = AsyncChannelSink::bounded(1);
    /// let store = MonitorStore::builder().event_sink(sink.clone()).build();
    /// store.restock(&"tv", 1)?;
    /// store.restock(&"tv", 1)?; // the channel is full: dropped, never blocking
    /// assert_eq!((events.len(), sink.dropped()), (1, 1));
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn bounded(capacity: usize) -> (Arc<Self>, async_channel::Receiver<StockEvent<K>>) {
        let (sender, receiver) = async_channel::bounded(capacity);
        (Arc::new(Self::new(sender)), receiver)
    }

    /// Events dropped so far because the channel was full or closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{AsyncChannelSink, PessimisticStore, StockStore};
    ///
    /// let (sink, events) = AsyncChannelSink::unbounded();
    /// drop(events); // nobody listens any more: the channel is closed
    /// let store = PessimisticStore::builder().event_sink(sink.clone()).build();
    /// store.restock(&"tv", 1)?;
    /// assert_eq!(sink.dropped(), 1);
    /// # Ok::<(), stockledger::StockError<&str>>(())
    /// ```
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl<K: Clone + Send> EventSink<K> for AsyncChannelSink<K> {
    fn on_event(&self, event: &StockEvent<K>) {
        if self.sender.try_send(event.clone()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<K> fmt::Debug for AsyncChannelSink<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncChannelSink")
            .field("queued", &self.sender.len())
            .field("dropped", &self.dropped())
            .finish()
    }
}
