//! The `serde` feature (issue 16): every public value type round-trips through JSON, and
//! the JSON shapes are the ones the docs show (snapshots), so a rename is a visible change.
#![cfg(feature = "serde")]

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use stockledger::{
    ChannelSink, EventLine, ManualClock, MonitorStore, Reservation, ReservationId, ReserveOptions,
    StockError, StockEvent, StockLevel, StockStore, StoreStats,
};

/// `value` through JSON and back; asserts it came back equal and returns its JSON.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) -> Value {
    let json = serde_json::to_value(value).expect("serializes");
    let back: T = serde_json::from_value(json.clone()).expect("deserializes");
    assert_eq!(&back, value, "round trip through {json}");
    json
}

/// `value` as a JSON string.
fn text<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serializes")
}

/// `json` parsed as a `T` and written again: the shape a reader accepts is the shape a
/// writer produces.
fn reparse<T: Serialize + DeserializeOwned>(json: &str) -> String {
    let value: T = serde_json::from_str(json).expect("deserializes");
    serde_json::to_string(&value).expect("serializes")
}

/// `duration` in milliseconds, rounded up, as the docs of `ttl_ms` say.
fn millis_ceil(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap()
}

fn level(on_hand: u64, reserved: u64, version: u64) -> StockLevel {
    StockLevel {
        on_hand,
        reserved,
        version,
    }
}

fn line(sku: &str, quantity: u64, level: StockLevel) -> EventLine<String> {
    EventLine {
        sku: sku.to_owned(),
        quantity,
        level,
    }
}

/// One value of every `StockError` variant.
fn every_error() -> Vec<StockError<String>> {
    let id = ReservationId::from_u64(7);
    let sku = || "SKU1004".to_owned();
    vec![
        StockError::UnknownSku(sku()),
        StockError::InsufficientStock {
            sku: sku(),
            requested: 3,
            available: 2,
        },
        StockError::InvalidQuantity { sku: sku() },
        StockError::EmptyRequest,
        StockError::Overflow { sku: sku() },
        StockError::UnknownReservation(id),
        StockError::Timeout,
        StockError::Conflict {
            sku: sku(),
            attempts: 64,
        },
        StockError::Expired(id),
        StockError::IdempotencyConflict {
            key: "order-42".to_owned(),
            id,
        },
        StockError::InvalidIdempotencyKey { length_bytes: 256 },
        StockError::Unavailable {
            reason: "connection refused".to_owned(),
        },
        StockError::InvalidSku(sku()),
        StockError::HoldEnded {
            key: "order-42".to_owned(),
            id,
            outcome: stockledger::HoldOutcome::Expired,
        },
        StockError::WaitTooLarge {
            sku: sku(),
            requested: 1_000,
            limit: 103,
        },
        StockError::NotInHold { id, sku: sku() },
        StockError::AboveHold {
            id,
            sku: sku(),
            held: 2,
            requested: 3,
        },
    ]
}

const ERROR_VARIANTS: [&str; 17] = [
    "UnknownSku",
    "InsufficientStock",
    "InvalidQuantity",
    "EmptyRequest",
    "Overflow",
    "UnknownReservation",
    "Timeout",
    "Conflict",
    "Expired",
    "IdempotencyConflict",
    "InvalidIdempotencyKey",
    "Unavailable",
    "InvalidSku",
    "HoldEnded",
    "WaitTooLarge",
    "NotInHold",
    "AboveHold",
];

const EVENT_VARIANTS: [&str; 7] = [
    "Restocked",
    "Reserved",
    "Committed",
    "Released",
    "Expired",
    "Sold",
    "LowStock",
];

/// The events of a real store that makes every kind of change, with a TTL on one hold.
fn events_of_every_kind() -> Vec<StockEvent<String>> {
    let clock = Arc::new(ManualClock::new());
    let (sink, events) = ChannelSink::unbounded();
    let store = MonitorStore::builder()
        .clock(clock.clone())
        .event_sink(sink)
        .build();
    let (tv, cable) = ("tv".to_owned(), "cable".to_owned());
    store.restock(&tv, 5).unwrap();
    store.restock(&cable, 10).unwrap();
    store.set_low_stock_threshold(&tv, 3).unwrap();
    let committed = store
        .reserve(&[(tv.clone(), 1), (cable.clone(), 2)])
        .unwrap();
    store.commit(committed.id()).unwrap();
    let released = store.reserve(&[(cable.clone(), 1)]).unwrap();
    store.release(released.id()).unwrap();
    let with_ttl = ReserveOptions::new().ttl(Duration::from_secs(60));
    store
        .reserve_with(&[(cable.clone(), 3)], &with_ttl)
        .unwrap();
    clock.advance(Duration::from_secs(61));
    assert_eq!(store.expire_due().len(), 1);
    store.sell(&[(tv.clone(), 2)]).unwrap(); // 4 -> 2 available: below 3
    events.try_iter().collect()
}

