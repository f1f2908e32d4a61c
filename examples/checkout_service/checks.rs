//! The client side of the checkout service's checks: a real HTTP client (reqwest) drives
//! a service started on `127.0.0.1:0`. Used by `--smoke` (CI), `--load` and the tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};

use super::{
    App, LevelBody, LineBody, NaiveLedger, Problem, ReservationBody, RestockBody, Running,
    Strategy, STRATEGIES, WAIT_MS_MAX,
};

/// What a flash sale saw from the client side.
#[derive(Debug, Default)]
struct SaleReport {
    /// Buyers whose commit succeeded.
    sold: u64,
    /// Buyers refused (409).
    refused: u64,
    /// Answers that were neither.
    unexpected: Vec<String>,
    /// Latency of each HTTP request.
    latencies: Vec<Duration>,
    elapsed: Duration,
}

/// `buyers` buyers of 1 unit of `sku` over `connections` concurrent connections. With
/// `naive`, each buyer is one `POST /naive/sales`; otherwise a `POST /reservations`, then
/// a commit of the hold it got.
async fn flash_sale(
    http: &reqwest::Client,
    base: &str,
    sku: &str,
    buyers: usize,
    connections: usize,
    naive: bool,
) -> SaleReport {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (http, base, sku, next) = (
                http.clone(),
                base.to_string(),
                sku.to_string(),
                Arc::clone(&next),
            );
            tokio::spawn(async move {
                let mut report = SaleReport::default();
                while next.fetch_add(1, Ordering::Relaxed) < buyers {
                    buy(&http, &base, &sku, naive, &mut report).await;
                }
                report
            })
        })
        .collect();
    let mut total = SaleReport::default();
    for worker in workers {
        let report = worker.await.expect("a buyer panicked");
        total.sold += report.sold;
        total.refused += report.refused;
        total.unexpected.extend(report.unexpected);
        total.latencies.extend(report.latencies);
    }
    total.elapsed = started.elapsed();
    total
}

/// One buyer of one unit.
async fn buy(http: &reqwest::Client, base: &str, sku: &str, naive: bool, report: &mut SaleReport) {
    let lines = vec![LineBody {
        sku: sku.to_string(),
        qty: 1,
    }];
    let (path, body) = if naive {
        ("/naive/sales", serde_json::json!({ "lines": lines }))
    } else {
        ("/reservations", serde_json::json!({ "lines": lines }))
    };
    let started = Instant::now();
    let answer = http.post(format!("{base}{path}")).json(&body).send().await;
    report.latencies.push(started.elapsed());
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => return report.unexpected.push(error.to_string()),
    };
    match answer.status() {
        StatusCode::NO_CONTENT if naive => report.sold += 1,
        StatusCode::CONFLICT => report.refused += 1,
        StatusCode::CREATED if !naive => {
            let hold: ReservationBody = answer.json().await.expect("a reservation body");
            let started = Instant::now();
            let committed = http
                .post(format!("{base}/reservations/{}/commit", hold.id))
                .send()
                .await;
            report.latencies.push(started.elapsed());
            match committed.map(|answer| answer.status()) {
                Ok(StatusCode::OK) => report.sold += 1,
                other => report.unexpected.push(format!("commit: {other:?}")),
            }
        }
        status => report.unexpected.push(format!("{path}: {status}")),
    }
}

/// The flash sale's check: exactly `units` sold, every other buyer refused, nothing left.
///
/// # Errors
///
/// What broke.
fn check_sale(
    report: &SaleReport,
    units: u64,
    buyers: usize,
    left: Option<LevelBody>,
) -> Result<(), String> {
    if let Some(unexpected) = report.unexpected.first() {
        return Err(format!(
            "{} unexpected answers, e.g. {unexpected}",
            report.unexpected.len()
        ));
    }
    if report.sold != units {
        return Err(format!("sold {} of {units} units", report.sold));
    }
    if report.sold + report.refused != buyers as u64 {
        return Err(format!(
            "{} sold + {} refused != {buyers} buyers",
            report.sold, report.refused
        ));
    }
    if let Some(left) = left {
        if (left.on_hand, left.reserved) != (0, 0) {
            return Err(format!("left after the sale: {left:?}"));
        }
    }
    Ok(())
}

async fn get_level(http: &reqwest::Client, running: &Running, sku: &str) -> LevelBody {
    let answer = http
        .get(running.url(&format!("/stock/{sku}")))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK, "GET /stock/{sku}");
    answer.json().await.unwrap()
}

