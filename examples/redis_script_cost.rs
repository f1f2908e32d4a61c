//! The server-side cost of `RedisStore`'s scripts (feature `redis`): microseconds of
//! server time per call from `INFO commandstats` and of server CPU from `INFO cpu`, which,
//! unlike wall-clock throughput, move little with the load of the machine. Redis runs
//! scripts one at a time, so at 8 and more client threads this cost bounds the throughput.
//!
//! It starts its own `redis-server` (from `PATH`, in memory, on a free port), then, each
//! after a `CONFIG RESETSTAT`, runs on 1,000 SKUs (one client thread):
//!
//! - `sell`: N single-line sales of 1 unit through `RedisStore<u64>`;
//! - `reserve` then `commit`: N holds of 1 unit, then their N commits;
//! - `bare`: N `EVALSHA`s of the bench's bare script (`GET`, then `DECRBY` when enough),
//!   the least a correct server-side sale costs (`benches/redis.rs`);
//! - `bare + request id`: the same script recording its answer under a request id, as
//!   `RedisStore`'s scripts do (`HGET` of the request id in the requests hash of the
//!   second, then `HSET` of the answer, the hash given its expiry once): the difference
//!   to `bare` is what a request id costs;
//!
//! and prints, for each, `usec_per_call` of its command (`FCALL`, `EVALSHA`), the
//! server's CPU time per call (`INFO cpu`, network work included), the client thread's
//! own CPU time per call (`/proc/thread-self/schedstat`: building the command, the pool,
//! the system calls, parsing the reply) and the wall-clock time per call (one round trip),
//! with the ratios to `bare`.
//!
//! Run: `cargo run --release --features redis --example redis_script_cost -- [N]` (N
//! defaults to 20,000; the server's figures do not depend on the client's build profile,
//! the client's do).

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::time::Instant;

use redis::ConnectionLike;
use stockledger::{RedisStore, StockStore};

use redis_server::{Durability, RedisServer};

/// The commands `RedisStore` runs its scripts with (`FCALL` of its function library;
/// `EVALSHA` before it became one).
const STORE_COMMANDS: &[&str] = &["fcall", "evalsha"];

/// SKUs of every run, visited in turn.
const SKUS: u64 = 1_000;

/// Units of each SKU before the runs: nothing sells out.
const UNITS_PER_SKU: u64 = 1 << 36;

/// The bare peer's script, shared with `benches/redis.rs`: `DECRBY` when the
/// counter holds enough (KEYS[1] the counter, ARGV[1] units; reply 1 sold, 0 refused).
const BARE_SCRIPT: &str = include_str!("../benches/bare_decrby.lua");

/// The bare script with its answer recorded under a request id (ARGV[2]) in the requests
/// hash KEYS[2] (which expires 61 s after its first call), as `RedisStore`'s scripts
/// record theirs: a resent call gets the first answer back.
const BARE_REQUEST_SCRIPT: &str = "local done = redis.call('HGET', KEYS[2], ARGV[2])
if done then return tonumber(done) end
local sold = 0
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then
  redis.call('DECRBY', KEYS[1], ARGV[1])
  sold = 1
end
if redis.call('HSET', KEYS[2], ARGV[2], sold) == 1 and ARGV[2] == '0' then
  redis.call('PEXPIRE', KEYS[2], 61000, 'NX')
end
return sold";

/// Where a measured loop started: the server's CPU seconds (`INFO cpu`), this thread's CPU
/// nanoseconds and the wall clock.
struct Mark {
    server_cpu_s: f64,
    client_cpu_ns: u64,
    wall: Instant,
}

/// One loop's figures, per call: server microseconds of its command (`usec` / `calls` of
/// `INFO commandstats`), server CPU microseconds (`used_cpu_user` + `used_cpu_sys` of `INFO
/// cpu`, which counts the network work too and moves less with the machine's load), this
/// thread's CPU microseconds and wall-clock microseconds.
#[derive(Clone, Copy)]
struct Cost {
    calls: u64,
    usec: f64,
    server_cpu_us: f64,
    client_cpu_us: f64,
    wall_us: f64,
}

impl std::ops::Add for Cost {
    type Output = Cost;

    fn add(self, other: Cost) -> Cost {
        Cost {
            calls: self.calls,
            usec: self.usec + other.usec,
            server_cpu_us: self.server_cpu_us + other.server_cpu_us,
            client_cpu_us: self.client_cpu_us + other.client_cpu_us,
            wall_us: self.wall_us + other.wall_us,
        }
    }
}

/// The figures of the loop started at `mark`, for the server commands `commands`.
fn cost(connection: &mut redis::Connection, commands: &[&str], mark: &Mark) -> Cost {
    let wall = mark.wall.elapsed();
    let client_cpu_ns = thread_cpu_ns() - mark.client_cpu_ns;
    let server_cpu_s = server_cpu(connection) - mark.server_cpu_s;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(connection)
        .expect("INFO commandstats");
    let (mut calls, mut usec) = (0_u64, 0_u64);
    for line in info.lines() {
        let Some((name, fields)) = line.split_once(':') else {
            continue;
        };
        if !commands
            .iter()
            .any(|command| name == format!("cmdstat_{command}"))
        {
            continue;
        }
        let field = |wanted: &str| -> u64 {
            fields
                .split(',')
                .find_map(|part| part.strip_prefix(wanted)?.strip_prefix('='))
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("{wanted} in {line}"))
        };
        calls += field("calls");
        usec += field("usec");
    }
    assert!(calls > 0, "no {commands:?} in INFO commandstats");
    let per_call = |total: f64| total / calls as f64;
    Cost {
        calls,
        usec: per_call(usec as f64),
        server_cpu_us: per_call(server_cpu_s * 1e6),
        client_cpu_us: per_call(client_cpu_ns as f64 / 1e3),
        wall_us: per_call(wall.as_secs_f64() * 1e6),
    }
}

