//! Criterion groups of `RedisStore` (cargo feature `redis`): its `sell` and its `reserve` +
//! `commit` of 1 unit at 1, 8 and 32 client threads over 1,000 SKUs, next to peers on the
//! same server through a pool of the same size ([`POOL_SIZE`] connections) and to the
//! in-memory pessimistic store:
//!
//! - `redis_store`: `RedisStore<u64>` (one Lua script a call, with its events stream);
//! - `bare_script`: one `EVALSHA` of a script that `DECRBY`s a counter when it holds
//!   enough (redis-rs `Script`), the least a correct server-side sale costs;
//! - `get_set_oversells`: `GET`, check, then `SET` of the difference in two round trips:
//!   the lost update, so it oversells under threads (the side file counts its lost units);
//! - `pessimistic`: `PessimisticStore<u64>` in this process, for scale.
//!
//! Groups `R1_redis_sell` and `R2_redis_reserve_commit`, functions as above, thread count as
//! the parameter (`<group>/<variant>/<threads>`, as in `benches/scenarios.rs`), so
//! `examples/bench_report` puts them in the report's Redis section. The bench starts its
//! own `redis-server` (from `PATH`, in memory, on a free port in a temporary directory) and
//! writes `target/criterion/stockledger/redis_run.json`.
//!
//! Group `R3_redis_cluster_sell`: `RedisStore::sell` on a Redis Cluster of 3 primaries and
//! 3 replicas started by the bench (`tests/support/redis_cluster.rs`), at 8 and 32 client
//! threads: `one_namespace` (every thread on one namespace, so one primary), and
//! `three_namespaces` (one namespace on each primary, thread `t` on namespace `t % 3`, the
//! three stores on one `RedisCluster` handle), each also with `wait_replicas(1, 100 ms)`
//! (`..._wait1`). Every node runs on the same 2 cores as the clients.
//!
//! Run: `cargo bench --features redis --bench redis` (about two minutes).

#[allow(dead_code)] // each bench target uses a part of the shared harness
mod common;
#[path = "../tests/support/redis_cluster.rs"]
mod redis_cluster;
#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput};
use redis::ConnectionLike;
use serde_json::json;
use stockledger::{PessimisticStore, RedisCluster, RedisStore, StockStore, POOL_SIZE};

use common::{at, run_threads, workload, Sku, Store, Subject, Visit};
use redis_server::{Durability, RedisServer};

/// Client threads of every benchmark (the 1, 8 and 32).
const THREADS: [usize; 3] = [1, 8, 32];

/// SKUs of every benchmark, drawn uniformly.
const SKUS: u64 = 1_000;

/// Units of each SKU before a run: no benchmark sells out.
const UNITS_PER_SKU: u64 = 1 << 36;

/// The bare peer's script, shared with `examples/redis_script_cost.rs`: `DECRBY` when the
/// counter holds enough (KEYS[1] the counter, ARGV[1] units; reply 1 sold, 0 refused).
const BARE_SCRIPT: &str = include_str!("bare_decrby.lua");

/// Benchmarks `run(iters)` as `<group>/<name>/<threads>`: `iters` operations per thread,
/// so one iteration is `threads` operations.
fn bench(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    threads: usize,
    run: impl Fn(u64) -> Duration,
) {
    group.throughput(Throughput::Elements(threads as u64));
    group.bench_function(BenchmarkId::new(name, threads), |bencher| {
        bencher.iter_custom(&run);
    });
}

/// Opens plain connections for the peers' pool.
#[derive(Debug)]
struct Connections(redis::Client);

impl r2d2::ManageConnection for Connections {
    type Connection = redis::Connection;
    type Error = redis::RedisError;

    fn connect(&self) -> Result<redis::Connection, redis::RedisError> {
        self.0.get_connection()
    }

    fn is_valid(&self, connection: &mut redis::Connection) -> Result<(), redis::RedisError> {
        redis::cmd("PING").query(connection)
    }

    fn has_broken(&self, connection: &mut redis::Connection) -> bool {
        !connection.is_open()
    }
}

/// A peer on the bench's server: one counter per SKU under `prefix`, a pool configured as
/// `RedisStore`'s (at most [`POOL_SIZE`] connections, no test on check-out), and the units
/// it sold.
struct Peer {
    pool: r2d2::Pool<Connections>,
    prefix: String,
    script: redis::Script,
    sold: AtomicU64,
}

impl Peer {
    /// A peer whose SKUs `0..SKUS` hold `UNITS_PER_SKU` units each.
    fn new(url: &str, prefix: &str) -> Self {
        let client = redis::Client::open(url).expect("a redis URL");
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .test_on_check_out(false)
            .build(Connections(client))
            .expect("connect to the bench's redis-server");
        let peer = Peer {
            pool,
            prefix: prefix.to_string(),
            script: redis::Script::new(BARE_SCRIPT),
            sold: AtomicU64::new(0),
        };
        let mut connection = peer.pool.get().expect("a connection");
        for sku in 0..SKUS {
            let _: () = redis::cmd("SET")
                .arg(peer.key(sku))
                .arg(UNITS_PER_SKU)
                .query(&mut *connection)
                .expect("SET");
        }
        peer
    }