#[test]
fn reservation_id_is_its_number() {
    let id = ReservationId::from_u64(42);
    assert_eq!(round_trip(&id), json!(42));
    let max = ReservationId::from_u64(u64::MAX);
    assert_eq!(round_trip(&max), json!(u64::MAX));
    assert!(serde_json::from_str::<ReservationId>("-1").is_err());
}

#[test]
fn stock_level_round_trips() {
    round_trip(&StockLevel::default());
    round_trip(&level(u64::MAX, u64::MAX - 1, 9));
}

#[test]
fn store_stats_round_trip_and_missing_counters_read_as_zero() {
    let store = MonitorStore::new();
    store.restock(&1_u32, 1).unwrap();
    let hold = store.reserve(&[(1, 1)]).unwrap();
    assert!(store.reserve(&[(1, 1)]).is_err());
    store.commit(hold.id()).unwrap();
    let stats = store.stats();
    assert_ne!(stats, StoreStats::default());
    round_trip(&stats);
    let partial: StoreStats = serde_json::from_str(r#"{"commits":4}"#).unwrap();
    assert_eq!(partial.commits, 4);
    assert_eq!(partial.reserves, 0);
}

#[test]
fn reserve_options_round_trip_with_ttl_in_milliseconds() {
    round_trip(&ReserveOptions::new());
    let full = ReserveOptions::new()
        .ttl(Duration::from_secs(900))
        .idempotency_key("order-42");
    assert_eq!(
        round_trip(&full),
        json!({"ttl_ms": 900_000, "idempotency_key": "order-42"})
    );
    // Sub-millisecond TTLs round up: a TTL never gets shorter, a nonzero one never 0.
    let short = ReserveOptions::new().ttl(Duration::from_micros(1_500));
    assert_eq!(serde_json::to_value(&short).unwrap()["ttl_ms"], json!(2));
    let missing: ReserveOptions = serde_json::from_str("{}").unwrap();
    assert_eq!(missing, ReserveOptions::new());
    let ttl_only: ReserveOptions = serde_json::from_str(r#"{"ttl_ms":1}"#).unwrap();
    assert_eq!(
        ttl_only,
        ReserveOptions::new().ttl(Duration::from_millis(1))
    );
}

#[test]
fn reservations_round_trip_with_any_sku_type() {
    let store = MonitorStore::new();
    store.restock(&"b".to_owned(), 5).unwrap();
    store.restock(&"a".to_owned(), 5).unwrap();
    let hold = store
        .reserve(&[
            ("b".to_owned(), 1),
            ("a".to_owned(), 2),
            ("b".to_owned(), 1),
        ])
        .unwrap();
    let json = round_trip(&hold);
    assert_eq!(
        json,
        json!({"id": hold.id().get(), "lines": [["a", 2], ["b", 2]], "ttl_ms": null})
    );

    let numbers = MonitorStore::new();
    numbers.restock(&1004_u32, 3).unwrap();
    round_trip(&numbers.reserve(&[(1004, 3)]).unwrap());
}

#[test]
fn a_deadline_travels_as_the_time_left_to_live() {
    let store = MonitorStore::new();
    store.restock(&"tv".to_owned(), 1).unwrap();
    let ttl = Duration::from_secs(600);
    let hold = store
        .reserve_with(&[("tv".to_owned(), 1)], &ReserveOptions::new().ttl(ttl))
        .unwrap();
    let deadline = hold.expires_at().unwrap();

    let before = Instant::now();
    let json = serde_json::to_value(&hold).unwrap();
    let after = Instant::now();
    let ttl_ms = json["ttl_ms"].as_u64().unwrap();
    assert!(ttl_ms <= millis_ceil(deadline.saturating_duration_since(before)));
    assert!(ttl_ms >= millis_ceil(deadline.saturating_duration_since(after)));
    assert!(ttl_ms <= millis_ceil(ttl));

    let before = Instant::now();
    let back: Reservation<String> = serde_json::from_value(json).unwrap();
    let after = Instant::now();
    let read_deadline = back.expires_at().unwrap();
    let ttl_read = Duration::from_millis(ttl_ms);
    assert!(before + ttl_read <= read_deadline && read_deadline <= after + ttl_read);
    assert_eq!((back.id(), back.lines()), (hold.id(), hold.lines()));
}

#[test]
fn a_past_deadline_is_zero_and_a_missing_one_is_none() {
    let past = Instant::now().checked_sub(Duration::from_secs(1));
    let Some(past) = past else {
        return; // the monotonic clock started less than a second ago: no past instant
    };
    let event = StockEvent::Reserved {
        id: ReservationId::from_u64(3),
        lines: vec![line("tv", 1, level(1, 1, 2))],
        expires_at: Some(past),
        key: None,
    };
    assert_eq!(
        serde_json::to_value(&event).unwrap()["detail"]["ttl_ms"],
        json!(0)
    );

    let hold: Reservation<String> = serde_json::from_str(r#"{"id":3,"lines":[["tv",1]]}"#).unwrap();
    assert_eq!(hold.expires_at(), None);
    let far: Reservation<String> =
        serde_json::from_value(json!({"id": 3, "lines": [["tv", 1]], "ttl_ms": u64::MAX})).unwrap();
    // No panic: the far future, or no deadline where an `Instant` cannot reach it (as for
    // `ReserveOptions::ttl`).
    let year = Duration::from_secs(365 * 24 * 60 * 60);
    assert!(far.expires_at().is_none_or(|at| at > Instant::now() + year));
}

#[test]
fn a_reservation_read_back_has_lines_and_no_zero_quantity() {
    let ok = serde_json::from_str::<Reservation<String>>(r#"{"id":1,"lines":[["a",1]]}"#);
    assert!(ok.is_ok(), "{ok:?}");
    let empty = serde_json::from_str::<Reservation<String>>(r#"{"id":1,"lines":[]}"#);
    assert!(empty.unwrap_err().to_string().contains("at least one line"));
    let zero = serde_json::from_str::<Reservation<String>>(r#"{"id":1,"lines":[["a",1],["b",0]]}"#);
    assert!(zero
        .unwrap_err()
        .to_string()
        .contains("quantity of at least 1"));
}

#[test]
fn a_reservation_read_back_has_its_lines_merged_and_sorted_or_is_refused() {
    let sorted =
        serde_json::from_str::<Reservation<String>>(r#"{"id":1,"lines":[["a",3],["b",1]]}"#);
    assert_eq!(
        sorted.unwrap().lines(),
        &[("a".to_owned(), 3), ("b".to_owned(), 1)]
    );
    // What `lines()` promises never to return: out of order, a SKU twice, or both.
    for lines in [
        r#"[["b",1],["a",1],["a",2]]"#,
        r#"[["b",1],["a",1]]"#,
        r#"[["a",1],["a",2]]"#,
    ] {
        let read =
            serde_json::from_str::<Reservation<String>>(&format!(r#"{{"id":1,"lines":{lines}}}"#));
        let error = read.expect_err(lines).to_string();
        assert!(
            error.contains("merged and sorted by SKU"),
            "{lines}: {error}"
        );
    }
}

#[test]
fn every_stock_error_variant_round_trips_tagged_by_its_name() {
    let errors = every_error();
    let mut tags = Vec::new();
    for error in &errors {
        let json = round_trip(error);
        tags.push(json["error"].as_str().unwrap().to_owned());
        let debug = format!("{error:?}");
        assert!(
            debug.starts_with(json["error"].as_str().unwrap()),
            "{json} is {debug}"
        );
    }
    assert_eq!(tags, ERROR_VARIANTS);
    // Errors with a numeric SKU type too.
    round_trip(&StockError::<u32>::InsufficientStock {
        sku: 1004,
        requested: 3,
        available: 2,
    });
    round_trip(&StockError::<u32>::UnknownSku(1004));
}

#[test]
fn every_stock_event_variant_round_trips() {
    let events = events_of_every_kind();
    let mut seen = BTreeSet::new();
    for event in &events {
        let json = serde_json::to_value(event).unwrap();
        let tag = json["event"].as_str().unwrap().to_owned();
        assert!(format!("{event:?}").starts_with(&tag), "{json}");
        match event {
            StockEvent::Reserved {
                id,
                lines,
                expires_at: Some(_),
                ..
            } => {
                // The deadline comes back relative to now (its bounds are checked in
                // `a_deadline_travels_as_the_time_left_to_live`); the rest exactly.
                assert!(json["detail"]["ttl_ms"].is_u64(), "{json}");
                let back: StockEvent<String> = serde_json::from_value(json).unwrap();
                assert!(
                    matches!(&back, StockEvent::Reserved { id: back_id, lines: back_lines, expires_at: Some(_), .. }
                        if back_id == id && back_lines == lines),
                    "{back:?}"
                );
            }
            _ => {
                round_trip(event);
            }
        }
        seen.insert(tag);
    }
    assert_eq!(
        seen,
        EVENT_VARIANTS.iter().map(|tag| tag.to_string()).collect()
    );
}

#[test]
fn unknown_variants_are_errors() {
    assert!(serde_json::from_str::<StockError<String>>(r#"{"error":"Nope"}"#).is_err());
    assert!(serde_json::from_str::<StockEvent<String>>(r#"{"event":"Nope","detail":{}}"#).is_err());
}

#[test]
fn the_tag_may_come_after_the_detail() {
    let error: StockError<String> =
        serde_json::from_str(r#"{"detail":{"sku":"a"},"error":"InvalidQuantity"}"#).unwrap();
    assert_eq!(
        error,
        StockError::InvalidQuantity {
            sku: "a".to_owned()
        }
    );
}

/// Snapshots: the exact JSON of a few values, as the docs show it. A field or variant
/// rename changes one of these strings.
#[test]
fn json_shapes_are_the_documented_ones() {
    assert_eq!(text(&ReservationId::from_u64(42)), "42");
    assert_eq!(
        text(&level(5, 2, 2)),
        r#"{"on_hand":5,"reserved":2,"version":2}"#
    );
    assert_eq!(
        text(&line("cable", 2, level(8, 0, 3))),
        r#"{"sku":"cable","quantity":2,"level":{"on_hand":8,"reserved":0,"version":3}}"#
    );
    assert_eq!(
        text(&StockEvent::Restocked {
            line: line("lamp", 2, level(2, 0, 1))
        }),
        r#"{"event":"Restocked","detail":{"line":{"sku":"lamp","quantity":2,"level":{"on_hand":2,"reserved":0,"version":1}}}}"#
    );
    assert_eq!(
        text(&StockEvent::<String>::Reserved {
            id: ReservationId::from_u64(7),
            lines: vec![line("a", 2, level(5, 2, 2))],
            expires_at: None,
            key: None,
        }),
        r#"{"event":"Reserved","detail":{"id":7,"lines":[{"sku":"a","quantity":2,"level":{"on_hand":5,"reserved":2,"version":2}}],"ttl_ms":null}}"#
    );
    assert_eq!(
        text(&StockEvent::LowStock {
            sku: "tv".to_owned(),
            available: 2,
            threshold: 3,
            version: 9,
        }),
        r#"{"event":"LowStock","detail":{"sku":"tv","available":2,"threshold":3,"version":9}}"#
    );
    assert_eq!(
        text(&StockError::InsufficientStock {
            sku: "apple".to_owned(),
            requested: 2,
            available: 1,
        }),
        r#"{"error":"InsufficientStock","detail":{"sku":"apple","requested":2,"available":1}}"#
    );
    assert_eq!(
        text(&StockError::<String>::UnknownReservation(
            ReservationId::from_u64(7)
        )),
        r#"{"error":"UnknownReservation","detail":7}"#
    );
    assert_eq!(
        text(&StockError::<String>::Timeout),
        r#"{"error":"Timeout"}"#
    );
    assert_eq!(
        text(
            &ReserveOptions::new()
                .ttl(Duration::from_secs(900))
                .idempotency_key("order-42")
        ),
        r#"{"ttl_ms":900000,"idempotency_key":"order-42"}"#
    );
    assert_eq!(
        text(&StoreStats::default()),
        r#"{"reserves":0,"commits":0,"releases":0,"expirations":0,"extensions":0,"replays":0,"refusals":0,"cas_retries":0,"contended":0,"waits":0,"timeouts":0,"hot_skus":0,"switches":0}"#
    );
    let reservation = r#"{"id":7,"lines":[["a",2],["b",2]],"ttl_ms":null}"#;
    assert_eq!(reparse::<Reservation<String>>(reservation), reservation);
}