/// Seconds of CPU the server used so far (`INFO cpu`).
fn server_cpu(connection: &mut redis::Connection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query(connection)
        .expect("INFO cpu");
    info.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            matches!(name, "used_cpu_user" | "used_cpu_sys")
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// Nanoseconds this thread ran on a CPU so far (the first field of
/// `/proc/thread-self/schedstat`, Linux).
fn thread_cpu_ns() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("/proc/thread-self/schedstat (Linux)");
    text.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .expect("a CPU time in schedstat")
}

/// One `EVALSHA` of the bare script on `sku`'s counter: 1 sold, 0 refused. Out of line,
/// so that callgrind's `--toggle-collect='*sell_bare*'` measures the client's side of it
/// (as `'*RedisStore*StockStore*>::sell'` does the store's).
#[inline(never)]
fn sell_bare(script: &redis::Script, connection: &mut redis::Connection, sku: u64) -> u64 {
    script
        .key(format!("bare:{sku}"))
        .arg(1)
        .invoke(connection)
        .expect("EVALSHA")
}

/// Resets `INFO commandstats`; returns where the next loop starts.
fn reset(connection: &mut redis::Connection) -> Mark {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(connection)
        .expect("CONFIG RESETSTAT");
    Mark {
        server_cpu_s: server_cpu(connection),
        client_cpu_ns: thread_cpu_ns(),
        wall: Instant::now(),
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(20_000, |n| n.parse().expect("N, a count"));
    let server = RedisServer::start(Durability::Memory);
    let client = redis::Client::open(server.url()).expect("a redis URL");
    let mut admin = client.get_connection().expect("a connection");
    assert!(admin.is_open());

    let store = RedisStore::<u64>::connect(&server.url(), "cost").expect("a RedisStore");
    for sku in 0..SKUS {
        store.restock(&sku, UNITS_PER_SKU).expect("restock");
    }
    // Loads every script used below, so that no NOSCRIPT round counts.
    store.sell(&[(0, 1)]).expect("sell");
    let hold = store.reserve(&[(0, 1)]).expect("reserve");
    store.commit(hold.id()).expect("commit");

    let mark = reset(&mut admin);
    for i in 0..n {
        store.sell(&[(i % SKUS, 1)]).expect("sell");
    }
    let sell = cost(&mut admin, STORE_COMMANDS, &mark);
    assert_eq!(sell.calls, n, "one server call per sell");

    let mark = reset(&mut admin);
    let mut holds = Vec::with_capacity(usize::try_from(n).expect("N fits"));
    for i in 0..n {
        holds.push(store.reserve(&[(i % SKUS, 1)]).expect("reserve").id());
    }
    let reserve = cost(&mut admin, STORE_COMMANDS, &mark);
    let mark = reset(&mut admin);
    for id in holds {
        store.commit(id).expect("commit");
    }
    let commit = cost(&mut admin, STORE_COMMANDS, &mark);

    let script = redis::Script::new(BARE_SCRIPT);
    for sku in 0..SKUS {
        let _: () = redis::cmd("SET")
            .arg(format!("bare:{sku}"))
            .arg(UNITS_PER_SKU)
            .query(&mut admin)
            .expect("SET");
    }
    let mark = reset(&mut admin);
    for i in 0..n {
        assert_eq!(sell_bare(&script, &mut admin, i % SKUS), 1);
    }
    let bare = cost(&mut admin, &["evalsha"], &mark);

    let recording = redis::Script::new(BARE_REQUEST_SCRIPT);
    let _: u64 = recording
        .key("bare:0")
        .key("requests:warm")
        .arg(1)
        .arg("warm")
        .invoke(&mut admin)
        .expect("EVALSHA");
    let mark = reset(&mut admin);
    for i in 0..n {
        let sold: u64 = recording
            .key(format!("bare:{}", i % SKUS))
            .key("requests:0")
            .arg(1)
            .arg(i)
            .invoke(&mut admin)
            .expect("EVALSHA");
        assert_eq!(sold, 1);
    }
    let bare_request = cost(&mut admin, &["evalsha"], &mark);

    println!("cost per call, N = {n}, {SKUS} SKUs, 1 client thread, microseconds (x bare):");
    println!("                    server usec_per_call  server CPU        client CPU        wall");
    let row = |name: &str, cost: Cost| {
        let cell = |value: f64, of_bare: f64| format!("{value:7.2} ({:5.2}x)", value / of_bare);
        println!(
            "  {name:<17} {}     {}   {}   {}",
            cell(cost.usec, bare.usec),
            cell(cost.server_cpu_us, bare.server_cpu_us),
            cell(cost.client_cpu_us, bare.client_cpu_us),
            cell(cost.wall_us, bare.wall_us),
        );
    };
    row("bare script", bare);
    row("bare + request id", bare_request);
    row("sell", sell);
    row("reserve", reserve);
    row("commit", commit);
    row("reserve + commit", reserve + commit);
}
