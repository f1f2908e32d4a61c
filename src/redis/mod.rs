//! `RedisStore`: the [`StockStore`] contract on a shared Redis 7 server (feature `redis`).
//!
//! Every operation is one Lua function (`scripts/*.lua`, in one Redis function library
//! whose head is `scripts/common.lua`) that checks every line before its first write, so
//! it is atomic on the server: all or nothing, merged lines, typed errors, per-SKU
//! versions, exactly-once resolution (the first script to find a hold removes it),
//! deadlines in a sorted set, idempotency keys, low-stock crossings and statistics, as in
//! memory. Each change is also appended to a Redis stream of the namespace by the same
//! script (the transactional outbox). Waiters queue per SKU on the server, in FIFO order
//! across processes.

mod builder;
mod engine;
mod sku;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;

pub use builder::{RedisStoreBuilder, COMMAND_TIMEOUT, EVENTS_MAX, POOL_SIZE};
pub use sku::{RedisSku, SKU_KEY_BYTES_MAX};

use crate::error::StockError;
use crate::level::StockLevel;
use crate::lifecycle::clock::Clock;
use crate::lifecycle::event::{EventLine, Events, StockEvent};
use crate::options::ReserveOptions;
use crate::reservation::{Reservation, ReservationId};
use crate::stats::StoreStats;
use crate::store::{StockStore, WaitFuture, WaitingStore};
use engine::{Connector, Function, Reply, Timebase, SCRIPTS};

/// Bits of a [`ReservationId`] that count the holds of one namespace; the bits above them
/// carry the namespace's tag, so ids of different namespaces and of in-memory stores
/// (which count from 1) do not meet. 2^44 holds per namespace.
const COUNTER_BITS: u32 = 44;

/// A waiting call wakes at least this often to renew its lease on the server (a waiter
/// whose lease runs out, because its process died, leaves the queue and passes its turn).
const WAIT_SLICE: Duration = Duration::from_millis(500);

/// The stock ledger on a shared Redis server: every process that opens the same
/// namespace on the same server sees one ledger.
///
/// Every key of one store sits under the hash tag `{namespace}` (`{shop}:levels`,
/// `{shop}:holds`, `{shop}:events`, ...), so each script touches one slot and Redis Cluster
/// shards by namespace. Every operation is one atomic server-side script that validates
/// every line before its first write; the scripts are one function library run with
/// `FCALL` and loaded again when the server lacks it (flushed, or a fresh server after a
/// failover).
///
/// - **Counts** are exact integers up to [`QUANTITY_MAX`](Self::QUANTITY_MAX) (2^53 - 1,
///   the integers Lua's numbers keep exactly); past it a change is
///   [`StockError::Overflow`].
/// - **Ids** count per namespace on the server; their upper bits carry a tag of the
///   namespace, so an id of another namespace or store is unknown here.
/// - **Deadlines** are microseconds on a shared timebase: the wall clock when the store was
///   built, moved on by its [`Clock`]. Hosts sharing a server should keep their clocks in
///   step (NTP). A hold expires on `commit`/`release`/`extend` past its deadline, on
///   [`expire_due`](StockStore::expire_due), and when a `reserve` or `sell` finds stock
///   short while holds are due (those expire first, then the request is checked again).
/// - **Events** of every change go to the stream `{namespace}:events` in the same script
///   (one entry per SKU and change, one field `event` whose value is
///   `"kind id quantity on_hand reserved version SKU"`, decimal integers and the SKU's key
///   last, e.g. `"sold 0 2 98 0 7 SKU1004"`; a `low_stock` entry per crossing carries
///   available, threshold and 0 in the quantity, on hand and reserved places), trimmed
///   approximately to at least [`EVENTS_MAX`] entries; this store's own
///   [`EventSink`](crate::EventSink) gets the events of the calls made through it, after
///   the call, with no connection held.
/// - **Statistics** are the namespace's, shared by every process.
/// - **Waiting** ([`WaitingStore::reserve_timeout`]): a waiter queues per SKU on the server
///   (FIFO across processes, no barging); stock freed by any process goes to the head
///   first; a waiter that times out leaves and passes the turn on, and one whose process
///   died leaves once its lease (10 s) runs out.
///
/// # Failures
///
/// When the server cannot be reached, times out or fails, a call returns
/// [`StockError::Unavailable`]: **the call may or may not have taken effect**. Retry a
/// hold with an [`idempotency_key`](ReserveOptions::idempotency_key) so that a retry never
/// holds twice. The infallible reads answer as if the ledger were empty while the server is
/// down ([`level`](StockStore::level) is `None`, [`expire_due`](StockStore::expire_due)
/// expires nothing, [`stats`](StockStore::stats) are zero); their twins
/// [`try_level`](StockStore::try_level), [`try_expire_due`](StockStore::try_expire_due) and
/// [`try_stats`](StockStore::try_stats) return `Unavailable` instead.
///
/// # Examples
///
/// ```no_run
/// use stockledger::{RedisStore, StockStore};
///
/// let store = RedisStore::<String>::connect("redis://127.0.0.1:6379/", "shop")?;
/// let sku = "SKU1004".to_string();
/// store.restock(&sku, 3)?;
/// let hold = store.reserve(&[(sku.clone(), 2)])?; // any process may commit it
/// store.commit(hold.id())?;
/// assert_eq!(store.level(&sku).unwrap().on_hand, 1);
/// # Ok::<(), stockledger::StockError<String>>(())
/// ```
pub struct RedisStore<K> {
    /// Blocking connections with read and write timeouts.
    pool: r2d2::Pool<Connector>,
    namespace: String,
    /// `{namespace}:`, the prefix of every key.
    prefix: String,
    /// The namespace's main keys (see `scripts/common.lua`): levels, which every call
    /// declares, holds, deadlines, idempotency, retired, sequence, events, stats, waiters,
    /// unclaimed.
    keys: [String; 10],
    /// The namespace's tag in the upper bits of its ids.
    tag: u64,
    clock: Arc<dyn Clock>,
    timebase: Timebase,
    events: Events<K>,
    idempotency_retention_us: u64,
    idempotency_keys_max: usize,
    events_max: usize,
    command_timeout: Duration,
}

