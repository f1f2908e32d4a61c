//! The client side of the checkout service's checks: a real HTTP client (reqwest) drives
//! services started on `127.0.0.1:0`. Used by `--smoke` (CI), `--load` and the tests
//! (`tests.rs`). Each check returns what it saw, or what broke.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};

use crate::app::{App, Limits, Running};
use crate::bodies::{LevelBody, ReservationBody, RestockBody};
use crate::error::{Problem, PROBLEM_JSON};
use crate::{Strategy, STRATEGIES};

/// What a flash sale saw from the client side.
#[derive(Debug, Default)]
pub(crate) struct SaleReport {
    /// Units sold, per SKU (commits that answered 200, or naive sales that answered 204).
    pub(crate) sold: BTreeMap<String, u64>,
    /// Buyers refused (409).
    pub(crate) refused: u64,
    /// Holds that answered 201.
    pub(crate) held: u64,
    /// Holds committed or released with a 200 (each must be exactly once).
    pub(crate) resolved: u64,
    /// Second resolutions of a hold that answered 404, as they must.
    pub(crate) resolved_again_404: u64,
    /// Answers that were none of these.
    pub(crate) unexpected: Vec<String>,
    /// Latency of each HTTP request.
    pub(crate) latencies: Vec<Duration>,
    pub(crate) elapsed: Duration,
}

impl SaleReport {
    fn merge(&mut self, other: SaleReport) {
        for (sku, units) in other.sold {
            *self.sold.entry(sku).or_default() += units;
        }
        self.refused += other.refused;
        self.held += other.held;
        self.resolved += other.resolved;
        self.resolved_again_404 += other.resolved_again_404;
        self.unexpected.extend(other.unexpected);
        self.latencies.extend(other.latencies);
    }

    pub(crate) fn sold_total(&self) -> u64 {
        self.sold.values().sum()
    }
}

/// How the buyers of a flash sale behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Buyers {
    /// Hold, then commit on the same instance.
    Commit,
    /// Hold on one instance, resolve on the next (every fifth buyer abandons its cart:
    /// a release), then try to resolve it again (must be 404); each hold with its own
    /// `Idempotency-Key`.
    Mixed,
    /// `POST /naive/sales`: the negative control.
    Naive,
}

/// A flash sale: `buyers` buyers of 1 unit, of the SKUs `skus` in turn, over `connections`
/// concurrent connections, sent to the `bases` (service URLs) in turn.
pub(crate) async fn flash_sale(
    http: &reqwest::Client,
    bases: &[String],
    skus: &[&str],
    buyers: usize,
    connections: usize,
    how: Buyers,
) -> SaleReport {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let bases: Arc<Vec<String>> = Arc::new(bases.to_vec());
    let skus: Arc<Vec<String>> = Arc::new(skus.iter().map(|sku| sku.to_string()).collect());
    let workers: Vec<_> = (0..connections)
        .map(|worker| {
            let (http, bases, skus, next) = (
                http.clone(),
                Arc::clone(&bases),
                Arc::clone(&skus),
                Arc::clone(&next),
            );
            tokio::spawn(async move {
                let mut report = SaleReport::default();
                let customer = format!("buyer-{worker}");
                loop {
                    let buyer = next.fetch_add(1, Ordering::Relaxed);
                    if buyer >= buyers {
                        break;
                    }
                    let buy = Buy {
                        http: &http,
                        first: &bases[buyer % bases.len()],
                        second: &bases[(buyer + 1) % bases.len()],
                        sku: &skus[buyer % skus.len()],
                        customer: &customer,
                        buyer,
                    };
                    buy.run(how, &mut report).await;
                }
                report
            })
        })
        .collect();
    let mut total = SaleReport::default();
    for worker in workers {
        total.merge(worker.await.expect("a buyer panicked"));
    }
    total.elapsed = started.elapsed();
    total
}

/// One buyer of one unit.
struct Buy<'a> {
    http: &'a reqwest::Client,
    /// The instance that holds (or sells).
    first: &'a str,
    /// The instance that resolves, for [`Buyers::Mixed`].
    second: &'a str,
    sku: &'a str,
    customer: &'a str,
    buyer: usize,
}

