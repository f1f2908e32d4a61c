//! `RedisStore` on a Redis Cluster across OS processes (feature `redis`): 3 processes × 3
//! threads replay the real order log over four namespaces on the three primaries of a
//! cluster of their own (`support/redis_cluster.rs`), while the test fails one primary over
//! by hand (`CLUSTER FAILOVER`), moves another namespace's slot live, and kills the third
//! primary with `kill -9`. Two namespaces live on that third primary: one whose stores wait
//! for a replica after every change (`wait_replicas`), one whose stores do not.
//!
//! Checked per namespace and SKU afterwards: one stream entry per change (versions 1, 2, 3,
//! ... without a gap or a repeat, the last one the level's), conservation (restocked =
//! on hand + committed, nothing left reserved once the holds' TTL has passed), and that
//! every acknowledged commit is in the stream exactly once: nothing acknowledged lost
//! across the failover, the migration and, with `wait_replicas`, the kill. Without
//! `wait_replicas` the test reports how many acknowledged units the kill lost.
//!
//! The child processes are this test binary itself, running the ignored test `worker`
//! with the environment variables below.

#![cfg(feature = "redis")]

#[path = "support/order_log.rs"]
mod order_log;
#[path = "support/redis_cluster.rs"]
mod redis_cluster;

use order_log::{orders, Order};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use redis_cluster::RedisCluster as Cluster;
use stockledger::{RedisCluster, RedisStore, ReserveOptions, StockError, StockStore};

type Store = RedisStore<String>;

/// The worker's index (set only in a child process).
const INDEX: &str = "STOCKLEDGER_CLUSTER_WORKER";
/// The seed URLs, comma-separated.
const SEEDS: &str = "STOCKLEDGER_CLUSTER_SEEDS";
/// The namespaces, comma-separated, in the order of [`Role`].
const NAMESPACES: &str = "STOCKLEDGER_CLUSTER_NAMESPACES";
/// A file whose existence tells the workers to stop.
const STOP: &str = "STOCKLEDGER_CLUSTER_STOP";

const PROCESSES: usize = 3;
const THREADS: usize = 3;
/// Orders of the log replayed (the first ones), over and over until the workers stop.
const ORDERS_MAX: usize = 2_000;
/// Start stock of every SKU in every namespace: no order is refused for stock.
const UNITS: u64 = 10_000_000;
/// A hold's TTL: a hold whose commit or release was lost expires after it.
const TTL: Duration = Duration::from_secs(2);

/// The namespaces, by what happens to their primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Its primary is failed over by hand.
    Failover,
    /// Its slot moves to another primary mid-run.
    Migrated,
    /// On the primary killed with `kill -9`, stores with `wait_replicas(1, ..)`.
    KilledWaited,
    /// On the primary killed with `kill -9`, stores without it.
    Killed,
}

const ROLES: [Role; 4] = [
    Role::Failover,
    Role::Migrated,
    Role::KilledWaited,
    Role::Killed,
];

/// A handle on the cluster of `seeds` as the workers and the checks use it.
fn handle(seeds: &[String]) -> RedisCluster {
    RedisCluster::new(seeds.iter().cloned())
        .command_timeout(Duration::from_secs(1))
        .failover_timeout(Duration::from_secs(15))
        .pool_size(THREADS as u32)
}

/// The store of the namespace `namespace` in `role` on `handle`.
fn store(handle: &RedisCluster, namespace: &str, role: Role) -> Store {
    let builder = handle.store(namespace);
    let builder = if role == Role::KilledWaited {
        builder.wait_replicas(1, Duration::from_millis(300))
    } else {
        builder
    };
    builder.build().unwrap()
}

/// Units a worker was told were committed, and units of commits whose answer it never got,
/// per namespace and SKU.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    acknowledged: u64,
    unknown: u64,
}

// ---------------------------------------------------------------- the child side