/// A script's refusal, before it becomes a [`StockError`] naming the SKU.
type Refused = (String, Vec<Value>);

impl<K: RedisSku> RedisStore<K> {
    /// The largest on hand (in units) one SKU can have, and the largest version: 2^53 - 1,
    /// the integers the server's Lua numbers keep exactly.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(stockledger::RedisStore::<String>::QUANTITY_MAX, (1 << 53) - 1);
    /// ```
    pub const QUANTITY_MAX: u64 = (1 << 53) - 1;

    /// Connects to the Redis server at `url` (`redis://host:port/db`) and opens the ledger
    /// `namespace` with the default settings (see [`builder`](Self::builder)).
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] when the server cannot be reached, is older than Redis
    /// 7, or `namespace` is empty or contains `{` or `}`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let store = stockledger::RedisStore::<u64>::connect("redis://127.0.0.1/", "shop")?;
    /// # Ok::<(), stockledger::StockError<u64>>(())
    /// ```
    ///
    /// # Blocking
    ///
    /// Blocks while it connects (up to the [`COMMAND_TIMEOUT`]).
    pub fn connect(url: &str, namespace: &str) -> Result<Self, StockError<K>> {
        Self::builder(url, namespace).build()
    }

    /// A builder for a store on the server at `url` in `namespace`: pool size, command
    /// timeout, clock, event sink, idempotency settings, stream cap.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use stockledger::RedisStore;
    ///
    /// let store = RedisStore::<String>::builder("redis://127.0.0.1/", "shop")
    ///     .pool_size(32)
    ///     .command_timeout(Duration::from_secs(2))
    ///     .build()?;
    /// # Ok::<(), stockledger::StockError<String>>(())
    /// ```
    pub fn builder(url: &str, namespace: &str) -> RedisStoreBuilder<K> {
        RedisStoreBuilder::new(url, namespace)
    }

    /// The namespace this store keeps its keys under (inside the hash tag `{namespace}`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let store = stockledger::RedisStore::<u64>::connect("redis://127.0.0.1/", "shop")?;
    /// assert_eq!(store.namespace(), "shop");
    /// # Ok::<(), stockledger::StockError<u64>>(())
    /// ```
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The name of the stream every change of this namespace is appended to
    /// (`{namespace}:events`), for consumers (`XREAD`, `XRANGE`, consumer groups).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let store = stockledger::RedisStore::<u64>::connect("redis://127.0.0.1/", "shop")?;
    /// assert_eq!(store.events_stream(), "{shop}:events");
    /// # Ok::<(), stockledger::StockError<u64>>(())
    /// ```
    pub fn events_stream(&self) -> &str {
        &self.keys[6]
    }

    /// How many waiters are queued on `sku` (across every process).
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] when the server cannot be reached or fails, and
    /// [`StockError::InvalidSku`] for a SKU longer than [`SKU_KEY_BYTES_MAX`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let store = stockledger::RedisStore::<u64>::connect("redis://127.0.0.1/", "shop")?;
    /// assert_eq!(store.queued(&7)?, 0);
    /// # Ok::<(), stockledger::StockError<u64>>(())
    /// ```
    ///
    /// # Blocking
    ///
    /// One round trip to the server.
    pub fn queued(&self, sku: &K) -> Result<usize, StockError<K>> {
        let mut key = format!("{}queue:", self.prefix).into_bytes();
        key.extend(self.key_of(sku)?);
        let length: usize = self.command(redis::cmd("LLEN").arg(key))?;
        Ok(length)
    }

    /// The bytes of `sku`'s key.
    fn key_of(&self, sku: &K) -> Result<Vec<u8>, StockError<K>> {
        let key = sku.to_redis_key();
        if key.len() > SKU_KEY_BYTES_MAX {
            return Err(StockError::InvalidSku(sku.clone()));
        }
        Ok(key)
    }

    /// Runs one plain command on a pooled connection.
    fn command<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, StockError<K>> {
        let mut link = self.pool.get().map_err(unavailable)?;
        let answer = command.query(&mut link.connection);
        finish(&mut link, answer)
    }

    /// Runs the library function `function` (one of [`SCRIPTS`]', under the name whose
    /// reply carries the events when this store has a sink) with its one declared key (the levels hash, which routes the call to the namespace's slot; the
    /// scripts name the other keys after it), the common head and `args`.
    fn run(&self, function: &Function, args: &[Vec<u8>]) -> Result<Reply, StockError<K>> {
        let mut fcall = redis::cmd("FCALL");
        fcall
            .arg(function.name(self.events.enabled()))
            .arg(1)
            .arg(&self.keys[0])
            .arg(self.timebase.now_us(self.clock.now()))
            .arg(self.events_max);
        for arg in args {
            fcall.arg(arg.as_slice());
        }
        let mut link = self.pool.get().map_err(unavailable)?;
        let answer = engine::call(&mut link.connection, &fcall);
        let value = finish(&mut link, answer)?;
        drop(link);
        Reply::parse(value).map_err(|reason| StockError::Unavailable { reason })
    }

    /// The script arguments of merged `lines`: SKU key and quantity of each (the scripts
    /// take the lines from their position to the end).
    fn line_args(&self, lines: &[(K, u64)]) -> Result<Vec<Vec<u8>>, StockError<K>> {
        let mut args = Vec::with_capacity(2 * lines.len());
        for (sku, quantity) in lines {
            args.push(self.key_of(sku)?);
            args.push(quantity.to_string().into_bytes());
        }
        Ok(args)
    }

    /// The error a script's refusal of merged `lines` stands for.
    fn refusal(&self, (status, payload): Refused, lines: &[(K, u64)]) -> StockError<K> {
        let line = engine::number(payload.first())
            .ok()
            .and_then(|index| usize::try_from(index).ok())
            .and_then(|index| lines.get(index.wrapping_sub(1)));
        match (status.as_str(), line) {
            ("unknown_sku", Some((sku, _))) => StockError::UnknownSku(sku.clone()),
            ("overflow", Some((sku, _))) => StockError::Overflow { sku: sku.clone() },
            ("insufficient", Some((sku, requested))) => StockError::InsufficientStock {
                sku: sku.clone(),
                requested: *requested,
                available: engine::number(payload.get(1)).unwrap_or(0),
            },
            _ => StockError::Unavailable {
                reason: engine::malformed(&format!("unexpected status {status:?}")),
            },
        }
    }

    /// The id the server's counter `counter` stands for in this namespace.
    fn id_of(&self, counter: u64) -> ReservationId {
        ReservationId::from_u64(self.tag << COUNTER_BITS | counter)
    }

    /// The server's counter of `id`; `None` for an id of another namespace or store.
    fn counter_of(&self, id: ReservationId) -> Option<u64> {
        (id.get() >> COUNTER_BITS == self.tag).then_some(id.get() & ((1 << COUNTER_BITS) - 1))
    }

    /// A hold from its reply `{id, deadline_us, SKU, quantity, ...}`.
    fn hold_of(&self, reply: &[Value]) -> Result<Reservation<K>, StockError<K>> {
        let malformed = |reason: String| StockError::Unavailable { reason };
        let counter = engine::number(reply.first()).map_err(malformed)?;
        let deadline_us = engine::number(reply.get(1)).map_err(malformed)?;
        let mut lines = Vec::with_capacity(reply.len().saturating_sub(2) / 2);
        for pair in reply.get(2..).unwrap_or_default().chunks(2) {
            let key = engine::bytes(pair.first()).map_err(malformed)?;
            let sku = K::from_redis_key(key).ok_or_else(|| StockError::Unavailable {
                reason: format!(
                    "the namespace holds the SKU key {:?}, which is not a {}",
                    String::from_utf8_lossy(key),
                    std::any::type_name::<K>()
                ),
            })?;
            lines.push((sku, engine::number(pair.get(1)).map_err(malformed)?));
        }
        Ok(Reservation::from_parts(
            self.id_of(counter),
            lines,
            self.timebase.instant(deadline_us),
        ))
    }

    /// Builds the events of `flat` 7-tuples (see `scripts/common.lua`) and delivers them
    /// to the sink; `expires_at` is the deadline of a `Reserved` event among them. Lines
    /// whose SKU key is not a `K` are left out.
    fn deliver(&self, flat: &[Value], expires_at: Option<Instant>) {
        if !self.events.enabled() || flat.is_empty() {
            return;
        }
        let mut events: Vec<StockEvent<K>> = Vec::new();
        let mut open: Option<(String, u64)> = None;
        for tuple in flat.chunks(7) {
            let field = |index: usize| engine::number(tuple.get(index)).unwrap_or(0);
            let Ok(kind) = engine::text(tuple.first()) else {
                continue;
            };
            let Some(sku) = engine::bytes(tuple.get(2)).ok().and_then(K::from_redis_key) else {
                continue;
            };
            if kind == "low_stock" {
                events.push(StockEvent::LowStock {
                    sku,
                    available: field(3),
                    threshold: field(4),
                    version: field(6),
                });
                open = None;
                continue;
            }
            let line = EventLine {
                sku,
                quantity: field(3),
                level: StockLevel {
                    on_hand: field(4),
                    reserved: field(5),
                    version: field(6),
                },
            };
            let group = (kind, field(1));
            if open.as_ref() == Some(&group) {
                if let Some(
                    StockEvent::Reserved { lines, .. }
                    | StockEvent::Committed { lines, .. }
                    | StockEvent::Released { lines, .. }
                    | StockEvent::Expired { lines, .. }
                    | StockEvent::Sold { lines },
                ) = events.last_mut()
                {
                    lines.push(line);
                }
                continue;
            }
            let id = self.id_of(group.1);
            let lines = vec![line];
            let event = match group.0.as_str() {
                "restocked" => StockEvent::Restocked {
                    line: lines.into_iter().next().expect("one line"),
                },
                "reserved" => StockEvent::Reserved {
                    id,
                    lines,
                    expires_at,
                },
                "committed" => StockEvent::Committed { id, lines },
                "released" => StockEvent::Released { id, lines },
                "expired" => StockEvent::Expired { id, lines },
                _ => StockEvent::Sold { lines },
            };
            events.push(event);
            open = Some(group);
        }
        // A low-stock event follows the whole change that caused it, as in memory.
        let (mut changes, lows): (Vec<_>, Vec<_>) = events
            .into_iter()
            .partition(|event| !matches!(event, StockEvent::LowStock { .. }));
        changes.extend(lows);
        self.events.deliver(&changes);
    }

    /// The deadline in microseconds of a hold given `ttl` now; 0 for none (no TTL, or one
    /// too long to represent).
    fn deadline_us(&self, ttl: Option<Duration>) -> u64 {
        ttl.and_then(|ttl| self.clock.now().checked_add(ttl))
            .map_or(0, |deadline| self.timebase.deadline_us(deadline))
    }

    /// `commit` (`change` "commit") or `release` ("release").
    fn resolve(&self, id: ReservationId, change: &str) -> Result<Reservation<K>, StockError<K>> {
        let counter = self
            .counter_of(id)
            .ok_or(StockError::UnknownReservation(id))?;
        let reply = self.run(
            &SCRIPTS.resolve,
            &[counter.to_string().into_bytes(), change.as_bytes().to_vec()],
        )?;
        self.settled(id, reply)
    }

    /// The answer of a script that resolved (or expired) the hold `id`.
    fn settled(&self, id: ReservationId, reply: Reply) -> Result<Reservation<K>, StockError<K>> {
        match reply.status.as_str() {
            "unknown_reservation" => Err(StockError::UnknownReservation(id)),
            "expired" | "ok" => {
                self.deliver(&reply.events, None);
                let hold = self.hold_of(&reply.payload)?;
                if reply.status == "expired" {
                    Err(StockError::Expired(id))
                } else {
                    Ok(hold)
                }
            }
            status => Err(self.refusal((status.to_string(), reply.payload), &[])),
        }
    }

    /// Expires every due hold, batch by batch.
    fn expire_all_due(&self) -> Result<Vec<Reservation<K>>, StockError<K>> {
        let mut expired = Vec::new();
        loop {
            let reply = self.run(
                &SCRIPTS.expire_due,
                &[
                    self.idempotency_retention_us.to_string().into_bytes(),
                    self.idempotency_keys_max.to_string().into_bytes(),
                ],
            )?;
            self.deliver(&reply.events, None);
            let batch = reply.payload.len();
            for hold in &reply.payload {
                let Value::Array(hold) = hold else {
                    return Err(StockError::Unavailable {
                        reason: engine::malformed("an expired hold is not an array"),
                    });
                };
                expired.push(self.hold_of(hold)?);
            }
            // A batch smaller than the scripts' BATCH_MAX (256) leaves nothing due.
            if batch < 256 {
                return Ok(expired);
            }
        }
    }

    /// Finishes a waiting reservation of merged `lines` the server granted: the hold and
    /// its `Reserved` event with the levels `payload` gives per line.
    fn granted(
        &self,
        lines: Vec<(K, u64)>,
        payload: &[Value],
    ) -> Result<Reservation<K>, StockError<K>> {
        let malformed = |reason: String| StockError::Unavailable { reason };
        let counter = engine::number(payload.first()).map_err(malformed)?;
        let hold = Reservation::from_parts(self.id_of(counter), lines, None);
        if self.events.enabled() {
            let mut flat = Vec::new();
            for ((sku, quantity), level) in hold.lines().iter().zip(payload[1..].chunks(3)) {
                flat.extend([
                    Value::BulkString(b"reserved".to_vec()),
                    Value::Int(i64::try_from(counter).unwrap_or(i64::MAX)),
                    Value::BulkString(sku.to_redis_key()),
                    Value::Int(i64::try_from(*quantity).unwrap_or(i64::MAX)),
                ]);
                flat.extend(level.iter().cloned());
            }
            self.deliver(&flat, None);
        }
        Ok(hold)
    }

    /// Waits for the queued waiter `counter` until `deadline`.
    fn wait(
        &self,
        counter: u64,
        lines: Vec<(K, u64)>,
        deadline: Option<Instant>,
    ) -> Result<Reservation<K>, StockError<K>> {
        let wake = format!("{}wake:{counter}", self.prefix);
        let slice_max = WAIT_SLICE.min(self.command_timeout / 2);
        loop {
            let remaining =
                deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
            let action = if remaining == Some(Duration::ZERO) {
                "cancel"
            } else {
                let slice = remaining.unwrap_or(slice_max).min(slice_max);
                let seconds = format!("{:.3}", slice.as_secs_f64().max(0.001));
                let _: Value = self.command(redis::cmd("BLPOP").arg(&wake).arg(seconds))?;
                "poll"
            };
            let reply = self.run(
                &SCRIPTS.wait_poll,
                &[counter.to_string().into_bytes(), action.as_bytes().to_vec()],
            )?;
            self.deliver(&reply.events, None);
            match reply.status.as_str() {
                "granted" => return self.granted(lines, &reply.payload),
                "queued" => continue,
                _ => return Err(StockError::Timeout),
            }
        }
    }
}

