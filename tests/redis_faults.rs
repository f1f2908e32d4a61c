//! `RedisStore` under faults (feature `redis`): a real `redis-server`, a TCP proxy of our
//! own between the store and the server that loses chosen replies and cuts connections
//! (`support/fault_proxy.rs`), and a fake server that sends replies no real server sends
//! (`support/fake_redis.rs`). Each test starts with one line saying what a correct store
//! does.

#![cfg(feature = "redis")]

#[path = "support/fake_redis.rs"]
mod fake_redis;
#[path = "support/fault_proxy.rs"]
mod fault_proxy;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fake_redis::FakeRedis;
use fault_proxy::FaultProxy;
use redis_server::{fresh_namespace, shared, Durability, RedisServer};
use stockledger::{
    ChannelSink, MonitorStore, RedisStore, ReservationId, ReserveOptions, StockError, StockEvent,
    StockStore, WaitingStore,
};

type Store = RedisStore<String>;

/// Long enough never to pass in these tests.
const NEVER: Duration = Duration::from_secs(600);

fn lines(request: &[(&str, u64)]) -> Vec<(String, u64)> {
    request
        .iter()
        .map(|(name, units)| (name.to_string(), *units))
        .collect()
}

fn counts(store: &Store, name: &str) -> (u64, u64) {
    let level = store.level(&name.to_string()).unwrap();
    (level.on_hand, level.reserved)
}

/// A store on `url` in `namespace` that gives up on a call after 500 ms.
fn store_at(url: &str, namespace: &str) -> Store {
    RedisStore::builder(url, namespace)
        .command_timeout(Duration::from_millis(500))
        .pool_size(4)
        .build()
        .unwrap()
}

/// A SKU `name` that exists with nothing on hand.
fn sold_out(store: &Store, name: &str) {
    store.restock(&name.to_string(), 1).unwrap();
    store.sell(&lines(&[(name, 1)])).unwrap();
}

