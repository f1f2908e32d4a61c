//! The `Idempotency-Key` request header of `POST /reservations`, as the IETF draft
//! `draft-ietf-httpapi-idempotency-key-header` (-06) describes it:
//!
//! - the key is a structured-field string (`Idempotency-Key: "order-42"`; a bare token is
//!   accepted too), 1 to [`KEY_BYTES_MAX`] bytes of visible ASCII;
//! - keys are scoped per customer: another customer's request with the same key is
//!   another request;
//! - the first request's response (status and body) is recorded and a retry gets it
//!   back, with `Idempotent-Replayed: true`, for [`RETENTION`] after it; responses of
//!   5xx (the outcome is unknown) are not recorded, so a retry runs again (and the
//!   store's own idempotency key, the same scope, keeps it from holding twice);
//! - the same key with another payload (other lines, `ttl_ms` or `wait_ms`; lines compared
//!   merged, as the store holds them) is **422**;
//! - a retry while the first request is still being processed: the draft says **409**.
//!   This service first waits up to `--idempotency-wait-ms` (default
//!   [`WAIT_MS_DEFAULT`]) for the first to finish and replays its response: concurrent
//!   duplicates of a quick request (a client that timed out and retried, a double click)
//!   all get the one response; a duplicate of a request still running after that (one
//!   waiting for stock with `wait_ms`) gets the draft's 409.
//!
//! Records live in memory for one instance, or in Redis (feature `redis`) when several
//! instances share a ledger: the claim of a key is one `SET NX`, so one instance of many
//! runs the request.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use stockledger::StockError;

use crate::app::App;
use crate::auth::Customer;
use crate::error::{ApiError, PROBLEM_JSON};

/// The longest key, in bytes.
pub(crate) const KEY_BYTES_MAX: usize = 128;
/// How long a response is replayed: 24 hours, the store's own key retention.
pub(crate) const RETENTION: Duration = stockledger::IDEMPOTENCY_RETENTION;
/// How many finished records one instance keeps in memory; the oldest go first past it.
pub(crate) const RECORDS_MAX: usize = stockledger::IDEMPOTENCY_KEYS_MAX;
/// How long a duplicate waits for the first request before a 409, by default.
pub(crate) const WAIT_MS_DEFAULT: u64 = 1_000;
/// How long a claim lasts beyond the request's own `wait_ms`: a claim whose instance died
/// is given up after it (Redis), so the key is not blocked for good.
const LEASE_SLACK: Duration = Duration::from_secs(30);
/// The longest pause between two looks at a key in flight.
const POLL_MAX: Duration = Duration::from_millis(20);

/// Reads the `Idempotency-Key` header, if any.
///
/// # Errors
///
/// [`ApiError::BadInput`] for a key that is empty, too long, or not visible ASCII.
pub(crate) fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::BadInput(format!(
            "Idempotency-Key must be a string of 1 to {KEY_BYTES_MAX} visible ASCII characters, e.g. \"order-42\""
        ))
    };
    let value = value.to_str().map_err(|_| bad())?.trim();
    let key = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"').ok_or_else(bad)?,
        None => value,
    };
    let visible = |c: char| c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ';
    if key.is_empty() || key.len() > KEY_BYTES_MAX || !key.chars().all(visible) {
        return Err(bad());
    }
    Ok(Some(key.to_string()))
}

/// A key within its customer: `"<customer length>:<customer><key>"` (unambiguous, at most
/// 3 + 1 + 64 + 128 bytes, under the store's 255). It is also the key given to the store.
pub(crate) fn scope(customer: &Customer, key: &str) -> String {
    let customer = customer.as_str();
    format!("{}:{customer}{key}", customer.len())
}

/// What makes two requests with one key the same request: the merged lines (sorted by
/// SKU), `ttl_ms` and `wait_ms` as sent.
pub(crate) fn fingerprint(
    lines: &[(String, u64)],
    ttl_ms: Option<u64>,
    wait_ms: Option<u64>,
) -> String {
    let mut merged = BTreeMap::<&str, u64>::new();
    for (sku, qty) in lines {
        let sum = merged.entry(sku).or_default();
        *sum = sum.saturating_add(*qty);
    }
    serde_json::to_string(&(merged, ttl_ms, wait_ms)).expect("a fingerprint serializes")
}

