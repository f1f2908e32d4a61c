//! `RedisStore` across OS processes (feature `redis`): 4 processes × 4 threads replay the
//! real order log on one namespace and conserve every unit; a naive `GET`/`SET` peer run
//! the same way is caught overselling (the negative control); a client killed with
//! `kill -9` leaves holds that expire by TTL and a waiter that leaves the queue.
//!
//! The same replay runs through a fault-injecting proxy (`support/fault_proxy.rs`) that
//! loses about 1 % of the replies and cuts about 1 % of the requests' connections.
//!
//! The child processes are this test binary itself, running the ignored test `worker`
//! with the environment variables below.

#![cfg(feature = "redis")]

#[path = "support/fault_proxy.rs"]
mod fault_proxy;
#[path = "support/order_log.rs"]
mod order_log;
#[path = "support/redis_server.rs"]
mod redis_server;

use order_log::{orders, Order};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fault_proxy::FaultProxy;
use redis_server::{fresh_namespace, Durability, RedisServer};
use stockledger::{RedisStore, ReserveOptions, StockError, StockStore, WaitingStore};

/// The worker's mode: `orders`, `faulty` (orders through a faulty network: calls answered
/// `Unavailable` are retried), `naive`, `wait`.
const MODE: &str = "STOCKLEDGER_REDIS_WORKER";
const URL: &str = "STOCKLEDGER_REDIS_URL";
const NAMESPACE: &str = "STOCKLEDGER_REDIS_NAMESPACE";
const INDEX: &str = "STOCKLEDGER_REDIS_WORKER_INDEX";
const TTL_MS: &str = "STOCKLEDGER_REDIS_TTL_MS";

const PROCESSES: usize = 4;
const THREADS: usize = 4;
/// Orders of the log replayed per run (the first ones; the whole log takes minutes in a
/// debug build).
const ORDERS_MAX: usize = 4_000;
/// Start stock per SKU: this share of what the `Completed` orders buy, so SKUs sell out.
const STOCK_RATIO: f64 = 0.6;
/// A worker prints its progress after this many orders.
const PROGRESS_EVERY: usize = 25;
/// How long the checks wait for expiries and queues at most (a failure past it).
const PATIENCE: Duration = Duration::from_secs(60);

/// Start stock per SKU: `floor(STOCK_RATIO × units the completed orders buy)`.
fn start_stock(orders: &[Order]) -> BTreeMap<String, u64> {
    let mut demand: BTreeMap<String, u64> = BTreeMap::new();
    for order in orders {
        for (sku, quantity) in &order.lines {
            *demand.entry(sku.clone()).or_default() += if order.completed { *quantity } else { 0 };
        }
    }
    demand
        .into_iter()
        .map(|(sku, units)| (sku, (units as f64 * STOCK_RATIO) as u64))
        .collect()
}

/// Per SKU, what a run ended with.
#[derive(Debug, Default, Clone, Copy)]
struct Ledger {
    start: u64,
    on_hand: u64,
    reserved: u64,
    sold: u64,
}

/// The SKUs whose ledger breaks `start = on hand + sold` or keeps something reserved.
fn violations(ledgers: &BTreeMap<String, Ledger>) -> Vec<String> {
    ledgers
        .iter()
        .filter(|(_, ledger)| ledger.start != ledger.on_hand + ledger.sold || ledger.reserved != 0)
        .map(|(sku, ledger)| format!("{sku}: {ledger:?}"))
        .collect()
}

// ---------------------------------------------------------------- the child side

/// The child process: runs when `STOCKLEDGER_REDIS_WORKER` is set (never by itself).
#[test]
#[ignore = "a child process of the tests below"]
fn worker() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    let url = std::env::var(URL).unwrap();
    let namespace = std::env::var(NAMESPACE).unwrap();
    let index: usize = std::env::var(INDEX).unwrap().parse().unwrap();
    match mode.as_str() {
        "orders" | "faulty" => {
            let ttl = Duration::from_millis(std::env::var(TTL_MS).unwrap().parse().unwrap());
            let retry = mode == "faulty";
            let store = Arc::new(
                RedisStore::<String>::builder(&url, &namespace)
                    .command_timeout(Duration::from_secs(2))
                    .build()
                    .unwrap(),
            );
            let sold = run_threads(index, |order_index, order, sold| {
                place_order(&store, index, order_index, order, (ttl, retry), sold)
            });
            println!("TALLY {}", serde_json::to_string(&sold).unwrap());
        }
        "naive" => {
            let client = redis::Client::open(url.as_str()).unwrap();
            let sold = run_threads(index, |_, order, sold| {
                let mut connection = client.get_connection().unwrap();
                naive_order(&mut connection, &namespace, order, sold);
            });
            println!("TALLY {}", serde_json::to_string(&sold).unwrap());
        }
        "wait" => {
            let store = RedisStore::<String>::connect(&url, &namespace).unwrap();
            println!("WAITING");
            let _ = store.reserve_timeout(&[("w".to_string(), 1)], Duration::from_secs(600));
        }
        other => panic!("unknown worker mode {other}"),
    }
}

