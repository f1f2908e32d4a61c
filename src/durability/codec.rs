//! The binary encoding of the events in a journal record (journal format 2): about 20
//! bytes a one-line event where JSON took about 120, encoded in tens of nanoseconds.
//!
//! An event is a tag byte, then its fields in order; integers are unsigned LEB128
//! varints (1 byte below 128, at most 10), a SKU is the varint length of its JSON then
//! that JSON (`serde_json`, so any `K: Serialize + DeserializeOwned` works; a `u64` SKU
//! below 1,000 takes 4 bytes):
//!
//! | tag | event | fields after the tag |
//! |---|---|---|
//! | 1 | `Restocked` | line |
//! | 2 | `Reserved` | id, key, deadline, lines |
//! | 3 | `Committed` | id, key, lines |
//! | 4 | `Released` | id, key, lines |
//! | 5 | `Expired` | id, key, lines |
//! | 6 | `Sold` | lines |
//!
//! - id: the hold's id, varint;
//! - key: 0 for none, else its length in bytes plus 1, then the key (UTF-8);
//! - deadline: 0 for no TTL, else the deadline in milliseconds since the Unix epoch (wall
//!   clock at the encoding plus the TTL left then, rounded up), plus 1;
//! - lines: their count, then each line;
//! - line: SKU, quantity, on hand, reserved, version.
//!
//! `LowStock` is not journaled and has no tag.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::files;
use crate::level::StockLevel;
use crate::lifecycle::event::{EventLine, StockEvent};
use crate::reservation::ReservationId;

const RESTOCKED: u8 = 1;
const RESERVED: u8 = 2;
const COMMITTED: u8 = 3;
const RELEASED: u8 = 4;
const EXPIRED: u8 = 5;
const SOLD: u8 = 6;

/// Appends the encoding of `event` to `out`.
///
/// # Errors
///
/// Why not: a SKU whose `Serialize` fails in JSON, or a `LowStock` (never journaled).
pub(crate) fn encode<K: Serialize>(event: &StockEvent<K>, out: &mut Vec<u8>) -> Result<(), String> {
    match event {
        StockEvent::Restocked { line } => {
            out.push(RESTOCKED);
            return put_line(out, line);
        }
        StockEvent::Reserved {
            id,
            expires_at,
            key,
            ..
        } => {
            out.push(RESERVED);
            put_hold(out, *id, key.as_deref());
            let deadline = expires_at.map_or(0, |deadline| {
                let ttl = deadline.saturating_duration_since(Instant::now());
                files::unix_ms()
                    .saturating_add(millis_ceil(ttl))
                    .saturating_add(1)
            });
            put_varint(out, deadline);
        }
        StockEvent::Committed { id, key, .. } => {
            out.push(COMMITTED);
            put_hold(out, *id, key.as_deref());
        }
        StockEvent::Released { id, key, .. } => {
            out.push(RELEASED);
            put_hold(out, *id, key.as_deref());
        }
        StockEvent::Expired { id, key, .. } => {
            out.push(EXPIRED);
            put_hold(out, *id, key.as_deref());
        }
        StockEvent::Sold { .. } => out.push(SOLD),
        StockEvent::LowStock { .. } => return Err("a LowStock event is not journaled".into()),
    }
    let lines = event.lines();
    put_varint(out, lines.len() as u64);
    for line in lines {
        put_line(out, line)?;
    }
    Ok(())
}