/// The answer of one call on `link`; a failure below the script level breaks the link.
fn finish<T, K>(
    link: &mut engine::Link,
    answer: redis::RedisResult<T>,
) -> Result<T, StockError<K>> {
    answer.map_err(|error| {
        if !matches!(error.kind(), redis::ErrorKind::Server(_)) {
            link.broken = true;
        }
        unavailable(error)
    })
}

/// The [`StockError::Unavailable`] of an engine failure.
fn unavailable<K>(error: impl fmt::Display) -> StockError<K> {
    StockError::Unavailable {
        reason: error.to_string(),
    }
}

/// A level from its packed form: on hand, reserved, version, threshold and waiters queued
/// as five little-endian doubles holding integers (`struct.pack('<ddddd', ...)` in the
/// scripts).
fn parse_level(packed: &[u8]) -> Option<StockLevel> {
    if packed.len() != 40 {
        return None;
    }
    let mut fields = packed.chunks_exact(8).map(|bytes| {
        let value = f64::from_le_bytes(bytes.try_into().ok()?);
        // Integers up to 2^53 are exact in a double; anything else is not a level.
        (value.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(&value))
            .then_some(value as u64)
    });
    let (Some(Some(on_hand)), Some(Some(reserved)), Some(Some(version))) =
        (fields.next(), fields.next(), fields.next())
    else {
        return None;
    };
    Some(StockLevel {
        on_hand,
        reserved,
        version,
    })
}