/// A response as recorded for replays.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    /// `true`: a problem body (`application/problem+json`), else `application/json`.
    pub(crate) problem: bool,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn of<T: Serialize>(answer: Result<(StatusCode, T), ApiError>) -> Self {
        match answer {
            Ok((status, body)) => Self {
                status: status.as_u16(),
                problem: false,
                body: serde_json::to_string(&body).expect("a body serializes"),
            },
            Err(error) => Self {
                status: error.status().0.as_u16(),
                problem: true,
                body: serde_json::to_string(&error.problem()).expect("a problem serializes"),
            },
        }
    }

    fn into_response(self, replayed: bool) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let content_type = if self.problem {
            PROBLEM_JSON
        } else {
            "application/json"
        };
        let mut response =
            (status, [(header::CONTENT_TYPE, content_type)], self.body).into_response();
        if replayed {
            let replayed = HeaderValue::from_static("true");
            response
                .headers_mut()
                .insert("idempotent-replayed", replayed);
        }
        response
    }
}

/// A key's record: the first request's fingerprint, who runs it, and its response once
/// it has one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) fingerprint: String,
    /// A random id of the claim (one request of one instance).
    pub(crate) owner: String,
    /// `None` while the first request is in flight.
    pub(crate) reply: Option<Reply>,
}

/// What [`KeyRecords::begin`] found.
#[derive(Debug)]
pub(crate) enum Begin {
    /// The key was free: this request runs, and records its response under this claim.
    Claimed(Claim),
    /// The key's record (in flight, or finished).
    Recorded(Record),
}

/// The right to run the request of a key, and to record its response.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    scope: String,
    /// The record as claimed (pending), compared before it is replaced.
    pending: Record,
}

/// Where records are kept.
///
/// # Blocking
///
/// The Redis records make a round trip per call (see `App::blocking`).
pub(crate) trait KeyRecords: Send + Sync {
    /// Claims `scope` for a request of `fingerprint` for up to `lease`, or returns its
    /// record.
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] (Redis).
    fn begin(
        &self,
        scope: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Begin, StockError<String>>;

    /// Records `reply` under `claim`, if the claim still holds.
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] (Redis).
    fn finish(&self, claim: &Claim, reply: &Reply) -> Result<(), StockError<String>>;

    /// Gives the key up (the response is not to be replayed), if the claim still holds.
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] (Redis).
    fn abandon(&self, claim: &Claim) -> Result<(), StockError<String>>;
}

fn pending(fingerprint: &str) -> Record {
    Record {
        fingerprint: fingerprint.to_string(),
        owner: format!("{:032x}", rand::random::<u128>()),
        reply: None,
    }
}

