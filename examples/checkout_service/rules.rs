//! The service's rules, checked over real HTTP (reqwest against a service on a free
//! port): holds belong to their customer, every hold expires, the `Idempotency-Key`
//! draft, problem bodies, waiting, metrics. Each check returns a line saying what it saw.
//! Used by `--smoke` (on the monitor) and by the tests (on every strategy, with the
//! negative controls).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};

use crate::app::{App, Limits, Running};
use crate::bodies::ReservationBody;
use crate::checks::{
    client, errors_are_problems, expect_problem, get_level, put_stock, start, start_app,
};
use crate::holds::new_token;
use crate::telemetry::OPENMETRICS;
use crate::Strategy;

/// Only a hang guard: the service's loops run every few milliseconds.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// Every rule on a fresh service of `strategy` each (the waiting ones on the monitor).
///
/// # Errors
///
/// The first rule broken.
pub(crate) async fn all(strategy: Strategy) -> Result<Vec<String>, String> {
    let mut seen = Vec::new();
    let running = start(strategy).await;
    seen.push(
        holds_are_their_customers(&running)
            .await
            .map_err(|e| format!("owners: {e}"))?,
    );
    running.stop().await.unwrap();
    seen.push(
        holds_expire_by_default(strategy)
            .await
            .map_err(|e| format!("TTL: {e}"))?,
    );
    seen.push(
        idempotency_keys(strategy)
            .await
            .map_err(|e| format!("keys: {e}"))?,
    );
    let running = start(strategy).await;
    let problems = errors_are_problems(&running.url(""))
        .await
        .map_err(|e| format!("problems: {e}"))?;
    running.stop().await.unwrap();
    seen.push(format!(
        "{problems} bad requests, unknown routes and wrong methods answered with problem JSON"
    ));
    seen.push(
        abandoned_holds_expire(strategy)
            .await
            .map_err(|e| format!("expiry: {e}"))?,
    );
    if strategy == Strategy::Monitor {
        seen.push(
            key_in_flight_is_409()
                .await
                .map_err(|e| format!("in flight: {e}"))?,
        );
        seen.push(
            waiting_request_is_served()
                .await
                .map_err(|e| format!("waiting: {e}"))?,
        );
    }
    Ok(seen)
}

/// Holds `qty` of `sku` for `customer`.
async fn hold(
    http: &reqwest::Client,
    base: &str,
    customer: &str,
    sku: &str,
    qty: u64,
) -> Result<ReservationBody, String> {
    let body = serde_json::json!({ "lines": [{ "sku": sku, "qty": qty }] });
    let answer = http
        .post(format!("{base}/reservations"))
        .bearer_auth(customer)
        .json(&body)
        .send()
        .await
        .map_err(|error| error.to_string())?;
    if answer.status() != StatusCode::CREATED {
        return Err(format!("a hold was answered {}", answer.status()));
    }
    answer.json().await.map_err(|error| error.to_string())
}

/// How many of `ids` `customer` resolved (200) by `DELETE /reservations/{id}` and
/// `POST /reservations/{id}/commit`; every other answer must be a 404 problem.
///
/// # Errors
///
/// An answer that was neither 200 nor a 404 problem.
pub(crate) async fn resolutions(
    http: &reqwest::Client,
    base: &str,
    customer: &str,
    ids: &[String],
) -> Result<usize, String> {
    let mut resolved = 0;
    for (n, id) in ids.iter().enumerate() {
        let request = if n % 2 == 0 {
            http.delete(format!("{base}/reservations/{id}"))
        } else {
            http.post(format!("{base}/reservations/{id}/commit"))
        };
        let answer = request
            .bearer_auth(customer)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if answer.status() == StatusCode::OK {
            resolved += 1;
        } else {
            expect_problem(answer, 404, "unknown-reservation").await?;
        }
    }
    Ok(resolved)
}

