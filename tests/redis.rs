//! `RedisStore` on a real `redis-server` (feature `redis`): the waiting suite of the
//! monitor across stores, bad input over the wire, the event stream, and faults (the
//! server killed and restarted).

#![cfg(feature = "redis")]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use redis_server::{fresh_namespace, shared, Durability, RedisServer};
use stockledger::{
    ChannelSink, EventLine, RedisStore, Reservation, ReservationId, ReserveOptions, StockError,
    StockEvent, StockLevel, StockStore, WaitingStore, SKU_KEY_BYTES_MAX,
};

type Store = Arc<RedisStore<String>>;
type Waiting = JoinHandle<Result<Reservation<String>, StockError<String>>>;

/// Long enough never to pass in these tests: they end by stock arriving, not by time.
const NEVER: Duration = Duration::from_secs(600);

fn sku(name: &str) -> String {
    name.to_string()
}

fn lines(request: &[(&str, u64)]) -> Vec<(String, u64)> {
    request
        .iter()
        .map(|(name, units)| (sku(name), *units))
        .collect()
}

/// A store in a fresh namespace of the shared server.
fn store() -> Store {
    Arc::new(RedisStore::connect(&shared().url(), &fresh_namespace("redis")).unwrap())
}

/// A second store (its own pool of connections) on the namespace of `store`: another
/// process would see the same.
fn peer(store: &Store) -> Store {
    Arc::new(RedisStore::connect(&shared().url(), store.namespace()).unwrap())
}

fn counts(store: &Store, name: &str) -> (u64, u64) {
    let level = store.level(&sku(name)).unwrap();
    (level.on_hand, level.reserved)
}

/// Starts a waiter for `request` on `waiting_store` and returns once it is queued on `on`
/// as the `position`-th waiter (1-based), as `observer` sees it.
fn wait_for(
    waiting_store: &Store,
    observer: &Store,
    request: &[(&str, u64)],
    timeout: Duration,
    on: &str,
    position: usize,
) -> Waiting {
    let waiter = {
        let store = Arc::clone(waiting_store);
        let request = lines(request);
        thread::spawn(move || store.reserve_timeout(&request, timeout))
    };
    while observer.queued(&sku(on)).unwrap() < position {
        thread::sleep(Duration::from_millis(1));
    }
    waiter
}

// ---------------------------------------------------------------- waiting (the monitor suite)

#[test]
fn available_stock_is_taken_at_once() {
    let store = store();
    store.restock(&sku("a"), 2).unwrap();
    let hold = store
        .reserve_timeout(&lines(&[("a", 2)]), Duration::ZERO)
        .unwrap();
    assert_eq!(hold.lines(), &lines(&[("a", 2)])[..]);
    assert_eq!(counts(&store, "a"), (2, 2));
}

#[test]
fn a_waiter_is_served_by_a_restock_of_another_store() {
    let store = store();
    let other = peer(&store);
    store.restock(&sku("a"), 1).unwrap();
    store.sell(&lines(&[("a", 1)])).unwrap();
    let waiter = wait_for(&store, &other, &[("a", 1)], NEVER, "a", 1);
    other.restock(&sku("a"), 1).unwrap();
    let hold = waiter.join().unwrap().unwrap();
    assert_eq!(store.queued(&sku("a")).unwrap(), 0);
    assert_eq!(counts(&store, "a"), (1, 1));
    other.commit(hold.id()).unwrap();
    assert_eq!(counts(&store, "a"), (0, 0));
}

#[test]
fn a_waiter_is_served_by_a_release_of_another_store() {
    let store = store();
    let other = peer(&store);
    store.restock(&sku("a"), 1).unwrap();
    let first = other.reserve(&lines(&[("a", 1)])).unwrap();
    let waiter = wait_for(&store, &other, &[("a", 1)], NEVER, "a", 1);
    other.release(first.id()).unwrap();
    waiter.join().unwrap().unwrap();
    assert_eq!(counts(&store, "a"), (1, 1));
}

