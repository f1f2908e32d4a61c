//! The time-deal deadlock on real threads: naive row locks deadlock, the stores do not.
//!
//! A shop sells an item with options; every option line of an order also takes one unit of
//! the parent item, so the item's on hand always equals the sum of its options' on hand.
//! Three orders arrive together, as in the incident:
//!
//! | order | lines (request order) |
//! |---|---|
//! | A | option 230, item, option 240, item |
//! | B | option 240, item |
//! | C | item, option 230 |
//!
//! First the **naive** shop locks one row mutex per SKU in request order (with a short
//! round trip per row, as the original code did). A holds option 230 and waits for the
//! item while C holds the item and waits for option 230: a deadlock. Here each row lock is
//! a parking_lot `try_lock_for`; a wait of `--lock-wait-ms` for a row that is held for
//! microseconds means a cycle, so the order counts a deadlock, drops its rows and retries.
//! Then the three stores run the same rounds (hold, then commit) with no deadlock: they
//! take SKUs in ascending order (Havender's ordered acquisition). A watchdog counts a
//! round that does not finish within `--round-timeout-s` as a deadlock of the store.
//!
//! After every round each shop is checked: the item equals the sum of its options, and
//! every SKU's on hand is what was restocked minus exactly the orders sold (all or
//! nothing). The example exits non-zero if a store deadlocks or a check fails.
//!
//! ```text
//! cargo run --release --example item_options -- --rounds 200
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use parking_lot::Mutex;
use rand::Rng;
use stockledger::{
    AdaptiveStore, MonitorStore, OptimisticStore, PessimisticStore, StockError, StockStore,
};

/// A SKU of the deal.
type Sku = &'static str;
/// An order: `(sku, units)` lines in request order.
type Order = &'static [(Sku, u64)];

const ITEM: Sku = "item";
const OPTION_230: Sku = "option 230";
const OPTION_240: Sku = "option 240";

/// The three orders of the incident, by name.
const ORDERS: [(&str, Order); 3] = [
    (
        "A",
        &[(OPTION_230, 1), (ITEM, 1), (OPTION_240, 1), (ITEM, 1)],
    ),
    ("B", &[(OPTION_240, 1), (ITEM, 1)]),
    ("C", &[(ITEM, 1), (OPTION_230, 1)]),
];

/// Units restocked before every round: item = option 230 + option 240, and orders A and C
/// compete for the one option 230.
const RESTOCK: [(Sku, u64); 3] = [(ITEM, 3), (OPTION_230, 1), (OPTION_240, 2)];

/// Largest accepted `--rounds`.
const ROUNDS_MAX: u32 = 100_000;

/// The time-deal scenario on real threads: naive request-order row locks, then each store.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Rounds per shop; each round restocks the deal and places the three orders at once.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=ROUNDS_MAX as i64))]
    rounds: u32,
    /// How long a naive order waits for one row before it calls it a deadlock.
    #[arg(long, default_value_t = 20)]
    lock_wait_ms: u64,
    /// The naive shop's round trip per row, between two row locks.
    #[arg(long, default_value_t = 200)]
    row_work_us: u64,
    /// How long a round of a store may take before the watchdog calls it a deadlock.
    #[arg(long, default_value_t = 10)]
    round_timeout_s: u64,
}

/// How a shop placed one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    /// Sold, every line.
    Sold,
    /// Refused for insufficient stock; nothing taken.
    Refused,
    /// Failed with an unexpected error (printed); nothing taken.
    Failed,
}

/// The one API both shops offer here (the naive shop is no `StockStore`).
trait Shop: Send + Sync {
    /// Adds `units` to `sku`.
    fn restock(&self, sku: Sku, units: u64);
    /// Places `order` all or nothing; returns the outcome and the deadlocks detected (and
    /// broken by retrying) on the way.
    fn place(&self, order: Order) -> (Placed, u64);
    /// On hand of `sku`.
    fn on_hand(&self, sku: Sku) -> u64;
}

