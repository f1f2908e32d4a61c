//! An order saga on the reservation lifecycle, on every store.
//!
//! Worker threads check out carts: each checkout holds its lines with a TTL and an
//! idempotency key (the order id), then pays. Payment fails 30% of the time and the hold is
//! released (the compensation step, run by a [`ReservationGuard`] going out of scope);
//! otherwise the hold is committed. Along the way:
//!
//! - a client that timed out retries its checkout with the same key: it gets the same
//!   reservation back and nothing more is held (deduplicated);
//! - a slow payment extends its hold before the deadline;
//! - an abandoned cart is never resolved: its hold expires, and a [`Reaper`] gives the
//!   stock back;
//! - an event sink counts the events, and low-stock alerts trigger replenishment.
//!
//! At the end, every SKU is checked for conservation: `restocked = on hand + sold`, nothing
//! reserved, and every hold resolved exactly once (`reserves = commits + releases +
//! expirations`). A violation prints what broke and exits non-zero. `--negative-control`
//! sells one unit behind the saga's bookkeeping, so the check must fail: it proves the
//! check can.
//!
//! Run: `cargo run --release --example order_saga -- --orders 3000 --threads 4`

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stockledger::{
    AdaptiveStore, ChannelSink, MonitorStore, OptimisticStore, PessimisticStore, Reaper,
    ReservationGuard, ReserveOptions, StockError, StockEvent, StockStore,
};

/// The catalogue: the SKUs of the shop in `data/electronic_sales.csv`.
const SKUS: [&str; 5] = ["SKU1001", "SKU1002", "SKU1003", "SKU1004", "SKU1005"];
/// Units of each SKU at the start.
const INITIAL_STOCK: u64 = 400;
/// Units added when a SKU's low-stock alert fires.
const REPLENISHMENT: u64 = 200;
/// Alert when a SKU's available units fall below this.
const LOW_STOCK_THRESHOLD: u64 = 50;
/// How long a checkout holds its stock without payment.
const CHECKOUT_TTL: Duration = Duration::from_millis(40);
/// How often the reaper expires abandoned carts.
const REAPER_INTERVAL: Duration = Duration::from_millis(5);
/// The most the final sweep waits for the reaper to expire the last abandoned carts.
const SETTLE_WAIT_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Strategy {
    All,
    Pessimistic,
    Optimistic,
    Monitor,
    Adaptive,
}

/// Order saga: checkout with TTL and idempotency key, payment, commit or compensate.
#[derive(Debug, Parser)]
struct Args {
    /// Orders to check out, over all threads.
    #[arg(long, default_value_t = 3000)]
    orders: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 4)]
    threads: u64,
    /// Seed of the simulated customers and payments.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The store(s) to run on.
    #[arg(long, value_enum, default_value_t = Strategy::All)]
    store: Strategy,
    /// Sell one unit behind the saga's bookkeeping: the conservation check must fail.
    #[arg(long)]
    negative_control: bool,
}

/// What the saga did, by its own bookkeeping (not the store's).
#[derive(Debug, Default)]
struct Tally {
    /// Units restocked per SKU (initial stock and replenishments).
    restocked: BTreeMap<&'static str, u64>,
    /// Units sold per SKU (committed holds).
    sold: BTreeMap<&'static str, u64>,
    paid: u64,
    payment_failed: u64,
    abandoned: u64,
    retries_deduplicated: u64,
    extended: u64,
    expired_during_payment: u64,
    out_of_stock: u64,
    conflicts: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (sku, units) in other.restocked {
            *self.restocked.entry(sku).or_default() += units;
        }
        for (sku, units) in other.sold {
            *self.sold.entry(sku).or_default() += units;
        }
        self.paid += other.paid;
        self.payment_failed += other.payment_failed;
        self.abandoned += other.abandoned;
        self.retries_deduplicated += other.retries_deduplicated;
        self.extended += other.extended;
        self.expired_during_payment += other.expired_during_payment;
        self.out_of_stock += other.out_of_stock;
        self.conflicts += other.conflicts;
    }
}

/// A cart of 1 to 3 lines of 1 to 3 units.
fn cart(rng: &mut StdRng) -> Vec<(String, u64)> {
    (0..rng.gen_range(1..=3))
        .map(|_| {
            let sku = SKUS[rng.gen_range(0..SKUS.len())];
            (sku.to_string(), rng.gen_range(1..=3))
        })
        .collect()
}