impl<K: RedisSku> StockStore<K> for RedisStore<K> {
    fn restock(&self, sku: &K, qty: u64) -> Result<StockLevel, StockError<K>> {
        if qty == 0 {
            return Err(StockError::InvalidQuantity { sku: sku.clone() });
        }
        let reply = self.run(
            &SCRIPTS.restock,
            &[self.key_of(sku)?, qty.to_string().into_bytes()],
        )?;
        if reply.status != "ok" {
            return Err(StockError::Overflow { sku: sku.clone() });
        }
        let field = |index| engine::number(reply.payload.get(index));
        let level = (|| {
            Ok::<_, String>(StockLevel {
                on_hand: field(0)?,
                reserved: field(1)?,
                version: field(2)?,
            })
        })()
        .map_err(|reason| StockError::Unavailable { reason })?;
        self.deliver(&reply.events, None);
        Ok(level)
    }

    fn level(&self, sku: &K) -> Option<StockLevel> {
        self.try_level(sku).ok().flatten()
    }

    fn try_level(&self, sku: &K) -> Result<Option<StockLevel>, StockError<K>> {
        let packed: Option<Vec<u8>> =
            self.command(redis::cmd("HGET").arg(&self.keys[0]).arg(self.key_of(sku)?))?;
        packed
            .map(|packed| {
                parse_level(&packed).ok_or_else(|| StockError::Unavailable {
                    reason: engine::malformed("a level"),
                })
            })
            .transpose()
    }