/// Alice's holds resist bob: reads, commits and releases of her tokens, an enumeration of
/// small ids (what the store's ids look like) and of random tokens all find nothing, and
/// her stock stays held; without a bearer token, 401. Negative control: the same
/// resolutions by alice herself resolve her holds (so the count would see bob's).
///
/// # Errors
///
/// What broke.
pub(crate) async fn holds_are_their_customers(running: &Running) -> Result<String, String> {
    let (http, base) = (client(4), running.url(""));
    put_stock(&http, format!("{base}/stock/tv"), 10).await;
    let mut tokens = Vec::new();
    for _ in 0..4 {
        tokens.push(hold(&http, &base, "alice", "tv", 1).await?.id);
    }
    let read = http.get(format!("{base}/reservations/{}", tokens[0]));
    let read = read
        .bearer_auth("bob")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    expect_problem(read, 404, "unknown-reservation").await?;
    let anonymous = http
        .delete(format!("{base}/reservations/{}", tokens[0]))
        .send()
        .await;
    expect_problem(
        anonymous.map_err(|e| e.to_string())?,
        401,
        "unauthenticated",
    )
    .await?;
    let mut guesses: Vec<String> = (1..=4_096).map(|id: u64| id.to_string()).collect();
    guesses.extend((0..256).map(|_| new_token()));
    guesses.extend(tokens.iter().cloned());
    guesses.extend(tokens.iter().cloned());
    let by_bob = resolutions(&http, &base, "bob", &guesses).await?;
    let level = get_level(&http, &base, "tv").await;
    if by_bob != 0 || level.reserved != 4 {
        return Err(format!(
            "bob resolved {by_bob} of {} guesses; {} of alice's 4 units still held",
            guesses.len(),
            level.reserved
        ));
    }
    let mine = http
        .get(format!("{base}/reservations/{}", tokens[0]))
        .bearer_auth("alice")
        .send()
        .await;
    if mine.map(|answer| answer.status()).ok() != Some(StatusCode::OK) {
        return Err("alice cannot read her own hold".into());
    }
    // Negative control: alice's own tokens, through the same count.
    let by_alice = resolutions(&http, &base, "alice", &tokens).await?;
    let level = get_level(&http, &base, "tv").await;
    if by_alice != 4 || (level.on_hand, level.reserved) != (8, 0) {
        return Err(format!(
            "alice resolved {by_alice} of her 4 holds; left {level:?}"
        ));
    }
    Ok(format!(
        "{} resolutions by another customer (4,096 small ids, 256 random tokens, the owner's 4 tokens twice) found nothing; the owner resolved her 4",
        guesses.len()
    ))
}

