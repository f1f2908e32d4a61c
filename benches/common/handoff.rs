//! S6: the wait-queue handoff. Two threads pass one unit back and forth; each pass is a
//! handoff to a thread that is (usually) already waiting.
//!
//! - `monitor`: thread A restocks 1 unit of SKU `PING` while B waits on it in
//!   `reserve_timeout`; B commits its hold and restocks 1 unit of `PONG`, on which A waits.
//! - `condvar_pingpong` (the handoff floor): the same turn-taking on one
//!   `parking_lot::Mutex<Turn>` and `Condvar`, notified under the lock as the monitor does.
//!
//! A handoff's latency runs from just before the giver's restock (or turn change) to just
//! after the taker's wait returns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use stockledger::{MonitorStore, StockStore, WaitingStore};

/// SKU on which thread B waits.
const PING: u64 = 0;
/// SKU on which thread A waits.
const PONG: u64 = 1;
/// A wait longer than this is a harness bug.
const WAIT_MAX: Duration = Duration::from_secs(10);

/// The result of a run: wall time of the round trips and every handoff's latency (ns).
#[derive(Debug)]
pub struct Run {
    /// From the release of both threads until both finished.
    pub elapsed: Duration,
    /// Latency of each handoff, two per round trip, in nanoseconds.
    pub latencies_ns: Vec<u64>,
}

/// Nanoseconds since `epoch`, for stamps shared between threads.
fn since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Runs `giver` and `taker` (each given the stamp, the epoch and its latency log) on two
/// threads released by a barrier.
fn run_pair<A, B>(round_trips: u64, a: A, b: B) -> Run
where
    A: FnOnce(&AtomicU64, Instant, &mut Vec<u64>) + Send,
    B: FnOnce(&AtomicU64, Instant, &mut Vec<u64>) + Send,
{
    let start = Barrier::new(3);
    let stamp = AtomicU64::new(0);
    let epoch = Instant::now();
    let capacity = round_trips as usize;
    std::thread::scope(|scope| {
        let (start, stamp) = (&start, &stamp);
        let a = scope.spawn(move || {
            let mut log = Vec::with_capacity(capacity);
            start.wait();
            a(stamp, epoch, &mut log);
            log
        });
        let b = scope.spawn(move || {
            let mut log = Vec::with_capacity(capacity);
            start.wait();
            b(stamp, epoch, &mut log);
            log
        });
        start.wait();
        let began = Instant::now();
        let mut latencies_ns = a.join().expect("thread A");
        latencies_ns.extend(b.join().expect("thread B"));
        Run {
            elapsed: began.elapsed(),
            latencies_ns,
        }
    })
}

/// `round_trips` round trips through a [`MonitorStore`].
pub fn monitor(round_trips: u64) -> Run {
    let store = MonitorStore::<u64>::new();
    for sku in [PING, PONG] {
        store.restock(&sku, 1).expect("create the SKU");
        store.sell(&[(sku, 1)]).expect("empty the SKU");
    }
    let store = &store;
    let take = move |sku: u64, stamp: &AtomicU64, epoch: Instant, log: &mut Vec<u64>| {
        let hold = store
            .reserve_timeout(&[(sku, 1)], WAIT_MAX)
            .expect("the other thread restocks");
        log.push(since(epoch).saturating_sub(stamp.load(Ordering::Acquire)));
        store.commit(hold.id()).expect("commit the hold");
    };
    let give = move |sku: u64, stamp: &AtomicU64, epoch: Instant| {
        stamp.store(since(epoch), Ordering::Release);
        store.restock(&sku, 1).expect("restock 1 unit");
    };
    run_pair(
        round_trips,
        |stamp, epoch, log| {
            for _ in 0..round_trips {
                give(PING, stamp, epoch);
                take(PONG, stamp, epoch, log);
            }
        },
        |stamp, epoch, log| {
            for _ in 0..round_trips {
                take(PING, stamp, epoch, log);
                give(PONG, stamp, epoch);
            }
        },
    )
}

/// Whose turn it is in the condvar ping-pong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    A,
    B,
}

/// `round_trips` round trips through one mutex and condition variable.
pub fn condvar_pingpong(round_trips: u64) -> Run {
    let turn = Mutex::new(Turn::A);
    let changed = Condvar::new();
    let (turn, changed) = (&turn, &changed);
    let take = move |mine: Turn, stamp: &AtomicU64, epoch: Instant, log: &mut Vec<u64>| {
        let mut current = turn.lock();
        while *current != mine {
            changed.wait(&mut current);
        }
        drop(current);
        log.push(since(epoch).saturating_sub(stamp.load(Ordering::Acquire)));
    };
    let give = move |theirs: Turn, stamp: &AtomicU64, epoch: Instant| {
        stamp.store(since(epoch), Ordering::Release);
        let mut current = turn.lock();
        *current = theirs;
        changed.notify_all();
    };
    run_pair(
        round_trips,
        |stamp, epoch, log| {
            for _ in 0..round_trips {
                give(Turn::B, stamp, epoch);
                take(Turn::A, stamp, epoch, log);
            }
        },
        |stamp, epoch, log| {
            for _ in 0..round_trips {
                take(Turn::B, stamp, epoch, log);
                give(Turn::A, stamp, epoch);
            }
        },
    )
}

/// The `q`-quantile (0..=1) of `sorted` latencies.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index]
}
