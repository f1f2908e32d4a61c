#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]
#![warn(clippy::missing_errors_doc, clippy::missing_panics_doc)]

mod adaptive;
mod builder;
mod clock;
mod error;
mod event;
mod expiry;
mod guard;
mod idempotency;
mod level;
mod lifecycle;
mod lines;
mod monitor;
mod optimistic;
mod options;
mod pessimistic;
mod reaper;
#[cfg(feature = "redis")]
mod redis;
mod reservation;
#[cfg(feature = "serde")]
mod serde_impls;
mod stats;
mod store;
mod sync;
mod wait;
mod word;
mod word_lines;

pub use adaptive::AdaptiveStore;
pub use builder::StoreBuilder;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::StockError;
pub use event::{ChannelSink, EventLine, EventSink, StockEvent};
pub use guard::ReservationGuard;
pub use idempotency::{IDEMPOTENCY_KEYS_MAX, IDEMPOTENCY_KEY_BYTES_MAX, IDEMPOTENCY_RETENTION};
pub use level::StockLevel;
pub use monitor::{MonitorStore, ReserveWait};
pub use optimistic::OptimisticStore;
pub use options::ReserveOptions;
pub use pessimistic::PessimisticStore;
pub use reaper::Reaper;
#[cfg(feature = "redis")]
pub use redis::{
    RedisSku, RedisStore, RedisStoreBuilder, COMMAND_TIMEOUT, EVENTS_MAX, POOL_SIZE,
    SKU_KEY_BYTES_MAX,
};
pub use reservation::{Reservation, ReservationId};
pub use stats::StoreStats;
pub use store::{Sku, StockStore, WaitFuture, WaitingStore};