/// Reads one event from the front of `bytes` and moves `bytes` past it. `record_unix_ms`
/// is the wall-clock time of its record: a hold's deadline comes back as an `Instant`
/// that far after now as the deadline was after the record, which recovery then counts
/// down by the time since the record.
///
/// # Errors
///
/// Why the bytes are not an event: an unknown tag, a truncated field, a SKU whose JSON
/// does not parse as `K`, a key that is not UTF-8.
pub(crate) fn decode<K: DeserializeOwned>(
    bytes: &mut &[u8],
    record_unix_ms: u64,
) -> Result<StockEvent<K>, String> {
    let mut reader = Reader { bytes };
    let event = match reader.byte()? {
        RESTOCKED => StockEvent::Restocked {
            line: reader.line()?,
        },
        RESERVED => {
            let (id, key) = reader.hold()?;
            let expires_at = match reader.varint()? {
                0 => None,
                deadline => {
                    let ttl_ms = (deadline - 1).saturating_sub(record_unix_ms);
                    Instant::now().checked_add(Duration::from_millis(ttl_ms))
                }
            };
            StockEvent::Reserved {
                id,
                lines: reader.lines()?,
                expires_at,
                key,
            }
        }
        tag @ (COMMITTED | RELEASED | EXPIRED) => {
            let (id, key) = reader.hold()?;
            let lines = reader.lines()?;
            match tag {
                COMMITTED => StockEvent::Committed { id, lines, key },
                RELEASED => StockEvent::Released { id, lines, key },
                _ => StockEvent::Expired { id, lines, key },
            }
        }
        SOLD => StockEvent::Sold {
            lines: reader.lines()?,
        },
        tag => return Err(format!("unknown event tag {tag}")),
    };
    Ok(event)
}

/// Whole milliseconds of `duration`, rounded up.
fn millis_ceil(duration: Duration) -> u64 {
    let millis = duration.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).unwrap_or(u64::MAX)
}

#[inline]
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    // Byte by byte: `extend_from_slice` of a few bytes calls `memmove`, which cost more
    // than the whole encoding of an event.
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_hold(out: &mut Vec<u8>, id: ReservationId, key: Option<&str>) {
    put_varint(out, id.get());
    match key {
        None => out.push(0),
        Some(key) => {
            put_varint(out, key.len() as u64 + 1);
            out.extend_from_slice(key.as_bytes());
        }
    }
}

fn put_line<K: Serialize>(out: &mut Vec<u8>, line: &EventLine<K>) -> Result<(), String> {
    put_sku(out, &line.sku)?;
    put_varint(out, line.quantity);
    put_varint(out, line.level.on_hand);
    put_varint(out, line.level.reserved);
    put_varint(out, line.level.version);
    Ok(())
}

/// The SKU's JSON after its varint length (written after the JSON, then moved in front
/// of it when it takes more than the 1 byte left for it).
fn put_sku<K: Serialize>(out: &mut Vec<u8>, sku: &K) -> Result<(), String> {
    let at = out.len();
    out.push(0);
    serde_json::to_writer(&mut *out, sku)
        .map_err(|error| format!("a SKU does not encode as JSON: {error}"))?;
    let length = out.len() - at - 1;
    if length < 0x80 {
        out[at] = length as u8;
    } else {
        let mut prefix = Vec::new();
        put_varint(&mut prefix, length as u64);
        out.splice(at..=at, prefix);
    }
    Ok(())
}

/// Reads fields off the front of a byte slice.
struct Reader<'a, 'b> {
    bytes: &'b mut &'a [u8],
}

