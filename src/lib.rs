//! A stock ledger that never oversells under concurrency.
//!
//! A store keeps, per SKU, the units **on hand**, the units **reserved** by open holds and a
//! **version** bumped by every change. An order [reserves](StockStore::reserve) an
//! all-or-nothing hold on one or more lines, then [commits](StockStore::commit) it (payment
//! succeeded), commits part of it and gives the rest back
//! ([`commit_partial`](StockStore::commit_partial)), or [releases](StockStore::release) it
//! (the compensation step); [`sell`](StockStore::sell) is a sale without a hold. Every store keeps the contract of
//! [`StockStore`]: all or nothing on every line, duplicate lines merged before they are
//! checked, SKUs taken in ascending order (ordered acquisition, so no deadlock), a hold
//! resolved exactly once however commits, releases and expiries race, and a typed
//! [`StockError`] for every refusal. The trait is object safe, so the strategy can be picked
//! at run time behind `Box<dyn StockStore<K>>`.
//!
//! # Stores
//!
//! - [`PessimisticStore`]: a mutex per SKU. The every-day default: it never retries and
//!   never refuses for contention.
//! - [`OptimisticStore`]: a versioned compare-and-swap word per SKU, lock free on the
//!   single-SKU path, with bounded retries.
//! - [`MonitorStore`]: a mutex per SKU with a FIFO queue of waiters: callers can wait for
//!   a restock ([`WaitingStore`]), blocking a thread or as a cancel-safe future
//!   ([`MonitorStore::reserve_wait`]).
//! - [`AdaptiveStore`]: per SKU, optimistic while the SKU is cold and locked while it is
//!   hot (MOCC, Wang & Kimura 2016).
#![cfg_attr(
    feature = "redis",
    doc = "- [`RedisStore`] (feature `redis`): the same traits on a shared Redis 7 server, for"
)]
#![cfg_attr(
    not(feature = "redis"),
    doc = "- `RedisStore` (feature `redis`): the same traits on a shared Redis 7 server, for"
)]
//!   several processes.
//!
//! Which store suits which load, with figures: the
//! [README](https://github.com/stockledger/stockledger/blob/main/README.md#which-store-to-pick)
//! and the [benchmark report](https://github.com/stockledger/stockledger/blob/main/BENCHMARKS.md).
//!
//! # Example
//!
//! ```
//! use stockledger::{PessimisticStore, StockError, StockStore};
//!
//! let store = PessimisticStore::new();
//! store.restock(&"SKU1004", 3)?;
//! store.restock(&"addon:Accessory", 10)?;
//!
//! // Checkout: hold a phone and two accessories, all or nothing (lines are merged).
//! let hold = store.reserve(&[("SKU1004", 1), ("addon:Accessory", 1), ("addon:Accessory", 1)])?;
//! assert_eq!(hold.lines(), &[("SKU1004", 1), ("addon:Accessory", 2)]);
//! store.commit(hold.id())?; // payment succeeded: the hold becomes a sale
//!
//! // Never oversold: a refusal is a typed error and changes nothing.
//! assert_eq!(
//!     store.sell(&[("SKU1004", 3)]),
//!     Err(StockError::InsufficientStock { sku: "SKU1004", requested: 3, available: 2 }),
//! );
//! # Ok::<(), StockError<&str>>(())
//! ```
//!
//! # The life of a hold
//!
//! - [`ReserveOptions`] with [`StockStore::reserve_with`]: a TTL, after which the hold
//!   expires and its stock goes back, and an idempotency key, so a retry gets the same hold.
//! - [`ReservationGuard`]: releases its hold when dropped unresolved.
//! - [`StockStore::extend`] gives a hold more time; [`StockStore::expire_due`] and a
//!   background [`Reaper`] give due holds back.
//! - [`EventSink`] (or [`ChannelSink`]): every change with each SKU's level and version,
//!   and [`StockEvent::LowStock`] alerts ([`StockStore::set_low_stock_threshold`]).
//! - [`StoreBuilder`] (`::builder()` on every store): the [`Clock`] ([`ManualClock`] in
//!   tests), the event sink, the idempotency settings and each strategy's settings;
//!   [`StockStore::stats`] returns [`StoreStats`].
//!
//! # Durability
//!
//! A store built with [`StoreBuilder::snapshots`] copies itself at one instant
//! ([`Snapshot`], `snapshot()` on each in-memory store), and
//! [`StoreBuilder::restore`] builds a store from a copy. With the `journal` feature,
//! `JournalSink` appends every change to a file: at `SyncPolicy::Always` the change is on
//! disk before the call returns (group commit, `fdatasync`); at `EverySec` it is buffered
//! and written and synced once a second. It compacts the file with snapshots and recovers
//! snapshot plus journal after a crash.
//!
//! # Features
//!
//! - `redis` (off by default): `RedisStore` and its builder, on redis-rs (needs Rust 1.88).
//! - `serde` (off by default): `Serialize` and `Deserialize` for the value types (ids,
//!   levels, holds, events, errors, statistics, options).
//! - `journal` (off by default, turns on `serde`): `JournalSink`, which writes every
//!   change to a file (at `SyncPolicy::Always`, acknowledged only once it is on disk), and
//!   its recovery.
//!
//! The minimum supported Rust version is 1.85. How the stores are tested (loom models,
//! property, linearizability and stress tests) is in
//! [TESTING.md](https://github.com/stockledger/stockledger/blob/main/TESTING.md).
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]
#![warn(clippy::missing_errors_doc, clippy::missing_panics_doc)]

