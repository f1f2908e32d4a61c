//! The life of a hold, written once for every in-memory store: the registry that opens and
//! resolves holds ([`registry`]), their deadlines ([`expiry`], [`clock`], [`reaper`]), their
//! idempotency keys ([`idempotency`]), the events they report ([`event`]), the RAII guard
//! ([`guard`]), the builder every store shares ([`builder`]), the holds that live in their
//! SKU's slot instead of the registry ([`slot_holds`]; the compare-and-swap stores' side
//! of them is `strategy::word_holds`), and the [`Backend`] a store
//! implements to get all of it ([`backend`]).
//!
//! This layer sits above the core (the traits, levels, lines, errors and ids at the crate
//! root) and below the strategies (`strategy/`) and the Redis backend (`redis/`); it
//! imports only from the core and the sync seam.

#[cfg(feature = "async-channel")]
pub(crate) mod async_channel_sink;
pub(crate) mod backend;
pub(crate) mod builder;
pub(crate) mod clock;
pub(crate) mod event;
pub(crate) mod expiry;
pub(crate) mod guard;
pub(crate) mod idempotency;
pub(crate) mod reaper;
pub(crate) mod registry;
pub(crate) mod slot_holds;

pub(crate) use backend::{
    commit_partial, expire_due, extend, lifecycle_methods, open_holds, report_opened, reservation,
    reserve, reserve_with, resolve, sell_locked, Backend, Lifecycle,
};