#[test]
fn waiters_of_several_stores_are_served_in_arrival_order() {
    let store = store();
    let other = peer(&store);
    store.restock(&sku("a"), 1).unwrap();
    store.sell(&lines(&[("a", 1)])).unwrap();
    let big = wait_for(&store, &store, &[("a", 2)], NEVER, "a", 1);
    let small = wait_for(&other, &store, &[("a", 1)], NEVER, "a", 2);
    // One unit would satisfy the small waiter, but the big one arrived first.
    store.restock(&sku("a"), 1).unwrap();
    assert_eq!(store.queued(&sku("a")).unwrap(), 2);
    assert_eq!(counts(&store, "a"), (1, 0));
    other.restock(&sku("a"), 1).unwrap();
    big.join().unwrap().unwrap();
    assert_eq!(store.queued(&sku("a")).unwrap(), 1);
    assert_eq!(counts(&store, "a"), (2, 2));
    store.restock(&sku("a"), 1).unwrap();
    small.join().unwrap().unwrap();
    assert_eq!(counts(&store, "a"), (3, 3));
}

#[test]
fn plain_calls_of_any_store_cannot_barge_past_a_queued_waiter() {
    let store = store();
    let other = peer(&store);
    store.restock(&sku("a"), 1).unwrap();
    let waiter = wait_for(&store, &other, &[("a", 2)], NEVER, "a", 1);
    assert_eq!(other.level(&sku("a")).unwrap().available(), 1);
    let barged = StockError::InsufficientStock {
        sku: sku("a"),
        requested: 1,
        available: 0,
    };
    assert_eq!(other.reserve(&lines(&[("a", 1)])).unwrap_err(), barged);
    assert_eq!(other.sell(&lines(&[("a", 1)])).unwrap_err(), barged);
    other.restock(&sku("a"), 1).unwrap();
    waiter.join().unwrap().unwrap();
    assert_eq!(counts(&store, "a"), (2, 2));
}

#[test]
fn a_timeout_gives_back_every_held_line() {
    let store = store();
    store.restock(&sku("a"), 5).unwrap();
    store.restock(&sku("b"), 1).unwrap();
    store.sell(&lines(&[("b", 1)])).unwrap();
    let version_a = store.level(&sku("a")).unwrap().version;
    let error = store
        .reserve_timeout(&lines(&[("b", 1), ("a", 2)]), Duration::from_millis(20))
        .unwrap_err();
    assert_eq!(error, StockError::Timeout);
    assert_eq!(counts(&store, "a"), (5, 0));
    assert_eq!(counts(&store, "b"), (0, 0));
    assert_eq!(store.queued(&sku("b")).unwrap(), 0);
    // `a` was held (ascending order) and given back: two changes.
    assert_eq!(store.level(&sku("a")).unwrap().version, version_a + 2);
    let stats = store.stats();
    assert_eq!((stats.waits, stats.timeouts, stats.reserves), (1, 1, 0));
}

#[test]
fn a_timed_out_head_passes_the_turn_on() {
    let store = store();
    let other = peer(&store);
    store.restock(&sku("a"), 1).unwrap();
    let head = wait_for(
        &store,
        &store,
        &[("a", 2)],
        Duration::from_millis(300),
        "a",
        1,
    );
    let next = wait_for(&other, &store, &[("a", 1)], NEVER, "a", 2);
    assert_eq!(head.join().unwrap().unwrap_err(), StockError::Timeout);
    // The unit the head was entitled to goes to the next waiter without any new stock.
    let hold = next.join().unwrap().unwrap();
    assert_eq!(hold.lines(), &lines(&[("a", 1)])[..]);
    assert_eq!(counts(&store, "a"), (1, 1));
}