/// Waits until `observer` sees `count` waiters queued on `name`.
fn until_queued(observer: &Store, name: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while observer.queued(&name.to_string()).unwrap() < count {
        assert!(Instant::now() < deadline, "no waiter queued on {name}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Every entry's `event` field of `stream`, in order.
fn stream_events(url: &str, stream: &str) -> Vec<String> {
    use redis::streams::StreamRangeReply;
    let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut connection)
        .unwrap();
    reply
        .ids
        .iter()
        .map(|entry| entry.get::<String>("event").unwrap())
        .collect()
}

// ------------------------------------------------------------------ 1, 2, 3: ids

#[test]
fn an_id_of_one_namespace_is_unknown_in_every_other() {
    // A correct store: a hold id of one namespace is UnknownReservation in every other
    // namespace of the same server (these two namespaces' tags collided in 20 bits).
    let a = store_at(&shared().url(), "tenant-438");
    let b = store_at(&shared().url(), "tenant-1401");
    for store in [&a, &b] {
        store.restock(&"x".to_string(), 5).unwrap();
    }
    let hold_of_a = a.reserve(&lines(&[("x", 1)])).unwrap();
    let hold_of_b = b.reserve(&lines(&[("x", 1)])).unwrap();
    assert_ne!(hold_of_a.id(), hold_of_b.id());
    assert_eq!(
        b.commit(hold_of_a.id()),
        Err(StockError::UnknownReservation(hold_of_a.id()))
    );
    assert_eq!((counts(&a, "x"), counts(&b, "x")), ((5, 1), (5, 1)));
}

#[test]
fn ids_are_never_issued_again_after_a_restart_from_an_older_snapshot() {
    // A correct store: after the server comes back from an older snapshot, no new hold
    // gets the id of a hold the server lost, so a retried commit of a lost hold is
    // UnknownReservation and never takes another customer's units.
    let mut server = RedisServer::start(Durability::Memory);
    let store = store_at(&server.url(), "snapshot");
    store.restock(&"x".to_string(), 100).unwrap();
    let kept = store.reserve(&lines(&[("x", 1)])).unwrap();
    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SAVE").query(&mut admin).unwrap();
    let lost: BTreeSet<ReservationId> = (0..20)
        .map(|_| store.reserve(&lines(&[("x", 1)])).unwrap().id())
        .collect();
    server.restart(); // SIGKILL, then the server loads the older dump.rdb
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.try_level(&"x".to_string()).is_err() {
        assert!(Instant::now() < deadline, "the server is back");
    }
    assert_eq!(counts(&store, "x"), (100, 1), "the snapshot's state");
    let new: Vec<ReservationId> = (0..20)
        .map(|_| store.reserve(&lines(&[("x", 1)])).unwrap().id())
        .collect();
    for id in &new {
        assert!(!lost.contains(id), "{id} was issued before the restart");
    }
    for id in &lost {
        assert_eq!(store.commit(*id), Err(StockError::UnknownReservation(*id)));
    }
    assert_eq!(counts(&store, "x"), (100, 21));
    store.commit(kept.id()).unwrap();
}

#[test]
fn ids_are_not_guessable_from_another_id() {
    // A correct store: ids are random (63 bits), so the neighbours of a known id are no
    // other customer's holds.
    let store = store_at(&shared().url(), &fresh_namespace("guess"));
    store.restock(&"x".to_string(), 1_000).unwrap();
    let ids: Vec<u64> = (0..50)
        .map(|_| store.reserve(&lines(&[("x", 1)])).unwrap().id().get())
        .collect();
    let mut found = 0;
    for id in &ids {
        for guess in id.saturating_sub(64)..=id.saturating_add(64) {
            if guess != *id && store.release(ReservationId::from_u64(guess)).is_ok() {
                found += 1;
            }
        }
    }
    assert_eq!(found, 0, "holds found next to a known id");
    assert_eq!(counts(&store, "x"), (1_000, 50));
}

#[test]
fn stream_entries_carry_the_public_id_of_their_hold() {
    // A correct store: a stream entry names its hold by the number a ReservationId holds
    // (what it serializes to), so an outbox consumer matches it to the order's hold.
    let store = store_at(&shared().url(), &fresh_namespace("public-id"));
    store.restock(&"x".to_string(), 5).unwrap();
    let hold = store.reserve(&lines(&[("x", 2)])).unwrap();
    store.commit(hold.id()).unwrap();
    let events = stream_events(&shared().url(), store.events_stream());
    let id = hold.id().get();
    assert_eq!(
        events,
        [
            "restocked 0 5 5 0 1 x".to_string(),
            format!("reserved {id} 2 5 2 2 x"),
            format!("committed {id} 2 3 0 3 x"),
        ]
    );
}

// ------------------------------------------------------------------ 4, 5, 6, 7: waiters

#[test]
fn a_dead_multi_line_waiter_gives_back_its_lines_once_its_lease_ran_out() {
    // A correct store: once a dead waiter's lease ran out, expire_due gives back every
    // line it held, whatever queue it sits in (here it holds x and queues on y).
    let server = shared();
    let namespace = fresh_namespace("dead-waiter");
    let observer = store_at(&server.url(), &namespace);
    observer.restock(&"x".to_string(), 1).unwrap();
    sold_out(&observer, "y");
    let proxy = FaultProxy::start(server.port());
    let waiting = Arc::new(store_at(&proxy.url(), &namespace));
    let waiter = {
        let waiting = Arc::clone(&waiting);
        thread::spawn(move || waiting.reserve_timeout(&lines(&[("x", 1), ("y", 1)]), NEVER))
    };
    until_queued(&observer, "y", 1);
    assert_eq!(counts(&observer, "x"), (1, 1));
    proxy.sever(); // the waiter's host is cut off: it renews no lease
    assert!(matches!(
        waiter.join().unwrap(),
        Err(StockError::Unavailable { .. })
    ));
    thread::sleep(Duration::from_millis(10_500)); // the default lease (10 s) runs out
    observer.expire_due();
    assert_eq!(counts(&observer, "x"), (1, 0));
    assert_eq!(observer.queued(&"y".to_string()).unwrap(), 0);
}

#[test]
fn a_lost_grant_reply_strands_nothing() {
    // A correct store: a grant whose reply is lost is not lost: the store resends the
    // poll and gets the grant back, and the caller has a hold it can commit.
    let server = shared();
    let namespace = fresh_namespace("lost-grant");
    let observer = store_at(&server.url(), &namespace);
    sold_out(&observer, "a");
    let proxy = FaultProxy::start(server.port());
    let waiting = Arc::new(store_at(&proxy.url(), &namespace));
    let waiter = {
        let waiting = Arc::clone(&waiting);
        thread::spawn(move || waiting.reserve_timeout(&lines(&[("a", 1)]), NEVER))
    };
    until_queued(&observer, "a", 1);
    proxy.lose_replies_containing(b"granted", 1);
    observer.restock(&"a".to_string(), 1).unwrap();
    let hold = waiter
        .join()
        .unwrap()
        .expect("the grant reaches its waiter");
    assert_eq!(proxy.lost(), 1);
    assert_eq!(counts(&observer, "a"), (1, 1));
    observer.commit(hold.id()).unwrap();
    assert_eq!(counts(&observer, "a"), (0, 0));
}

#[test]
fn a_grant_nobody_picks_up_goes_back_when_the_lease_runs_out() {
    // A correct store: a waiter granted after its host died never has its hold; the
    // lines go back once its lease ran out.
    let server = shared();
    let namespace = fresh_namespace("unclaimed");
    let observer = store_at(&server.url(), &namespace);
    sold_out(&observer, "a");
    let proxy = FaultProxy::start(server.port());
    let waiting = Arc::new(
        RedisStore::<String>::builder(&proxy.url(), &namespace)
            .command_timeout(Duration::from_millis(500))
            .wait_lease(Duration::from_millis(800))
            .build()
            .unwrap(),
    );
    let waiter = {
        let waiting = Arc::clone(&waiting);
        thread::spawn(move || waiting.reserve_timeout(&lines(&[("a", 1)]), NEVER))
    };
    until_queued(&observer, "a", 1);
    proxy.sever();
    assert!(waiter.join().unwrap().is_err());
    observer.restock(&"a".to_string(), 1).unwrap(); // granted to the dead waiter
    assert_eq!(counts(&observer, "a"), (1, 1));
    thread::sleep(Duration::from_millis(1_000));
    observer.expire_due();
    assert_eq!(counts(&observer, "a"), (1, 0));
    // Negative control: a live waiter's grant stays its own past the same time.
    let live = store_at(&server.url(), &namespace);
    let hold = live
        .reserve_timeout(&lines(&[("a", 1)]), Duration::from_secs(1))
        .unwrap();
    thread::sleep(Duration::from_millis(1_000));
    observer.expire_due();
    assert_eq!(counts(&observer, "a"), (1, 1));
    live.commit(hold.id()).unwrap();
}

#[test]
fn a_waiting_hold_with_a_ttl_has_its_deadline_from_the_script_that_grants_it() {
    // A correct store: reserve_timeout_with a TTL opens the hold with its deadline in the
    // granting script, so a client that dies right after the grant leaves a hold that
    // expires (not one that never does).
    let server = shared();
    let namespace = fresh_namespace("ttl-wait");
    let observer = store_at(&server.url(), &namespace);
    observer.restock(&"a".to_string(), 1).unwrap();
    sold_out(&observer, "b");
    let options = ReserveOptions::new().ttl(Duration::from_millis(300));
    // Granted at once; granted after a wait.
    for (name, restock) in [("a", false), ("b", true)] {
        let proxy = FaultProxy::start(server.port());
        let waiting = Arc::new(store_at(&proxy.url(), &namespace));
        proxy.sever_at_reply_containing(b"granted");
        let waiter = {
            let (waiting, options) = (Arc::clone(&waiting), options.clone());
            let request = lines(&[(name, 1)]);
            thread::spawn(move || waiting.reserve_timeout_with(&request, NEVER, &options))
        };
        if restock {
            until_queued(&observer, name, 1);
            observer.restock(&name.to_string(), 1).unwrap();
        }
        let _ = waiter.join().unwrap(); // the client is cut off as its grant is sent
        assert_eq!(counts(&observer, name), (1, 1), "{name}");
        thread::sleep(Duration::from_millis(400));
        observer.expire_due();
        assert_eq!(counts(&observer, name), (1, 0), "{name}: the hold expired");
    }
}

#[test]
fn a_timed_out_waiter_leaves_no_stream_entry_as_in_memory() {
    // A correct store: the stream shows the holds callers received; a waiter that timed
    // out (holding x while queued on y) leaves no reserved/released entry, and the
    // in-memory monitor store sends no event for it either.
    let store = store_at(&shared().url(), &fresh_namespace("timeout-stream"));
    store.restock(&"x".to_string(), 1).unwrap();
    sold_out(&store, "y");
    let before = stream_events(&shared().url(), store.events_stream()).len();
    let request = lines(&[("x", 1), ("y", 1)]);
    assert_eq!(
        store.reserve_timeout(&request, Duration::from_millis(200)),
        Err(StockError::Timeout)
    );
    assert_eq!(counts(&store, "x"), (1, 0));
    let after = stream_events(&shared().url(), store.events_stream());
    assert_eq!(after.len(), before, "{:?}", &after[before..]);

    let (sink, received) = ChannelSink::unbounded();
    let memory = MonitorStore::<String>::builder().event_sink(sink).build();
    memory.restock(&"x".to_string(), 1).unwrap();
    memory.restock(&"y".to_string(), 1).unwrap();
    memory.sell(&lines(&[("y", 1)])).unwrap();
    let _ = received.try_iter().count();
    assert_eq!(
        memory.reserve_timeout(&request, Duration::from_millis(200)),
        Err(StockError::Timeout)
    );
    let events: Vec<StockEvent<String>> = received.try_iter().collect();
    assert!(events.is_empty(), "{events:?}");
}

/// A sink that panics on every new hold.
struct PanicsOnReserved;

impl stockledger::EventSink<String> for PanicsOnReserved {
    fn on_event(&self, event: &StockEvent<String>) {
        if let StockEvent::Reserved { .. } = event {
            panic!("sink bug");
        }
    }
}

#[test]
fn a_sink_that_panics_on_a_new_hold_does_not_strand_it() {
    // A correct store: a hold whose caller never gets its id (the sink panicked before the
    // call returned) is released, as in memory: no hold without an owner and a deadline.
    let namespace = fresh_namespace("panicking-sink");
    let observer = store_at(&shared().url(), &namespace);
    observer.restock(&"a".to_string(), 2).unwrap();
    sold_out(&observer, "b");
    let store = Arc::new(
        RedisStore::<String>::builder(&shared().url(), &namespace)
            .event_sink(Arc::new(PanicsOnReserved))
            .build()
            .unwrap(),
    );
    let reserve = catch_unwind(AssertUnwindSafe(|| store.reserve(&lines(&[("a", 1)]))));
    assert!(reserve.is_err(), "the sink's panic reaches the caller");
    assert_eq!(counts(&observer, "a"), (2, 0));
    let waiter = {
        let store = Arc::clone(&store);
        thread::spawn(move || {
            catch_unwind(AssertUnwindSafe(|| {
                store.reserve_timeout(&lines(&[("a", 1), ("b", 1)]), NEVER)
            }))
            .is_err()
        })
    };
    until_queued(&observer, "b", 1);
    observer.restock(&"b".to_string(), 1).unwrap();
    assert!(
        waiter.join().unwrap(),
        "the grant's panic reaches the waiter"
    );
    assert_eq!(
        (counts(&observer, "a"), counts(&observer, "b")),
        ((2, 0), (1, 0))
    );
}

// ------------------------------------------------------------------ 8: declared keys

/// The arguments of one `MONITOR` line (`<time> [<db> <client>] "arg" "arg" ...`).
fn monitor_args(line: &str) -> (bool, Vec<Vec<u8>>) {
    let from_script = line.contains(" lua]");
    let mut args = Vec::new();
    let bytes = line.as_bytes();
    let mut at = line.find(']').map_or(bytes.len(), |end| end + 1);
    while at < bytes.len() {
        if bytes[at] != b'"' {
            at += 1;
            continue;
        }
        at += 1;
        let mut arg = Vec::new();
        while at < bytes.len() && bytes[at] != b'"' {
            if bytes[at] == b'\\' && at + 1 < bytes.len() {
                match bytes[at + 1] {
                    b'x' if at + 3 < bytes.len() => {
                        let hex = std::str::from_utf8(&bytes[at + 2..at + 4]).unwrap();
                        arg.push(u8::from_str_radix(hex, 16).unwrap());
                        at += 4;
                    }
                    b'n' => (arg.push(b'\n'), at += 2).1,
                    b'r' => (arg.push(b'\r'), at += 2).1,
                    b't' => (arg.push(b'\t'), at += 2).1,
                    b'a' => (arg.push(7), at += 2).1,
                    b'b' => (arg.push(8), at += 2).1,
                    other => (arg.push(other), at += 2).1,
                }
            } else {
                arg.push(bytes[at]);
                at += 1;
            }
        }
        args.push(arg);
        at += 1;
    }
    (from_script, args)
}

#[test]
fn every_key_a_script_touches_is_declared_in_its_keys() {
    // A correct store: every key a script reads or writes is one its FCALL declares, so
    // a Redis Cluster never stops it midway for an undeclared key during a slot move.
    let server = RedisServer::start(Durability::Memory);
    let mut monitor = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    monitor.write_all(b"MONITOR\r\n").unwrap();
    let mut reader = BufReader::new(monitor.try_clone().unwrap());
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert_eq!(ok, "+OK\r\n");
    let store = Arc::new(store_at(&server.url(), "declared"));
    // Every script, and every path of the waiting ones.
    store.restock(&"x".to_string(), 2).unwrap();
    sold_out(&store, "y");
    store.set_low_stock_threshold(&"x".to_string(), 1).unwrap();
    let hold = store.reserve(&lines(&[("x", 1)])).unwrap();
    store.extend(hold.id(), Duration::from_millis(1)).unwrap();
    thread::sleep(Duration::from_millis(5));
    store.expire_due();
    let keyed = ReserveOptions::new().idempotency_key("order-1");
    let keyed_hold = store.reserve_with(&lines(&[("x", 1)]), &keyed).unwrap();
    store.release(keyed_hold.id()).unwrap();
    let _ = store.sell(&lines(&[("x", 5)]));
    let waiter = {
        let store = Arc::clone(&store);
        thread::spawn(move || store.reserve_timeout(&lines(&[("x", 1), ("y", 1)]), NEVER))
    };
    until_queued(&store, "y", 1);
    store.restock(&"y".to_string(), 1).unwrap();
    let granted = waiter.join().unwrap().unwrap();
    store.commit(granted.id()).unwrap();
    assert_eq!(
        store.reserve_timeout(&lines(&[("y", 1)]), Duration::from_millis(50)),
        Err(StockError::Timeout)
    );
    let _: () = redis::cmd("PING")
        .query(
            &mut redis::Client::open(server.url())
                .unwrap()
                .get_connection()
                .unwrap(),
        )
        .unwrap();
    // Read the monitor until the final PING.
    monitor
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (mut declared, mut touched) = (BTreeSet::new(), BTreeSet::new());
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let (from_script, args) = monitor_args(line.trim_end());
        let Some(command) = args.first() else {
            continue;
        };
        let command = String::from_utf8_lossy(command).to_ascii_uppercase();
        if !from_script && command == "PING" {
            break;
        }
        if !from_script && command == "FCALL" {
            let count: usize = String::from_utf8_lossy(&args[2]).parse().unwrap();
            declared.extend(args[3..3 + count].iter().cloned());
        } else if from_script && command != "TIME" {
            let keys = if command == "DEL" {
                &args[1..]
            } else {
                &args[1..2]
            };
            touched.extend(keys.iter().map(|key| (key.clone(), command.clone())));
        }
    }
    let undeclared: Vec<String> = touched
        .iter()
        .filter(|(key, _)| !declared.contains(key))
        .map(|(key, command)| format!("{command} {}", String::from_utf8_lossy(key)))
        .collect();
    assert!(undeclared.is_empty(), "undeclared keys: {undeclared:?}");
    assert!(touched.len() > 10, "the monitor saw the scripts' commands");
}

/// The commands the server ran while `run` ran, as `MONITOR` shows them: whether a script
/// ran it, and its arguments.
fn monitored(server: &RedisServer, run: impl FnOnce()) -> Vec<(bool, Vec<Vec<u8>>)> {
    let mut monitor = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    monitor.write_all(b"MONITOR\r\n").unwrap();
    monitor
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(monitor);
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert_eq!(ok, "+OK\r\n");
    run();
    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("ECHO")
        .arg("monitored-end")
        .query(&mut admin)
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let (from_script, args) = monitor_args(line.trim_end());
        if !from_script && args.get(1).is_some_and(|arg| arg == b"monitored-end") {
            return seen;
        }
        seen.push((from_script, args));
    }
}