    fn reserve_with(
        &self,
        lines: &[(K, u64)],
        options: &ReserveOptions,
    ) -> Result<Reservation<K>, StockError<K>> {
        let lines = crate::lines::merge(lines)?;
        let key = options.idempotency_key.as_deref().unwrap_or("");
        if options.idempotency_key.is_some() {
            crate::lifecycle::idempotency::validate_key(key)?;
        }
        let deadline_us = self.deadline_us(options.ttl);
        let mut args = vec![
            deadline_us.to_string().into_bytes(),
            key.as_bytes().to_vec(),
        ];
        if options.idempotency_key.is_some() {
            // Only a keyed hold forgets old keys: the others do not send the settings.
            args.push(self.idempotency_retention_us.to_string().into_bytes());
            args.push(self.idempotency_keys_max.to_string().into_bytes());
        }
        args.extend(self.line_args(&lines)?);
        let reply = self.run(&SCRIPTS.reserve, &args)?;
        match reply.status.as_str() {
            "ok" => {
                // The server sends the new hold's id only: its lines and deadline are the
                // request's.
                let counter = engine::number(reply.payload.first())
                    .map_err(|reason| StockError::Unavailable { reason })?;
                let hold = Reservation::from_parts(
                    self.id_of(counter),
                    lines.into_owned(),
                    self.timebase.instant(deadline_us),
                );
                self.deliver(&reply.events, hold.expires_at());
                Ok(hold)
            }
            "replay" => self.hold_of(&reply.payload),
            "idempotency_conflict" => {
                let counter = engine::number(reply.payload.first())
                    .map_err(|reason| StockError::Unavailable { reason })?;
                Err(StockError::IdempotencyConflict {
                    key: key.to_string(),
                    id: self.id_of(counter),
                })
            }
            status => {
                self.deliver(&reply.events, None);
                Err(self.refusal((status.to_string(), reply.payload), &lines))
            }
        }
    }