/// The naive shop: one row mutex per SKU, locked in request order.
struct RequestOrderRows {
    /// SKU -> its on hand, guarded by the row's mutex.
    rows: BTreeMap<Sku, Mutex<u64>>,
    lock_wait: Duration,
    row_work: Duration,
}

impl RequestOrderRows {
    fn new(args: &Args) -> Self {
        Self {
            rows: RESTOCK
                .iter()
                .map(|&(sku, _)| (sku, Mutex::new(0)))
                .collect(),
            lock_wait: Duration::from_millis(args.lock_wait_ms),
            row_work: Duration::from_micros(args.row_work_us),
        }
    }

    /// One attempt: `None` when a row could not be locked in time (a deadlock); every row
    /// taken so far is released by dropping its guard.
    fn try_place(&self, order: Order) -> Option<Placed> {
        let mut locked = Vec::new();
        for &(sku, _) in order {
            if locked.iter().any(|&(held, _)| held == sku) {
                continue; // this order already holds the row
            }
            locked.push((sku, self.rows[sku].try_lock_for(self.lock_wait)?));
            thread::sleep(self.row_work);
        }
        let wanted = |sku: Sku| -> u64 {
            let lines = order.iter().filter(|&&(line, _)| line == sku);
            lines.map(|&(_, units)| units).sum()
        };
        if locked.iter().any(|(sku, on_hand)| **on_hand < wanted(sku)) {
            return Some(Placed::Refused);
        }
        for (sku, on_hand) in &mut locked {
            **on_hand -= wanted(sku);
        }
        Some(Placed::Sold)
    }
}

impl Shop for RequestOrderRows {
    fn restock(&self, sku: Sku, units: u64) {
        *self.rows[sku].lock() += units;
    }

    fn place(&self, order: Order) -> (Placed, u64) {
        let mut deadlocks = 0;
        loop {
            if let Some(placed) = self.try_place(order) {
                return (placed, deadlocks);
            }
            deadlocks += 1;
            // Back off a random while, so the same orders do not collide again at once.
            thread::sleep(Duration::from_micros(
                rand::thread_rng().gen_range(0..2_000),
            ));
        }
    }

    fn on_hand(&self, sku: Sku) -> u64 {
        *self.rows[sku].lock()
    }
}

/// A store of the crate: each order is a hold (checkout), then a commit (payment).
struct Ledger(Box<dyn StockStore<Sku>>);

impl Shop for Ledger {
    fn restock(&self, sku: Sku, units: u64) {
        self.0
            .restock(&sku, units)
            .expect("the deal stays far below quantity_max");
    }

    fn place(&self, order: Order) -> (Placed, u64) {
        let placed = match self.0.reserve(order) {
            Ok(hold) => match self.0.commit(hold.id()) {
                Ok(_) => Placed::Sold,
                Err(error) => {
                    eprintln!("commit of an open hold failed: {error}");
                    Placed::Failed
                }
            },
            Err(StockError::InsufficientStock { .. }) => Placed::Refused,
            Err(error) => {
                eprintln!("unexpected refusal: {error}");
                Placed::Failed
            }
        };
        (placed, 0)
    }

    fn on_hand(&self, sku: Sku) -> u64 {
        self.0.level(&sku).map_or(0, |level| level.on_hand)
    }
}

/// What one shop did over all rounds.
#[derive(Debug, Default)]
struct Report {
    rounds: u32,
    sold: u64,
    refused: u64,
    failed: u64,
    /// Deadlocks detected by `try_lock_for` (naive) or by the watchdog (stores).
    deadlocks: u64,
    /// Rounds after which a check failed.
    violations: u64,
    elapsed: Duration,
}