impl Buy<'_> {
    async fn run(&self, how: Buyers, report: &mut SaleReport) {
        let body = serde_json::json!({ "lines": [{ "sku": self.sku, "qty": 1 }] });
        let path = if how == Buyers::Naive {
            "/naive/sales"
        } else {
            "/reservations"
        };
        let mut request = self
            .http
            .post(format!("{}{path}", self.first))
            .bearer_auth(self.customer)
            .json(&body);
        if how == Buyers::Mixed {
            request = request.header("Idempotency-Key", format!("\"buy-{}\"", self.buyer));
        }
        let started = Instant::now();
        let answer = request.send().await;
        report.latencies.push(started.elapsed());
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => return report.unexpected.push(error.to_string()),
        };
        match (answer.status(), how) {
            (StatusCode::NO_CONTENT, Buyers::Naive) => self.sold(report),
            (StatusCode::CONFLICT, _) => report.refused += 1,
            (StatusCode::CREATED, Buyers::Commit | Buyers::Mixed) => {
                report.held += 1;
                let hold: ReservationBody = match answer.json().await {
                    Ok(hold) => hold,
                    Err(error) => return report.unexpected.push(error.to_string()),
                };
                self.resolve(&hold.id, how, report).await;
            }
            (status, _) => report.unexpected.push(format!("{path}: {status}")),
        }
    }

    fn sold(&self, report: &mut SaleReport) {
        *report.sold.entry(self.sku.to_string()).or_default() += 1;
    }

    /// Commits (or, for every fifth mixed buyer, releases) the hold `id`; a mixed buyer
    /// then tries once more, which must find nothing.
    async fn resolve(&self, id: &str, how: Buyers, report: &mut SaleReport) {
        let (base, release) = match how {
            Buyers::Mixed => (self.second, self.buyer % 5 == 0),
            _ => (self.first, false),
        };
        let send = |base: &str| {
            let request = if release {
                self.http.delete(format!("{base}/reservations/{id}"))
            } else {
                self.http.post(format!("{base}/reservations/{id}/commit"))
            };
            request.bearer_auth(self.customer).send()
        };
        let started = Instant::now();
        let resolved = send(base).await.map(|answer| answer.status());
        report.latencies.push(started.elapsed());
        match resolved {
            Ok(StatusCode::OK) => {
                report.resolved += 1;
                if !release {
                    self.sold(report);
                }
            }
            other => report.unexpected.push(format!("resolve: {other:?}")),
        }
        if how == Buyers::Mixed {
            match send(self.first).await.map(|answer| answer.status()) {
                Ok(StatusCode::NOT_FOUND) => report.resolved_again_404 += 1,
                other => report.unexpected.push(format!("resolved twice: {other:?}")),
            }
        }
    }
}

/// The flash sale's check, per SKU: units sold (as the clients saw them) = units taken
/// from stock (`restocked - left on hand`), nothing oversold, nothing left reserved, every
/// 201 hold resolved exactly once, no unexpected answer; with `sold_out`, every unit sold.
///
/// # Errors
///
/// What broke.
pub(crate) fn check_sale(
    report: &SaleReport,
    restocked: u64,
    left: &BTreeMap<String, (u64, u64)>,
    sold_out: bool,
) -> Result<(), String> {
    if let Some(unexpected) = report.unexpected.first() {
        return Err(format!(
            "{} unexpected answers, e.g. {unexpected}",
            report.unexpected.len()
        ));
    }
    for (sku, (on_hand, reserved)) in left {
        let sold = report.sold.get(sku).copied().unwrap_or(0);
        if sold > restocked {
            return Err(format!("{sku}: oversold: {sold} sold of {restocked} units"));
        }
        if sold != restocked.saturating_sub(*on_hand) {
            return Err(format!(
                "{sku}: {sold} units sold, but {} taken from stock ({restocked} restocked, {on_hand} left)",
                restocked.saturating_sub(*on_hand)
            ));
        }
        if *reserved != 0 {
            return Err(format!("{sku}: {reserved} units still reserved"));
        }
        if sold_out && sold != restocked {
            return Err(format!("{sku}: sold {sold} of {restocked} units"));
        }
    }
    if report.resolved != report.held {
        return Err(format!(
            "{} holds answered 201 but {} were resolved",
            report.held, report.resolved
        ));
    }
    Ok(())
}