#[test]
fn a_refused_call_changes_nothing_but_its_refusal_count_and_request_record() {
    // A correct store: every check that can refuse runs before a script's first write, so
    // a refused call writes nothing but the refusals statistic and its request's answer
    // (a waiting request with an unknown SKU: refused before it takes the others).
    let server = RedisServer::start(Durability::Memory);
    let store = store_at(&server.url(), "refused");
    store.restock(&"x".to_string(), 2).unwrap();
    sold_out(&store, "y");
    let done = store.reserve(&lines(&[("x", 1)])).unwrap();
    store.commit(done.id()).unwrap();
    let keyed = ReserveOptions::new().idempotency_key("order-1");
    store.reserve_with(&lines(&[("x", 1)]), &keyed).unwrap();
    let before = (store.level(&"x".to_string()), store.level(&"y".to_string()));
    let too_many = RedisStore::<String>::QUANTITY_MAX + 1;
    let seen = monitored(&server, || {
        let refusals = [
            store.reserve(&lines(&[("x", 1), ("y", 1)])).map(drop),
            store.sell(&lines(&[("x", 1), ("y", 1)])),
            store.reserve(&lines(&[("nope", 1), ("x", 1)])).map(drop),
            store.restock(&"x".to_string(), too_many).map(drop),
            store.commit(done.id()).map(drop),
            store.extend(done.id(), NEVER).map(drop),
            store.set_low_stock_threshold(&"nope".to_string(), 1),
            store.reserve_with(&lines(&[("x", 2)]), &keyed).map(drop),
            store
                .reserve_timeout(&lines(&[("x", 1), ("nope", 1)]), NEVER)
                .map(drop),
        ];
        for (index, refusal) in refusals.iter().enumerate() {
            assert!(refusal.is_err(), "call {index}: {refusal:?}");
        }
    });
    let writes = [
        "HSET", "HDEL", "HINCRBY", "ZADD", "ZREM", "ZPOPMIN", "XADD", "SET", "DEL", "INCR",
        "PEXPIRE", "RPUSH", "LPUSH", "LPOP", "LREM",
    ];
    let mut allowed = 0;
    let mut wrong = Vec::new();
    for (from_script, args) in seen.iter().filter(|(from_script, _)| *from_script) {
        let _ = from_script;
        let command = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        if !writes.contains(&command.as_str()) {
            continue;
        }
        let key = String::from_utf8_lossy(&args[1]).to_string();
        let record = key.starts_with("{refused}:requests:") && command != "HINCRBY";
        let refusal_count = key == "{refused}:stats"
            && command == "HINCRBY"
            && args.get(2).is_some_and(|field| field == b"refusals");
        if record || refusal_count {
            allowed += 1;
        } else {
            let rest: Vec<String> = args[2..]
                .iter()
                .map(|arg| String::from_utf8_lossy(arg).to_string())
                .collect();
            wrong.push(format!("{command} {key} {rest:?}"));
        }
    }
    assert!(wrong.is_empty(), "writes of refused calls: {wrong:?}");
    assert!(allowed >= 9, "each refusal recorded its answer");
    assert_eq!(
        (store.level(&"x".to_string()), store.level(&"y".to_string())),
        before
    );
}