impl<'a> Reader<'a, '_> {
    fn byte(&mut self) -> Result<u8, String> {
        let (&first, rest) = self.bytes.split_first().ok_or("truncated event")?;
        *self.bytes = rest;
        Ok(first)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7F);
            if shift == 63 && bits > 1 {
                return Err("varint overflows 64 bits".into());
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, length: u64) -> Result<&'a [u8], String> {
        let length = usize::try_from(length).map_err(|_| "length past usize")?;
        if length > self.bytes.len() {
            return Err("truncated event".into());
        }
        let (taken, rest) = self.bytes.split_at(length);
        *self.bytes = rest;
        Ok(taken)
    }

    fn hold(&mut self) -> Result<(ReservationId, Option<Arc<str>>), String> {
        let id = ReservationId::from_u64(self.varint()?);
        let key = match self.varint()? {
            0 => None,
            length => {
                let key = std::str::from_utf8(self.take(length - 1)?)
                    .map_err(|error| format!("a key is not UTF-8: {error}"))?;
                Some(Arc::from(key))
            }
        };
        Ok((id, key))
    }

    fn line<K: DeserializeOwned>(&mut self) -> Result<EventLine<K>, String> {
        let length = self.varint()?;
        let sku = serde_json::from_slice(self.take(length)?)
            .map_err(|error| format!("a SKU does not parse: {error}"))?;
        Ok(EventLine {
            sku,
            quantity: self.varint()?,
            level: StockLevel {
                on_hand: self.varint()?,
                reserved: self.varint()?,
                version: self.varint()?,
            },
        })
    }

    fn lines<K: DeserializeOwned>(&mut self) -> Result<Vec<EventLine<K>>, String> {
        let count = self.varint()?;
        // A line takes at least 6 bytes: a count past what is left is damage, never an
        // allocation.
        if count > self.bytes.len() as u64 / 6 {
            return Err("more lines than bytes left".into());
        }
        (0..count).map(|_| self.line()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: u64, version: u64) -> EventLine<String> {
        EventLine {
            sku: sku.to_string(),
            quantity,
            level: StockLevel {
                on_hand: u64::MAX - version,
                reserved: quantity,
                version,
            },
        }
    }

    fn round_trip(event: &StockEvent<String>) -> StockEvent<String> {
        let mut out = Vec::new();
        encode(event, &mut out).unwrap();
        out.extend_from_slice(&[0xAB]); // the next event's first byte stays unread
        let mut bytes = out.as_slice();
        let decoded = decode(&mut bytes, files::unix_ms()).unwrap();
        assert_eq!(bytes, [0xAB]);
        decoded
    }

    #[test]
    fn every_journaled_event_round_trips() {
        let long = "x".repeat(300); // a SKU whose length takes two varint bytes
        let lines = vec![line("a", 1, 1), line(&long, 2, 1 << 40)];
        let key = Some(Arc::from("order-17"));
        let id = ReservationId::from_u64(u64::MAX);
        let events = [
            StockEvent::Restocked {
                line: line("a", 5, 0),
            },
            StockEvent::Reserved {
                id,
                lines: lines.clone(),
                expires_at: None,
                key: key.clone(),
            },
            StockEvent::Committed {
                id,
                lines: lines.clone(),
                key: None,
            },
            StockEvent::Released {
                id,
                lines: lines.clone(),
                key: key.clone(),
            },
            StockEvent::Expired {
                id,
                lines: lines.clone(),
                key,
            },
            StockEvent::Sold { lines },
        ];
        for event in &events {
            assert_eq!(&round_trip(event), event);
        }
    }

    #[test]
    fn a_deadline_comes_back_with_the_ttl_left_at_the_record() {
        let ttl = Duration::from_secs(600);
        let event = StockEvent::Reserved {
            id: ReservationId::from_u64(1),
            lines: vec![line("a", 1, 1)],
            expires_at: Some(Instant::now() + ttl),
            key: None,
        };
        let StockEvent::Reserved {
            expires_at: Some(deadline),
            ..
        } = round_trip(&event)
        else {
            panic!("a deadline was lost");
        };
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(left <= ttl + Duration::from_millis(1), "{left:?}");
        assert!(left + Duration::from_secs(5) >= ttl, "{left:?}");
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        let event = StockEvent::Sold {
            lines: vec![line("a", 1, 1)],
        };
        encode(&event, &mut out).unwrap();
        for cut in 0..out.len() {
            let mut bytes = &out[..cut];
            assert!(decode::<String>(&mut bytes, 0).is_err(), "cut at {cut}");
        }
        let mut unknown: &[u8] = &[9, 1];
        assert!(decode::<String>(&mut unknown, 0).is_err());
        let mut too_many_lines: &[u8] = &[SOLD, 0xFF, 0xFF, 0xFF, 0x0F, 1, 2];
        assert!(decode::<String>(&mut too_many_lines, 0).is_err());
    }
}