/// One order: checkout (retried if the client timed out), then pay or abandon.
fn run_order(store: &dyn StockStore<String>, order: u64, rng: &mut StdRng, tally: &mut Tally) {
    let lines = cart(rng);
    let options = ReserveOptions::new()
        .ttl(CHECKOUT_TTL)
        .idempotency_key(format!("order-{order}"));
    if rng.gen_bool(0.15) {
        // The customer walks away: the hold is never resolved and will expire.
        match store.reserve_with(&lines, &options) {
            Ok(_) => tally.abandoned += 1,
            Err(error) => count_refusal(&error, tally),
        }
        return;
    }
    let hold = match ReservationGuard::with_options(store, &lines, &options) {
        Ok(hold) => hold,
        Err(error) => return count_refusal(&error, tally),
    };
    if rng.gen_bool(0.10) {
        // The client timed out before seeing the answer and sends the same request again.
        let retried = store.reserve_with(&lines, &options);
        assert_eq!(
            retried.as_ref().map(|reservation| reservation.id()),
            Ok(hold.id()),
            "a retried checkout must get the same hold"
        );
        tally.retries_deduplicated += 1;
    }
    if rng.gen_bool(0.05) {
        // A slow payment provider: ask for more time before paying.
        if store.extend(hold.id(), CHECKOUT_TTL).is_ok() {
            tally.extended += 1;
        }
    }
    thread::sleep(Duration::from_micros(rng.gen_range(0..500)));
    if rng.gen_bool(0.30) {
        tally.payment_failed += 1;
        return; // the guard releases the hold here: the compensation step
    }
    match hold.commit() {
        Ok(reservation) => {
            tally.paid += 1;
            for (sku, units) in reservation.lines() {
                *tally.sold.entry(catalogue_name(sku)).or_default() += units;
            }
        }
        // Payment came after the deadline: the stock went back; a real shop would refund.
        Err(StockError::Expired(_) | StockError::UnknownReservation(_)) => {
            tally.expired_during_payment += 1;
        }
        Err(error) => panic!("commit failed: {error}"),
    }
}

fn count_refusal(error: &StockError<String>, tally: &mut Tally) {
    match error {
        StockError::InsufficientStock { .. } => tally.out_of_stock += 1,
        StockError::Conflict { .. } => tally.conflicts += 1,
        other => panic!("checkout failed: {other}"),
    }
}

/// The `&'static str` name of a SKU of the catalogue.
fn catalogue_name(sku: &str) -> &'static str {
    SKUS.iter()
        .find(|name| **name == sku)
        .expect("a SKU of the catalogue")
}