/// Runs this worker's share of the orders (every `PROCESSES`-th, from `index`) on
/// `THREADS` threads; returns the units sold per SKU.
fn run_threads(
    index: usize,
    place: impl Fn(usize, &Order, &mut BTreeMap<String, u64>) + Sync,
) -> BTreeMap<String, u64> {
    let orders = orders(ORDERS_MAX);
    let mine: Vec<(usize, &Order)> = orders
        .iter()
        .enumerate()
        .filter(|(position, _)| position % PROCESSES == index)
        .collect();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let tallies: Vec<BTreeMap<String, u64>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (mine, place, done) = (&mine, &place, &done);
                scope.spawn(move || {
                    let mut sold = BTreeMap::new();
                    for (order_index, order) in mine.iter().skip(thread).step_by(THREADS) {
                        place(*order_index, order, &mut sold);
                        let finished = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if finished % PROGRESS_EVERY == 0 {
                            println!("PROGRESS {finished}");
                        }
                    }
                    sold
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap())
            .collect()
    });
    let mut sold = BTreeMap::new();
    for tally in tallies {
        for (sku, units) in tally {
            *sold.entry(sku).or_default() += units;
        }
    }
    sold
}

/// One order on the store: hold (with a TTL and an idempotency key), then commit or
/// release; counts what it sold. With `retry`, a call answered `Unavailable` is made
/// again (the hold with the same key) until the engine answers.
fn place_order(
    store: &RedisStore<String>,
    worker: usize,
    order_index: usize,
    order: &Order,
    (ttl, retry): (Duration, bool),
    sold: &mut BTreeMap<String, u64>,
) {
    let options = ReserveOptions::new()
        .ttl(ttl)
        .idempotency_key(format!("order-{worker}-{order_index}"));
    let hold = loop {
        match store.reserve_with(&order.lines, &options) {
            Ok(hold) => break hold,
            Err(StockError::InsufficientStock { .. }) => return,
            Err(StockError::Unavailable { .. }) if retry => continue,
            Err(error) => panic!("{error}"),
        }
    };
    let mut unavailable = false;
    loop {
        let outcome = if order.completed {
            store.commit(hold.id())
        } else {
            store.release(hold.id())
        };
        match outcome {
            Err(StockError::Unavailable { .. }) if retry => unavailable = true,
            // The TTL ran out first (a slow machine): the stock went back, nothing sold.
            Err(StockError::Expired(_)) => return,
            // Ok, or an attempt answered `Unavailable` went through (the TTL is far away).
            _ if ok_or_ours(&outcome, unavailable) => {
                if order.completed {
                    for (sku, units) in hold.lines() {
                        *sold.entry(sku.clone()).or_default() += units;
                    }
                }
                return;
            }
            Err(error) => panic!("{error}"),
            Ok(_) => unreachable!("an Ok is taken above"),
        }
    }
}

/// Whether `outcome` of a commit or release means it took effect: `Ok`, or
/// `UnknownReservation` after an attempt answered `Unavailable`.
fn ok_or_ours<T>(outcome: &Result<T, StockError<String>>, unavailable: bool) -> bool {
    outcome.is_ok() || (unavailable && matches!(outcome, Err(StockError::UnknownReservation(_))))
}

/// The key of the naive peer's counter of `sku`.
fn naive_key(namespace: &str, sku: &str) -> String {
    format!("{{{namespace}}}:naive:{sku}")
}

/// One order on the naive peer: for a completed order, each line reads the count
/// (`GET`), checks it, and writes the difference (`SET`): the lost update of the seed.
fn naive_order(
    connection: &mut redis::Connection,
    namespace: &str,
    order: &Order,
    sold: &mut BTreeMap<String, u64>,
) {
    if !order.completed {
        return;
    }
    for (sku, units) in &order.lines {
        let key = naive_key(namespace, sku);
        let on_hand: u64 = redis::cmd("GET").arg(&key).query(connection).unwrap();
        if on_hand >= *units {
            redis::cmd("SET")
                .arg(&key)
                .arg(on_hand - units)
                .query::<()>(connection)
                .unwrap();
            *sold.entry(sku.clone()).or_default() += units;
        }
    }
}