    fn key(&self, sku: Sku) -> String {
        format!("{}:{sku}", self.prefix)
    }

    /// Sells 1 unit of `sku` with one `EVALSHA` of [`BARE_SCRIPT`].
    fn sell_bare(&self, sku: Sku) {
        let mut connection = self.pool.get().expect("a connection");
        let sold: u64 = self
            .script
            .key(self.key(sku))
            .arg(1)
            .invoke(&mut *connection)
            .expect("EVALSHA");
        self.count(sold == 1);
    }

    /// Sells 1 unit of `sku` with `GET`, a check, then `SET`: two round trips, no atomicity.
    fn sell_get_set(&self, sku: Sku) {
        let key = self.key(sku);
        let mut connection = self.pool.get().expect("a connection");
        let available: u64 = redis::cmd("GET")
            .arg(&key)
            .query(&mut *connection)
            .expect("GET");
        if available >= 1 {
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(available - 1)
                .query(&mut *connection)
                .expect("SET");
        }
        self.count(available >= 1);
    }

    fn count(&self, sold: bool) {
        if sold {
            self.sold.fetch_add(1, Ordering::Relaxed);
        } else {
            common::count_refusal();
        }
    }

    /// Units sold (acknowledged) minus units gone from the counters: the lost updates.
    fn lost_units(&self) -> i64 {
        let mut connection = self.pool.get().expect("a connection");
        let gone: u64 = (0..SKUS)
            .map(|sku| {
                let left: u64 = redis::cmd("GET")
                    .arg(self.key(sku))
                    .query(&mut *connection)
                    .expect("GET");
                UNITS_PER_SKU - left
            })
            .sum();
        let sold = self.sold.load(Ordering::Relaxed);
        i64::try_from(sold).unwrap_or(i64::MAX) - i64::try_from(gone).unwrap_or(i64::MAX)
    }
}

/// A `RedisStore<u64>` in a namespace of its own, its SKUs filled.
fn redis_store(server: &RedisServer, namespace: &str) -> Subject<Store<RedisStore<Sku>>> {
    let store = RedisStore::builder(&server.url(), namespace)
        .build()
        .expect("connect to the bench's redis-server");
    let store = Store(store);
    common::fill(&store, SKUS, UNITS_PER_SKU);
    Subject(store)
}

/// An in-memory pessimistic store, its SKUs filled.
fn pessimistic() -> Subject<Store<PessimisticStore<Sku>>> {
    let store = Store(PessimisticStore::new());
    common::fill(&store, SKUS, UNITS_PER_SKU);
    Subject(store)
}

/// R1: `sell` of 1 unit on `RedisStore`, the bare script, `GET`/`SET` and in memory.
/// Returns the lost units of the two peers.
///
/// The subjects take turns at each thread count (all four at 1 thread, then all four at
/// 8, ...), so that the ratios the report draws compare runs minutes apart at most, not a
/// whole group apart: on a shared 2-core machine the load drifts within a group.
fn r1_sell(criterion: &mut Criterion, server: &RedisServer) -> serde_json::Value {
    let mut group = criterion.benchmark_group("R1_redis_sell");
    let streams = workload::uniform_skus(THREADS[THREADS.len() - 1], SKUS);
    let store = redis_store(server, "bench-r1");
    let bare = Peer::new(&server.url(), "bare");
    let get_set = Peer::new(&server.url(), "get_set");
    let memory = pessimistic();
    for threads in THREADS {
        bench(&mut group, "redis_store", threads, |iters| {
            store.run_sells(threads, iters, &streams)
        });
        bench(&mut group, "bare_script", threads, |iters| {
            run_threads(threads, iters, &|thread, i| {
                bare.sell_bare(at(&streams[thread], i));
            })
        });
        bench(&mut group, "get_set_oversells", threads, |iters| {
            run_threads(threads, iters, &|thread, i| {
                get_set.sell_get_set(at(&streams[thread], i));
            })
        });
        bench(&mut group, "pessimistic", threads, |iters| {
            memory.run_sells(threads, iters, &streams)
        });
    }
    group.finish();
    json!({
        "bare_script": { "sold": bare.sold.load(Ordering::Relaxed), "lost_units": bare.lost_units() },
        "get_set_oversells": {
            "sold": get_set.sold.load(Ordering::Relaxed),
            "lost_units": get_set.lost_units(),
        },
    })
}

/// R2: `reserve` then `commit` of 1 unit on `RedisStore` and in memory, taking turns at
/// each thread count as in R1.
fn r2_reserve_commit(criterion: &mut Criterion, server: &RedisServer) {
    let mut group = criterion.benchmark_group("R2_redis_reserve_commit");
    let streams = workload::uniform_skus(THREADS[THREADS.len() - 1], SKUS);
    let store = redis_store(server, "bench-r2");
    let memory = pessimistic();
    for threads in THREADS {
        bench(&mut group, "redis_store", threads, |iters| {
            store.run_reserve_commits(threads, iters, &streams)
        });
        bench(&mut group, "pessimistic", threads, |iters| {
            memory.run_reserve_commits(threads, iters, &streams)
        });
    }
    group.finish();
}