#[test]
fn a_key_of_another_type_refuses_the_call_before_its_first_write() {
    // A correct store: a script checks its keys' types before its first write, so a key
    // another program overwrote makes the call Unavailable with nothing changed (not a
    // WRONGTYPE error after the level was already written).
    let server = RedisServer::start(Durability::Memory);
    let store = store_at(&server.url(), "typed");
    store.restock(&"x".to_string(), 5).unwrap();
    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    for command in [
        redis::cmd("DEL").arg(store.events_stream()).clone(),
        redis::cmd("SET")
            .arg(store.events_stream())
            .arg("not a stream")
            .clone(),
        // The scripts check a namespace's keys once per library load: load it again.
        redis::cmd("FUNCTION").arg("FLUSH").clone(),
    ] {
        let _: redis::Value = command.query(&mut admin).unwrap();
    }
    let sold = store.sell(&lines(&[("x", 1)]));
    assert_eq!(counts(&store, "x"), (5, 0), "the sale changed nothing");
    assert!(
        matches!(&sold, Err(StockError::Unavailable { reason }) if reason.contains("{typed}:events")),
        "{sold:?}"
    );
    assert!(store.reserve(&lines(&[("x", 1)])).is_err());
    assert_eq!(counts(&store, "x"), (5, 0), "nothing changed");
    assert_eq!(store.level(&"x".to_string()).unwrap().version, 1);
}