pub(crate) async fn get_level(http: &reqwest::Client, base: &str, sku: &str) -> LevelBody {
    let answer = http
        .get(format!("{base}/stock/{sku}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK, "GET /stock/{sku}");
    answer.json().await.unwrap()
}

pub(crate) async fn put_stock(http: &reqwest::Client, url: String, qty: u64) -> StatusCode {
    let answer = http
        .put(url)
        .json(&RestockBody { qty })
        .send()
        .await
        .unwrap();
    answer.status()
}

/// A service of `strategy` with the default limits on a free port.
pub(crate) async fn start(strategy: Strategy) -> Running {
    start_app(App::memory(strategy, Limits::default())).await
}

pub(crate) async fn start_app(app: App) -> Running {
    Running::start(app, localhost(), reap()).await.unwrap()
}

/// A flash sale on a fresh service of `strategy`; returns the report.
///
/// # Errors
///
/// What the sale's check found.
pub(crate) async fn run_flash_sale(
    strategy: Strategy,
    args: &SaleArgs,
) -> Result<SaleReport, String> {
    run_flash_sale_on(App::memory(strategy, Limits::default()), args).await
}

/// A flash sale on a service of `app` (whose SKU `flash` is new); returns the report.
///
/// # Errors
///
/// What the sale's check found.
pub(crate) async fn run_flash_sale_on(app: App, args: &SaleArgs) -> Result<SaleReport, String> {
    let running = start_app(app).await;
    let http = client(args.connections);
    let status = put_stock(&http, running.url("/stock/flash"), args.units).await;
    assert_eq!(status, StatusCode::OK);
    let bases = [running.url("")];
    let report = flash_sale(
        &http,
        &bases,
        &["flash"],
        args.buyers,
        args.connections,
        Buyers::Commit,
    )
    .await;
    let level = get_level(&http, &running.url(""), "flash").await;
    running.stop().await.unwrap();
    let left = BTreeMap::from([("flash".to_string(), (level.on_hand, level.reserved))]);
    check_sale(&report, args.units, &left, true)?;
    if report.sold_total() + report.refused != args.buyers as u64 {
        return Err(format!(
            "{} sold + {} refused != {} buyers",
            report.sold_total(),
            report.refused,
            args.buyers
        ));
    }
    Ok(report)
}

/// The negative control: the naive handler's flash sale must fail the same check.
///
/// # Errors
///
/// When the check did not catch the naive handler.
pub(crate) async fn naive_is_caught(args: &SaleArgs) -> Result<String, String> {
    let app = App::memory(Strategy::Monitor, Limits::default()).with_memory_naive();
    let running = start_app(app).await;
    let http = client(args.connections);
    let status = put_stock(&http, running.url("/naive/stock/flash"), args.units).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let bases = [running.url("")];
    let report = flash_sale(
        &http,
        &bases,
        &["flash"],
        args.buyers,
        args.connections,
        Buyers::Naive,
    )
    .await;
    let naive = Arc::clone(running.app.naive.as_ref().unwrap());
    let on_hand = naive.available("flash").unwrap();
    running.stop().await.unwrap();
    let left = BTreeMap::from([("flash".to_string(), (on_hand, 0))]);
    match check_sale(&report, args.units, &left, true) {
        Err(caught) => Ok(caught),
        Ok(()) => Err("the flash-sale check passed a naive read-then-write handler".into()),
    }
}

/// An answer that must be a problem: its status, content type and body.
///
/// # Errors
///
/// How it is not the problem expected.
pub(crate) async fn expect_problem(
    answer: reqwest::Response,
    status: u16,
    kind: &str,
) -> Result<Problem, String> {
    let got = answer.status().as_u16();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let text = answer.text().await.map_err(|error| error.to_string())?;
    let problem = serde_json::from_str::<Problem>(&text).ok();
    let fits = got == status
        && content_type.is_some_and(|value| value == PROBLEM_JSON)
        && problem.as_ref().is_some_and(|problem| {
            problem.status == status && problem.kind.ends_with(&format!("/{kind}"))
        });
    match problem {
        Some(problem) if fits => Ok(problem),
        _ => Err(format!("expected {status} {kind}, got {got} {text:?}")),
    }
}

/// Bad requests, unknown routes and wrong methods are answered with a problem body and
/// their status.
///
/// # Errors
///
/// The first answer that was not the expected problem.
pub(crate) async fn errors_are_problems(base: &str) -> Result<usize, String> {
    let http = client(4);
    put_stock(&http, format!("{base}/stock/tv"), 1).await;
    let url = |path: &str| format!("{base}{path}");
    let json = |body: serde_json::Value| body.to_string();
    let one = |extra: serde_json::Value| {
        let mut body = serde_json::json!({ "lines": [{ "sku": "tv", "qty": 1 }] });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json(body)
    };
    let hold = |body: String| {
        http.post(url("/reservations"))
            .bearer_auth("alice")
            .body(body)
    };
    let too_many: Vec<_> = (0..=crate::app::LINES_MAX)
        .map(|n| serde_json::json!({ "sku": format!("s{n}"), "qty": 1 }))
        .collect();
    let cases = [
        (http.get(url("/no/such/route")), 404, "no-route"),
        (http.delete(url("/stock/tv")), 405, "method-not-allowed"),
        (http.get(url("/reservations")), 405, "method-not-allowed"),
        (http.get(url("/stock/radio")), 404, "unknown-sku"),
        (
            http.post(url("/reservations"))
                .body(one(serde_json::json!({}))),
            401,
            "unauthenticated",
        ),
        (
            http.post(url("/reservations/0123/commit"))
                .bearer_auth("alice"),
            404,
            "unknown-reservation",
        ),
        (
            hold(json(
                serde_json::json!({ "lines": [{ "sku": "tv", "qty": 0 }] }),
            )),
            422,
            "invalid-quantity",
        ),
        (
            hold(one(
                serde_json::json!({ "wait_ms": crate::app::WAIT_MS_MAX + 1 }),
            )),
            422,
            "bad-input",
        ),
        (
            hold(json(serde_json::json!({ "lines": too_many }))),
            422,
            "bad-input",
        ),
        (hold("{lines".into()), 400, "unreadable-request"),
        (
            hold(one(serde_json::json!({}))).header("Idempotency-Key", "\"\""),
            422,
            "bad-input",
        ),
    ];
    let count = cases.len();
    for (request, status, kind) in cases {
        let request = request.header(header::CONTENT_TYPE, "application/json");
        let answer = request.send().await.map_err(|error| error.to_string())?;
        let allow = answer.headers().get(header::ALLOW).cloned();
        expect_problem(answer, status, kind).await?;
        if status == 405 && allow.is_none() {
            return Err("a 405 without an Allow header".into());
        }
    }
    Ok(count)
}

fn localhost() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

pub(crate) fn reap() -> Duration {
    Duration::from_millis(5)
}

pub(crate) fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .expect("an HTTP client")
}

/// The flash sale's size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SaleArgs {
    pub(crate) units: u64,
    pub(crate) buyers: usize,
    pub(crate) connections: usize,
}