    fn commit(&self, id: ReservationId) -> Result<Reservation<K>, StockError<K>> {
        self.resolve(id, "commit")
    }

    fn release(&self, id: ReservationId) -> Result<Reservation<K>, StockError<K>> {
        self.resolve(id, "release")
    }

    fn extend(&self, id: ReservationId, ttl: Duration) -> Result<Reservation<K>, StockError<K>> {
        let counter = self
            .counter_of(id)
            .ok_or(StockError::UnknownReservation(id))?;
        let deadline = self.deadline_us(Some(ttl));
        let reply = self.run(
            &SCRIPTS.extend,
            &[
                counter.to_string().into_bytes(),
                deadline.to_string().into_bytes(),
            ],
        )?;
        self.settled(id, reply)
    }

    fn expire_due(&self) -> Vec<Reservation<K>> {
        self.try_expire_due().unwrap_or_default()
    }

    fn try_expire_due(&self) -> Result<Vec<Reservation<K>>, StockError<K>> {
        self.expire_all_due()
    }

    fn set_low_stock_threshold(&self, sku: &K, threshold: u64) -> Result<(), StockError<K>> {
        // Available never passes QUANTITY_MAX, so a larger threshold acts as 2^53.
        let threshold = threshold.min(Self::QUANTITY_MAX + 1);
        let reply = self.run(
            &SCRIPTS.threshold,
            &[self.key_of(sku)?, threshold.to_string().into_bytes()],
        )?;
        match reply.status.as_str() {
            "ok" => Ok(()),
            _ => Err(StockError::UnknownSku(sku.clone())),
        }
    }