/// The child process: runs when `STOCKLEDGER_CLUSTER_WORKER` is set (never by itself).
#[test]
#[ignore = "a child process of the test below"]
fn worker() {
    let Ok(index) = std::env::var(INDEX) else {
        return;
    };
    let index: usize = index.parse().unwrap();
    let seeds: Vec<String> = std::env::var(SEEDS)
        .unwrap()
        .split(',')
        .map(String::from)
        .collect();
    let namespaces: Vec<String> = std::env::var(NAMESPACES)
        .unwrap()
        .split(',')
        .map(String::from)
        .collect();
    let stop = std::env::var(STOP).unwrap();
    let handle = handle(&seeds);
    let stores: Vec<Store> = ROLES
        .iter()
        .zip(&namespaces)
        .map(|(role, namespace)| store(&handle, namespace, *role))
        .collect();
    let orders = orders(ORDERS_MAX);
    let tallies: Vec<BTreeMap<(usize, String), Tally>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (stores, orders, stop) = (&stores, &orders, &stop);
                scope.spawn(move || {
                    let slot = index * THREADS + thread;
                    let mut tally = BTreeMap::new();
                    let mut round = 0;
                    while !Path::new(stop).exists() {
                        for (number, order) in orders.iter().enumerate() {
                            if number % (PROCESSES * THREADS) != slot {
                                continue;
                            }
                            if Path::new(stop).exists() {
                                break;
                            }
                            let namespace = (number + round) % ROLES.len();
                            place(&stores[namespace], namespace, order, &mut tally);
                        }
                        round += 1;
                    }
                    tally
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for tally in tallies {
        for ((namespace, sku), counts) in tally {
            println!(
                "TALLY {namespace} {} {} {sku}",
                counts.acknowledged, counts.unknown
            );
        }
    }
    println!("DONE");
}

/// Holds `order` in the namespace `namespace` through `store` (a TTL, so a hold whose
/// resolution is lost expires), then commits or releases it, counting committed units.
fn place(
    store: &Store,
    namespace: usize,
    order: &Order,
    tally: &mut BTreeMap<(usize, String), Tally>,
) {
    let hold = match store.reserve_with(&order.lines, &ReserveOptions::new().ttl(TTL)) {
        Ok(hold) => hold,
        // The hold may be open: it expires after its TTL.
        Err(StockError::Unavailable { .. }) => return,
        Err(other) => panic!("reserve: {other:?}"),
    };
    if !order.completed {
        match store.release(hold.id()) {
            Ok(_)
            | Err(StockError::Unavailable { .. })
            | Err(StockError::Expired(_))
            | Err(StockError::UnknownReservation(_)) => {}
            Err(other) => panic!("release: {other:?}"),
        }
        return;
    }
    let answer = store.commit(hold.id());
    for (sku, units) in hold.lines() {
        let counts = tally.entry((namespace, sku.clone())).or_default();
        match &answer {
            Ok(_) => counts.acknowledged += units,
            Err(StockError::Unavailable { .. }) => counts.unknown += units,
            // Past its TTL (a slow failover), or lost with a killed primary.
            Err(StockError::Expired(_) | StockError::UnknownReservation(_)) => {}
            Err(other) => panic!("commit: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- the parent side

/// A namespace whose slot the primary on `port` owns.
fn namespace_on(cluster: &Cluster, port: u16, what: &str) -> String {
    (0..)
        .map(|n| format!("{what}-{}-{n}", std::process::id()))
        .find(|namespace| cluster.owner_of(cluster.namespace_slot(namespace)) == port)
        .unwrap()
}

#[test]
fn three_processes_replay_over_three_primaries_through_a_failover_a_migration_and_a_kill() {
    let mut cluster = Cluster::start();
    let seeds = cluster.urls();
    let primaries = cluster.primaries();
    let homes = [primaries[0], primaries[1], primaries[2], primaries[2]];
    let namespaces: Vec<String> = ROLES
        .iter()
        .zip(homes)
        .map(|(role, port)| namespace_on(&cluster, port, &format!("{role:?}").to_lowercase()))
        .collect();
    // The checks' stores, without wait_replicas: once a primary is killed its successor has
    // no replica, and every change through a store that waits for one is Unavailable.
    let parent = handle(&seeds);
    let stores: Vec<Store> = namespaces
        .iter()
        .map(|namespace| store(&parent, namespace, Role::Failover))
        .collect();
    let skus: Vec<String> = {
        let mut skus: Vec<String> = orders(ORDERS_MAX)
            .iter()
            .flat_map(|order| order.lines.iter().map(|(sku, _)| sku.clone()))
            .collect();
        skus.sort();
        skus.dedup();
        skus
    };
    for store in &stores {
        for sku in &skus {
            store.restock(sku, UNITS).unwrap();
        }
    }
    let stop_dir = tempfile::tempdir().unwrap();
    let stop = stop_dir.path().join("stop");
    let workers: Vec<_> = (0..PROCESSES)
        .map(|index| {
            Command::new(std::env::current_exe().unwrap())
                .args(["worker", "--exact", "--ignored", "--nocapture"])
                .env(INDEX, index.to_string())
                .env(SEEDS, seeds.join(","))
                .env(NAMESPACES, namespaces.join(","))
                .env(STOP, &stop)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        })
        .collect();
    // The faults, one after another while the workers run.
    thread::sleep(Duration::from_millis(1_000));
    let failover_replica = cluster.replica_of(homes[0]);
    cluster.failover(failover_replica);
    thread::sleep(Duration::from_millis(500));
    let migrated_slot = cluster.namespace_slot(&namespaces[1]);
    cluster.migrate_slot(migrated_slot, homes[1], failover_replica);
    thread::sleep(Duration::from_millis(500));
    let killed_replica = cluster.replica_of(homes[2]);
    cluster.kill(homes[2]);
    cluster.until_primary(killed_replica);
    thread::sleep(Duration::from_millis(1_500));
    std::fs::write(&stop, b"stop").unwrap();
    let mut tallies: BTreeMap<(usize, String), Tally> = BTreeMap::new();
    for worker in workers {
        let output = worker.wait_with_output().unwrap();
        assert!(output.status.success(), "a worker failed");
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.contains("DONE"), "a worker ended early:\n{text}");
        for line in text.lines().filter_map(|line| line.strip_prefix("TALLY ")) {
            let mut fields = line.splitn(4, ' ');
            let mut number = || fields.next().unwrap().parse::<u64>().unwrap();
            let (namespace, acknowledged, unknown) = (number(), number(), number());
            let sku = line.splitn(4, ' ').nth(3).unwrap().to_string();
            let counts = tallies.entry((namespace as usize, sku)).or_default();
            counts.acknowledged += acknowledged;
            counts.unknown += unknown;
        }
    }
    // Holds whose resolution was lost expire after their TTL.
    thread::sleep(TTL);
    let deadline = Instant::now() + Duration::from_secs(30);
    for store in &stores {
        while store
            .try_expire_due()
            .map_or(true, |expired| !expired.is_empty())
        {
            assert!(Instant::now() < deadline, "holds never expired");
            thread::sleep(Duration::from_millis(100));
        }
    }
    let mut lost_without_wait = 0;
    let mut committed_total = 0;
    for (index, role) in ROLES.iter().enumerate() {
        let store = &stores[index];
        let owner = cluster.owner_of(cluster.namespace_slot(&namespaces[index]));
        let entries = cluster.stream_entries(owner, store.events_stream());
        for sku in &skus {
            let mine: Vec<_> = entries.iter().filter(|entry| &entry.3 == sku).collect();
            for (position, entry) in mine.iter().enumerate() {
                assert_eq!(entry.2, position as u64 + 1, "{role:?} {sku}: {entry:?}");
            }
            let units = |kind: &str| -> u64 {
                mine.iter()
                    .filter(|entry| entry.0 == kind)
                    .map(|entry| entry.1)
                    .sum()
            };
            let level = store.level(sku).unwrap();
            assert_eq!(level.version, mine.len() as u64, "{role:?} {sku}");
            assert_eq!(level.reserved, 0, "{role:?} {sku}: a hold was left");
            assert_eq!(
                units("reserved"),
                units("committed") + units("released") + units("expired"),
                "{role:?} {sku}: every hold resolved once"
            );
            assert_eq!(
                units("restocked"),
                level.on_hand + units("committed"),
                "{role:?} {sku}: conservation"
            );
            let tally = tallies
                .get(&(index, sku.clone()))
                .copied()
                .unwrap_or_default();
            let committed = units("committed");
            committed_total += committed;
            assert!(
                committed <= tally.acknowledged + tally.unknown,
                "{role:?} {sku}: {committed} committed, more than the workers sent: {tally:?}"
            );
            if *role == Role::Killed {
                lost_without_wait += tally.acknowledged.saturating_sub(committed);
            } else {
                assert!(
                    committed >= tally.acknowledged,
                    "{role:?} {sku}: an acknowledged commit was lost: {committed} in the \
                     stream, {tally:?}"
                );
            }
        }
    }
    assert!(committed_total > 0, "nothing was committed");
    println!(
        "{committed_total} units committed over four namespaces; the kill -9 lost {} \
         acknowledged units of the namespace without wait_replicas, none of the one with it",
        lost_without_wait
    );
}