// ------------------------------------------------------------------ 9: bad replies

#[test]
fn a_reply_the_store_does_not_expect_is_unavailable_never_a_panic() {
    // A correct store: every reply it does not expect (empty, of the wrong type,
    // truncated, of an unknown status) is Unavailable with its text, never a panic.
    let bad: [&[u8]; 14] = [
        b"*0\r\n",
        b"*-1\r\n",
        b"$-1\r\n",
        b":-5\r\n",
        b":7\r\n",
        b"*1\r\n*0\r\n",
        b"*3\r\n$2\r\nok\r\n:9\r\n:1\r\n",
        b"+granted\r\n",
        b"*3\r\n$7\r\ngranted\r\n:1\r\n$1\r\nx\r\n",
        b"*2\r\n$6\r\nqueued\r\n:0\r\n",
        b"*3\r\n$7\r\nexpired\r\n:0\r\n*0\r\n",
        b"*3\r\n$2\r\no",
        b"-ERR boom\r\n",
        b"+mystery\r\n",
    ];
    let x = "x".to_string();
    let id = ReservationId::from_u64(u64::MAX);
    type Call = Box<dyn Fn(&Store) -> Result<(), StockError<String>>>;
    let calls: Vec<(&str, Call)> = vec![
        (
            "restock",
            Box::new(move |s| s.restock(&"x".to_string(), 1).map(drop)),
        ),
        (
            "reserve",
            Box::new(|s| s.reserve(&lines(&[("x", 1)])).map(drop)),
        ),
        (
            "reserve 2 lines",
            Box::new(|s| s.reserve(&lines(&[("x", 1), ("y", 1)])).map(drop)),
        ),
        (
            "reserve keyed",
            Box::new(|s| {
                let keyed = ReserveOptions::new().idempotency_key("k");
                s.reserve_with(&lines(&[("x", 1)]), &keyed).map(drop)
            }),
        ),
        ("sell", Box::new(|s| s.sell(&lines(&[("x", 1)])))),
        ("commit", Box::new(move |s| s.commit(id).map(drop))),
        ("release", Box::new(move |s| s.release(id).map(drop))),
        (
            "extend",
            Box::new(move |s| s.extend(id, Duration::from_secs(1)).map(drop)),
        ),
        ("expire_due", Box::new(|s| s.try_expire_due().map(drop))),
        (
            "threshold",
            Box::new(move |s| s.set_low_stock_threshold(&x, 1)),
        ),
        (
            "reserve_timeout",
            Box::new(|s| {
                s.reserve_timeout(&lines(&[("x", 1)]), Duration::from_millis(100))
                    .map(drop)
            }),
        ),
    ];
    for reply in bad {
        let server = FakeRedis::start(reply);
        for with_sink in [false, true] {
            let (sink, _received) = ChannelSink::unbounded();
            let mut builder = RedisStore::<String>::builder(&server.url(), "fake")
                .command_timeout(Duration::from_millis(200));
            if with_sink {
                builder = builder.event_sink(sink);
            }
            let store = builder.build().unwrap();
            for (name, call) in &calls {
                let outcome = catch_unwind(AssertUnwindSafe(|| call(&store)));
                let text = String::from_utf8_lossy(reply);
                match outcome {
                    Err(_) => panic!("{name} panicked on {text:?}"),
                    Ok(Err(StockError::Unavailable { reason })) => {
                        assert!(!reason.is_empty(), "{name}, {text:?}");
                    }
                    Ok(other) => panic!("{name} answered {other:?} to {text:?}"),
                }
            }
        }
    }
}

