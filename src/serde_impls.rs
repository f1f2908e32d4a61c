//! Field (de)serializers of the `serde` feature.
//!
//! The public value types derive `Serialize` and `Deserialize` in their own files (with
//! `cfg_attr`, so the default build is unchanged); this file holds what a derive cannot
//! write: a deadline as the time left to live in milliseconds, a TTL in milliseconds, and
//! the checked lines of a reservation.

use crate::reservation::HoldLines;
use std::time::{Duration, Instant};

use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `duration` in whole milliseconds, rounded up (so only a zero duration is 0), saturating
/// at `u64::MAX`.
fn millis_ceil(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// A deadline (`Option<Instant>`) as the time it has left to live, `ttl_ms`.
///
/// An `Instant` means nothing outside the process, so the deadline goes out as the
/// milliseconds from [`Instant::now`] (the system clock) to it at serialization, rounded up
/// (0: the deadline has passed; `null`: no deadline), and comes back as `Instant::now()`
/// plus that many milliseconds at deserialization (no deadline if that instant is too far
/// to represent, as for [`ReserveOptions::ttl`](crate::ReserveOptions::ttl)).
pub(crate) mod deadline_ttl_ms {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        deadline: &Option<Instant>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let now = Instant::now();
        deadline
            .map(|deadline| millis_ceil(deadline.saturating_duration_since(now)))
            .serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Instant>, D::Error> {
        let ttl_ms = Option::<u64>::deserialize(deserializer)?;
        Ok(ttl_ms.and_then(|ttl_ms| Instant::now().checked_add(Duration::from_millis(ttl_ms))))
    }
}

/// A TTL (`Option<Duration>`) in whole milliseconds, rounded up so a TTL never gets
/// shorter (and a nonzero TTL never becomes 0); `null` for no TTL.
pub(crate) mod ttl_ms {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        ttl: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        ttl.map(millis_ceil).serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(deserializer)?.map(Duration::from_millis))
    }
}

impl<K: Serialize> Serialize for HoldLines<K> {
    /// A sequence of `[sku, units]` pairs, one line or several alike.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// The lines of a [`Reservation`](crate::Reservation), read back with the invariant that
/// [`Reservation::lines`](crate::Reservation::lines) promises: at least one line, every
/// quantity at least 1, merged and sorted by SKU (each SKU once, in ascending order), else
/// a deserialization error. Lines written out of order or with a SKU twice are refused, not
/// repaired: they did not come from a store.
pub(crate) fn hold_lines<'de, D, K>(deserializer: D) -> Result<HoldLines<K>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
{
    let lines = Vec::<(K, u64)>::deserialize(deserializer)?;
    if lines.is_empty() {
        return Err(D::Error::invalid_length(0, &"at least one line"));
    }
    if lines.iter().any(|(_, quantity)| *quantity == 0) {
        return Err(D::Error::invalid_value(
            Unexpected::Unsigned(0),
            &"a quantity of at least 1",
        ));
    }
    if !lines.windows(2).all(|pair| pair[0].0 < pair[1].0) {
        return Err(D::Error::custom(
            "lines merged and sorted by SKU (each SKU once, in ascending order)",
        ));
    }
    Ok(lines.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StockError, StockEvent};

    /// Does not compile once a variant is added (inside the crate, `#[non_exhaustive]`
    /// does not apply): give the new variant a value in `every_error` or a change in
    /// `events_of_every_kind` of `tests/serde.rs`, and its tag in that file's list.
    #[allow(dead_code)]
    fn every_variant_is_in_tests_serde(error: StockError<()>, event: StockEvent<()>) {
        match error {
            StockError::UnknownSku(_)
            | StockError::InsufficientStock { .. }
            | StockError::InvalidQuantity { .. }
            | StockError::EmptyRequest
            | StockError::Overflow { .. }
            | StockError::UnknownReservation(_)
            | StockError::Timeout
            | StockError::Conflict { .. }
            | StockError::Expired(_)
            | StockError::IdempotencyConflict { .. }
            | StockError::InvalidIdempotencyKey { .. }
            | StockError::Unavailable { .. }
            | StockError::InvalidSku(_)
            | StockError::HoldEnded { .. }
            | StockError::WaitTooLarge { .. }
            | StockError::NotInHold { .. }
            | StockError::AboveHold { .. } => {}
        }
        match event {
            StockEvent::Restocked { .. }
            | StockEvent::Reserved { .. }
            | StockEvent::Committed { .. }
            | StockEvent::Released { .. }
            | StockEvent::Expired { .. }
            | StockEvent::Sold { .. }
            | StockEvent::LowStock { .. } => {}
        }
    }

    #[test]
    fn millis_round_up_and_saturate() {
        assert_eq!(millis_ceil(Duration::ZERO), 0);
        assert_eq!(millis_ceil(Duration::from_nanos(1)), 1);
        assert_eq!(millis_ceil(Duration::from_millis(7)), 7);
        assert_eq!(millis_ceil(Duration::from_micros(7_001)), 8);
        assert_eq!(millis_ceil(Duration::MAX), u64::MAX);
    }
}