// ---------------------------------------------------------------- the parent side

/// Starts the worker process `index` in `mode`.
fn spawn_worker(mode: &str, url: &str, namespace: &str, index: usize, ttl: Duration) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "worker",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(MODE, mode)
        .env(URL, url)
        .env(NAMESPACE, namespace)
        .env(INDEX, index.to_string())
        .env(TTL_MS, ttl.as_millis().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Reads `child`'s output until a line starting with `prefix`; returns the rest of it, or
/// `None` if the child ended first.
fn read_until(child: &mut Child, prefix: &str) -> Option<String> {
    let stdout = child.stdout.as_mut().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            return None;
        }
        // libtest may print `test worker ... ` before the worker's first line.
        if let Some(start) = line.find(prefix) {
            return Some(line[start + prefix.len()..].trim().to_string());
        }
    }
}

/// Waits for `child` and returns its tally of units sold per SKU.
fn tally_of(mut child: Child) -> BTreeMap<String, u64> {
    let tally = read_until(&mut child, "TALLY ").expect("the worker printed its tally");
    assert!(child.wait().unwrap().success(), "a worker failed");
    serde_json::from_str(&tally).unwrap()
}

fn add(into: &mut BTreeMap<String, u64>, tally: BTreeMap<String, u64>) {
    for (sku, units) in tally {
        *into.entry(sku).or_default() += units;
    }
}

/// Entries of the namespace's stream per SKU: the versions of its changes in stream order,
/// and the units its `committed` and `sold` entries took.
fn stream_per_sku(url: &str, stream: &str) -> BTreeMap<String, (Vec<u64>, u64)> {
    use redis::streams::StreamRangeReply;
    let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
    let mut per_sku: BTreeMap<String, (Vec<u64>, u64)> = BTreeMap::new();
    let mut from = "-".to_string();
    loop {
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query(&mut connection)
            .unwrap();
        let Some(last) = reply.ids.last() else {
            return per_sku;
        };
        from = format!("({}", last.id);
        for entry in &reply.ids {
            // One field, `event`: "kind id quantity on_hand reserved version SKU".
            let event: String = entry.get("event").unwrap();
            let [kind, _id, quantity, _on_hand, _reserved, version, sku] = event
                .splitn(7, ' ')
                .collect::<Vec<_>>()
                .try_into()
                .unwrap_or_else(|parts| panic!("malformed entry {parts:?}"));
            if kind == "low_stock" {
                continue;
            }
            let (versions, sold) = per_sku.entry(sku.to_string()).or_default();
            versions.push(version.parse().unwrap());
            if matches!(kind, "committed" | "sold") {
                *sold += quantity.parse::<u64>().unwrap();
            }
        }
    }
}

/// Restocks the start stock of `orders` in a fresh namespace; returns it.
fn stocked(server: &RedisServer, what: &str, orders: &[Order]) -> (String, BTreeMap<String, u64>) {
    let namespace = fresh_namespace(what);
    let store = RedisStore::<String>::connect(&server.url(), &namespace).unwrap();
    let start = start_stock(orders);
    for (sku, units) in &start {
        if *units > 0 {
            store.restock(sku, *units).unwrap();
        }
    }
    (namespace, start)
}

/// The ledgers of `store` given the start stock and the units sold per SKU.
fn ledgers(
    store: &RedisStore<String>,
    start: &BTreeMap<String, u64>,
    sold: &BTreeMap<String, u64>,
) -> BTreeMap<String, Ledger> {
    start
        .iter()
        .map(|(sku, start)| {
            let level = store.level(sku).unwrap_or_default();
            let ledger = Ledger {
                start: *start,
                on_hand: level.on_hand,
                reserved: level.reserved,
                sold: sold.get(sku).copied().unwrap_or_default(),
            };
            (sku.clone(), ledger)
        })
        .collect()
}

/// Every SKU's stream entries are its versions 1, 2, 3, ... exactly once, in order.
fn assert_one_entry_per_change(
    store: &RedisStore<String>,
    stream: &BTreeMap<String, (Vec<u64>, u64)>,
    start: &BTreeMap<String, u64>,
) {
    let mut changes = 0;
    for sku in start.keys() {
        let Some(level) = store.level(sku) else {
            continue;
        };
        let versions = stream
            .get(sku)
            .map(|(versions, _)| versions.clone())
            .unwrap_or_default();
        assert_eq!(
            versions,
            (1..=level.version).collect::<Vec<_>>(),
            "stream of {sku}"
        );
        changes += versions.len();
    }
    eprintln!("stream: {changes} entries, one per change");
}