/// Runs `rounds` rounds of the deal on `shop`; stops early if a round never finishes.
fn run(shop: Arc<dyn Shop>, args: &Args) -> Report {
    let started = Instant::now();
    let mut report = Report::default();
    let mut expected: BTreeMap<Sku, u64> = RESTOCK.iter().map(|&(sku, _)| (sku, 0)).collect();
    for _ in 0..args.rounds {
        for (sku, units) in RESTOCK {
            shop.restock(sku, units);
            *expected.get_mut(sku).expect("a deal SKU") += units;
        }
        let (sender, receiver) = mpsc::channel();
        for (name, order) in ORDERS {
            let (shop, sender) = (Arc::clone(&shop), sender.clone());
            thread::spawn(move || {
                let _ = sender.send((name, order, shop.place(order)));
            });
        }
        report.rounds += 1;
        let watchdog = Duration::from_secs(args.round_timeout_s);
        for _ in ORDERS {
            let Ok((name, order, (placed, deadlocks))) = receiver.recv_timeout(watchdog) else {
                eprintln!("a round did not finish in {watchdog:?}: deadlock");
                report.deadlocks += 1;
                report.elapsed = started.elapsed();
                return report; // the stuck threads cannot be recovered
            };
            report.deadlocks += deadlocks;
            match placed {
                Placed::Sold => {
                    report.sold += 1;
                    for &(sku, units) in order {
                        *expected.get_mut(sku).expect("a deal SKU") -= units;
                    }
                }
                Placed::Refused => report.refused += 1,
                Placed::Failed => {
                    eprintln!("order {name} failed");
                    report.failed += 1;
                }
            }
        }
        if !holds_the_invariants(shop.as_ref(), &expected) {
            report.violations += 1;
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// Whether on hand is exactly `expected` on every SKU and the item equals its options.
fn holds_the_invariants(shop: &dyn Shop, expected: &BTreeMap<Sku, u64>) -> bool {
    let mut holds = true;
    for (&sku, &units) in expected {
        let on_hand = shop.on_hand(sku);
        if on_hand != units {
            eprintln!(
                "{sku}: on hand {on_hand}, expected {units} (an order was not all or nothing)"
            );
            holds = false;
        }
    }
    let options = shop.on_hand(OPTION_230) + shop.on_hand(OPTION_240);
    if shop.on_hand(ITEM) != options {
        eprintln!(
            "item on hand {} != sum of options {options}",
            shop.on_hand(ITEM)
        );
        holds = false;
    }
    holds
}

fn main() -> ExitCode {
    let args = Args::parse();
    let shops: [(&str, Arc<dyn Shop>); 5] = [
        ("naive row locks", Arc::new(RequestOrderRows::new(&args))),
        (
            "pessimistic",
            Arc::new(Ledger(Box::new(PessimisticStore::new()))),
        ),
        (
            "optimistic",
            Arc::new(Ledger(Box::new(OptimisticStore::new()))),
        ),
        ("monitor", Arc::new(Ledger(Box::new(MonitorStore::new())))),
        ("adaptive", Arc::new(Ledger(Box::new(AdaptiveStore::new())))),
    ];
    println!(
        "{:<16} {:>6} {:>6} {:>8} {:>9} {:>16} {:>9}",
        "shop", "rounds", "sold", "refused", "deadlocks", "item = options", "time"
    );
    let mut ok = true;
    for (index, (name, shop)) in shops.into_iter().enumerate() {
        let report = run(shop, &args);
        println!(
            "{:<16} {:>6} {:>6} {:>8} {:>9} {:>16} {:>7.2} s",
            name,
            report.rounds,
            report.sold,
            report.refused,
            report.deadlocks,
            if report.violations == 0 {
                "every round"
            } else {
                "VIOLATED"
            },
            report.elapsed.as_secs_f64(),
        );
        let naive = index == 0;
        ok &= report.violations == 0 && report.failed == 0 && (naive || report.deadlocks == 0);
        if naive && report.deadlocks == 0 {
            println!("  (no deadlock this time: try more --rounds or a longer --row-work-us)");
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("a store deadlocked or broke an invariant");
        ExitCode::FAILURE
    }
}