/// Client threads of the cluster group.
const CLUSTER_THREADS: [usize; 2] = [8, 32];

/// How long a change waits for its replica in the `_wait1` variants at most.
const WAIT_TIMEOUT: Duration = Duration::from_millis(100);

/// A namespace whose slot the primary on `port` owns.
fn namespace_on(cluster: &redis_cluster::RedisCluster, port: u16, what: &str) -> String {
    (0..)
        .map(|n| format!("{what}-{n}"))
        .find(|namespace| cluster.owner_of(cluster.slot_of(&format!("{{{namespace}}}"))) == port)
        .expect("some namespace lands on every primary")
}

/// The stores of one variant: one per namespace, all on `handle`, their SKUs filled.
fn cluster_stores(
    handle: &RedisCluster,
    namespaces: &[String],
    wait: bool,
) -> Vec<RedisStore<Sku>> {
    namespaces
        .iter()
        .map(|namespace| {
            let mut builder = handle.store(namespace);
            if wait {
                builder = builder.wait_replicas(1, WAIT_TIMEOUT);
            }
            let store = builder.build().expect("a store on the bench's cluster");
            for sku in 0..SKUS {
                store.restock(&sku, UNITS_PER_SKU).expect("restock");
            }
            store
        })
        .collect()
}

/// R3: `sell` of 1 unit on one namespace against three namespaces over three primaries, with
/// and without `WAIT 1`. Returns what the run saw (calls that failed, by variant).
fn r3_cluster_sell(criterion: &mut Criterion) -> serde_json::Value {
    let cluster = redis_cluster::RedisCluster::start();
    let primaries = cluster.primaries();
    let handle = RedisCluster::new(cluster.urls());
    let streams = workload::uniform_skus(CLUSTER_THREADS[CLUSTER_THREADS.len() - 1], SKUS);
    let spread: Vec<String> = primaries
        .iter()
        .map(|port| namespace_on(&cluster, *port, "bench-r3"))
        .collect();
    let variants = [
        ("one_namespace", &spread[..1], false),
        ("three_namespaces", &spread[..], false),
        ("one_namespace_wait1", &spread[..1], true),
        ("three_namespaces_wait1", &spread[..], true),
    ];
    let stores: Vec<(&str, Vec<RedisStore<Sku>>, AtomicU64)> = variants
        .iter()
        .map(|(name, namespaces, wait)| {
            let namespaces: Vec<String> = namespaces
                .iter()
                .map(|namespace| format!("{namespace}-{name}"))
                .collect();
            (
                *name,
                cluster_stores(&handle, &namespaces, *wait),
                AtomicU64::new(0),
            )
        })
        .collect();
    let mut group = criterion.benchmark_group("R3_redis_cluster_sell");
    for threads in CLUSTER_THREADS {
        for (name, stores, failed) in &stores {
            bench(&mut group, name, threads, |iters| {
                run_threads(threads, iters, &|thread, i| {
                    let store = &stores[thread % stores.len()];
                    if store.sell(&[(at(&streams[thread], i), 1)]).is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                })
            });
        }
    }
    group.finish();
    let failed: serde_json::Map<String, serde_json::Value> = stores
        .iter()
        .map(|(name, _, failed)| (name.to_string(), json!(failed.load(Ordering::Relaxed))))
        .collect();
    json!({
        "primaries": primaries.len(),
        "replicas_per_primary": 1,
        "pool_size_per_node": POOL_SIZE,
        "wait_timeout_ms": WAIT_TIMEOUT.as_millis() as u64,
        "failed_calls": failed,
    })
}

/// The server's `redis_version`.
fn server_version(server: &RedisServer) -> Option<String> {
    let client = redis::Client::open(server.url()).ok()?;
    let mut connection = client.get_connection().ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut connection)
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .map(|version| version.trim().to_string())
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn main() {
    let started = unix_seconds();
    let load_at_start = load_average();
    let (warm_up_ms, measurement_ms) = if common::quick() {
        (100, 300)
    } else {
        (500, 2_000)
    };
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(warm_up_ms))
        .measurement_time(Duration::from_millis(measurement_ms))
        .sample_size(10)
        .without_plots()
        .configure_from_args();
    let server = RedisServer::start(Durability::Memory);
    let peers = r1_sell(&mut criterion, &server);
    r2_reserve_commit(&mut criterion, &server);
    let cluster = r3_cluster_sell(&mut criterion);
    criterion.final_summary();
    common::write_side_file(
        "redis_run",
        &json!({
            "started_unix_s": started,
            "finished_unix_s": unix_seconds(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": load_average(),
            "quick": common::quick(),
            "source_revision": common::source_revision(),
            "args": std::env::args().skip(1).collect::<Vec<_>>(),
            "redis_version": server_version(&server),
            "pool_size": POOL_SIZE,
            "skus": SKUS,
            "threads": THREADS,
            "peers": peers,
            "cluster": cluster,
            "refusals": common::REFUSALS.load(Ordering::Relaxed),
        }),
    );
}