/// Runs `request` once per key of `customer`: the first request with `key` runs it, a
/// retry gets its response (see the module docs).
///
/// # Errors
///
/// [`ApiError::KeyReused`] (422), [`ApiError::KeyInFlight`] (409), and `Unavailable` (503)
/// when the records cannot be reached.
pub(crate) async fn once<F>(
    app: &App,
    customer: &Customer,
    key: &str,
    fingerprint: String,
    request_wait: Duration,
    request: F,
) -> Result<Response, ApiError>
where
    F: std::future::Future<Output = Reply> + Send + 'static,
{
    let scope = scope(customer, key);
    let lease = request_wait + app.limits.idempotency_wait + LEASE_SLACK;
    let patience = Instant::now() + app.limits.idempotency_wait;
    let mut pause = Duration::from_millis(1);
    let claim = loop {
        let (looked_up, wanted) = (scope.clone(), fingerprint.clone());
        let begun = app
            .blocking(move |app| app.keys.begin(&looked_up, &wanted, lease))
            .await?;
        match begun {
            Begin::Claimed(claim) => break claim,
            Begin::Recorded(record) if record.fingerprint != fingerprint => {
                return Err(ApiError::KeyReused)
            }
            Begin::Recorded(Record {
                reply: Some(reply), ..
            }) => return Ok(reply.into_response(true)),
            Begin::Recorded(_) if Instant::now() >= patience => return Err(ApiError::KeyInFlight),
            Begin::Recorded(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(POLL_MAX);
            }
        }
    };
    // The first request runs to its end even if its client goes away (axum drops a
    // handler's future then), so that its response is recorded for the retry.
    let settle = ClaimGuard {
        app: app.clone(),
        claim: Some(claim),
    };
    let task = tokio::spawn(async move {
        let mut settle = settle;
        let reply = request.await;
        settle.settle(&reply).await;
        reply
    });
    match task.await {
        Ok(reply) => Ok(reply.into_response(false)),
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// Settles a claim: records the response, or gives the key up for a 5xx, or (dropped
/// unsettled: the request panicked) gives it up.
struct ClaimGuard {
    app: App,
    claim: Option<Claim>,
}

impl ClaimGuard {
    async fn settle(&mut self, reply: &Reply) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        let reply = reply.clone();
        let settled = self
            .app
            .blocking(move |app| {
                if reply.status >= 500 {
                    app.keys.abandon(&claim)
                } else {
                    app.keys.finish(&claim, &reply)
                }
            })
            .await;
        if let Err(error) = settled {
            // The claim's lease runs out and the key is free again.
            tracing::warn!(%error, "an idempotency record was not settled");
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            let keys = std::sync::Arc::clone(&self.app.keys);
            tokio::task::spawn_blocking(move || keys.abandon(&claim));
        }
    }
}

/// Records of one instance, in memory: at most [`RECORDS_MAX`] finished ones, each for
/// [`RETENTION`].
#[derive(Debug, Default)]
pub(crate) struct MemoryKeys {
    inner: Mutex<MemoryKeysInner>,
}

#[derive(Debug, Default)]
struct MemoryKeysInner {
    /// scope -> (record, until when it counts: a claim's lease or a response's retention).
    records: HashMap<String, (Record, Instant)>,
    /// Scopes of finished records, oldest first (may name records since replaced).
    finished: VecDeque<(Instant, String)>,
}

impl MemoryKeysInner {
    fn forget_old(&mut self, now: Instant) {
        while let Some((until, scope)) = self.finished.front().cloned() {
            if until > now && self.finished.len() <= RECORDS_MAX {
                break;
            }
            self.finished.pop_front();
            let stale = self
                .records
                .get(&scope)
                .is_some_and(|(record, kept)| record.reply.is_some() && *kept == until);
            if stale {
                self.records.remove(&scope);
            }
        }
    }
}

impl KeyRecords for MemoryKeys {
    fn begin(
        &self,
        scope: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Begin, StockError<String>> {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap();
        inner.forget_old(now);
        if let Some((record, until)) = inner.records.get(scope) {
            if *until > now {
                return Ok(Begin::Recorded(record.clone()));
            }
        }
        let record = pending(fingerprint);
        inner
            .records
            .insert(scope.to_string(), (record.clone(), now + lease));
        Ok(Begin::Claimed(Claim {
            scope: scope.to_string(),
            pending: record,
        }))
    }

    fn finish(&self, claim: &Claim, reply: &Reply) -> Result<(), StockError<String>> {
        let until = Instant::now() + RETENTION;
        let mut inner = self.inner.lock().unwrap();
        let Some((record, kept)) = inner.records.get_mut(&claim.scope) else {
            return Ok(());
        };
        if *record == claim.pending {
            record.reply = Some(reply.clone());
            *kept = until;
            inner.finished.push_back((until, claim.scope.clone()));
        }
        Ok(())
    }

    fn abandon(&self, claim: &Claim) -> Result<(), StockError<String>> {
        let mut inner = self.inner.lock().unwrap();
        if inner
            .records
            .get(&claim.scope)
            .is_some_and(|(record, _)| *record == claim.pending)
        {
            inner.records.remove(&claim.scope);
        }
        Ok(())
    }
}

/// Records shared by every instance on one Redis server: `checkout:{ns}:key:<scope>`
/// holding the record's JSON, with a Redis expiry (the claim's lease, then the
/// retention).
#[cfg(feature = "redis")]
#[derive(Debug)]
pub(crate) struct RedisKeys {
    pub(crate) pool: std::sync::Arc<crate::redis_pool::RedisPool>,
}

/// `KEYS[1]` the record; `ARGV[1]` the pending record as claimed, `ARGV[2]` the finished
/// record (empty: delete), `ARGV[3]` its expiry in ms. Replaces the record only if it is
/// still the claim's. Replies 1 if replaced, else 0.
#[cfg(feature = "redis")]
const SETTLE_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) return 1 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

#[cfg(feature = "redis")]
impl RedisKeys {
    fn settle(&self, claim: &Claim, finished: Option<&Record>) -> Result<(), StockError<String>> {
        let key = self.pool.key(&format!("key:{}", claim.scope));
        let pending = serde_json::to_string(&claim.pending).expect("a record serializes");
        let finished = finished.map_or_else(String::new, |record| {
            serde_json::to_string(record).expect("a record serializes")
        });
        let script = redis::Script::new(SETTLE_LUA);
        self.pool.with(|connection| {
            script
                .key(&key)
                .arg(&pending)
                .arg(&finished)
                .arg(RETENTION.as_millis() as u64)
                .invoke::<i64>(connection)
                .map(drop)
        })
    }
}

#[cfg(feature = "redis")]
impl KeyRecords for RedisKeys {
    fn begin(
        &self,
        scope: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Begin, StockError<String>> {
        let key = self.pool.key(&format!("key:{scope}"));
        let record = pending(fingerprint);
        let value = serde_json::to_string(&record).expect("a record serializes");
        // SET NX GET (Redis 7): sets the claim if the key is free, and returns what was
        // there before in either case.
        let found: Option<String> = self.pool.with(|connection| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(lease.as_millis() as u64)
                .query(connection)
        })?;
        match found {
            None => Ok(Begin::Claimed(Claim {
                scope: scope.to_string(),
                pending: record,
            })),
            Some(found) => serde_json::from_str(&found)
                .map(Begin::Recorded)
                .map_err(|error| StockError::Unavailable {
                    reason: format!("an unreadable idempotency record: {error}"),
                }),
        }
    }

    fn finish(&self, claim: &Claim, reply: &Reply) -> Result<(), StockError<String>> {
        let finished = Record {
            reply: Some(reply.clone()),
            ..claim.pending.clone()
        };
        self.settle(claim, Some(&finished))
    }

    fn abandon(&self, claim: &Claim) -> Result<(), StockError<String>> {
        self.settle(claim, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_key_is_a_short_string() {
        assert_eq!(key_of(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            key_of(&headers("\"order-42\"")).unwrap().unwrap(),
            "order-42"
        );
        assert_eq!(key_of(&headers("order-42")).unwrap().unwrap(), "order-42");
        let long = format!("\"{}\"", "k".repeat(KEY_BYTES_MAX + 1));
        for bad in ["\"\"", "\"open", "\"a\"b\"", long.as_str()] {
            assert!(key_of(&headers(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_of_two_customers_never_meet() {
        let (a, ab) = (Customer::for_tests("a"), Customer::for_tests("ab"));
        assert_ne!(scope(&a, "bc"), scope(&ab, "c"));
        assert_eq!(scope(&a, "bc"), scope(&a, "bc"));
        // Negative control: plain concatenation would make them meet.
        assert_eq!(format!("{}{}", "a", "bc"), format!("{}{}", "ab", "c"));
    }

    #[test]
    fn a_fingerprint_is_the_merged_lines_ttl_and_wait() {
        let lines = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
            pairs.iter().map(|(s, q)| (s.to_string(), *q)).collect()
        };
        let one = fingerprint(&lines(&[("a", 1), ("b", 2), ("a", 1)]), None, None);
        assert_eq!(one, fingerprint(&lines(&[("b", 2), ("a", 2)]), None, None));
        assert_ne!(one, fingerprint(&lines(&[("a", 2), ("b", 1)]), None, None));
        assert_ne!(
            one,
            fingerprint(&lines(&[("a", 2), ("b", 2)]), Some(1), None)
        );
        assert_ne!(
            one,
            fingerprint(&lines(&[("a", 2), ("b", 2)]), None, Some(1))
        );
    }

    #[test]
    fn memory_records_claim_once_and_replay() {
        let keys = MemoryKeys::default();
        let lease = Duration::from_secs(60);
        let Begin::Claimed(claim) = keys.begin("s", "f", lease).unwrap() else {
            panic!("a free key is claimed");
        };
        assert!(matches!(
            keys.begin("s", "f", lease).unwrap(),
            Begin::Recorded(Record { reply: None, .. })
        ));
        let reply = Reply {
            status: 201,
            problem: false,
            body: "{}".into(),
        };
        keys.finish(&claim, &reply).unwrap();
        let Begin::Recorded(record) = keys.begin("s", "f", lease).unwrap() else {
            panic!("a finished key is recorded");
        };
        assert_eq!(record.reply, Some(reply));
        // An abandoned claim frees the key.
        let Begin::Claimed(other) = keys.begin("t", "f", lease).unwrap() else {
            panic!("a free key is claimed");
        };
        keys.abandon(&other).unwrap();
        assert!(matches!(
            keys.begin("t", "f", lease).unwrap(),
            Begin::Claimed(_)
        ));
        // A lapsed lease frees the key too.
        assert!(matches!(
            keys.begin("u", "f", Duration::ZERO).unwrap(),
            Begin::Claimed(_)
        ));
        assert!(matches!(
            keys.begin("u", "f", lease).unwrap(),
            Begin::Claimed(_)
        ));
    }
}
