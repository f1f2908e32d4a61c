//! `RedisStore` on a real Redis Cluster (feature `redis`): 3 primaries and 3 replicas
//! started by the tests (`support/redis_cluster.rs`). The contract on namespaces of every
//! primary, stores built from a replica, a manual failover, a `kill -9` of a primary (with
//! and without `wait_replicas`), a live slot migration, and a negative control: a client
//! that resends timed-out calls under fresh request ids is caught applying a change twice.
//!
//! Each test starts with one line saying what a correct store does. The fault tests take
//! turns (`FAULTS`) on the shared cluster, so that one fault never lands in another's run.

#![cfg(feature = "redis")]

#[path = "support/redis_cluster.rs"]
mod redis_cluster;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use redis_cluster::{url, RedisCluster as Cluster};
use redis_server::fresh_namespace;
use stockledger::{RedisCluster, RedisStore, ReserveOptions, StockError, StockStore, WaitingStore};

type Store = RedisStore<String>;

/// The cluster most tests share (its nodes stop when the test process exits).
fn shared() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

/// The fault tests on the shared cluster run one at a time.
fn fault_turn() -> std::sync::MutexGuard<'static, ()> {
    static FAULTS: Mutex<()> = Mutex::new(());
    FAULTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A handle on `cluster` with short timeouts: calls give up after 1 s, and wait up to
/// 15 s for a failover or a migration.
fn handle(cluster: &Cluster) -> RedisCluster {
    RedisCluster::new(cluster.urls())
        .command_timeout(Duration::from_secs(1))
        .failover_timeout(Duration::from_secs(15))
        .pool_size(8)
}

fn sku(name: &str) -> String {
    name.to_string()
}

fn lines(request: &[(&str, u64)]) -> Vec<(String, u64)> {
    request
        .iter()
        .map(|(name, units)| (sku(name), *units))
        .collect()
}

fn counts(store: &Store, name: &str) -> (u64, u64) {
    let level = store.level(&sku(name)).unwrap();
    (level.on_hand, level.reserved)
}

/// A fresh namespace whose slot the primary on `port` owns.
fn namespace_on(cluster: &Cluster, port: u16, what: &str) -> String {
    loop {
        let namespace = fresh_namespace(what);
        let slot = cluster.slot_of(&format!("{{{namespace}}}"));
        if cluster.owner_of(slot) == port {
            return namespace;
        }
    }
}

// ------------------------------------------------------------------ the contract

/// The contract checks of `tests/contract.rs` and `tests/lifecycle.rs` that say most about
/// a store on a cluster: all or nothing, merged lines, typed errors, exactly-once
/// resolution, versions, idempotency keys, waiting across stores.
fn contract(store: &Arc<Store>, peer: &Store) {
    // Restock creates the SKU; versions grow by one per change.
    assert_eq!(store.level(&sku("a")), None);
    let level = store.restock(&sku("a"), 5).unwrap();
    assert_eq!((level.on_hand, level.reserved, level.version), (5, 0, 1));
    store.restock(&sku("b"), 1).unwrap();
    // All or nothing: a short line refuses the whole request.
    let refused = store.reserve(&lines(&[("a", 2), ("b", 2)]));
    assert_eq!(
        refused,
        Err(StockError::InsufficientStock {
            sku: sku("b"),
            requested: 2,
            available: 1
        })
    );
    assert_eq!(counts(store, "a"), (5, 0));
    // Lines are merged: 3 + 3 of "a" is 6 > 5.
    assert!(matches!(
        store.sell(&lines(&[("a", 3), ("a", 3)])),
        Err(StockError::InsufficientStock { requested: 6, .. })
    ));
    // Typed errors for bad input.
    assert_eq!(
        store.sell(&lines(&[("nope", 1)])),
        Err(StockError::UnknownSku(sku("nope")))
    );
    assert_eq!(
        store.sell(&lines(&[("a", 0)])),
        Err(StockError::InvalidQuantity { sku: sku("a") })
    );
    assert_eq!(store.sell(&[]), Err(StockError::EmptyRequest));
    // A hold resolves exactly once, through any store of the namespace.
    let hold = store.reserve(&lines(&[("a", 2), ("b", 1)])).unwrap();
    assert_eq!(counts(store, "a"), (5, 2));
    assert_eq!(peer.commit(hold.id()).unwrap(), hold);
    assert_eq!(
        store.commit(hold.id()),
        Err(StockError::UnknownReservation(hold.id()))
    );
    assert_eq!(
        store.release(hold.id()),
        Err(StockError::UnknownReservation(hold.id()))
    );
    assert_eq!(counts(store, "a"), (3, 0));
    assert_eq!(counts(store, "b"), (0, 0));
    let released = store.reserve(&lines(&[("a", 1)])).unwrap();
    peer.release(released.id()).unwrap();
    assert_eq!(counts(store, "a"), (3, 0));
    store.sell(&lines(&[("a", 1)])).unwrap();
    assert_eq!(store.level(&sku("a")).unwrap().version, 6);
    // An idempotency key holds once.
    let options = ReserveOptions::new().idempotency_key("order-1");
    let first = store.reserve_with(&lines(&[("a", 1)]), &options).unwrap();
    let retry = peer.reserve_with(&lines(&[("a", 1)]), &options).unwrap();
    assert_eq!(first, retry);
    assert_eq!(counts(store, "a"), (2, 1));
    store.commit(first.id()).unwrap();
    assert!(matches!(
        peer.reserve_with(&lines(&[("a", 1)]), &options),
        Err(StockError::HoldEnded { .. })
    ));
    // A waiter is served by a restock through another store.
    let waiter = {
        let store_lines = lines(&[("b", 1)]);
        let store = Arc::clone(store);
        thread::spawn(move || store.reserve_timeout(&store_lines, Duration::from_secs(30)))
    };
    while peer.queued(&sku("b")).unwrap() < 1 {
        thread::sleep(Duration::from_millis(2));
    }
    peer.restock(&sku("b"), 1).unwrap();
    let granted = waiter.join().unwrap().unwrap();
    assert_eq!(counts(store, "b"), (1, 1));
    peer.commit(granted.id()).unwrap();
    assert_eq!(counts(store, "b"), (0, 0));
    assert_eq!(counts(store, "a"), (1, 0));
}

