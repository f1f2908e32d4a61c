//! Why `RedisStore` routes a Redis Cluster itself instead of using redis-rs's
//! `ClusterConnection`: a call that outlives its response timeout (the primary is busy for
//! 0.8 s, `DEBUG SLEEP`) is sent again by the cluster client on its own, each time as a new
//! call, and the server runs every copy once it is free again. `RedisStore` sends such a call
//! once more under its request id, and the server applies it once.
//!
//! Starts its own cluster of 3 primaries and 3 replicas (`tests/support/redis_cluster.rs`):
//! `cargo run --features redis --example redis_cluster_resends`.

#[path = "../tests/support/redis_cluster.rs"]
mod redis_cluster;

use std::thread;
use std::time::Duration;

use redis::cluster::ClusterClient;
use stockledger::{RedisCluster, StockStore};

/// How long the primary stays busy: under the harness's node timeout, so nobody fails over.
const BUSY: &str = "0.8";
/// The clients' response timeout.
const TIMEOUT: Duration = Duration::from_millis(100);
/// A script that counts how many times it ran.
const COUNT: &str = "return redis.call('INCR', KEYS[1])";

/// Keeps the primary on `port` busy for [`BUSY`] seconds from a thread, started before the
/// call under test.
fn busy(port: u16) -> thread::JoinHandle<()> {
    let sleeper = thread::spawn(move || {
        redis_cluster::query::<String>(port, &["DEBUG", "SLEEP", BUSY]).unwrap();
    });
    thread::sleep(Duration::from_millis(50));
    sleeper
}

/// How many times one `EVAL` of [`COUNT`] ran through a `ClusterConnection` with `retries`
/// retries, and what the caller got back.
fn cluster_client(
    cluster: &redis_cluster::RedisCluster,
    retries: Option<u32>,
    key: &str,
) -> (i64, String) {
    let mut builder = ClusterClient::builder(cluster.urls()).response_timeout(TIMEOUT);
    if let Some(retries) = retries {
        builder = builder.retries(retries);
    }
    let mut connection = builder.build().unwrap().get_connection().unwrap();
    let owner = cluster.owner_of(cluster.slot_of(key));
    let sleeper = busy(owner);
    let answer: redis::RedisResult<i64> = redis::cmd("EVAL")
        .arg(COUNT)
        .arg(1)
        .arg(key)
        .query(&mut connection);
    sleeper.join().unwrap();
    thread::sleep(Duration::from_millis(200));
    let runs: i64 = cluster.command(owner, &["GET", key]);
    let answer = match answer {
        Ok(count) => format!("Ok({count})"),
        Err(error) => format!("Err({:?})", error.kind()),
    };
    (runs, answer)
}

fn main() {
    let cluster = redis_cluster::RedisCluster::start();
    println!(
        "a call that outlives its {} ms response timeout (its primary busy {BUSY} s):",
        TIMEOUT.as_millis()
    );
    let (runs, answer) = cluster_client(&cluster, None, "{default}:count");
    println!("  redis-rs ClusterConnection, default retries: ran {runs} times, answered {answer}");
    cluster.wait_settled();
    let (runs, answer) = cluster_client(&cluster, Some(0), "{none}:count");
    println!(
        "  redis-rs ClusterConnection, retries(0): ran {runs} times, answered {answer} \
         (and follows no MOVED either)"
    );
    cluster.wait_settled();
    let handle = RedisCluster::new(cluster.urls()).command_timeout(TIMEOUT);
    let store = handle.store::<String>("resends").build().unwrap();
    let sku = "SKU1004".to_string();
    store.restock(&sku, 100).unwrap();
    let owner = cluster.owner_of(cluster.slot_of("{resends}"));
    let sleeper = busy(owner);
    let answer = store.sell(&[(sku.clone(), 1)]);
    sleeper.join().unwrap();
    let sold = 100 - store.level(&sku).unwrap().on_hand;
    println!(
        "  RedisStore (resent once under its request id): sold {sold} time(s), answered {}",
        match answer {
            Ok(()) => "Ok".to_string(),
            Err(error) => format!("Err({error})"),
        }
    );
}