// The core: the traits, the value types and the per-line helpers every store shares, beside
// the sync seam (the only door to primitives). They import nothing from the layers above.
mod error;
mod level;
mod lines;
mod options;
mod reservation;
#[cfg(feature = "serde")]
mod serde_impls;
mod stats;
mod store;
mod sync;
mod temperature;
mod wait;

// The hold lifecycle over the core: registry, expiry, idempotency, events, guard, reaper,
// clock, builder.
mod lifecycle;

// Snapshots, the journal and recovery of the in-memory stores.
mod durability;

// On top: the in-memory strategies and the Redis backend.
#[cfg(feature = "redis")]
mod redis;
mod strategy;

/// The channel crate of [`AsyncChannelSink`] (feature `async-channel`), re-exported.
#[cfg(feature = "async-channel")]
pub use async_channel;
/// The channel crate of [`ChannelSink`]'s receivers and senders, re-exported so that its
/// types (`crossbeam_channel::Receiver`) need no dependency of their own.
pub use crossbeam_channel;
#[cfg(all(feature = "journal", not(loom)))]
pub use durability::error::JournalError;
#[cfg(all(feature = "journal", not(loom)))]
pub use durability::journal::{
    JournalPosition, JournalSink, SyncPolicy, ORDER_WAIT_MAX, ORPHAN_CLOSES_MAX,
};
#[cfg(all(feature = "journal", not(loom)))]
pub use durability::recovery::Recovery;
pub use durability::snapshot::{
    HoldSnapshot, KeySnapshot, SkuSnapshot, Snapshot, SnapshotError, SNAPSHOT_FORMAT_VERSION,
};
pub use error::StockError;
pub use level::StockLevel;
#[cfg(feature = "async-channel")]
pub use lifecycle::async_channel_sink::AsyncChannelSink;
pub use lifecycle::builder::StoreBuilder;
pub use lifecycle::clock::{Clock, ManualClock, SystemClock};
pub use lifecycle::event::{ChannelSink, EventLine, EventSink, StockEvent};
pub use lifecycle::guard::{OwnedReservationGuard, ReservationGuard};
pub use lifecycle::idempotency::{
    IDEMPOTENCY_KEYS_MAX, IDEMPOTENCY_KEY_BYTES_MAX, IDEMPOTENCY_RETENTION,
};
pub use lifecycle::reaper::Reaper;
pub use options::ReserveOptions;
#[cfg(feature = "redis")]
pub use redis::{
    RedisCluster, RedisSku, RedisStore, RedisStoreBuilder, COMMAND_TIMEOUT, EVENTS_MAX,
    FAILOVER_TIMEOUT, POOL_SIZE, SKU_KEY_BYTES_MAX,
};
pub use reservation::{HoldOutcome, Reservation, ReservationId};
pub use stats::StoreStats;
pub use store::{Sku, StockStore, WaitFuture, WaitingStore};
pub use strategy::adaptive::AdaptiveStore;
pub use strategy::monitor::{MonitorStore, ReserveWait};
pub use strategy::optimistic::OptimisticStore;
pub use strategy::pessimistic::PessimisticStore;
pub use wait::QueueLevel;

// The README's examples run as doctests too (the crate page above is not the README).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