#[test]
fn the_contract_holds_on_namespaces_of_every_primary() {
    // A correct store: every namespace, whichever primary owns it, keeps the contract;
    // stores of many namespaces share one handle's pools.
    let cluster = shared();
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "3 primaries");
    let shared_handle = handle(cluster);
    let runs: Vec<_> = primaries
        .iter()
        .map(|port| {
            let namespace = namespace_on(cluster, *port, "contract");
            let store: Arc<Store> = Arc::new(shared_handle.store(&namespace).build().unwrap());
            // The peer has its own handle: another process would.
            let peer: Store = handle(cluster).store(&namespace).build().unwrap();
            thread::spawn(move || contract(&store, &peer))
        })
        .collect();
    for run in runs {
        run.join().unwrap();
    }
    // The three namespaces' stores went through one handle: its pools reached all three
    // primaries.
    let debug = format!("{shared_handle:?}");
    for port in primaries {
        assert!(debug.contains(&format!(":{port}\"")), "{debug}");
    }
}

#[test]
fn a_store_built_from_a_replica_or_another_node_works() {
    // A correct store: any node of the cluster is a seed; a single-server builder on a
    // cluster node, and a cluster handle on a single server, are refused with a clear
    // error instead of binding to the wrong thing.
    let cluster = shared();
    let _turn = fault_turn();
    cluster.wait_settled();
    let primaries = cluster.primaries();
    let namespace = namespace_on(cluster, primaries[0], "seed");
    let replica = cluster.replica_of(primaries[1]);
    let from_replica: Store = RedisCluster::new([redis_cluster::url(replica)])
        .store(&namespace)
        .build()
        .unwrap();
    let from_other: Store = RedisCluster::new([redis_cluster::url(primaries[2])])
        .store(&namespace)
        .build()
        .unwrap();
    from_replica.restock(&sku("a"), 3).unwrap();
    let hold = from_other.reserve(&lines(&[("a", 2)])).unwrap();
    from_replica.commit(hold.id()).unwrap();
    assert_eq!(counts(&from_other, "a"), (1, 0));
    // A single-server builder pointed at a cluster node.
    let single = RedisStore::<String>::connect(&redis_cluster::url(primaries[0]), &namespace);
    match single {
        Err(StockError::Unavailable { reason }) => {
            assert!(reason.contains("Redis Cluster node"), "{reason}")
        }
        other => panic!("bound a single-server store to a cluster node: {other:?}"),
    }
    // A cluster handle pointed at a single server.
    let server = redis_server::RedisServer::start(redis_server::Durability::Memory);
    // wait_replicas on a server without replicas: the change runs, and says it is
    // unconfirmed.
    let lonely = RedisStore::<String>::builder(&server.url(), "lonely")
        .wait_replicas(1, Duration::from_millis(20))
        .build()
        .unwrap();
    match lonely.restock(&sku("a"), 1) {
        Err(StockError::Unavailable { reason }) => {
            assert!(reason.contains("0 of the 1 replicas"), "{reason}")
        }
        other => panic!("a change no replica confirmed: {other:?}"),
    }
    assert_eq!(lonely.level(&sku("a")).map(|level| level.on_hand), Some(1));
    match RedisCluster::new([server.url()])
        .store::<String>("x")
        .build()
    {
        Err(StockError::Unavailable { reason }) => {
            assert!(reason.contains("not a Redis Cluster"), "{reason}")
        }
        other => panic!("a cluster store on a single server: {other:?}"),
    }
}

