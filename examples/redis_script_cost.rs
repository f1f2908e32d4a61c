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
//!
//! and prints, for each, `usec_per_call` of its command (`FCALL`, `EVALSHA`) and the
//! server's CPU time per call (`INFO cpu`, network work included), with the ratios to
//! `bare`.
//!
//! Run: `cargo run --features redis --example redis_script_cost -- [N]` (N defaults to
//! 20,000; the client's build profile does not matter, the figures are the server's).

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

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

/// Calls, server microseconds per call (`usec` / `calls` of `INFO commandstats`, summed
/// over `commands`) and server CPU microseconds per call (`used_cpu_user` +
/// `used_cpu_sys` of `INFO cpu` since `cpu_before`, which counts the network work too and
/// moves less with the machine's load).
fn cost(connection: &mut redis::Connection, commands: &[&str], cpu_before: f64) -> (u64, f64, f64) {
    let cpu_after = cpu(connection);
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
    (
        calls,
        per_call(usec as f64),
        per_call((cpu_after - cpu_before) * 1e6),
    )
}

/// Seconds of CPU the server used so far (`INFO cpu`).
fn cpu(connection: &mut redis::Connection) -> f64 {
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

/// Resets `INFO commandstats`; returns the server's CPU seconds so far.
fn reset(connection: &mut redis::Connection) -> f64 {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(connection)
        .expect("CONFIG RESETSTAT");
    cpu(connection)
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

    let cpu_before = reset(&mut admin);
    for i in 0..n {
        store.sell(&[(i % SKUS, 1)]).expect("sell");
    }
    let sell = cost(&mut admin, STORE_COMMANDS, cpu_before);
    assert_eq!(sell.0, n, "one server call per sell");

    let cpu_before = reset(&mut admin);
    let mut holds = Vec::with_capacity(usize::try_from(n).expect("N fits"));
    for i in 0..n {
        holds.push(store.reserve(&[(i % SKUS, 1)]).expect("reserve").id());
    }
    let reserve = cost(&mut admin, STORE_COMMANDS, cpu_before);
    let cpu_before = reset(&mut admin);
    for id in holds {
        store.commit(id).expect("commit");
    }
    let commit = cost(&mut admin, STORE_COMMANDS, cpu_before);

    let script = redis::Script::new(BARE_SCRIPT);
    for sku in 0..SKUS {
        let _: () = redis::cmd("SET")
            .arg(format!("bare:{sku}"))
            .arg(UNITS_PER_SKU)
            .query(&mut admin)
            .expect("SET");
    }
    let cpu_before = reset(&mut admin);
    for i in 0..n {
        let sold: u64 = script
            .key(format!("bare:{}", i % SKUS))
            .arg(1)
            .invoke(&mut admin)
            .expect("EVALSHA");
        assert_eq!(sold, 1);
    }
    let bare = cost(&mut admin, &["evalsha"], cpu_before);

    println!("server cost per call, N = {n}, {SKUS} SKUs, 1 client thread:");
    println!("                    usec_per_call        CPU us per call");
    let row = |name: &str, (_, usec, cpu): (u64, f64, f64)| {
        println!(
            "  {name:<17} {usec:7.2} ({:5.2}x bare)  {cpu:7.2} ({:5.2}x bare)",
            usec / bare.1,
            cpu / bare.2
        );
    };
    row("bare script", bare);
    row("sell", sell);
    row("reserve", reserve);
    row("commit", commit);
    row(
        "reserve + commit",
        (n, reserve.1 + commit.1, reserve.2 + commit.2),
    );
}