/// Waits until `sku` holds nothing, up to `patience`.
///
/// # Errors
///
/// When units are still held after `patience`.
pub(crate) async fn hold_is_gone(
    http: &reqwest::Client,
    base: &str,
    sku: &str,
    patience: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let reserved = get_level(http, base, sku).await.reserved;
        if reserved == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > patience {
            return Err(format!(
                "{reserved} units of {sku} still held after {patience:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A service whose default TTL is 200 ms and maximum 1 s: a `ttl_ms` of 0, past the
/// maximum, or 2^64 - 1 is 422; a hold without `ttl_ms` gets the default and is gone
/// after it, and committing it then fails.
///
/// # Errors
///
/// What broke.
pub(crate) async fn holds_expire_by_default(strategy: Strategy) -> Result<String, String> {
    let limits = Limits::from_ms(200, 1_000, crate::idempotency::WAIT_MS_DEFAULT)?;
    let running = start_app(App::memory(strategy, limits)).await;
    let (http, base) = (client(4), running.url(""));
    put_stock(&http, format!("{base}/stock/cart"), 5).await;
    for ttl_ms in [0, 1_001, u64::MAX] {
        let body = serde_json::json!({ "lines": [{ "sku": "cart", "qty": 1 }], "ttl_ms": ttl_ms });
        let answer = http
            .post(format!("{base}/reservations"))
            .bearer_auth("alice")
            .json(&body)
            .send()
            .await;
        expect_problem(answer.map_err(|e| e.to_string())?, 422, "bad-input").await?;
    }
    let held = hold(&http, &base, "alice", "cart", 2).await?;
    if held.expires_in_ms > 200 {
        return Err(format!(
            "a hold without ttl_ms expires in {} ms, past the 200 ms default",
            held.expires_in_ms
        ));
    }
    let gone_after = hold_is_gone(&http, &base, "cart", PATIENCE).await?;
    let commit = http
        .post(format!("{base}/reservations/{}/commit", held.id))
        .bearer_auth("alice")
        .send()
        .await;
    let status = commit.map_err(|e| e.to_string())?.status();
    let level = get_level(&http, &base, "cart").await;
    running.stop().await.unwrap();
    if status.is_success() || level.on_hand != 5 {
        return Err(format!("a commit after expiry: {status}; left {level:?}"));
    }
    Ok(format!(
        "ttl_ms 0, 1001 and 2^64-1 refused (422); a hold without ttl_ms was gone after {gone_after:.0?} (default 200 ms), its commit {status}"
    ))
}

/// Sends `requests` (already built) at once and returns each answer's status and body.
pub(crate) async fn all_at_once(
    requests: Vec<reqwest::RequestBuilder>,
) -> Result<Vec<(u16, String)>, String> {
    let sent: Vec<_> = requests
        .into_iter()
        .map(|request| {
            tokio::spawn(async move {
                let answer = request.send().await.map_err(|e| e.to_string())?;
                let status = answer.status().as_u16();
                Ok::<_, String>((status, answer.text().await.map_err(|e| e.to_string())?))
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in sent {
        answers.push(request.await.map_err(|e| e.to_string())??);
    }
    Ok(answers)
}

/// The `Idempotency-Key` rules: 32 concurrent requests with one key hold once and get one
/// identical response; the same key with other lines, `ttl_ms` or `wait_ms` is 422;
/// another customer's same key and lines is another hold; a replay after the commit gives
/// the first response again. Negative control: 32 requests with 32 keys get 32 answers
/// (the identity check would see them).
///
/// # Errors
///
/// What broke.
pub(crate) async fn idempotency_keys(strategy: Strategy) -> Result<String, String> {
    // Duplicates wait for the first as long as it takes here (no timing in the check).
    let limits = Limits {
        idempotency_wait: PATIENCE,
        ..Limits::default()
    };
    let running = start_app(App::memory(strategy, limits)).await;
    let (http, base) = (client(32), running.url(""));
    put_stock(&http, format!("{base}/stock/phone"), 10).await;
    put_stock(&http, format!("{base}/stock/control"), 100).await;
    let body = serde_json::json!({ "lines": [{ "sku": "phone", "qty": 2 }], "ttl_ms": 60_000 });
    let keyed = |customer: &str, key: &str, body: &serde_json::Value| {
        http.post(format!("{base}/reservations"))
            .bearer_auth(customer)
            .header("Idempotency-Key", format!("\"{key}\""))
            .json(body)
    };
    let answers = all_at_once((0..32).map(|_| keyed("alice", "order-42", &body)).collect()).await?;
    let distinct: HashSet<_> = answers.iter().collect();
    let reserves = running.app.store.stats().reserves;
    let level = get_level(&http, &base, "phone").await;
    if distinct.len() != 1 || answers[0].0 != 201 || level.reserved != 2 || reserves != 1 {
        return Err(format!(
            "32 requests with one key: {} distinct answers (e.g. {:?}), {} units held, {reserves} holds",
            distinct.len(),
            answers[0],
            level.reserved
        ));
    }
    let first: ReservationBody = serde_json::from_str(&answers[0].1).map_err(|e| e.to_string())?;
    let others = [
        serde_json::json!({ "lines": [{ "sku": "phone", "qty": 3 }], "ttl_ms": 60_000 }),
        serde_json::json!({ "lines": [{ "sku": "phone", "qty": 2 }], "ttl_ms": 30_000 }),
        serde_json::json!({ "lines": [{ "sku": "phone", "qty": 2 }] }),
        serde_json::json!({ "lines": [{ "sku": "phone", "qty": 2 }], "ttl_ms": 60_000, "wait_ms": 10 }),
    ];
    for other in &others {
        let answer = keyed("alice", "order-42", other)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        expect_problem(answer, 422, "idempotency-key-reused").await?;
    }
    let bobs = keyed("bob", "order-42", &body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if bobs.status() != StatusCode::CREATED {
        return Err(format!("bob's request with alice's key: {}", bobs.status()));
    }
    let bobs: ReservationBody = bobs.json().await.map_err(|e| e.to_string())?;
    let level = get_level(&http, &base, "phone").await;
    if bobs.id == first.id || level.reserved != 4 {
        return Err(format!(
            "bob got alice's hold ({}), {} units held",
            bobs.id == first.id,
            level.reserved
        ));
    }
    let committed = http
        .post(format!("{base}/reservations/{}/commit", first.id))
        .bearer_auth("alice")
        .send()
        .await;
    if committed.map(|answer| answer.status()).ok() != Some(StatusCode::OK) {
        return Err("alice's commit failed".into());
    }
    let replay = keyed("alice", "order-42", &body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let replayed = replay.headers().get("idempotent-replayed").cloned();
    let replay = (
        replay.status().as_u16(),
        replay.text().await.map_err(|e| e.to_string())?,
    );
    let level = get_level(&http, &base, "phone").await;
    if replay != answers[0] || replayed.is_none() || (level.on_hand, level.reserved) != (8, 2) {
        return Err(format!(
            "a replay after the commit: {replay:?}, replayed header {replayed:?}; left {level:?}"
        ));
    }
    // Negative control: one key each, same payload: 32 answers, 32 holds.
    let control = serde_json::json!({ "lines": [{ "sku": "control", "qty": 1 }] });
    let answers = all_at_once(
        (0..32)
            .map(|n| keyed("alice", &format!("control-{n}"), &control))
            .collect(),
    )
    .await?;
    let distinct: HashSet<_> = answers.iter().collect();
    let held = get_level(&http, &base, "control").await.reserved;
    running.stop().await.unwrap();
    if distinct.len() != 32 || held != 32 {
        return Err(format!(
            "control: 32 keys gave {} distinct answers, {held} units held",
            distinct.len()
        ));
    }
    Ok("32 concurrent requests with one key held once, one identical 201; other lines, ttl_ms or wait_ms 422; another customer's same key its own hold; a replay after the commit the first 201 (control: 32 keys, 32 holds)".into())
}

/// A duplicate of a request still in flight (waiting for stock) is 409 once the service's
/// patience (50 ms here) runs out, and another payload 422 at once; after the first
/// finishes, a duplicate gets its response (monitor).
///
/// # Errors
///
/// What broke.
pub(crate) async fn key_in_flight_is_409() -> Result<String, String> {
    let limits = Limits {
        idempotency_wait: Duration::from_millis(50),
        ..Limits::default()
    };
    let running = start_app(App::memory(Strategy::Monitor, limits)).await;
    let (http, base) = (client(4), running.url(""));
    put_stock(&http, format!("{base}/stock/console"), 1).await;
    let sale = serde_json::json!({ "lines": [{ "sku": "console", "qty": 1 }] });
    http.post(format!("{base}/sales"))
        .json(&sale)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body = serde_json::json!({ "lines": [{ "sku": "console", "qty": 1 }], "wait_ms": crate::app::WAIT_MS_MAX });
    let keyed = |body: &serde_json::Value| {
        http.post(format!("{base}/reservations"))
            .bearer_auth("alice")
            .header("Idempotency-Key", "\"slow-1\"")
            .json(body)
    };
    let first = tokio::spawn(keyed(&body).send());
    let store = std::sync::Arc::clone(&running.app.store);
    let started = Instant::now();
    while store.stats().waits < 1 {
        if started.elapsed() > PATIENCE {
            return Err("the first request never queued".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let duplicate = keyed(&body).send().await.map_err(|e| e.to_string())?;
    expect_problem(duplicate, 409, "idempotency-key-in-flight").await?;
    let other = serde_json::json!({ "lines": [{ "sku": "console", "qty": 1 }] });
    expect_problem(
        keyed(&other).send().await.map_err(|e| e.to_string())?,
        422,
        "idempotency-key-reused",
    )
    .await?;
    put_stock(&http, format!("{base}/stock/console"), 1).await;
    let first = first
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let first = (
        first.status().as_u16(),
        first.text().await.map_err(|e| e.to_string())?,
    );
    let replay = keyed(&body).send().await.map_err(|e| e.to_string())?;
    let replay = (
        replay.status().as_u16(),
        replay.text().await.map_err(|e| e.to_string())?,
    );
    let level = get_level(&http, &base, "console").await;
    running.stop().await.unwrap();
    if first.0 != 201 || replay != first || level.reserved != 1 {
        return Err(format!(
            "first {first:?}, replay {replay:?}, left {level:?}"
        ));
    }
    Ok("a duplicate of a request still waiting for stock: 409, another payload 422; once it was served, a duplicate got its 201".into())
}

/// Abandoned holds (a short TTL, never resolved) expire: the expiry loop gives their stock
/// back; `/metrics` shows the expirations and the latency histograms.
///
/// # Errors
///
/// What broke.
pub(crate) async fn abandoned_holds_expire(strategy: Strategy) -> Result<String, String> {
    let running = start(strategy).await;
    let (http, base) = (client(4), running.url(""));
    put_stock(&http, format!("{base}/stock/cart"), 5).await;
    let body = serde_json::json!({ "lines": [{ "sku": "cart", "qty": 1 }], "ttl_ms": 20 });
    for _ in 0..5 {
        let answer = http
            .post(format!("{base}/reservations"))
            .bearer_auth("alice")
            .json(&body)
            .send()
            .await;
        let status = answer.map_err(|e| e.to_string())?.status();
        if status != StatusCode::CREATED {
            return Err(format!("an abandoned cart was answered {status}"));
        }
    }
    hold_is_gone(&http, &base, "cart", PATIENCE).await?;
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let content_type = metrics.headers().get(header::CONTENT_TYPE).cloned();
    let metrics = metrics.text().await.map_err(|e| e.to_string())?;
    running.stop().await.unwrap();
    let label = strategy.name();
    let expected = [
        format!("stockledger_expirations_total{{store=\"{label}\"}} 5"),
        format!("stockledger_reserve_seconds_count{{store=\"{label}\"}} 5"),
        format!("stockledger_commit_seconds_count{{store=\"{label}\"}} 0"),
    ];
    if content_type
        .as_ref()
        .is_none_or(|value| value != OPENMETRICS)
    {
        return Err(format!("/metrics content type {content_type:?}"));
    }
    for series in &expected {
        if !metrics.contains(series) {
            return Err(format!("/metrics lacks `{series}`:\n{metrics}"));
        }
    }
    Ok("5 abandoned holds expired; /metrics counted them and their latencies".into())
}

/// A request with `wait_ms` on a sold-out SKU is served by a later restock (monitor), and
/// one that nothing serves runs out with a 409 problem and leaves the queue.
///
/// # Errors
///
/// What broke.
pub(crate) async fn waiting_request_is_served() -> Result<String, String> {
    let running = start(Strategy::Monitor).await;
    let (http, base) = (client(4), running.url(""));
    put_stock(&http, format!("{base}/stock/console"), 1).await;
    let sale = serde_json::json!({ "lines": [{ "sku": "console", "qty": 1 }] });
    http.post(format!("{base}/sales"))
        .json(&sale)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let wait = |wait_ms: u64| {
        let body =
            serde_json::json!({ "lines": [{ "sku": "console", "qty": 1 }], "wait_ms": wait_ms });
        http.post(format!("{base}/reservations"))
            .bearer_auth("alice")
            .json(&body)
    };
    let ran_out = wait(10).send().await.map_err(|e| e.to_string())?;
    expect_problem(ran_out, 409, "wait-timed-out").await?;
    let waiter = tokio::spawn(wait(crate::app::WAIT_MS_MAX).send());
    let store = std::sync::Arc::clone(&running.app.store);
    // The waiter is queued once the store counted its second wait (the first ran out).
    let started = Instant::now();
    while store.stats().waits < 2 {
        if started.elapsed() > PATIENCE {
            return Err("the waiter never queued".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    put_stock(&http, format!("{base}/stock/console"), 1).await;
    let served = waiter
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let status = served.status();
    let left = get_level(&http, &base, "console").await;
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let metrics = metrics.text().await.map_err(|e| e.to_string())?;
    running.stop().await.unwrap();
    if status != StatusCode::CREATED || (left.on_hand, left.reserved) != (1, 1) {
        return Err(format!("the waiter got {status}; left {left:?}"));
    }
    if !metrics.contains("stockledger_waiting_seconds_count{store=\"monitor\"} 2") {
        return Err(format!("/metrics lacks the 2 waits:\n{metrics}"));
    }
    Ok(
        "a request with wait_ms was served by a restock; one with nothing coming ran out (409)"
            .into(),
    )
}