#[test]
fn a_primary_that_lost_the_functions_gets_them_again_from_the_store() {
    // A correct store: the functions are loaded on every primary when it is built, and
    // loaded again on the node that answers "Function not found" (a flushed primary).
    let cluster = shared();
    let _turn = fault_turn();
    cluster.wait_settled();
    for port in cluster.primaries() {
        let _: String = cluster.command(port, &["FUNCTION", "FLUSH"]);
    }
    let store: Store = handle(cluster)
        .store(&fresh_namespace("functions"))
        .build()
        .unwrap();
    for port in cluster.primaries() {
        let libraries: Vec<redis::Value> = cluster.command(port, &["FUNCTION", "LIST"]);
        assert_eq!(libraries.len(), 1, "the library is loaded on {port}");
    }
    store.restock(&sku("a"), 2).unwrap();
    let owner = cluster.owner_of(cluster.namespace_slot(store.namespace()));
    let _: String = cluster.command(owner, &["FUNCTION", "FLUSH"]);
    store.sell(&lines(&[("a", 1)])).unwrap();
    assert_eq!(counts(&store, "a"), (1, 0));
}

// ------------------------------------------------------------------ failover

#[test]
fn a_hold_opened_before_a_manual_failover_is_committed_after_it() {
    // A correct store: after CLUSTER FAILOVER it follows the new primary (MOVED) without
    // being rebuilt, and commits the hold it opened before.
    let cluster = shared();
    let _turn = fault_turn();
    cluster.wait_settled();
    let primary = cluster.primaries()[0];
    let namespace = namespace_on(cluster, primary, "failover");
    let store: Store = handle(cluster).store(&namespace).build().unwrap();
    store.restock(&sku("a"), 5).unwrap();
    let hold = store.reserve(&lines(&[("a", 2)])).unwrap();
    // A waiter queued before the failover, through a store of its own.
    store.restock(&sku("w"), 1).unwrap();
    store.sell(&lines(&[("w", 1)])).unwrap();
    let waiting: Arc<Store> = Arc::new(handle(cluster).store(&namespace).build().unwrap());
    let waiter = {
        let waiting = Arc::clone(&waiting);
        thread::spawn(move || waiting.reserve_timeout(&lines(&[("w", 1)]), Duration::from_secs(60)))
    };
    while store.queued(&sku("w")).unwrap() < 1 {
        thread::sleep(Duration::from_millis(2));
    }
    let replica = cluster.replica_of(primary);
    cluster.failover(replica);
    assert_eq!(store.commit(hold.id()).unwrap(), hold);
    store.sell(&lines(&[("a", 1)])).unwrap();
    assert_eq!(counts(&store, "a"), (2, 0));
    // The waiter gets its hold, or gives up (Unavailable) and its lines go back with its
    // lease: never a grant nobody owns.
    store.restock(&sku("w"), 1).unwrap();
    match waiter.join().unwrap() {
        Ok(granted) => {
            assert_eq!(counts(&store, "w"), (1, 1));
            waiting.commit(granted.id()).unwrap();
            assert_eq!(counts(&store, "w"), (0, 0));
        }
        Err(StockError::Unavailable { reason }) => {
            println!("the waiter gave up across the failover: {reason}");
            assert_eq!(counts(&store, "w").0, 1);
        }
        Err(other) => panic!("{other:?}"),
    }
    assert!(
        format!("{store:?}").contains(&format!(":{replica}")),
        "{store:?}"
    );
    cluster.wait_settled();
}

/// What a writer thread saw: units acknowledged, and units whose call was `Unavailable`
/// (applied or not).
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    acknowledged: u64,
    unknown: u64,
}