// ------------------------------------------------------------------ 10: lost replies

#[test]
fn a_lost_reply_never_applies_a_call_twice() {
    // A correct store: a call whose reply is lost is resent once with its request id and
    // gets its first answer back: one sale, one restock, one commit, whatever retries.
    let server = shared();
    let namespace = fresh_namespace("lost-reply");
    let observer = store_at(&server.url(), &namespace);
    let proxy = FaultProxy::start(server.port());
    let store = store_at(&proxy.url(), &namespace);
    store.restock(&"a".to_string(), 10).unwrap();
    // Sell: its reply is the bulk string "ok".
    proxy.lose_replies_containing(b"$2\r\nok\r\n", 1);
    let sold = store.sell(&lines(&[("a", 1)]));
    if let Err(StockError::Unavailable { .. }) = sold {
        store.sell(&lines(&[("a", 1)])).unwrap(); // the caller's natural retry
    }
    assert_eq!(proxy.lost(), 1);
    assert_eq!(counts(&observer, "a"), (9, 0), "one sale");
    // Restock and commit.
    proxy.lose_replies_containing(b"*", 1);
    assert_eq!(store.restock(&"a".to_string(), 1).unwrap().on_hand, 10);
    let hold = store.reserve(&lines(&[("a", 2)])).unwrap();
    proxy.lose_replies_containing(b"$2\r\nok\r\n", 1);
    assert_eq!(store.commit(hold.id()).unwrap(), hold);
    assert_eq!(proxy.lost(), 3);
    assert_eq!(counts(&observer, "a"), (8, 0));
    // Negative control: when the resend is lost too, the call is Unavailable and a retry
    // (a new call) sells again: the check above can see a second sale.
    proxy.lose_replies_containing(b"$2\r\nok\r\n", 2);
    assert!(matches!(
        store.sell(&lines(&[("a", 1)])),
        Err(StockError::Unavailable { .. })
    ));
    store.sell(&lines(&[("a", 1)])).unwrap();
    assert_eq!(counts(&observer, "a"), (6, 0), "two sales");
}

