#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]
#![warn(clippy::missing_errors_doc, clippy::missing_panics_doc)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod error;
mod level;
mod lines;
mod monitor;
mod optimistic;
mod pessimistic;
mod reservation;
mod store;
mod sync;

pub use error::StockError;
pub use level::StockLevel;
pub use monitor::MonitorStore;
pub use optimistic::OptimisticStore;
pub use pessimistic::PessimisticStore;
pub use reservation::{Reservation, ReservationId};
pub use store::{Sku, StockStore, WaitingStore};
