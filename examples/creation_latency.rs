//! How long a restock that creates a SKU waits while other threads hammer one hot SKU.
//!
//! A catalogue grows while it sells: new SKUs arrive during a flash sale. With the SKU map
//! the stores used before (dashmap, whose shard lock lets readers in while a writer
//! waits), sellers and readers of one hot SKU could hold up the creation of another SKU in
//! the same shard. Each store here gets `--sellers` threads selling the hot SKU and
//! `--readers` threads reading its level, while the main thread creates `--creations` new
//! SKUs one at a time and times each `restock`. It prints the mean and the worst creation
//! per store, and exits non-zero if a created SKU is not found with its first restock.
//!
//! ```text
//! cargo run --release --example creation_latency -- --creations 2000
//! ```
//!
//! No test asserts these times: they depend on the machine and its load. The figures in
//! `CHANGELOG.md` come from this example.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use stockledger::{AdaptiveStore, MonitorStore, OptimisticStore, PessimisticStore, StockStore};

/// Creation latency of each store next to a hot SKU.
#[derive(Debug, Parser)]
struct Args {
    /// SKUs created, one at a time, per store.
    #[arg(long, default_value_t = 2000)]
    creations: u64,
    /// Threads selling the hot SKU meanwhile.
    #[arg(long, default_value_t = 8)]
    sellers: usize,
    /// Threads reading the hot SKU's level meanwhile.
    #[arg(long, default_value_t = 4)]
    readers: usize,
}

/// The SKU every seller and reader works on; new SKUs are numbered from 1.
const HOT: u64 = 0;

/// Creates `args.creations` SKUs in `store` while the hot SKU is busy; returns the mean
/// and the worst time of one creating `restock`.
fn measure(store: &dyn StockStore<u64>, args: &Args) -> Result<(Duration, Duration), String> {
    store
        .restock(&HOT, store.quantity_max())
        .map_err(|error| format!("hot SKU: {error}"))?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..args.sellers {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    // A sold-out hot SKU refuses; the load it puts on the SKU is the point.
                    let _ = store.sell(&[(HOT, 1)]);
                }
            });
        }
        for _ in 0..args.readers {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(store.level(&HOT));
                }
            });
        }
        // Let the workers get going before the first creation.
        std::thread::sleep(Duration::from_millis(50));
        let result = create_all(store, args);
        stop.store(true, Ordering::Relaxed);
        result
    })
}

/// The creations of [`measure`], checked: each new SKU is found with its first restock.
fn create_all(store: &dyn StockStore<u64>, args: &Args) -> Result<(Duration, Duration), String> {
    let (mut total, mut worst) = (Duration::ZERO, Duration::ZERO);
    for sku in 1..=args.creations {
        let started = Instant::now();
        store
            .restock(&sku, 1)
            .map_err(|error| format!("creating SKU {sku}: {error}"))?;
        let took = started.elapsed();
        total += took;
        worst = worst.max(took);
        let on_hand = store.level(&sku).map(|level| level.on_hand);
        if on_hand != Some(1) {
            return Err(format!(
                "SKU {sku} created, then found with {on_hand:?} on hand"
            ));
        }
    }
    let mean = total / u32::try_from(args.creations.max(1)).unwrap_or(u32::MAX);
    Ok((mean, worst))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    println!(
        "{} creations per store; meanwhile {} threads sell and {} read one hot SKU",
        args.creations, args.sellers, args.readers
    );
    let stores: [(&str, Box<dyn StockStore<u64>>); 4] = [
        ("pessimistic", Box::new(PessimisticStore::new())),
        ("optimistic", Box::new(OptimisticStore::new())),
        ("monitor", Box::new(MonitorStore::new())),
        ("adaptive", Box::new(AdaptiveStore::new())),
    ];
    for (name, store) in &stores {
        match measure(store.as_ref(), &args) {
            Ok((mean, worst)) => println!("{name:<12} mean {mean:>10.1?}  worst {worst:>10.1?}"),
            Err(error) => {
                eprintln!("{name}: {error}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    std::process::ExitCode::SUCCESS
}