#[test]
fn an_unkeyed_hold_whose_reserve_was_unavailable_is_released_by_the_next_call() {
    // A correct store: when both attempts of a `reserve` without an idempotency key lose
    // their replies, the caller gets `Unavailable` and has no hold; the script may have
    // opened one (it did here), and without a TTL nothing would give it back. The store
    // drew its id, so its next answered call releases it. A keyed hold stays: its caller
    // retries with the key and gets it.
    let server = shared();
    let namespace = fresh_namespace("in-doubt");
    let observer = store_at(&server.url(), &namespace);
    let proxy = FaultProxy::start(server.port());
    let store = store_at(&proxy.url(), &namespace);
    let a = "a".to_string();
    store.restock(&a, 10).unwrap();
    proxy.lose_replies_containing(b"$2\r\nok\r\n", 2);
    assert!(matches!(
        store.reserve(&lines(&[("a", 2)])),
        Err(StockError::Unavailable { .. })
    ));
    assert_eq!(proxy.lost(), 2);
    assert_eq!(
        counts(&observer, "a"),
        (10, 2),
        "the script opened the hold"
    );
    store.restock(&a, 1).unwrap();
    assert_eq!(counts(&observer, "a"), (11, 0), "the next call released it");
    // A keyed hold in the same straits is kept for its caller's retry.
    let options = ReserveOptions::new().idempotency_key("order-1");
    proxy.lose_replies_containing(b"$2\r\nok\r\n", 2);
    assert!(matches!(
        store.reserve_with(&lines(&[("a", 3)]), &options),
        Err(StockError::Unavailable { .. })
    ));
    store.restock(&a, 1).unwrap();
    assert_eq!(counts(&observer, "a"), (12, 3), "kept for the retry");
    let hold = store.reserve_with(&lines(&[("a", 3)]), &options).unwrap();
    assert_eq!(store.commit(hold.id()).unwrap().lines(), &[(a.clone(), 3)]);
    assert_eq!(counts(&observer, "a"), (9, 0));
}

