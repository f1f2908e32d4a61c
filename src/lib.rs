#![doc = include_str!("../README.md")]
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

// On top: the in-memory strategies and the Redis backend.
#[cfg(feature = "redis")]
mod redis;
mod strategy;

pub use error::StockError;
pub use level::StockLevel;
pub use lifecycle::builder::StoreBuilder;
pub use lifecycle::clock::{Clock, ManualClock, SystemClock};
pub use lifecycle::event::{ChannelSink, EventLine, EventSink, StockEvent};
pub use lifecycle::guard::ReservationGuard;
pub use lifecycle::idempotency::{
    IDEMPOTENCY_KEYS_MAX, IDEMPOTENCY_KEY_BYTES_MAX, IDEMPOTENCY_RETENTION,
};
pub use lifecycle::reaper::Reaper;
pub use options::ReserveOptions;
#[cfg(feature = "redis")]
pub use redis::{
    RedisSku, RedisStore, RedisStoreBuilder, COMMAND_TIMEOUT, EVENTS_MAX, POOL_SIZE,
    SKU_KEY_BYTES_MAX,
};
pub use reservation::{Reservation, ReservationId};
pub use stats::StoreStats;
pub use store::{Sku, StockStore, WaitFuture, WaitingStore};
pub use strategy::adaptive::AdaptiveStore;
pub use strategy::monitor::{MonitorStore, ReserveWait};
pub use strategy::optimistic::OptimisticStore;
pub use strategy::pessimistic::PessimisticStore;
