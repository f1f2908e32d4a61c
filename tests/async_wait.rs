#![cfg(not(loom))]
//! `reserve_wait` on a tokio multi-thread runtime: FIFO service of async waiters (and of
//! async and blocking waiters mixed in one queue), and cancel safety: a future dropped at
//! any point leaves the queue, passes the turn on and gives back every unit it held.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};
use stockledger::{
    ChannelSink, MonitorStore, ReserveOptions, StockError, StockEvent, StockStore, WaitingStore,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

type Sku = &'static str;
type Store = Arc<MonitorStore<Sku>>;

const SKU: Sku = "SKU1004";

/// A guard against a hang, never a timing assertion: a test that needs it has failed.
const HANG: Duration = Duration::from_secs(60);

/// A store holding `sku` with nothing on hand (restocked once, sold out).
fn sold_out(skus: &[Sku]) -> Store {
    let store = Arc::new(MonitorStore::new());
    for sku in skus {
        store.restock(sku, 1).unwrap();
        store.sell(&[(*sku, 1)]).unwrap();
    }
    store
}

/// Polls `future` once with a waker that does nothing; `Some` if it completed.
fn poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// How waiter `index` of an arrival-order check waits: it reports `index` on `served` once
/// it holds its unit.
type StartWaiter = Box<dyn Fn(usize, Store, mpsc::UnboundedSender<usize>) -> JoinHandle<()>>;

/// Starts `waiters` waiters for 1 unit each, one at a time (each has arrived, per
/// `arrived(store, count)`, before the next starts), then restocks `units` units one at a
/// time and checks that unit `i` went to waiter `i`. Returns the waiters still waiting.
///
/// # Errors
///
/// The first unit that went to another waiter than the next in arrival order.
async fn served_in_arrival_order(
    store: &Store,
    waiters: usize,
    units: usize,
    start: StartWaiter,
    arrived: impl Fn(&Store, usize) -> bool,
) -> Result<Vec<JoinHandle<()>>, String> {
    let (served, mut order) = mpsc::unbounded_channel();
    let mut handles = Vec::with_capacity(waiters);
    for index in 0..waiters {
        handles.push(start(index, Arc::clone(store), served.clone()));
        while !arrived(store, index + 1) {
            tokio::task::yield_now().await;
        }
    }
    for unit in 0..units {
        store.restock(&SKU, 1).unwrap();
        let waiter = tokio::time::timeout(HANG, order.recv()).await;
        let waiter = waiter.expect("nobody got the unit").unwrap();
        if waiter != unit {
            return Err(format!("unit {unit} went to waiter {waiter}"));
        }
    }
    Ok(handles.split_off(units))
}

/// An async waiter with `reserve_wait`.
fn async_waiter() -> StartWaiter {
    Box::new(|index, store, served| {
        tokio::spawn(async move {
            store
                .reserve_wait(&[(SKU, 1)], &ReserveOptions::new())
                .await
                .unwrap();
            served.send(index).unwrap();
        })
    })
}

/// A blocking waiter with `reserve_timeout`, on tokio's blocking pool.
fn blocking_waiter() -> StartWaiter {
    Box::new(|index, store, served| {
        tokio::task::spawn_blocking(move || {
            store.reserve_timeout(&[(SKU, 1)], HANG).unwrap();
            served.send(index).unwrap();
        })
    })
}

/// Whether `count` waiters are queued (nothing is served while they arrive).
fn queued(store: &Store, count: usize) -> bool {
    store.queued(&SKU) == count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_tasks_are_served_in_arrival_order() {
    let store = sold_out(&[SKU]);
    let waiting = served_in_arrival_order(&store, 1_000, 100, async_waiter(), queued)
        .await
        .unwrap();
    assert_eq!(store.queued(&SKU), 900);
    let level = store.level(&SKU).unwrap();
    assert_eq!((level.on_hand, level.reserved), (100, 100));
    // Dropping the 900 futures still queued (aborting their tasks) empties the queue.
    for task in &waiting {
        task.abort();
    }
    for task in waiting {
        assert!(task.await.unwrap_err().is_cancelled());
    }
    assert_eq!(store.queued(&SKU), 0);
    assert_eq!(store.level(&SKU).unwrap().reserved, 100);
    assert_eq!(store.stats().reserves, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_and_blocking_waiters_share_one_queue() {
    let store = sold_out(&[SKU]);
    let (async_start, blocking_start) = (async_waiter(), blocking_waiter());
    let mixed: StartWaiter = Box::new(move |index, store, served| {
        let start = if index % 2 == 0 {
            &async_start
        } else {
            &blocking_start
        };
        start(index, store, served)
    });
    let waiting = served_in_arrival_order(&store, 40, 40, mixed, queued)
        .await
        .unwrap();
    assert!(waiting.is_empty());
    assert_eq!(store.queued(&SKU), 0);
    assert_eq!(store.level(&SKU).unwrap().reserved, 40);
}

/// Negative control of the arrival-order check: waiters without a queue (retrying a
/// non-waiting `reserve` and yielding) take units in whatever order they are polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn arrival_order_check_catches_waiters_without_a_queue() {
    let store = sold_out(&[SKU]);
    let tried = Arc::new(AtomicUsize::new(0));
    let spinner: StartWaiter = {
        let tried = Arc::clone(&tried);
        Box::new(move |index, store, served| {
            let tried = Arc::clone(&tried);
            tokio::spawn(async move {
                let mut first = true;
                while store.reserve(&[(SKU, 1)]).is_err() {
                    if std::mem::take(&mut first) {
                        tried.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                }
                served.send(index).unwrap();
            })
        })
    };
    let arrived = move |_: &Store, count| tried.load(Ordering::SeqCst) >= count;
    let checked = served_in_arrival_order(&store, 64, 32, spinner, arrived).await;
    let error = checked.expect_err("waiters without a queue kept arrival order");
    assert!(error.starts_with("unit "), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_head_passes_its_turn_on() {
    let store = sold_out(&[SKU]);
    let mut head = store.reserve_wait(&[(SKU, 2)], &ReserveOptions::new());
    assert!(poll_once(&mut head).is_none());
    let behind = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            store
                .reserve_wait(&[(SKU, 1)], &ReserveOptions::new())
                .await
        }
    });
    while store.queued(&SKU) < 2 {
        tokio::task::yield_now().await;
    }
    store.restock(&SKU, 1).unwrap(); // not enough for the head, which blocks the queue
    assert_eq!(store.level(&SKU).unwrap().reserved, 0);
    drop(head);
    let hold = tokio::time::timeout(HANG, behind).await.unwrap().unwrap();
    assert_eq!(hold.unwrap().lines(), &[(SKU, 1)]);
    assert_eq!(store.queued(&SKU), 0);
}

#[test]
fn a_grant_not_picked_up_goes_to_the_next_waiter() {
    let store = sold_out(&[SKU]);
    let mut first = store.reserve_wait(&[(SKU, 1)], &ReserveOptions::new());
    let mut second = store.reserve_wait(&[(SKU, 1)], &ReserveOptions::new());
    assert!(poll_once(&mut first).is_none());
    assert!(poll_once(&mut second).is_none());
    store.restock(&SKU, 1).unwrap(); // granted to `first`, which is never polled again
    assert_eq!(store.level(&SKU).unwrap().reserved, 1);
    assert_eq!(store.queued(&SKU), 1);
    drop(first);
    // The unit went on to `second`: it completes on its next poll.
    let hold = poll_once(&mut second).unwrap().unwrap();
    assert_eq!(store.level(&SKU).unwrap().reserved, 1);
    store.release(hold.id()).unwrap();
    assert_eq!(store.level(&SKU).unwrap().available(), 1);
    assert_eq!(store.queued(&SKU), 0);
}

#[test]
fn a_dropped_multi_line_wait_gives_back_its_held_lines() {
    let store = sold_out(&["dock"]);
    store.restock(&"cable", 2).unwrap();
    let mut both = store.reserve_wait(&[("dock", 1), ("cable", 2)], &ReserveOptions::new());
    assert!(poll_once(&mut both).is_none());
    // It holds `cable` (first in SKU order) while it waits for `dock`.
    assert_eq!(store.level(&"cable").unwrap().reserved, 2);
    assert_eq!(store.queued(&"dock"), 1);
    let mut cable = store.reserve_wait(&[("cable", 1)], &ReserveOptions::new());
    assert!(poll_once(&mut cable).is_none());
    drop(both);
    assert_eq!(store.queued(&"dock"), 0);
    assert!(poll_once(&mut cable).unwrap().is_ok());
    let level = store.level(&"cable").unwrap();
    assert_eq!((level.on_hand, level.reserved), (2, 1));
    // A future dropped before its first poll touches nothing.
    drop(store.reserve_wait(&[("cable", 1)], &ReserveOptions::new()));
    assert_eq!(store.level(&"cable").unwrap().reserved, 1);
}

#[test]
fn reserve_wait_takes_options_and_refuses_bad_input() {
    let store = sold_out(&[SKU]);
    store.restock(&SKU, 1).unwrap();
    let options = ReserveOptions::new()
        .ttl(Duration::from_secs(60))
        .idempotency_key("cart-1");
    let block_on = futures_executor::block_on::<stockledger::ReserveWait<'_, Sku>>;
    let hold = block_on(store.reserve_wait(&[(SKU, 1)], &options)).unwrap();
    assert!(hold.expires_at().is_some());
    // A retry with the key answers at once, though the SKU is sold out now.
    let retry = block_on(store.reserve_wait(&[(SKU, 1)], &options)).unwrap();
    assert_eq!(retry.id(), hold.id());
    assert!(matches!(
        block_on(store.reserve_wait(&[(SKU, 2)], &options)),
        Err(StockError::IdempotencyConflict { .. })
    ));
    assert_eq!(
        block_on(store.reserve_wait(&[], &ReserveOptions::new())),
        Err(StockError::EmptyRequest)
    );
    assert_eq!(
        block_on(store.reserve_wait(&[("nope", 1)], &ReserveOptions::new())),
        Err(StockError::UnknownSku("nope"))
    );
    assert_eq!(store.level(&SKU).unwrap().reserved, 1);
    assert_eq!(store.queued(&SKU), 0);
}

#[test]
fn a_waiting_request_with_a_key_seen_meanwhile_gives_its_units_back() {
    let store = sold_out(&[SKU]);
    let options = ReserveOptions::new().idempotency_key("order-7");
    let mut waiting = store.reserve_wait(&[(SKU, 1)], &options);
    assert!(poll_once(&mut waiting).is_none());
    store.restock(&SKU, 2).unwrap(); // 1 granted to the waiter, 1 available
    let first = store.reserve_with(&[(SKU, 1)], &options).unwrap(); // same key, no wait
    let replay = poll_once(&mut waiting).unwrap().unwrap();
    assert_eq!(replay.id(), first.id());
    assert_eq!(
        store.level(&SKU).unwrap().reserved,
        1,
        "held twice for one key"
    );
}

/// What the storm's tasks did to each SKU, beside the store's own counts.
#[derive(Default)]
struct Tally {
    restocked: BTreeMap<Sku, u64>,
    sold: BTreeMap<Sku, u64>,
}

/// Conservation with no hold open and nobody waiting: per SKU, `restocked = on hand + sold`,
/// nothing reserved, nobody queued.
///
/// # Errors
///
/// The first SKU that breaks it.
fn conserved(store: &MonitorStore<Sku>, skus: &[Sku], tally: &Tally) -> Result<(), String> {
    for sku in skus {
        let level = store.level(sku).unwrap();
        let restocked = tally.restocked.get(sku).copied().unwrap_or(0);
        let sold = tally.sold.get(sku).copied().unwrap_or(0);
        if restocked != level.on_hand + sold || level.reserved != 0 || store.queued(sku) != 0 {
            return Err(format!(
                "{sku}: restocked {restocked}, sold {sold}, {level:?}, {} queued",
                store.queued(sku)
            ));
        }
    }
    Ok(())
}

const STORM_SKUS: [Sku; 3] = ["a", "b", "c"];

/// One storm task: waits for random lines and gives up at random points (a timeout that
/// polls once, a timeout mid-wait, a lost `select!`, an aborted task), then commits or
/// releases what it got.
async fn storm_task(store: Store, tally: Arc<Mutex<Tally>>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..40 {
        let count = rng.gen_range(1..=2);
        let lines: Vec<(Sku, u64)> = (0..count)
            .map(|_| (STORM_SKUS[rng.gen_range(0..3)], rng.gen_range(1..=3)))
            .collect();
        let patience = Duration::from_micros(rng.gen_range(0..3_000));
        let got = match rng.gen_range(0..3) {
            0 => tokio::time::timeout(patience, store.reserve_wait(&lines, &ReserveOptions::new()))
                .await
                .ok(),
            1 => tokio::select! {
                got = store.reserve_wait(&lines, &ReserveOptions::new()) => Some(got),
                () = tokio::time::sleep(patience) => None,
            },
            _ => {
                let task = tokio::spawn({
                    let (store, lines) = (Arc::clone(&store), lines.clone());
                    async move { store.reserve_wait(&lines, &ReserveOptions::new()).await }
                });
                tokio::time::sleep(patience).await;
                task.abort();
                task.await.ok()
            }
        };
        let Some(hold) = got else { continue };
        let hold = hold.unwrap();
        if rng.gen_bool(0.5) {
            store.commit(hold.id()).unwrap();
            let mut tally = tally.lock().unwrap();
            for (sku, units) in hold.lines() {
                *tally.sold.entry(sku).or_default() += units;
            }
        } else {
            store.release(hold.id()).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancellation_storm_conserves_every_unit() {
    let store = sold_out(&STORM_SKUS);
    let tally = Arc::new(Mutex::new(Tally::default()));
    for sku in STORM_SKUS {
        tally.lock().unwrap().restocked.insert(sku, 1);
        tally.lock().unwrap().sold.insert(sku, 1);
    }
    let tasks: Vec<_> = (0..200)
        .map(|seed| tokio::spawn(storm_task(Arc::clone(&store), Arc::clone(&tally), seed)))
        .collect();
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..2_000 {
        let sku = STORM_SKUS[rng.gen_range(0..3)];
        let units = rng.gen_range(1..=2);
        store.restock(&sku, units).unwrap();
        *tally.lock().unwrap().restocked.entry(sku).or_default() += units;
        tokio::time::sleep(Duration::from_micros(50)).await;
    }
    for task in tasks {
        tokio::time::timeout(HANG, task).await.unwrap().unwrap();
    }
    let stats = store.stats();
    assert!(stats.waits > 0, "nobody waited: the storm tested nothing");
    assert!(
        stats.reserves > 0,
        "nobody got stock: the storm tested nothing"
    );
    conserved(&store, &STORM_SKUS, &tally.lock().unwrap()).unwrap();
}

/// Negative control of the conservation check: a future leaked (forgotten, so never
/// dropped) while it holds one line and waits for another keeps its units and its place.
#[test]
fn conservation_check_catches_a_leaked_waiter() {
    let store = sold_out(&["dock"]);
    store.restock(&"cable", 1).unwrap();
    let mut tally = Tally::default();
    tally.restocked.extend([("dock", 1), ("cable", 1)]);
    tally.sold.insert("dock", 1);
    conserved(&store, &["cable", "dock"], &tally).unwrap();
    let mut both = store.reserve_wait(&[("cable", 1), ("dock", 1)], &ReserveOptions::new());
    assert!(poll_once(&mut both).is_none());
    std::mem::forget(both);
    let error = conserved(&store, &["cable", "dock"], &tally).unwrap_err();
    assert!(error.starts_with("cable"), "{error}");
}

/// The named future is `Send` (a tokio task can hold it across `.await`) and `Unpin`, for
/// any SKU type, and so is the trait's boxed one.
#[test]
fn the_futures_are_send() {
    fn send_and_unpin<T: Send + Unpin>() {}
    send_and_unpin::<stockledger::ReserveWait<'static, String>>();
    send_and_unpin::<stockledger::ReserveWait<'static, &'static str>>();
    send_and_unpin::<stockledger::WaitFuture<'static, String>>();
}

#[test]
fn the_trait_future_is_send_and_boxed() {
    fn is_send<T: Send>(_: &T) {}
    let store: Box<dyn WaitingStore<Sku>> = Box::new(MonitorStore::new());
    store.restock(&SKU, 1).unwrap();
    let future = store.reserve_wait(&[(SKU, 1)], &ReserveOptions::new());
    is_send(&future);
    assert!(futures_executor::block_on(future).is_ok());
}

/// The `(sku, available)` of every `LowStock` event sent so far.
fn low_stock(events: &crossbeam_channel::Receiver<StockEvent<Sku>>) -> Vec<(Sku, u64)> {
    events
        .try_iter()
        .filter_map(|event| match event {
            StockEvent::LowStock { sku, available, .. } => Some((sku, available)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_dropped_partial_hold_reports_its_crossing() {
    let (sink, events) = ChannelSink::unbounded();
    let store = MonitorStore::builder().event_sink(sink).build();
    store.restock(&"a", 3).unwrap();
    store.set_low_stock_threshold(&"a", 2).unwrap();
    store.restock(&"b", 1).unwrap();
    store.sell(&[("b", 1)]).unwrap();
    // Holds a (3 -> 1, visible to every reader), waits for b, is dropped, gives a back.
    let mut both = store.reserve_wait(&[("a", 2), ("b", 1)], &ReserveOptions::new());
    assert!(poll_once(&mut both).is_none());
    drop(both);
    assert_eq!(store.level(&"a").unwrap().available(), 3);
    assert_eq!(low_stock(&events), [("a", 1)]);
}

#[test]
fn a_dropped_grant_reports_its_crossing() {
    let (sink, events) = ChannelSink::unbounded();
    let store = MonitorStore::builder().event_sink(sink).build();
    store.restock(&"a", 1).unwrap();
    store.sell(&[("a", 1)]).unwrap();
    store.set_low_stock_threshold(&"a", 2).unwrap();
    let mut waiting = store.reserve_wait(&[("a", 3)], &ReserveOptions::new());
    assert!(poll_once(&mut waiting).is_none());
    store.restock(&"a", 4).unwrap(); // available 0 -> 4, then the grant: 4 -> 1
    assert!(
        low_stock(&events).is_empty(),
        "the grant's waiter reports it"
    );
    drop(waiting); // never picked up: the grant goes back, its crossing was visible
    assert_eq!(store.level(&"a").unwrap().available(), 4);
    assert_eq!(low_stock(&events), [("a", 1)]);
}