/// Runs the saga on `store` (whose events go to `events`) and checks conservation.
fn run_saga(
    name: &str,
    store: Arc<dyn StockStore<String>>,
    events: &crossbeam_channel::Receiver<StockEvent<String>>,
    args: &Args,
) -> Result<(), String> {
    let started = Instant::now();
    let mut tally = Tally::default();
    for sku in SKUS {
        store
            .restock(&sku.to_string(), INITIAL_STOCK)
            .map_err(|e| e.to_string())?;
        store
            .set_low_stock_threshold(&sku.to_string(), LOW_STOCK_THRESHOLD)
            .map_err(|e| e.to_string())?;
        tally.restocked.insert(sku, INITIAL_STOCK);
    }
    let reaper = Reaper::spawn(Arc::clone(&store), REAPER_INTERVAL);
    let next_order = Arc::new(AtomicU64::new(0));
    let replenished = Arc::new(Mutex::new(BTreeMap::<&'static str, u64>::new()));
    let workers: Vec<_> = (0..args.threads)
        .map(|worker| {
            let (store, next_order) = (Arc::clone(&store), Arc::clone(&next_order));
            let mut rng = StdRng::seed_from_u64(args.seed ^ (worker << 32));
            let orders = args.orders;
            thread::spawn(move || {
                let mut tally = Tally::default();
                loop {
                    let order = next_order.fetch_add(1, Ordering::Relaxed);
                    if order >= orders {
                        return tally;
                    }
                    run_order(store.as_ref(), order, &mut rng, &mut tally);
                }
            })
        })
        .collect();
    // Meanwhile the warehouse answers low-stock alerts.
    let mut counted: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut count = |event: &StockEvent<String>| {
        let kind = format!("{event:?}");
        let kind = kind.split([' ', '{']).next().unwrap_or("?");
        let kind = [
            "Restocked",
            "Reserved",
            "Committed",
            "Released",
            "Expired",
            "Sold",
            "LowStock",
        ]
        .into_iter()
        .find(|known| *known == kind)
        .unwrap_or("other");
        *counted.entry(kind).or_default() += 1;
    };
    while workers.iter().any(|worker| !worker.is_finished()) {
        if let Ok(event) = events.recv_timeout(Duration::from_millis(1)) {
            if let StockEvent::LowStock { sku, .. } = &event {
                store
                    .restock(sku, REPLENISHMENT)
                    .map_err(|e| e.to_string())?;
                *replenished
                    .lock()
                    .unwrap()
                    .entry(catalogue_name(sku))
                    .or_default() += REPLENISHMENT;
            }
            count(&event);
        }
    }
    for worker in workers {
        tally.merge(worker.join().map_err(|_| "a worker panicked".to_string())?);
    }
    for (sku, units) in replenished.lock().unwrap().iter() {
        *tally.restocked.entry(sku).or_default() += units;
    }
    if args.negative_control {
        store
            .sell(&[(SKUS[0].to_string(), 1)])
            .map_err(|e| e.to_string())?;
    }
    // Abandoned carts: wait for the reaper to expire the last of them.
    let settle_started = Instant::now();
    while SKUS.iter().any(|sku| {
        store
            .level(&sku.to_string())
            .is_some_and(|l| l.reserved > 0)
    }) {
        if settle_started.elapsed() > SETTLE_WAIT_MAX {
            return Err(format!(
                "{name}: holds still open after {SETTLE_WAIT_MAX:?}"
            ));
        }
        thread::sleep(REAPER_INTERVAL);
    }
    drop(reaper);
    for event in events.try_iter() {
        count(&event);
    }
    let stats = store.stats();
    println!(
        "{name}: {} orders in {:.2?}: {} paid, {} payment failed (released), {} abandoned, \
         {} out of stock, {} conflicts; {} retries deduplicated, {} extended, {} expired \
         during payment",
        args.orders,
        started.elapsed(),
        tally.paid,
        tally.payment_failed,
        tally.abandoned,
        tally.out_of_stock,
        tally.conflicts,
        tally.retries_deduplicated,
        tally.extended,
        tally.expired_during_payment,
    );
    println!("{name}: events {counted:?}");
    println!("{name}: {stats:?}");
    check_conservation(name, store.as_ref(), &tally)
}

/// Conservation per SKU, and every hold resolved exactly once.
fn check_conservation(
    name: &str,
    store: &dyn StockStore<String>,
    tally: &Tally,
) -> Result<(), String> {
    let mut violations = Vec::new();
    for sku in SKUS {
        let level = store
            .level(&sku.to_string())
            .ok_or_else(|| format!("{name}: {sku} is missing"))?;
        let restocked = tally.restocked.get(sku).copied().unwrap_or(0);
        let sold = tally.sold.get(sku).copied().unwrap_or(0);
        if restocked != level.on_hand + sold {
            violations.push(format!(
                "{sku}: restocked {restocked} != on hand {} + sold {sold}",
                level.on_hand
            ));
        }
        if level.reserved != 0 {
            violations.push(format!("{sku}: {} units still reserved", level.reserved));
        }
    }
    let stats = store.stats();
    if stats.reserves != stats.commits + stats.releases + stats.expirations {
        violations.push(format!(
            "holds: {} reserved != {} committed + {} released + {} expired",
            stats.reserves, stats.commits, stats.releases, stats.expirations
        ));
    }
    if violations.is_empty() {
        println!("{name}: conservation holds on every SKU, every hold resolved once");
        Ok(())
    } else {
        Err(format!(
            "{name}: CONSERVATION VIOLATED: {}",
            violations.join("; ")
        ))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let strategies = match args.store {
        Strategy::All => vec![
            Strategy::Pessimistic,
            Strategy::Optimistic,
            Strategy::Monitor,
            Strategy::Adaptive,
        ],
        one => vec![one],
    };
    let mut failed = false;
    for strategy in strategies {
        let (sink, events) = ChannelSink::unbounded();
        let (name, store): (&str, Arc<dyn StockStore<String>>) = match strategy {
            Strategy::Pessimistic => (
                "pessimistic",
                Arc::new(PessimisticStore::builder().event_sink(sink).build()),
            ),
            Strategy::Optimistic => (
                "optimistic",
                Arc::new(OptimisticStore::builder().event_sink(sink).build()),
            ),
            Strategy::Adaptive => (
                "adaptive",
                Arc::new(AdaptiveStore::builder().event_sink(sink).build()),
            ),
            Strategy::Monitor | Strategy::All => (
                "monitor",
                Arc::new(MonitorStore::builder().event_sink(sink).build()),
            ),
        };
        if let Err(error) = run_saga(name, store, &events, &args) {
            eprintln!("{error}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
