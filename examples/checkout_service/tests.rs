//! The service's tests: each rule over real HTTP on every strategy (`rules.rs`), the
//! flash sale and its negative control (`checks.rs`), and, with the `redis` feature, two
//! instances on one `redis-server` of the test's own.

use crate::checks::{naive_is_caught, run_flash_sale, start, SaleArgs};
use crate::rules;
use crate::{Strategy, STRATEGIES};

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
async fn holds_belong_to_their_customer_on_every_strategy() {
    for strategy in STRATEGIES {
        let running = start(strategy).await;
        rules::holds_are_their_customers(&running).await.unwrap();
        running.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_without_ttl_expire_after_the_default_on_every_strategy() {
    for strategy in STRATEGIES {
        rules::holds_expire_by_default(strategy).await.unwrap();
    }
}

/// Negative control of the expiry check: with the usual default (15 minutes) a hold made
/// without `ttl_ms` is still held when the check's patience (1 s) runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_check_sees_a_hold_that_stays() {
    let running = start(Strategy::Pessimistic).await;
    let (http, base) = (crate::checks::client(2), running.url(""));
    crate::checks::put_stock(&http, format!("{base}/stock/cart"), 1).await;
    let body = serde_json::json!({ "lines": [{ "sku": "cart", "qty": 1 }] });
    let answer = http
        .post(format!("{base}/reservations"))
        .bearer_auth("alice")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    let stayed = rules::hold_is_gone(&http, &base, "cart", std::time::Duration::from_secs(1)).await;
    running.stop().await.unwrap();
    assert!(stayed.is_err(), "{stayed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_follow_the_draft_on_every_strategy() {
    for strategy in STRATEGIES {
        rules::idempotency_keys(strategy).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_flight_is_409_then_replayed() {
    rules::key_in_flight_is_409().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_problem_json_on_every_strategy() {
    for strategy in STRATEGIES {
        let running = start(strategy).await;
        crate::checks::errors_are_problems(&running.url(""))
            .await
            .unwrap();
        running.stop().await.unwrap();
    }
}

/// Negative control of the problem check: a router without the service's fallbacks
/// (axum's defaults, as the service had) answers 404 and 405 with no body, and the
/// check says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_problem_check_catches_bare_404_and_405() {
    let router = axum::Router::new().route("/stock/{sku}", axum::routing::get(|| async { "" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(axum::serve(listener, router).into_future());
    let http = crate::checks::client(2);
    for (request, status, kind) in [
        (http.get(format!("{base}/no/such/route")), 404, "no-route"),
        (
            http.delete(format!("{base}/stock/tv")),
            405,
            "method-not-allowed",
        ),
    ] {
        let answer = request.send().await.unwrap();
        let caught = crate::checks::expect_problem(answer, status, kind).await;
        assert!(caught.is_err(), "{caught:?}");
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_holds_expire_on_every_strategy() {
    for strategy in STRATEGIES {
        rules::abandoned_holds_expire(strategy).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_is_served_by_a_restock() {
    rules::waiting_request_is_served().await.unwrap();
}

use std::future::IntoFuture;

/// Two instances of the service on one `redis-server` (started by the test: a free port, a
/// temporary directory, killed on drop; a missing `redis-server` fails the test).
#[cfg(feature = "redis")]
mod on_redis {
    use std::collections::{BTreeMap, HashSet};

    use crate::app::{App, Limits, Running};
    use crate::checks::{check_sale, client, flash_sale, get_level, put_stock, start_app, Buyers};
    use crate::redis_server::{Durability, RedisServer};
    use crate::rules;

    /// Two instances on `server`'s namespace `namespace` (with the naive routes).
    async fn two_instances(server: &RedisServer, namespace: &str, limits: Limits) -> [Running; 2] {
        let mut instances = Vec::new();
        for _ in 0..2 {
            let (url, namespace) = (server.url(), namespace.to_string());
            let app =
                tokio::task::spawn_blocking(move || App::redis(&url, &namespace, limits, true))
                    .await
                    .unwrap()
                    .unwrap();
            instances.push(start_app(app).await);
        }
        instances.try_into().unwrap_or_else(|_| unreachable!())
    }

    const SKUS: [&str; 3] = ["SKU1001", "SKU1002", "SKU1003"];
    const UNITS: u64 = 100;

    /// A flash sale through both instances: each buyer holds on one and commits (or, one
    /// in five, releases) on the other, with an `Idempotency-Key` each, then tries the
    /// same resolution again. Per SKU, units sold = units taken from stock, none oversold,
    /// none left held; every 201 resolved exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_flash_sale_through_two_instances_conserves_every_unit() {
        let server = RedisServer::start(Durability::Memory);
        let instances = two_instances(&server, "flash", Limits::default()).await;
        let http = client(32);
        let bases: Vec<String> = instances.iter().map(|running| running.url("")).collect();
        for sku in SKUS {
            put_stock(&http, format!("{}/stock/{sku}", bases[0]), UNITS).await;
        }
        let report = flash_sale(&http, &bases, &SKUS, 1_200, 32, Buyers::Mixed).await;
        let mut left = BTreeMap::new();
        for sku in SKUS {
            let level = get_level(&http, &bases[1], sku).await;
            left.insert(sku.to_string(), (level.on_hand, level.reserved));
        }
        for running in instances {
            running.stop().await.unwrap();
        }
        check_sale(&report, UNITS, &left, false).unwrap();
        assert!(report.held > 0 && report.sold_total() > 0, "{report:?}");
        assert_eq!(report.resolved_again_404, report.held);
        println!(
            "two instances: {} holds (201), {} resolved once each, {} units sold of {}, {} refused; left {left:?}",
            report.held,
            report.resolved,
            report.sold_total(),
            UNITS * SKUS.len() as u64,
            report.refused
        );
    }

    /// The negative control: the naive handler (GET, then SET on Redis) run the same way
    /// through both instances is caught by the same check.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_naive_handler_on_two_instances_is_caught_overselling() {
        let server = RedisServer::start(Durability::Memory);
        let instances = two_instances(&server, "naive", Limits::default()).await;
        let http = client(32);
        let bases: Vec<String> = instances.iter().map(|running| running.url("")).collect();
        for sku in SKUS {
            let status = put_stock(&http, format!("{}/naive/stock/{sku}", bases[0]), UNITS).await;
            assert_eq!(status, 204);
        }
        let report = flash_sale(&http, &bases, &SKUS, 1_200, 32, Buyers::Naive).await;
        let naive = std::sync::Arc::clone(instances[1].app.naive.as_ref().unwrap());
        let left = tokio::task::spawn_blocking(move || {
            SKUS.iter()
                .map(|sku| (sku.to_string(), (naive.available(sku).unwrap(), 0)))
                .collect::<BTreeMap<_, _>>()
        })
        .await
        .unwrap();
        for running in instances {
            running.stop().await.unwrap();
        }
        let caught = check_sale(&report, UNITS, &left, false);
        println!(
            "naive on two instances: sold {:?}, left {left:?}: {caught:?}",
            report.sold
        );
        assert!(
            caught.is_err(),
            "the check passed the naive handler: {report:?}"
        );
    }

    /// Owners and keys across instances: a hold made through one instance is the owner's
    /// through the other, nobody else's; 32 requests with one key, split over both
    /// instances, hold once and get one identical response.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn owners_and_keys_hold_across_two_instances() {
        let server = RedisServer::start(Durability::Memory);
        let limits = Limits {
            idempotency_wait: rules::PATIENCE,
            ..Limits::default()
        };
        let instances = two_instances(&server, "rules", limits).await;
        rules::holds_are_their_customers(&instances[0])
            .await
            .unwrap();
        let http = client(32);
        let bases: Vec<String> = instances.iter().map(|running| running.url("")).collect();
        put_stock(&http, format!("{}/stock/phone", bases[0]), 10).await;
        let body = serde_json::json!({ "lines": [{ "sku": "phone", "qty": 2 }] });
        let requests = (0..32)
            .map(|n| {
                http.post(format!("{}/reservations", bases[n % 2]))
                    .bearer_auth("alice")
                    .header("Idempotency-Key", "\"order-7\"")
                    .json(&body)
            })
            .collect();
        let answers = rules::all_at_once(requests).await.unwrap();
        let distinct: HashSet<_> = answers.iter().collect();
        let level = get_level(&http, &bases[1], "phone").await;
        let hold: crate::bodies::ReservationBody = serde_json::from_str(&answers[0].1).unwrap();
        let by_bob = rules::resolutions(&http, &bases[1], "bob", std::slice::from_ref(&hold.id))
            .await
            .unwrap();
        let by_alice = rules::resolutions(&http, &bases[1], "alice", &[hold.id])
            .await
            .unwrap();
        for running in instances {
            running.stop().await.unwrap();
        }
        assert_eq!((distinct.len(), answers[0].0), (1, 201), "{answers:?}");
        assert_eq!(level.reserved, 2);
        assert_eq!((by_bob, by_alice), (0, 1));
    }

    /// A request with `wait_ms` through one instance waits on Redis (reached through the
    /// one store handle's `as_waiting`, on the blocking pool) and is served by a restock
    /// through the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_waiting_request_on_redis_is_served_by_a_restock_of_another_instance() {
        let server = RedisServer::start(Durability::Memory);
        let instances = two_instances(&server, "waiting", Limits::default()).await;
        let http = client(4);
        let bases: Vec<String> = instances.iter().map(|running| running.url("")).collect();
        put_stock(&http, format!("{}/stock/console", bases[0]), 1).await;
        let sale = serde_json::json!({ "lines": [{ "sku": "console", "qty": 1 }] });
        http.post(format!("{}/sales", bases[0]))
            .json(&sale)
            .send()
            .await
            .unwrap();
        let body =
            serde_json::json!({ "lines": [{ "sku": "console", "qty": 1 }], "wait_ms": 20_000 });
        let waiter = tokio::spawn(
            http.post(format!("{}/reservations", bases[0]))
                .bearer_auth("alice")
                .json(&body)
                .send(),
        );
        let store = std::sync::Arc::clone(&instances[1].app.store);
        let started = std::time::Instant::now();
        loop {
            let store = std::sync::Arc::clone(&store);
            let waits = tokio::task::spawn_blocking(move || store.stats().waits)
                .await
                .unwrap();
            if waits >= 1 {
                break;
            }
            assert!(
                started.elapsed() < rules::PATIENCE,
                "the waiter never queued"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        put_stock(&http, format!("{}/stock/console", bases[1]), 1).await;
        let served = waiter.await.unwrap().unwrap();
        let status = served.status();
        let level = get_level(&http, &bases[1], "console").await;
        for running in instances {
            running.stop().await.unwrap();
        }
        assert_eq!(status, 201);
        assert_eq!((level.on_hand, level.reserved), (1, 1));
    }

    /// The service on a Redis server that is down answers 503 problems, not 404s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_that_went_away_is_503() {
        let mut server = RedisServer::start(Durability::Memory);
        let [running, other] = two_instances(&server, "down", Limits::default()).await;
        other.stop().await.unwrap();
        let http = client(2);
        let base = running.url("");
        put_stock(&http, format!("{base}/stock/tv"), 1).await;
        server.kill();
        let level = http.get(format!("{base}/stock/tv")).send().await.unwrap();
        let problem = crate::checks::expect_problem(level, 503, "unavailable").await;
        running.stop().await.unwrap();
        problem.unwrap();
    }
}