/// The flash sale on every strategy, the rules over HTTP once, and the negative control;
/// prints one line per check.
///
/// # Errors
///
/// The first check that failed.
pub(crate) async fn smoke(sale: &SaleArgs) -> Result<(), String> {
    for strategy in STRATEGIES {
        let name = strategy.name();
        let report = run_flash_sale(strategy, sale)
            .await
            .map_err(|e| format!("{name}: flash sale: {e}"))?;
        println!(
            "{name}: flash sale sold {} of {} units to {} buyers ({} refused) over {} connections",
            report.sold_total(),
            sale.units,
            sale.buyers,
            report.refused,
            sale.connections
        );
    }
    let caught = naive_is_caught(sale).await?;
    println!("negative control: the naive read-then-write handler was caught: {caught}");
    let rules = crate::rules::all(Strategy::Monitor).await?;
    for rule in rules {
        println!("monitor: {rule}");
    }
    Ok(())
}

/// The flash sale per strategy, with throughput and latency.
///
/// # Errors
///
/// What a sale's check found.
pub(crate) async fn load(sale: &SaleArgs, redis_url: Option<&str>) -> Result<(), String> {
    println!("| strategy | buyers | connections | HTTP requests | requests/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|---|");
    for strategy in STRATEGIES {
        let report = run_flash_sale(strategy, sale).await?;
        print_load_row(strategy.name(), sale, report);
    }
    if let Some(url) = redis_url {
        load_redis(sale, url).await?;
    }
    Ok(())
}

/// One row of [`load`]'s table.
fn print_load_row(name: &str, sale: &SaleArgs, mut report: SaleReport) {
    report.latencies.sort();
    let quantile = |q: f64| report.latencies[((report.latencies.len() - 1) as f64 * q) as usize];
    let requests = report.latencies.len();
    println!(
        "| {name} | {} | {} | {requests} | {:.0} | {:.2?} | {:.2?} |",
        sale.buyers,
        sale.connections,
        requests as f64 / report.elapsed.as_secs_f64(),
        quantile(0.50),
        quantile(0.99),
    );
}

/// The flash sale on `RedisStore` at `url`, twice, each in a fresh namespace: its calls on
/// tokio's blocking pool (`spawn_blocking`, as the service runs them), then inline on the
/// async workers (which the service must not do: a worker waits out every round trip).
/// The two rows show what `spawn_blocking` costs a request.
///
/// # Errors
///
/// When the server cannot be reached, or what a sale's check found.
#[cfg(feature = "redis")]
async fn load_redis(sale: &SaleArgs, url: &str) -> Result<(), String> {
    for (name, blocks) in [
        ("redis (spawn_blocking)", true),
        ("redis (inline, blocking the workers)", false),
    ] {
        let namespace = format!("load-{}-{}", std::process::id(), u8::from(blocks));
        let url = url.to_string();
        let mut app = tokio::task::spawn_blocking(move || {
            App::redis(&url, &namespace, Limits::default(), false)
        })
        .await
        .map_err(|error| error.to_string())??;
        app.blocks = blocks;
        let report = run_flash_sale_on(app, sale).await?;
        print_load_row(name, sale, report);
    }
    Ok(())
}

#[cfg(not(feature = "redis"))]
async fn load_redis(_sale: &SaleArgs, url: &str) -> Result<(), String> {
    Err(format!(
        "--redis-url {url}: built without the `redis` feature \
         (cargo run --features redis --example checkout_service -- --load --redis-url ...)"
    ))
}