/// Stocks a fresh namespace `label` on `server` for the bundled orders, has `PROCESSES`
/// workers replay them through `workers_url` (the server, or a proxy in front of it), and
/// checks the outcome on the server itself: per SKU start = on hand + sold, nothing left
/// reserved, one stream entry per change, and the outbox agreeing with the workers'
/// tallies. Returns the units sold in all and started with, and the store.
fn replay_and_check(
    server: &RedisServer,
    workers_url: &str,
    label: &str,
) -> (u64, u64, RedisStore<String>, usize) {
    let orders = orders(ORDERS_MAX);
    let (namespace, start) = stocked(server, label, &orders);
    let ttl = Duration::from_secs(600);
    let children: Vec<Child> = (0..PROCESSES)
        .map(|index| spawn_worker(label, workers_url, &namespace, index, ttl))
        .collect();
    let mut sold = BTreeMap::new();
    for child in children {
        add(&mut sold, tally_of(child));
    }
    let store = RedisStore::<String>::connect(&server.url(), &namespace).unwrap();
    let ledgers = ledgers(&store, &start, &sold);
    assert_eq!(violations(&ledgers), Vec::<String>::new());
    let stream = stream_per_sku(&server.url(), store.events_stream());
    assert_one_entry_per_change(&store, &stream, &start);
    // The outbox agrees with the workers' own tallies.
    for (sku, ledger) in &ledgers {
        let streamed = stream.get(sku).map_or(0, |(_, sold)| *sold);
        assert_eq!(streamed, ledger.sold, "units sold of {sku} by the stream");
    }
    let sold_total: u64 = ledgers.values().map(|ledger| ledger.sold).sum();
    let start_total: u64 = start.values().sum();
    (sold_total, start_total, store, orders.len())
}

#[test]
fn four_processes_replay_the_orders_and_conserve_every_unit() {
    let server = RedisServer::start(Durability::Memory);
    let (sold_total, start_total, store, orders) =
        replay_and_check(&server, &server.url(), "orders");
    assert!(sold_total > 0 && sold_total <= start_total);
    let stats = store.stats();
    eprintln!(
        "{PROCESSES} processes x {THREADS} threads, {orders} orders: {sold_total} of {start_total} units sold, {} holds, {} refusals",
        stats.reserves,
        stats.refusals
    );
}

#[test]
fn four_processes_replay_through_lost_replies_and_cut_connections_and_conserve_every_unit() {
    // A correct store: with about 1 % of replies lost and 1 % of connections cut, every
    // call applies once: per SKU start = on hand + sold, nothing stays reserved, the
    // workers' tallies match the outbox, and the stream has one entry per change.
    let server = RedisServer::start(Durability::Memory);
    let proxy = FaultProxy::start(server.port());
    proxy.random_faults(10_000, 10_000, 0x5eed);
    let (sold_total, _, _, _) = replay_and_check(&server, &proxy.url(), "faulty");
    assert!(
        proxy.lost() > 0 && proxy.cut() > 0,
        "the proxy injected faults"
    );
    eprintln!(
        "faulty network: {} replies lost, {} connections cut, {sold_total} units sold, every unit conserved",
        proxy.lost(),
        proxy.cut()
    );
}

#[test]
fn the_naive_get_set_peer_oversells_and_is_caught() {
    let server = RedisServer::start(Durability::Memory);
    let orders = orders(ORDERS_MAX);
    let namespace = fresh_namespace("naive");
    let start = start_stock(&orders);
    let mut connection = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    for (sku, units) in &start {
        redis::cmd("SET")
            .arg(naive_key(&namespace, sku))
            .arg(*units)
            .query::<()>(&mut connection)
            .unwrap();
    }
    let children: Vec<Child> = (0..PROCESSES)
        .map(|index| spawn_worker("naive", &server.url(), &namespace, index, Duration::ZERO))
        .collect();
    let mut sold = BTreeMap::new();
    for child in children {
        add(&mut sold, tally_of(child));
    }
    let ledgers: BTreeMap<String, Ledger> = start
        .iter()
        .map(|(sku, start)| {
            let on_hand: u64 = redis::cmd("GET")
                .arg(naive_key(&namespace, sku))
                .query(&mut connection)
                .unwrap();
            let sold = sold.get(sku).copied().unwrap_or_default();
            (
                sku.clone(),
                Ledger {
                    start: *start,
                    on_hand,
                    reserved: 0,
                    sold,
                },
            )
        })
        .collect();
    let caught = violations(&ledgers);
    let oversold: u64 = ledgers
        .values()
        .map(|ledger| (ledger.on_hand + ledger.sold).saturating_sub(ledger.start))
        .sum();
    eprintln!(
        "naive peer: {} SKUs broke conservation, {oversold} units sold twice",
        caught.len()
    );
    assert!(
        !caught.is_empty(),
        "the checker missed the naive peer's lost updates"
    );
}