/// Restocks 1 unit of `name` through `store` until `stop`, counting outcomes.
fn restocker(
    store: Arc<Store>,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Tally> {
    thread::spawn(move || {
        let mut tally = Tally::default();
        while !stop.load(Ordering::SeqCst) {
            match store.restock(&sku(name), 1) {
                Ok(_) => tally.acknowledged += 1,
                Err(StockError::Unavailable { .. }) => tally.unknown += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        tally
    })
}

#[test]
fn after_kill_9_of_its_primary_the_store_recovers_and_waited_changes_survive() {
    // A correct store: once the replica has taken over it works again, without being
    // rebuilt; a hold opened before is committed after; with wait_replicas(1) no
    // acknowledged change is lost. Without it, acknowledged changes may be lost (Redis
    // replicates asynchronously): the test reports how many.
    let mut cluster = Cluster::start();
    let primary = cluster.primaries()[0];
    let namespace = namespace_on(&cluster, primary, "kill");
    let waited: Arc<Store> = Arc::new(
        handle(&cluster)
            .store(&namespace)
            .wait_replicas(1, Duration::from_millis(400))
            .build()
            .unwrap(),
    );
    let plain: Arc<Store> = Arc::new(handle(&cluster).store(&namespace).build().unwrap());
    // The hold goes through the store without WAIT: after the kill its primary has no
    // replica left, so every change through `waited` is Unavailable (ran, unconfirmed).
    plain.restock(&sku("held"), 3).unwrap();
    let hold = plain.reserve(&lines(&[("held", 2)])).unwrap();
    // The hold reaches the replica before the kill (this test is about the store, not
    // about Redis's asynchronous replication): a write of this connection and its WAIT
    // cover every write before it on the primary's one replication stream.
    let mut connection = redis::Client::open(url(primary))
        .unwrap()
        .get_connection()
        .unwrap();
    let (_, replicas): ((), u64) = redis::pipe()
        .cmd("SET")
        .arg(format!("{{{namespace}}}:fence"))
        .arg(1)
        .cmd("WAIT")
        .arg(1)
        .arg(5_000)
        .query(&mut connection)
        .unwrap();
    assert_eq!(replicas, 1, "the replica has the hold");
    // A waiter queued before the kill, with a short lease.
    plain.restock(&sku("w"), 1).unwrap();
    plain.sell(&lines(&[("w", 1)])).unwrap();
    let waiting: Arc<Store> = Arc::new(
        handle(&cluster)
            .store(&namespace)
            .wait_lease(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    let waiter = {
        let waiting = Arc::clone(&waiting);
        thread::spawn(move || waiting.reserve_timeout(&lines(&[("w", 1)]), Duration::from_secs(60)))
    };
    while plain.queued(&sku("w")).unwrap() < 1 {
        thread::sleep(Duration::from_millis(2));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        restocker(Arc::clone(&waited), "waited", Arc::clone(&stop)),
        restocker(Arc::clone(&plain), "plain", Arc::clone(&stop)),
    ];
    thread::sleep(Duration::from_millis(300));
    let replica = cluster.replica_of(primary);
    cluster.kill(primary);
    cluster.until_primary(replica);
    // Both stores work again, without a rebuild.
    let deadline = Instant::now() + Duration::from_secs(30);
    while waited.try_level(&sku("waited")).is_err() || plain.try_level(&sku("plain")).is_err() {
        assert!(Instant::now() < deadline, "the stores never recovered");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let [waited_tally, plain_tally] = writers.map(|writer| writer.join().unwrap());
    assert_eq!(plain.commit(hold.id()).unwrap(), hold);
    assert_eq!(counts(&waited, "held"), (1, 0));
    // The waiter gets its hold, or gives up and its lines go back once its lease has run
    // out: never a grant nobody owns.
    plain.restock(&sku("w"), 1).unwrap();
    match waiter.join().unwrap() {
        Ok(granted) => plain.commit(granted.id()).map(drop).unwrap(),
        Err(StockError::Timeout | StockError::Unavailable { .. }) => {
            thread::sleep(Duration::from_millis(1_200));
            plain.try_expire_due().unwrap();
            assert_eq!(counts(&plain, "w").1, 0, "a grant nobody owns");
        }
        Err(other) => panic!("{other:?}"),
    }
    assert_eq!(counts(&plain, "w").1, 0);
    let on_hand = |name| waited.level(&sku(name)).map_or(0, |level| level.on_hand);
    let (waited_units, plain_units) = (on_hand("waited"), on_hand("plain"));
    assert!(
        waited_units >= waited_tally.acknowledged,
        "an acknowledged change waited for by a replica was lost: {waited_units} on hand, \
         {waited_tally:?}"
    );
    assert!(waited_units <= waited_tally.acknowledged + waited_tally.unknown);
    assert!(plain_units <= plain_tally.acknowledged + plain_tally.unknown);
    println!(
        "kill -9 of a primary: with wait_replicas(1) {} acknowledged restocks, none lost; \
         without it {} acknowledged, {} lost",
        waited_tally.acknowledged,
        plain_tally.acknowledged,
        plain_tally.acknowledged.saturating_sub(plain_units)
    );
    // The harness stops exactly its processes.
    let ports = cluster.ports();
    drop(cluster);
    for port in ports {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}

// ------------------------------------------------------------------ slot migration

/// How many `ASK` and `TRYAGAIN` answers the nodes on `ports` gave so far
/// (`INFO errorstats`).
fn redirects(cluster: &Cluster, ports: &[u16]) -> u64 {
    ports
        .iter()
        .map(|port| {
            let stats: String = cluster.command(*port, &["INFO", "errorstats"]);
            stats
                .lines()
                .filter(|line| {
                    line.starts_with("errorstat_ASK:") || line.starts_with("errorstat_TRYAGAIN:")
                })
                .filter_map(|line| line.split("count=").nth(1))
                .filter_map(|count| count.trim().parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// What one worker of the migration test saw, per kind of change.
#[derive(Debug, Default)]
struct Outcomes {
    sold: Tally,
    restocked: Tally,
    committed: Tally,
    /// Calls refused whole (insufficient stock, unknown hold).
    refused: u64,
}

#[test]
fn a_live_slot_migration_applies_every_call_once_or_refuses_it_whole() {
    // A correct store: while its slot moves (ASK, TRYAGAIN, then MOVED) every call is
    // applied once or changes nothing; the stream has one entry per change, versions
    // without gaps, and every SKU conserves its units.
    let cluster = shared();
    let _turn = fault_turn();
    cluster.wait_settled();
    let primaries = cluster.primaries();
    let (from, to) = (primaries[1], primaries[2]);
    let namespace = namespace_on(cluster, from, "migrate");
    let slot = cluster.namespace_slot(&namespace);
    let handle = handle(cluster);
    let store: Arc<Store> = Arc::new(handle.store(&namespace).build().unwrap());
    for name in ["s0", "s1", "s2", "s3"] {
        store.restock(&sku(name), 50).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = ["s0", "s1", "s2", "s3"]
        .into_iter()
        .map(|name| {
            let store = Arc::clone(&store);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut seen = Outcomes::default();
                let mut round = 0_u64;
                while !stop.load(Ordering::SeqCst) {
                    round += 1;
                    let answer = match round % 3 {
                        0 => store.restock(&sku(name), 2).map(|_| &mut seen.restocked),
                        1 => store.sell(&lines(&[(name, 1)])).map(|()| &mut seen.sold),
                        _ => store
                            .reserve(&lines(&[(name, 1)]))
                            .and_then(|hold| store.commit(hold.id()))
                            .map(|_| &mut seen.committed),
                    };
                    match answer {
                        Ok(tally) => tally.acknowledged += 1,
                        Err(StockError::Unavailable { reason }) => {
                            assert!(reason.contains("did not run"), "{reason}");
                            seen.refused += 1;
                        }
                        Err(StockError::InsufficientStock { .. }) => seen.refused += 1,
                        Err(other) => panic!("{other:?}"),
                    }
                }
                seen
            })
        })
        .collect();
    let redirects_before = redirects(cluster, &[from, to]);
    thread::sleep(Duration::from_millis(200));
    cluster.migrate_slot(slot, from, to);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let outcomes: Vec<Outcomes> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(cluster.owner_of(slot), to, "the slot moved");
    // The calls met the migration: the nodes answered some of them ASK or TRYAGAIN.
    assert!(
        redirects(cluster, &[from, to]) > redirects_before,
        "no call met the migration"
    );
    let entries = cluster.stream_entries(to, store.events_stream());
    for (index, name) in ["s0", "s1", "s2", "s3"].into_iter().enumerate() {
        let seen = &outcomes[index];
        let mine: Vec<_> = entries.iter().filter(|entry| entry.3 == name).collect();
        // One entry per change, versions 1, 2, 3, ... without a gap or a repeat.
        for (position, entry) in mine.iter().enumerate() {
            assert_eq!(entry.2, position as u64 + 1, "{name}: {entry:?}");
        }
        let units = |kind: &str| -> u64 {
            mine.iter()
                .filter(|entry| entry.0 == kind)
                .map(|entry| entry.1)
                .sum()
        };
        let level = store.level(&sku(name)).unwrap();
        assert_eq!(level.version, mine.len() as u64, "{name}");
        assert_eq!(level.reserved, 0, "{name}");
        assert_eq!(
            level.on_hand,
            units("restocked") - units("sold") - units("committed"),
            "{name}: conservation"
        );
        // Every acknowledged call is in the stream once; no refused call is.
        assert_eq!(
            units("restocked"),
            50 + 2 * seen.restocked.acknowledged,
            "{name}"
        );
        assert_eq!(units("sold"), seen.sold.acknowledged, "{name}");
        assert_eq!(units("committed"), seen.committed.acknowledged, "{name}");
    }
    println!("migration: {outcomes:?}");
}

// ------------------------------------------------------------------ negative control

#[test]
fn a_call_that_outlives_its_timeout_is_applied_once_and_a_blind_resender_is_caught() {
    // A correct store: a sale whose first attempt times out (the primary is busy:
    // `DEBUG SLEEP`, shorter than the node timeout so that nobody fails over) is sent again
    // under the same request id once the primary answers, and the server applies it once.
    // The control: a client that gives up on a timed-out sale and sends it again as a new
    // call (a fresh request id) sells more than it was told it sold.
    let cluster = shared();
    let _turn = fault_turn();
    cluster.wait_settled();
    let primary = cluster.primaries()[0];
    let namespace = namespace_on(cluster, primary, "busy");
    let timeout = Duration::from_millis(150);
    let store: Store = RedisCluster::new(cluster.urls())
        .command_timeout(timeout)
        .store(&namespace)
        .build()
        .unwrap();
    // The blind resender: no time to follow anything, so each timed-out call comes back
    // Unavailable at once, and its caller sends the sale again.
    let blind: Store = RedisCluster::new(cluster.urls())
        .command_timeout(timeout)
        .failover_timeout(Duration::ZERO)
        .store(&namespace)
        .build()
        .unwrap();
    let observer: Store = handle(cluster).store(&namespace).build().unwrap();
    store.restock(&sku("a"), 100).unwrap();
    blind.level(&sku("a")).unwrap(); // an idle pooled connection, as in a running client
    let busy = || {
        let sleeper = thread::spawn(move || {
            let _: String = cluster.command(primary, &["DEBUG", "SLEEP", "0.8"]);
        });
        thread::sleep(Duration::from_millis(50)); // the sleep has begun
        sleeper
    };
    // The store: one call, its first attempt timed out, applied once.
    let sleeper = busy();
    let answer = store.sell(&lines(&[("a", 1)]));
    sleeper.join().unwrap();
    let sold = 100 - counts(&observer, "a").0;
    assert_eq!(sold, 1, "one sale ({answer:?})");
    // The same with wait_replicas: the resend's answer is the recorded one, and the replica
    // is waited for past the first attempt's writes (the fence), not on an idle connection.
    let waited: Store = RedisCluster::new(cluster.urls())
        .command_timeout(Duration::from_millis(300))
        .store(&namespace)
        .wait_replicas(1, Duration::from_millis(100))
        .build()
        .unwrap();
    waited.level(&sku("a")).unwrap();
    let sleeper = busy();
    let answer = waited.sell(&lines(&[("a", 1)]));
    sleeper.join().unwrap();
    assert_eq!(counts(&observer, "a").0, 98, "one sale ({answer:?})");
    assert!(answer.is_ok(), "{answer:?}");
    let fence: u64 = cluster.command(primary, &["EXISTS", &format!("{{{namespace}}}:fence")]);
    assert_eq!(fence, 1, "the resend wrote the fence before its WAIT");
    store.restock(&sku("a"), 1).unwrap();
    // The control: resend blindly, as a new call, until one is answered.
    let sleeper = busy();
    let mut calls = 1;
    while blind.sell(&lines(&[("a", 1)])).is_err() {
        calls += 1;
    }
    sleeper.join().unwrap();
    let sold = 99 - counts(&observer, "a").0;
    assert!(
        sold > 1,
        "the blind resender was not caught: {sold} sold in {calls} calls, 1 acknowledged"
    );
}