    fn stats(&self) -> StoreStats {
        self.try_stats().unwrap_or_default()
    }

    fn try_stats(&self) -> Result<StoreStats, StockError<K>> {
        let counts: Vec<(String, u64)> = self.command(redis::cmd("HGETALL").arg(&self.keys[7]))?;
        let mut stats = StoreStats::default();
        for (name, count) in counts {
            let field = match name.as_str() {
                "reserves" => &mut stats.reserves,
                "commits" => &mut stats.commits,
                "releases" => &mut stats.releases,
                "expirations" => &mut stats.expirations,
                "extensions" => &mut stats.extensions,
                "replays" => &mut stats.replays,
                "refusals" => &mut stats.refusals,
                "waits" => &mut stats.waits,
                "timeouts" => &mut stats.timeouts,
                _ => continue,
            };
            *field = count;
        }
        Ok(stats)
    }

    fn sell(&self, lines: &[(K, u64)]) -> Result<(), StockError<K>> {
        let lines = crate::lines::merge(lines)?;
        let reply = self.run(&SCRIPTS.sell, &self.line_args(&lines)?)?;
        self.deliver(&reply.events, None);
        match reply.status.as_str() {
            "ok" => Ok(()),
            status => Err(self.refusal((status.to_string(), reply.payload), &lines)),
        }
    }

