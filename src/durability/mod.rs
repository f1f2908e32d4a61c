//! Durability for the in-memory stores: a consistent [`Snapshot`](snapshot::Snapshot) of
//! a store and a store built back from one ([`capture`]); with the `journal` feature, a
//! journal of every event on disk (`journal`, its events in the binary encoding of
//! `codec`, the bookkeeping of their order in the shards of `order`, in the directory
//! layout of `files`) and the recovery of snapshot plus journal (`recovery`).
//!
//! This layer sits beside the strategies: it reaches a store through its lifecycle (the
//! registry's snapshot gate, holds and keys) and the small [`capture::SkuTable`] hook
//! each store implements.

pub(crate) mod capture;
#[cfg(all(feature = "journal", not(loom)))]
pub(crate) mod codec;
#[cfg(all(feature = "journal", not(loom)))]
pub(crate) mod error;
#[cfg(all(feature = "journal", not(loom)))]
pub(crate) mod files;
#[cfg(all(feature = "journal", not(loom)))]
pub(crate) mod journal;
#[cfg(all(feature = "journal", not(loom)))]
pub(crate) mod order;
#[cfg(all(feature = "journal", not(loom)))]
pub(crate) mod recovery;
pub(crate) mod snapshot;