#[test]
fn a_client_killed_mid_run_leaves_holds_that_expire_by_ttl() {
    let server = RedisServer::start(Durability::Memory);
    let orders = orders(ORDERS_MAX);
    let (namespace, start) = stocked(&server, "killed", &orders);
    let ttl = Duration::from_secs(2);
    let mut children: Vec<Child> = (0..PROCESSES)
        .map(|index| spawn_worker("orders", &server.url(), &namespace, index, ttl))
        .collect();
    let mut victim = children.remove(0);
    read_until(&mut victim, "PROGRESS ").expect("the victim made progress");
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let mut sold = BTreeMap::new();
    for child in children {
        add(&mut sold, tally_of(child));
    }
    let store = RedisStore::<String>::connect(&server.url(), &namespace).unwrap();
    // The victim's tally is lost with it: what it sold is read from the outbox, and the
    // survivors' tallies must be part of it.
    let reserved = |store: &RedisStore<String>| -> u64 {
        start
            .keys()
            .filter_map(|sku| store.level(sku))
            .map(|level| level.reserved)
            .sum()
    };
    let open_at_kill = reserved(&store);
    let waited = Instant::now();
    let mut expired = 0;
    while reserved(&store) > 0 {
        assert!(
            waited.elapsed() < PATIENCE,
            "holds of the killed client never expired"
        );
        expired += store.expire_due().len();
        thread::sleep(Duration::from_millis(100));
    }
    let stream = stream_per_sku(&server.url(), store.events_stream());
    let streamed: BTreeMap<String, u64> = stream
        .iter()
        .map(|(sku, (_, sold))| (sku.clone(), *sold))
        .collect();
    for (sku, units) in &sold {
        assert!(
            streamed.get(sku).copied().unwrap_or_default() >= *units,
            "{sku}"
        );
    }
    let ledgers = ledgers(&store, &start, &streamed);
    assert_eq!(violations(&ledgers), Vec::<String>::new());
    assert_one_entry_per_change(&store, &stream, &start);
    eprintln!(
        "killed client: {open_at_kill} units held at the end of the run, {expired} holds expired by TTL"
    );
}

#[test]
fn a_waiter_whose_process_died_leaves_the_queue_and_passes_the_turn() {
    let server = RedisServer::start(Durability::Memory);
    let namespace = fresh_namespace("vanished");
    let store = Arc::new(RedisStore::<String>::connect(&server.url(), &namespace).unwrap());
    let w = "w".to_string();
    store.restock(&w, 1).unwrap();
    store.sell(&[(w.clone(), 1)]).unwrap();
    let mut child = spawn_worker("wait", &server.url(), &namespace, 0, Duration::ZERO);
    read_until(&mut child, "WAITING").expect("the child waits");
    let waited = Instant::now();
    while store.queued(&w).unwrap() < 1 {
        assert!(waited.elapsed() < PATIENCE, "the child never queued");
        thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let next = {
        let store = Arc::clone(&store);
        let request = vec![(w.clone(), 1)];
        thread::spawn(move || store.reserve_timeout(&request, PATIENCE))
    };
    while store.queued(&w).unwrap() < 2 {
        thread::sleep(Duration::from_millis(5));
    }
    store.restock(&w, 1).unwrap();
    // The dead head still holds the turn until its lease runs out: no barging meanwhile.
    assert_eq!(
        store.sell(&[(w.clone(), 1)]),
        Err(StockError::InsufficientStock {
            sku: w.clone(),
            requested: 1,
            available: 0
        })
    );
    let hold = next.join().unwrap().expect("the live waiter was served");
    assert_eq!(store.queued(&w).unwrap(), 0);
    let level = store.level(&w).unwrap();
    assert_eq!((level.on_hand, level.reserved), (1, 1));
    store.commit(hold.id()).unwrap();
    eprintln!(
        "vanished waiter: the next waiter was served after {:?}",
        waited.elapsed()
    );
}