    fn quantity_max(&self) -> u64 {
        Self::QUANTITY_MAX
    }
}

impl<K: RedisSku> WaitingStore<K> for RedisStore<K> {
    /// Holds every line, waiting up to `timeout` in the SKUs' server-side queues (FIFO
    /// across every process, no barging), as [`WaitingStore::reserve_timeout_with`]
    /// describes, with two limits of this store for now:
    ///
    /// - a TTL is given to the hold once it is granted (an [`extend`](StockStore::extend)
    ///   right after the grant, so it runs from the grant); if that fails, the hold is
    ///   released (best effort) and the error returned;
    /// - a request with an idempotency key does **not wait**: it is answered at once, as
    ///   [`reserve_with`](StockStore::reserve_with) answers it (a replay, a new hold, or
    ///   [`StockError::InsufficientStock`]), so that the key stays exact.
    ///
    /// # Errors
    ///
    /// Those of [`WaitingStore::reserve_timeout_with`], [`StockError::InvalidSku`] for a
    /// SKU longer than [`SKU_KEY_BYTES_MAX`], [`StockError::InsufficientStock`] for a keyed
    /// request short of stock, and [`StockError::Unavailable`] when the server fails
    /// meanwhile: lines held then go back once the waiter's lease runs out.
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread up to `timeout`, in slices of at most half a second
    /// (`BLPOP` on the waiter's wake-up list), renewing its lease after each.
    fn reserve_timeout_with(
        &self,
        lines: &[(K, u64)],
        timeout: Duration,
        options: &ReserveOptions,
    ) -> Result<Reservation<K>, StockError<K>> {
        if options.idempotency_key.is_some() {
            return self.reserve_with(lines, options);
        }
        let hold = self.wait_for(lines, timeout)?;
        let Some(ttl) = options.ttl else {
            return Ok(hold);
        };
        self.extend(hold.id(), ttl).inspect_err(|_| {
            let _ = self.release(hold.id());
        })
    }

    /// **Does not wait yet** on this store: the future answers on its first poll like
    /// [`reserve_timeout_with`](Self::reserve_timeout_with) with a zero timeout (a hold
    /// when the stock is there and nobody queues before it, else
    /// [`StockError::Timeout`]). Its waits block on `BLPOP`, which an executor's poll must
    /// not do; an async wake-up path is future work.
    ///
    /// # Errors
    ///
    /// Those of [`reserve_timeout_with`](Self::reserve_timeout_with).
    ///
    /// # Blocking
    ///
    /// Its one poll makes the server round trips of a zero-timeout wait.
    fn reserve_wait<'a>(
        &'a self,
        lines: &[(K, u64)],
        options: &ReserveOptions,
    ) -> WaitFuture<'a, K> {
        let answer = self.reserve_timeout_with(lines, Duration::ZERO, options);
        Box::pin(std::future::ready(answer))
    }
}

impl<K: RedisSku> RedisStore<K> {
    /// The waiting hold of [`reserve_timeout_with`](WaitingStore::reserve_timeout_with)
    /// without options.
    fn wait_for(
        &self,
        lines: &[(K, u64)],
        timeout: Duration,
    ) -> Result<Reservation<K>, StockError<K>> {
        let lines = crate::lines::merge(lines)?.into_owned();
        let deadline = Instant::now().checked_add(timeout);
        let reply = self.run(&SCRIPTS.wait_begin, &self.line_args(&lines)?)?;
        self.deliver(&reply.events, None);
        match reply.status.as_str() {
            "granted" => self.granted(lines, &reply.payload),
            "queued" => {
                let counter = engine::number(reply.payload.first())
                    .map_err(|reason| StockError::Unavailable { reason })?;
                self.wait(counter, lines, deadline)
            }
            status => Err(self.refusal((status.to_string(), reply.payload), &lines)),
        }
    }
}

impl<K> fmt::Debug for RedisStore<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.pool.state();
        f.debug_struct("RedisStore")
            .field("namespace", &self.namespace)
            .field("connections", &state.connections)
            .field("idle_connections", &state.idle_connections)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}