/// A namespace's observer on the shared server, a fault proxy in front of that server, and
/// a store behind the proxy whose calls time out after 200 ms (so a request the proxy
/// holds back is given up on and resent).
fn behind_a_proxy(what: &str) -> (Store, FaultProxy, Store) {
    let server = shared();
    let namespace = fresh_namespace(what);
    let observer = store_at(&server.url(), &namespace);
    let proxy = FaultProxy::start(server.port());
    let store = RedisStore::<String>::builder(&proxy.url(), &namespace)
        .command_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    (observer, proxy, store)
}

/// Waits until `count` requests the proxy held back went on to the server, then a little
/// longer for the server to read them (it reads every ready connection each turn of its
/// event loop).
fn until_delivered(proxy: &FaultProxy, count: u64) {
    while proxy.delayed() < count {
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(100));
}

#[test]
fn a_resend_that_overtakes_its_first_attempt_applies_the_call_once() {
    // A correct store: a first attempt held up on its way times out, the store resends it
    // on a fresh connection and the resend runs first; when the first attempt reaches the
    // server after all, it finds the answer the resend recorded and changes nothing. (The
    // server runs the calls of two connections in no promised order.)
    let (observer, proxy, store) = behind_a_proxy("overtaken");
    store.restock(&"a".to_string(), 10).unwrap();
    // The one-line sale's first attempt (the rule holds one request; the resend passes).
    proxy.delay_requests_containing(b"_sell_one\r\n", Duration::from_millis(800), 1);
    store.sell(&lines(&[("a", 1)])).unwrap();
    assert_eq!(counts(&observer, "a"), (9, 0), "the resend sold");
    // The held first attempt goes on to the server after the resend's answer.
    until_delivered(&proxy, 1);
    assert_eq!(counts(&observer, "a"), (9, 0), "one sale, not two");
}

#[test]
fn a_reserve_still_on_its_way_after_its_store_gave_up_opens_nothing() {
    // A correct store: both attempts of a `reserve` without an idempotency key are held up
    // on their way, so the caller gets `Unavailable`. The store's next call aborts that
    // request (records an answer under its request id) before it releases the hold, so
    // the attempts that reach the server later find the answer and open no hold that
    // nobody has.
    let (observer, proxy, store) = behind_a_proxy("aborted");
    let a = "a".to_string();
    store.restock(&a, 10).unwrap();
    proxy.delay_requests_containing(b"_reserve\r\n", Duration::from_millis(800), 2);
    assert!(matches!(
        store.reserve(&lines(&[("a", 2)])),
        Err(StockError::Unavailable { .. })
    ));
    store.restock(&a, 1).unwrap();
    until_delivered(&proxy, 2);
    assert_eq!(
        counts(&observer, "a"),
        (11, 0),
        "no hold opened after the abort"
    );
}
