//! The concurrency-control strategies behind [`StockStore`](crate::StockStore), each on the
//! hold lifecycle of `lifecycle/`: a mutex per SKU ([`pessimistic`]), a versioned
//! compare-and-swap word per SKU ([`optimistic`], on [`word`], [`word_lines`] and
//! [`word_holds`]), a
//! monitor per SKU with a FIFO queue of waiters ([`monitor`]), and per-SKU adaptive
//! control between the two ([`adaptive`]).

pub(crate) mod adaptive;
pub(crate) mod monitor;
pub(crate) mod optimistic;
pub(crate) mod pessimistic;
pub(crate) mod word;
pub(crate) mod word_holds;
pub(crate) mod word_lines;