async fn put_stock(http: &reqwest::Client, url: String, qty: u64) -> StatusCode {
    let answer = http
        .put(url)
        .json(&RestockBody { qty })
        .send()
        .await
        .unwrap();
    answer.status()
}

/// A flash sale on a fresh service of `strategy`; returns the report.
///
/// # Errors
///
/// What the sale's check found.
async fn run_flash_sale(strategy: Strategy, args: &SaleArgs) -> Result<SaleReport, String> {
    let running = Running::start(App::new(strategy), localhost(), reap())
        .await
        .unwrap();
    let http = client(args.connections);
    assert_eq!(
        put_stock(&http, running.url("/stock/flash"), args.units).await,
        StatusCode::OK
    );
    let report = flash_sale(
        &http,
        &running.url(""),
        "flash",
        args.buyers,
        args.connections,
        false,
    )
    .await;
    let left = get_level(&http, &running, "flash").await;
    running.stop().await.unwrap();
    check_sale(&report, args.units, args.buyers, Some(left))?;
    Ok(report)
}

/// The negative control: the naive handler's flash sale must fail the same check.
///
/// # Errors
///
/// When the check did not catch the naive handler.
async fn naive_is_caught(args: &SaleArgs) -> Result<String, String> {
    let mut app = App::new(Strategy::Monitor);
    app.naive = Some(Arc::new(NaiveLedger::default()));
    let running = Running::start(app, localhost(), reap()).await.unwrap();
    let http = client(args.connections);
    let status = put_stock(&http, running.url("/naive/stock/flash"), args.units).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let report = flash_sale(
        &http,
        &running.url(""),
        "flash",
        args.buyers,
        args.connections,
        true,
    )
    .await;
    running.stop().await.unwrap();
    match check_sale(&report, args.units, args.buyers, None) {
        Err(caught) => Ok(caught),
        Ok(()) => Err("the flash-sale check passed a naive read-then-write handler".into()),
    }
}

