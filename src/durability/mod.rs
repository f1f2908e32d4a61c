//! Durability for the in-memory stores: a consistent [`Snapshot`](snapshot::Snapshot) of
//! a store and a store built back from one ([`capture`]).
//!
//! This layer sits beside the strategies: it reaches a store through its lifecycle (the
//! registry's snapshot gate, holds and keys) and the small [`capture::SkuTable`] hook
//! each store implements.

pub(crate) mod capture;
pub(crate) mod snapshot;