/// The waiters the level record of `name` counts (the fifth little-endian double of its
/// packed form, see `scripts/common.lua`): the scripts read it instead of the queue's
/// length.
fn queued_in_level(store: &Store, name: &str) -> u64 {
    let client = redis::Client::open(shared().url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    let packed: Vec<u8> = redis::cmd("HGET")
        .arg(format!("{{{}}}:levels", store.namespace()))
        .arg(name)
        .query(&mut connection)
        .unwrap();
    assert_eq!(packed.len(), 40, "five doubles");
    f64::from_le_bytes(packed[32..40].try_into().unwrap()) as u64
}

#[test]
fn the_waiters_a_level_counts_follow_its_queue_and_plain_calls_go_on_once_it_is_empty() {
    let store = store();
    let other = peer(&store);
    store.restock(&sku("a"), 1).unwrap();
    let first = other.reserve(&lines(&[("a", 1)])).unwrap();
    // Two waiters: the head times out (it leaves the queue), the next is served by a release.
    let head = wait_for(
        &store,
        &other,
        &[("a", 1)],
        Duration::from_millis(300),
        "a",
        1,
    );
    let next = wait_for(&other, &store, &[("a", 1)], NEVER, "a", 2);
    assert_eq!(queued_in_level(&store, "a"), 2);
    assert_eq!(head.join().unwrap().unwrap_err(), StockError::Timeout);
    assert_eq!(store.queued(&sku("a")).unwrap(), 1);
    assert_eq!(queued_in_level(&store, "a"), 1);
    other.release(first.id()).unwrap();
    let granted = next.join().unwrap().unwrap();
    assert_eq!(store.queued(&sku("a")).unwrap(), 0);
    assert_eq!(queued_in_level(&store, "a"), 0);
    // With the queue empty, plain calls are served at once again (a count left behind
    // would withhold every unit from them).
    other.release(granted.id()).unwrap();
    store.sell(&lines(&[("a", 1)])).unwrap();
    assert_eq!(counts(&store, "a"), (0, 0));
}

#[test]
fn bad_waiting_requests_fail_before_waiting() {
    let store = store();
    store.restock(&sku("a"), 1).unwrap();
    let cases = [
        (store.reserve_timeout(&[], NEVER), StockError::EmptyRequest),
        (
            store.reserve_timeout(&lines(&[("a", 0)]), NEVER),
            StockError::InvalidQuantity { sku: sku("a") },
        ),
        (
            store.reserve_timeout(&lines(&[("a", 1), ("zz", 1)]), NEVER),
            StockError::UnknownSku(sku("zz")),
        ),
    ];
    for (result, expected) in cases {
        assert_eq!(result.unwrap_err(), expected);
    }
    assert_eq!(counts(&store, "a"), (1, 0));
    assert_eq!(store.level(&sku("a")).unwrap().version, 1);
}

/// Starts a waiter for `request` with the idempotency key `key` on `store` and returns once
/// `on` has `position` waiters queued.
fn wait_keyed(
    store: &Store,
    request: &[(&str, u64)],
    key: &str,
    on: &str,
    position: usize,
) -> Waiting {
    let waiter = {
        let store = Arc::clone(store);
        let request = lines(request);
        let options = ReserveOptions::new().idempotency_key(key);
        thread::spawn(move || store.reserve_timeout_with(&request, NEVER, &options))
    };
    while store.queued(&sku(on)).unwrap() < position {
        if waiter.is_finished() {
            panic!("answered without waiting: {:?}", waiter.join().unwrap());
        }
        thread::sleep(Duration::from_millis(1));
    }
    waiter
}

/// A waiting request with a key not seen before waits like any other (the trait exempts
/// only keys already seen), and its key is remembered once it has its hold: a retry
/// replays it at once, and once it ended says what became of it.
#[test]
fn a_keyed_waiter_with_a_new_key_waits_and_its_key_is_remembered() {
    use stockledger::HoldOutcome;
    let store = store();
    store.restock(&sku("a"), 1).unwrap();
    store.sell(&lines(&[("a", 1)])).unwrap();
    let waiter = wait_keyed(&store, &[("a", 1)], "cart-1", "a", 1);
    peer(&store).restock(&sku("a"), 1).unwrap();
    let hold = waiter.join().unwrap().unwrap();
    let options = ReserveOptions::new().idempotency_key("cart-1");
    let retry = store.reserve_timeout_with(&lines(&[("a", 1)]), NEVER, &options);
    assert_eq!(retry, Ok(hold.clone()));
    assert_eq!(counts(&store, "a"), (1, 1));
    store.release(hold.id()).unwrap();
    let ended = StockError::HoldEnded {
        key: "cart-1".to_string(),
        id: hold.id(),
        outcome: HoldOutcome::Released,
    };
    let retry = store.reserve_timeout_with(&lines(&[("a", 1)]), NEVER, &options);
    assert_eq!(retry, Err(ended.clone()));
    assert_eq!(
        store.reserve_with(&lines(&[("a", 1)]), &options),
        Err(ended)
    );
    assert_eq!(counts(&store, "a"), (1, 0));
}

/// Two waiters with one new key: the first served has the hold and the key; the second,
/// served too, holds nothing and gets that hold back as a replay.
#[test]
fn a_keyed_waiter_whose_key_was_used_meanwhile_holds_nothing_and_replays_it() {
    let store = store();
    store.restock(&sku("a"), 1).unwrap();
    store.sell(&lines(&[("a", 1)])).unwrap();
    let first = wait_keyed(&store, &[("a", 1)], "cart-1", "a", 1);
    let second = wait_keyed(&store, &[("a", 1)], "cart-1", "a", 2);
    peer(&store).restock(&sku("a"), 2).unwrap();
    let first = first.join().unwrap().unwrap();
    let second = second.join().unwrap().unwrap();
    assert_eq!(second, first);
    assert_eq!(counts(&store, "a"), (2, 1));
    assert_eq!(store.queued(&sku("a")).unwrap(), 0);
}

/// A waiter may wait for at most its SKU's on hand plus the store's bound (100 by default,
/// as the monitor's): a larger waiting request is `WaitTooLarge` at once, nothing held or
/// queued, and the SKU stays on sale; the builder sets the bound.
#[test]
fn a_waiter_past_the_bound_is_refused_at_once_and_the_sku_stays_on_sale() {
    // Long enough to see a refusal come at once, short enough to fail, not hang, without.
    const PATIENT: Duration = Duration::from_secs(2);
    let store = store();
    store.restock(&sku("a"), 3).unwrap();
    store.restock(&sku("b"), 1).unwrap();
    let too_large = store.reserve_timeout(&lines(&[("a", 1), ("b", 102)]), PATIENT);
    assert_eq!(
        too_large,
        Err(StockError::WaitTooLarge {
            sku: sku("b"),
            requested: 102,
            limit: 101
        })
    );
    assert_eq!(
        (store.queued(&sku("a")), store.queued(&sku("b"))),
        (Ok(0), Ok(0))
    );
    assert_eq!((counts(&store, "a"), counts(&store, "b")), ((3, 0), (1, 0)));
    store.sell(&lines(&[("a", 1)])).unwrap();
    let within = store.reserve_timeout(&lines(&[("b", 101)]), Duration::from_millis(50));
    assert_eq!(within, Err(StockError::Timeout));

    let strict = RedisStore::<String>::builder(&shared().url(), store.namespace())
        .wait_units_max(0)
        .build()
        .unwrap();
    let refused = strict.reserve_timeout(&lines(&[("a", 3)]), PATIENT);
    assert_eq!(
        refused,
        Err(StockError::WaitTooLarge {
            sku: sku("a"),
            requested: 3,
            limit: 2
        })
    );
    let unbounded = RedisStore::<String>::builder(&shared().url(), store.namespace())
        .wait_units_max(u64::MAX)
        .build()
        .unwrap();
    let waited = unbounded.reserve_timeout(&lines(&[("a", 1_000_000)]), Duration::from_millis(50));
    assert_eq!(waited, Err(StockError::Timeout));
}

// ---------------------------------------------------------------- bad input over the wire

#[test]
fn odd_sku_keys_round_trip_and_bad_input_is_a_typed_error_that_changes_nothing() {
    let store = store();
    let odd = [
        "two words",
        "\"quoted\" 'and' `ticked`",
        "{braces}",
        "}{",
        "{}",
        "ünïcödé 漢字 🚲",
        "",
        "a\nnew line\0nul",
    ];
    for (units, name) in (1_u64..).zip(odd) {
        store.restock(&sku(name), units * 10).unwrap();
    }
    let hold = store
        .reserve(&odd.iter().map(|name| (sku(name), 1)).collect::<Vec<_>>())
        .unwrap();
    let mut sorted: Vec<String> = odd.iter().map(|name| sku(name)).collect();
    sorted.sort();
    assert_eq!(
        hold.lines()
            .iter()
            .map(|(sku, _)| sku.clone())
            .collect::<Vec<_>>(),
        sorted
    );
    assert_eq!(store.commit(hold.id()).unwrap(), hold);
    for (units, name) in (1_u64..).zip(odd) {
        assert_eq!(counts(&store, name), (units * 10 - 1, 0), "{name:?}");
    }

    let before: Vec<_> = odd.iter().map(|name| store.level(&sku(name))).collect();
    let braces = sku("{braces}");
    let long = "x".repeat(SKU_KEY_BYTES_MAX + 1);
    let never = ReservationId::from_u64(u64::MAX);
    let issued_elsewhere = peer_in_other_namespace_hold();
    let cases: Vec<(&str, StockError<String>, StockError<String>)> = vec![
        (
            "reserve u64::MAX",
            store.reserve(&[(braces.clone(), u64::MAX)]).unwrap_err(),
            StockError::InsufficientStock {
                sku: braces.clone(),
                requested: u64::MAX,
                available: 29,
            },
        ),
        (
            "sell u64::MAX",
            store.sell(&[(braces.clone(), u64::MAX)]).unwrap_err(),
            StockError::InsufficientStock {
                sku: braces.clone(),
                requested: u64::MAX,
                available: 29,
            },
        ),
        (
            "restock u64::MAX",
            store.restock(&braces, u64::MAX).unwrap_err(),
            StockError::Overflow {
                sku: braces.clone(),
            },
        ),
        (
            "restock past QUANTITY_MAX",
            store
                .restock(&braces, RedisStore::<String>::QUANTITY_MAX - 28)
                .unwrap_err(),
            StockError::Overflow {
                sku: braces.clone(),
            },
        ),
        (
            "lines summing past u64::MAX",
            store
                .reserve(&[(braces.clone(), u64::MAX), (braces.clone(), 1)])
                .unwrap_err(),
            StockError::Overflow {
                sku: braces.clone(),
            },
        ),
        (
            "unknown odd SKU",
            store
                .reserve(&[(braces.clone(), 1), (sku("{nope} \""), 1)])
                .unwrap_err(),
            StockError::UnknownSku(sku("{nope} \"")),
        ),
        (
            "a SKU too long for a key",
            store.restock(&long, 1).unwrap_err(),
            StockError::InvalidSku(long.clone()),
        ),
        (
            "commit never issued",
            store.commit(never).unwrap_err(),
            StockError::UnknownReservation(never),
        ),
        (
            "release never issued",
            store.release(never).unwrap_err(),
            StockError::UnknownReservation(never),
        ),
        (
            "extend never issued",
            store.extend(never, NEVER).unwrap_err(),
            StockError::UnknownReservation(never),
        ),
        (
            "commit an id of another namespace",
            store.commit(issued_elsewhere).unwrap_err(),
            StockError::UnknownReservation(issued_elsewhere),
        ),
        (
            "commit a counter this namespace issued, without its tag",
            store
                .commit(ReservationId::from_u64(hold.id().get() & ((1 << 44) - 1)))
                .unwrap_err(),
            StockError::UnknownReservation(ReservationId::from_u64(
                hold.id().get() & ((1 << 44) - 1),
            )),
        ),
    ];
    for (case, actual, expected) in cases {
        assert_eq!(actual, expected, "{case}");
    }
    let after: Vec<_> = odd.iter().map(|name| store.level(&sku(name))).collect();
    assert_eq!(after, before, "a refused call changed a level");
    assert_eq!(store.level(&long), None);
}

/// The id of an open hold in another namespace of the same server.
fn peer_in_other_namespace_hold() -> ReservationId {
    let other = store();
    other.restock(&sku("{braces}"), 1).unwrap();
    other.reserve(&lines(&[("{braces}", 1)])).unwrap().id()
}

#[test]
fn integer_skus_round_trip_and_a_namespace_with_braces_is_refused() {
    let store = RedisStore::<i64>::connect(&shared().url(), &fresh_namespace("integers")).unwrap();
    store.restock(&-7, 3).unwrap();
    store.restock(&i64::MAX, 3).unwrap();
    let hold = store.reserve(&[(i64::MAX, 1), (-7, 2)]).unwrap();
    assert_eq!(hold.lines(), &[(-7, 2), (i64::MAX, 1)]);
    assert_eq!(store.release(hold.id()).unwrap(), hold);
    for namespace in ["", "a{b", "a}b"] {
        let refused = RedisStore::<i64>::connect(&shared().url(), namespace).unwrap_err();
        assert!(
            matches!(refused, StockError::Unavailable { ref reason } if reason.contains("namespace")),
            "{namespace:?}: {refused:?}"
        );
    }
}

// ---------------------------------------------------------------- the event stream

/// `(kind, SKU, version)` of every entry of the namespace's stream, in stream order.
fn stream_of(server_url: &str, stream: &str) -> Vec<(String, String, u64)> {
    use redis::streams::StreamRangeReply;
    let client = redis::Client::open(server_url).unwrap();
    let mut connection = client.get_connection().unwrap();
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut connection)
        .unwrap();
    reply
        .ids
        .iter()
        .map(|entry| {
            // One field, `event`: "kind id quantity on_hand reserved version SKU".
            let event: String = entry.get("event").unwrap();
            let parts: Vec<&str> = event.splitn(7, ' ').collect();
            assert_eq!(parts.len(), 7, "{event:?}");
            (
                parts[0].to_string(),
                parts[6].to_string(),
                parts[5].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_change_of_every_store_is_in_the_stream_once_in_version_order() {
    let store = store();
    let other = peer(&store);
    store.restock(&sku("a"), 5).unwrap();
    other.restock(&sku("b"), 5).unwrap();
    store.set_low_stock_threshold(&sku("a"), 3).unwrap();
    let hold = other.reserve(&lines(&[("a", 2), ("b", 1)])).unwrap();
    store.commit(hold.id()).unwrap();
    let released = store.reserve(&lines(&[("a", 1)])).unwrap();
    other.release(released.id()).unwrap();
    other.sell(&lines(&[("a", 2), ("b", 1)])).unwrap();
    let _refused = store.sell(&lines(&[("a", 100)]));
    let entries = stream_of(&shared().url(), store.events_stream());
    let summary: Vec<String> = entries
        .iter()
        .map(|(kind, sku, version)| format!("{kind} {sku}@{version}"))
        .collect();
    assert_eq!(
        summary,
        [
            "restocked a@1",
            "restocked b@1",
            "reserved a@2",
            "reserved b@2",
            "committed a@3",
            "committed b@3",
            "reserved a@4",
            "low_stock a@4",
            "released a@5",
            "sold a@6",
            "sold b@4",
            "low_stock a@6",
        ]
    );
    // One entry per change: per SKU, the versions 1, 2, 3, ... without a gap.
    let mut versions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (kind, sku, version) in &entries {
        if kind != "low_stock" {
            versions.entry(sku).or_default().push(*version);
        }
    }
    for (sku, seen) in versions {
        let last = store.level(&sku.to_string()).unwrap().version;
        assert_eq!(seen, (1..=last).collect::<Vec<_>>(), "{sku}");
    }
}

/// An event line of `name`: `quantity` units, then on hand, reserved and version.
fn line(
    name: &str,
    quantity: u64,
    (on_hand, reserved, version): (u64, u64, u64),
) -> EventLine<String> {
    EventLine {
        sku: sku(name),
        quantity,
        level: StockLevel {
            on_hand,
            reserved,
            version,
        },
    }
}

#[test]
fn a_store_with_a_sink_gets_the_events_of_its_calls_as_the_stream_has_them() {
    let (sink, received) = ChannelSink::unbounded();
    let store = RedisStore::<String>::builder(&shared().url(), &fresh_namespace("sink"))
        .event_sink(sink)
        .build()
        .unwrap();
    store.restock(&sku("a"), 5).unwrap();
    store.restock(&sku("b"), 2).unwrap();
    store.set_low_stock_threshold(&sku("a"), 3).unwrap();
    // One line (the scripts' fast path), crossing the threshold; then a hold and its
    // commit, a sale of two lines, and a refusal, which sends nothing.
    store.sell(&lines(&[("a", 3)])).unwrap();
    let hold = store.reserve(&lines(&[("a", 1)])).unwrap();
    assert_eq!(hold.lines(), &lines(&[("a", 1)])[..]);
    store.commit(hold.id()).unwrap();
    store.sell(&lines(&[("a", 1), ("b", 1)])).unwrap();
    assert!(store.sell(&lines(&[("b", 5)])).is_err());
    let events: Vec<StockEvent<String>> = received.try_iter().collect();
    assert_eq!(
        events,
        [
            StockEvent::Restocked {
                line: line("a", 5, (5, 0, 1))
            },
            StockEvent::Restocked {
                line: line("b", 2, (2, 0, 1))
            },
            StockEvent::Sold {
                lines: vec![line("a", 3, (2, 0, 2))]
            },
            StockEvent::LowStock {
                sku: sku("a"),
                available: 2,
                threshold: 3,
                version: 2
            },
            StockEvent::Reserved {
                id: hold.id(),
                lines: vec![line("a", 1, (2, 1, 3))],
                expires_at: None,
                key: None
            },
            StockEvent::Committed {
                id: hold.id(),
                lines: vec![line("a", 1, (1, 0, 4))],
                key: None
            },
            StockEvent::Sold {
                lines: vec![line("a", 1, (0, 0, 5)), line("b", 1, (1, 0, 2))]
            },
        ]
    );
    let stream: Vec<String> = stream_of(&shared().url(), store.events_stream())
        .iter()
        .map(|(kind, sku, version)| format!("{kind} {sku}@{version}"))
        .collect();
    assert_eq!(
        stream,
        [
            "restocked a@1",
            "restocked b@1",
            "sold a@2",
            "low_stock a@2",
            "reserved a@3",
            "committed a@4",
            "sold a@5",
            "sold b@2",
        ]
    );
}

/// `&'static str` SKUs (the README's quickstart) work on Redis: a hold's lines come back
/// from the server as the same SKUs, whichever store reads them.
#[test]
fn static_str_skus_round_trip_through_the_server() {
    let namespace = fresh_namespace("static");
    let store = RedisStore::<&'static str>::connect(&shared().url(), &namespace).unwrap();
    let other = RedisStore::<&'static str>::connect(&shared().url(), &namespace).unwrap();
    store.restock(&"lamp", 3).unwrap();
    store.restock(&"desk {oak}", 1).unwrap();
    let hold = store.reserve(&[("lamp", 2), ("desk {oak}", 1)]).unwrap();
    assert_eq!(other.reservation(hold.id()), Some(hold.clone()));
    let committed = other.commit(hold.id()).unwrap();
    assert_eq!(committed.lines(), &[("desk {oak}", 1), ("lamp", 2)]);
    assert_eq!(store.level(&"lamp").unwrap().on_hand, 1);
}

/// One `Arc<dyn StockStore>` handle serves plain calls and waits on Redis too.
#[test]
fn a_redis_store_is_one_handle_for_plain_calls_and_waits() {
    let store: Arc<dyn StockStore<String>> = store();
    store.restock(&sku("a"), 1).unwrap();
    let waiting = store.as_waiting().expect("RedisStore waits");
    let hold = waiting
        .reserve_timeout(&lines(&[("a", 1)]), Duration::from_secs(1))
        .unwrap();
    assert_eq!(store.reservation(hold.id()), Some(hold.clone()));
    store.commit(hold.id()).unwrap();
    assert_eq!(store.reservation(hold.id()), None);
}

// ---------------------------------------------------------------- faults

/// A store on `server` that gives up on a call after 300 ms.
fn store_on(server: &RedisServer, namespace: &str) -> RedisStore<String> {
    RedisStore::builder(&server.url(), namespace)
        .command_timeout(Duration::from_millis(300))
        .pool_size(4)
        .build()
        .unwrap()
}

#[test]
fn calls_during_an_outage_are_unavailable_and_a_keyed_retry_holds_once() {
    let mut server = RedisServer::start(Durability::AppendFsyncAlways);
    let store = store_on(&server, "outage");
    store.restock(&sku("a"), 10).unwrap();
    let keyed = |key: &str| ReserveOptions::new().idempotency_key(key);
    let before = store
        .reserve_with(&lines(&[("a", 1)]), &keyed("order-1"))
        .unwrap();

    assert_eq!(store.try_reservation(before.id()), Ok(Some(before.clone())));
    server.kill();
    let unavailable = |result: Result<(), StockError<String>>| {
        assert!(
            matches!(result, Err(StockError::Unavailable { .. })),
            "{result:?}"
        );
    };
    unavailable(
        store
            .reserve_with(&lines(&[("a", 2)]), &keyed("order-2"))
            .map(drop),
    );
    unavailable(store.sell(&lines(&[("a", 1)])));
    unavailable(store.commit(before.id()).map(drop));
    unavailable(store.try_level(&sku("a")).map(drop));
    unavailable(store.try_stats().map(drop));
    unavailable(store.try_expire_due().map(drop));
    unavailable(store.try_reservation(before.id()).map(drop));
    // The infallible reads answer as if the ledger were empty.
    assert_eq!(store.level(&sku("a")), None);
    assert_eq!(store.reservation(before.id()), None);
    assert!(store.expire_due().is_empty());
    assert_eq!(store.stats(), Default::default());

    // A restart loses nothing acknowledged (appendfsync always) and flushes the script
    // cache: the next calls load their scripts again (NOSCRIPT, then SCRIPT LOAD).
    server.restart();
    let retried = store
        .reserve_with(&lines(&[("a", 2)]), &keyed("order-2"))
        .unwrap();
    let again = store
        .reserve_with(&lines(&[("a", 2)]), &keyed("order-2"))
        .unwrap();
    assert_eq!(again, retried, "a second retry holds nothing more");
    assert_eq!(
        store
            .reserve_with(&lines(&[("a", 1)]), &keyed("order-1"))
            .unwrap(),
        before
    );
    assert_eq!(counts_of(&store, "a"), (10, 3));
    store.commit(before.id()).unwrap();
    store.commit(retried.id()).unwrap();
    assert_eq!(counts_of(&store, "a"), (7, 0));
    assert_eq!(store.stats().replays, 2);
}

fn counts_of(store: &RedisStore<String>, name: &str) -> (u64, u64) {
    let level = store.level(&sku(name)).unwrap();
    (level.on_hand, level.reserved)
}

#[test]
fn a_restart_mid_run_loses_no_acknowledged_change_and_keyed_retries_hold_once() {
    const THREADS: usize = 4;
    const ORDERS: usize = 60;
    let mut server = RedisServer::start(Durability::AppendFsyncAlways);
    let store = Arc::new(store_on(&server, "restart"));
    let start = 1_000;
    for name in ["a", "b"] {
        store.restock(&sku(name), start).unwrap();
    }
    let workers: Vec<JoinHandle<(u64, usize)>> = (0..THREADS)
        .map(|thread| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let (mut sold, mut unavailable) = (0, 0);
                for order in 0..ORDERS {
                    let key = format!("t{thread}-o{order}");
                    let options = ReserveOptions::new().idempotency_key(key);
                    let request = lines(&[("a", 1), ("b", 1)]);
                    // Retry with the same key until the engine answers.
                    let hold = loop {
                        match store.reserve_with(&request, &options) {
                            Err(StockError::Unavailable { .. }) => {
                                unavailable += 1;
                                thread::sleep(Duration::from_millis(20));
                            }
                            other => break other.unwrap(),
                        }
                    };
                    let mut retried = false;
                    loop {
                        match store.commit(hold.id()) {
                            Ok(_) => break,
                            // Our own earlier attempt went through before the failure.
                            Err(StockError::UnknownReservation(_)) if retried => break,
                            Err(StockError::Unavailable { .. }) => {
                                unavailable += 1;
                                retried = true;
                                thread::sleep(Duration::from_millis(20));
                            }
                            Err(error) => panic!("{error}"),
                        }
                    }
                    sold += 1;
                }
                (sold, unavailable)
            })
        })
        .collect();
    // Restart while the orders run.
    while store.try_stats().map_or(0, |stats| stats.commits) < (THREADS * ORDERS / 4) as u64 {
        thread::sleep(Duration::from_millis(5));
    }
    server.restart();
    let (mut sold, mut unavailable) = (0, 0);
    for worker in workers {
        let (worker_sold, worker_unavailable) = worker.join().unwrap();
        sold += worker_sold;
        unavailable += worker_unavailable;
    }
    assert_eq!(sold, (THREADS * ORDERS) as u64);
    for name in ["a", "b"] {
        // Every order sold one unit of each SKU exactly once; nothing stays held (a retry
        // that held twice would leave a hold nobody resolves).
        assert_eq!(counts_of(&store, name), (start - sold, 0), "{name}");
    }
    eprintln!("restart mid-run: {sold} orders, {unavailable} calls answered Unavailable");
}

/// A waiting hold's events carry its idempotency key too (the other hold events are
/// checked on every store, this one included, in `tests/lifecycle.rs`): the grant's
/// `Reserved` names the key it was asked with.
#[test]
fn a_granted_hold_reports_its_idempotency_key() {
    let (sink, received) = ChannelSink::unbounded();
    let store = RedisStore::<String>::builder(&shared().url(), &fresh_namespace("keyed-grant"))
        .event_sink(sink)
        .build()
        .unwrap();
    store.restock(&sku("a"), 1).unwrap();
    let options = ReserveOptions::new().idempotency_key("order-4");
    let waited = store
        .reserve_timeout_with(&lines(&[("a", 1)]), Duration::from_secs(1), &options)
        .unwrap();
    let reserved: Vec<_> = received
        .try_iter()
        .filter_map(|event| match event {
            StockEvent::Reserved { id, key, .. } => Some((id, key.map(|key| key.to_string()))),
            _ => None,
        })
        .collect();
    assert_eq!(reserved, [(waited.id(), Some("order-4".to_string()))]);
}