/// Retried requests with one `Idempotency-Key` hold once; the release of the hold answers
/// once (then 404).
///
/// # Errors
///
/// What broke.
async fn retries_hold_once(strategy: Strategy) -> Result<(), String> {
    let running = Running::start(App::new(strategy), localhost(), reap())
        .await
        .unwrap();
    let http = client(16);
    put_stock(&http, running.url("/stock/retry"), 10).await;
    let body = serde_json::json!({ "lines": [{ "sku": "retry", "qty": 2 }], "ttl_ms": 60_000 });
    let retries: Vec<_> = (0..8)
        .map(|_| {
            let request = http
                .post(running.url("/reservations"))
                .header("Idempotency-Key", "\"order-42\"")
                .json(&body);
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    let mut ids = Vec::new();
    for retry in retries {
        let answer = retry.await.unwrap().map_err(|error| error.to_string())?;
        if answer.status() != StatusCode::CREATED {
            return Err(format!("a retry was answered {}", answer.status()));
        }
        ids.push(answer.json::<ReservationBody>().await.unwrap().id);
    }
    ids.dedup();
    let held = get_level(&http, &running, "retry").await.reserved;
    if ids.len() != 1 || held != 2 {
        return Err(format!(
            "8 retries with one key: ids {ids:?}, {held} units held"
        ));
    }
    let url = running.url(&format!("/reservations/{}", ids[0]));
    let first = http.delete(&url).send().await.unwrap().status();
    let second = http.delete(&url).send().await.unwrap();
    let (status, kind) = (
        second.status(),
        second.headers()[header::CONTENT_TYPE].clone(),
    );
    let problem: Problem = second.json().await.unwrap();
    running.stop().await.unwrap();
    if (first, status) != (StatusCode::OK, StatusCode::NOT_FOUND)
        || kind != "application/problem+json"
        || !problem.kind.ends_with("/unknown-reservation")
    {
        return Err(format!(
            "release twice: {first}, then {status} {kind:?} {problem:?}"
        ));
    }
    Ok(())
}

/// Bad requests are answered with a problem body and their status: unknown SKU and
/// reservation 404, a zero quantity 422, a `wait_ms` past the maximum 422, a body that is
/// not JSON 400, a path id that is not a number 400.
///
/// # Errors
///
/// The first answer that was not the expected problem.
async fn bad_requests_are_problems(strategy: Strategy) -> Result<(), String> {
    let running = Running::start(App::new(strategy), localhost(), reap())
        .await
        .unwrap();
    let http = client(4);
    put_stock(&http, running.url("/stock/tv"), 1).await;
    let zero = serde_json::json!({ "lines": [{ "sku": "tv", "qty": 0 }] });
    let long =
        serde_json::json!({ "lines": [{ "sku": "tv", "qty": 1 }], "wait_ms": WAIT_MS_MAX + 1 });
    let json = |body: &serde_json::Value| body.to_string();
    let cases = [
        (http.get(running.url("/stock/radio")), 404, "unknown-sku"),
        (
            http.post(running.url("/reservations/99/commit")),
            404,
            "unknown-reservation",
        ),
        (
            http.post(running.url("/reservations")).body(json(&zero)),
            422,
            "invalid-quantity",
        ),
        (
            http.post(running.url("/reservations")).body(json(&long)),
            422,
            "bad-input",
        ),
        (
            http.post(running.url("/reservations")).body("{lines"),
            400,
            "unreadable-request",
        ),
        (
            http.delete(running.url("/reservations/tv")),
            400,
            "unreadable-request",
        ),
    ];
    let mut failures = Vec::new();
    for (request, status, kind) in cases {
        let request = request.header(header::CONTENT_TYPE, "application/json");
        let answer = request.send().await.map_err(|error| error.to_string())?;
        let got = answer.status().as_u16();
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        let problem = answer.json::<Problem>().await.ok();
        let fits = got == status
            && content_type.is_some_and(|value| value == "application/problem+json")
            && problem.as_ref().is_some_and(|problem| {
                problem.status == status && problem.kind.ends_with(&format!("/{kind}"))
            });
        if !fits {
            failures.push(format!("expected {status} {kind}, got {got} {problem:?}"));
        }
    }
    running.stop().await.unwrap();
    match failures.first() {
        None => Ok(()),
        Some(failure) => Err(failure.clone()),
    }
}

/// Abandoned holds (a short TTL, never resolved) expire: the reaper gives their stock back.
///
/// # Errors
///
/// What broke.
async fn abandoned_holds_expire(strategy: Strategy) -> Result<(), String> {
    let running = Running::start(App::new(strategy), localhost(), reap())
        .await
        .unwrap();
    let http = client(16);
    put_stock(&http, running.url("/stock/cart"), 5).await;
    let body = serde_json::json!({ "lines": [{ "sku": "cart", "qty": 1 }], "ttl_ms": 20 });
    for _ in 0..5 {
        let answer = http
            .post(running.url("/reservations"))
            .json(&body)
            .send()
            .await
            .unwrap();
        if answer.status() != StatusCode::CREATED {
            return Err(format!(
                "an abandoned cart was answered {}",
                answer.status()
            ));
        }
    }
    // Only a hang guard: the reaper runs every few milliseconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_level(&http, &running, "cart").await.reserved > 0 {
        if Instant::now() > deadline {
            return Err("abandoned holds never expired".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let metrics = http
        .get(running.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    running.stop().await.unwrap();
    let expired = format!(
        "stockledger_expirations_total{{strategy=\"{}\"}} 5",
        strategy.name()
    );
    if !metrics.contains(&expired) {
        return Err(format!("/metrics lacks `{expired}`:\n{metrics}"));
    }
    Ok(())
}

/// A request with `wait_ms` on a sold-out SKU is served by a later restock (monitor), and
/// one that nothing serves runs out with a 409 problem and leaves the queue.
///
/// # Errors
///
/// What broke.
async fn waiting_request_is_served() -> Result<(), String> {
    let running = Running::start(App::new(Strategy::Monitor), localhost(), reap())
        .await
        .unwrap();
    let http = client(16);
    put_stock(&http, running.url("/stock/console"), 1).await;
    let sale = serde_json::json!({ "lines": [{ "sku": "console", "qty": 1 }] });
    http.post(running.url("/sales"))
        .json(&sale)
        .send()
        .await
        .unwrap();
    let short = serde_json::json!({ "lines": [{ "sku": "console", "qty": 1 }], "wait_ms": 10 });
    let ran_out = http
        .post(running.url("/reservations"))
        .json(&short)
        .send()
        .await
        .unwrap();
    if ran_out.status() != StatusCode::CONFLICT {
        return Err(format!("a wait that nothing served: {}", ran_out.status()));
    }
    let long =
        serde_json::json!({ "lines": [{ "sku": "console", "qty": 1 }], "wait_ms": WAIT_MS_MAX });
    let waiter = tokio::spawn(http.post(running.url("/reservations")).json(&long).send());
    let store = Arc::clone(&running.app.store);
    // The waiter is queued once the store counted its second wait (the first ran out).
    while store.stats().waits < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    put_stock(&http, running.url("/stock/console"), 1).await;
    let served = waiter.await.unwrap().map_err(|error| error.to_string())?;
    let status = served.status();
    let left = get_level(&http, &running, "console").await;
    running.stop().await.unwrap();
    if status != StatusCode::CREATED || (left.on_hand, left.reserved) != (1, 1) {
        return Err(format!("the waiter got {status}; left {left:?}"));
    }
    Ok(())
}

fn localhost() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

fn reap() -> Duration {
    Duration::from_millis(5)
}

fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .expect("an HTTP client")
}

/// The flash sale's size.
#[derive(Debug, Clone, Copy)]
pub(super) struct SaleArgs {
    pub(super) units: u64,
    pub(super) buyers: usize,
    pub(super) connections: usize,
}

/// Every check, on every strategy; prints one line per check.
///
/// # Errors
///
/// The first check that failed.
pub(super) async fn smoke(sale: &SaleArgs) -> Result<(), String> {
    for strategy in STRATEGIES {
        let name = strategy.name();
        let report = run_flash_sale(strategy, sale)
            .await
            .map_err(|e| format!("{name}: flash sale: {e}"))?;
        println!(
            "{name}: flash sale sold {} of {} units to {} buyers ({} refused) over {} connections",
            report.sold, sale.units, sale.buyers, report.refused, sale.connections
        );
        retries_hold_once(strategy)
            .await
            .map_err(|e| format!("{name}: retries: {e}"))?;
        println!("{name}: 8 retries with one Idempotency-Key held once");
        bad_requests_are_problems(strategy)
            .await
            .map_err(|e| format!("{name}: problems: {e}"))?;
        println!("{name}: bad requests answered with problem bodies (404, 422, 400)");
        abandoned_holds_expire(strategy)
            .await
            .map_err(|e| format!("{name}: expiry: {e}"))?;
        println!("{name}: 5 abandoned holds expired");
    }
    waiting_request_is_served()
        .await
        .map_err(|e| format!("monitor: waiting: {e}"))?;
    println!("monitor: a request with wait_ms was served by a restock; one with nothing coming ran out (409)");
    let caught = naive_is_caught(sale).await?;
    println!("negative control: the naive read-then-write handler was caught: {caught}");
    Ok(())
}

/// The flash sale per strategy, with throughput and latency.
pub(super) async fn load(sale: &SaleArgs) -> Result<(), String> {
    println!("| strategy | buyers | connections | HTTP requests | requests/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|---|");
    for strategy in STRATEGIES {
        let mut report = run_flash_sale(strategy, sale).await?;
        report.latencies.sort();
        let quantile =
            |q: f64| report.latencies[((report.latencies.len() - 1) as f64 * q) as usize];
        let requests = report.latencies.len();
        println!(
            "| {} | {} | {} | {requests} | {:.0} | {:.2?} | {:.2?} |",
            strategy.name(),
            sale.buyers,
            sale.connections,
            requests as f64 / report.elapsed.as_secs_f64(),
            quantile(0.50),
            quantile(0.99),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALE: SaleArgs = SaleArgs {
        units: 1_000,
        buyers: 10_000,
        connections: 256,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_flash_sale_sells_exactly_the_units_on_every_strategy() {
        for strategy in STRATEGIES {
            run_flash_sale(strategy, &SALE).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_sale_check_catches_a_naive_handler() {
        naive_is_caught(&SALE).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_with_one_key_hold_once_on_every_strategy() {
        for strategy in STRATEGIES {
            retries_hold_once(strategy).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_requests_are_problems_on_every_strategy() {
        for strategy in STRATEGIES {
            bad_requests_are_problems(strategy).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_holds_expire_on_every_strategy() {
        for strategy in STRATEGIES {
            abandoned_holds_expire(strategy).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_request_is_served_by_a_restock() {
        waiting_request_is_served().await.unwrap();
    }
}
