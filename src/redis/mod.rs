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
mod cluster;
mod engine;
mod sku;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;

pub use builder::{RedisStoreBuilder, EVENTS_MAX};
pub use cluster::{RedisCluster, FAILOVER_TIMEOUT};
pub use engine::{COMMAND_TIMEOUT, POOL_SIZE};
pub use sku::{RedisSku, SKU_KEY_BYTES_MAX};

use crate::error::StockError;
use crate::level::StockLevel;
use crate::lifecycle::clock::Clock;
use crate::lifecycle::event::{EventLine, Events, StockEvent};
use crate::options::ReserveOptions;
use crate::reservation::{HoldOutcome, Reservation, ReservationId};
use crate::stats::StoreStats;
use crate::store::{StockStore, WaitFuture, WaitingStore};
use engine::{Connector, Function, Reply, Timebase, SCRIPTS};

/// The top bit, set in every id a `RedisStore` draws: the other 63 bits are random, and
/// the in-memory stores' ids (counted from 1) never reach it.
const ID_BIT: u64 = 1 << 63;

/// How many times a call draws a new id when the server finds the drawn one taken (a
/// chance of about one in 2^63 per open hold) before it gives up with `Unavailable`.
const ID_DRAWS_MAX: usize = 4;

/// How long a waiter's lease lasts by default: a waiter whose process died (or lost the
/// server) for this long leaves its queue and gives back every line it held, granted or
/// not, on the next `expire_due` or call that serves a queue.
pub(crate) const WAIT_LEASE: Duration = Duration::from_secs(10);

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
/// On a Redis Cluster, build the store with [`RedisCluster::store`]: it talks to the
/// primary of its namespace's slot, follows failovers and slot migrations without being
/// rebuilt, and shares the handle's pools with the other namespaces' stores.
/// [`RedisStore::builder`] refuses a cluster node.
///
/// - **Counts** are exact integers up to [`QUANTITY_MAX`](Self::QUANTITY_MAX) (2^53 - 1,
///   the integers Lua's numbers keep exactly); past it a change is
///   [`StockError::Overflow`].
/// - **Ids** are 64-bit numbers whose top bit is set and whose other 63 bits the store
///   draws from the operating system's random source (`getrandom`) for every hold; the
///   script that opens the hold checks that no open hold has it (and a waiter's id against
///   the waiters too) and the store draws again if one has. Nothing is counted on the
///   server, so a restart from an older snapshot or an asynchronous failover cannot make
///   it issue an id again: a new id meets one of `n` ids the server lost with a chance of
///   `n / 2^63`. The same bits make ids unguessable and keep namespaces apart: a client
///   that tries `g` ids against a namespace with `h` open holds finds one with a chance of
///   at most `g * h / 2^63` (10^9 tries against 10^6 open holds: about 1 in 10,000), and an
///   id of one namespace is an open hold of another on the same server only by that same
///   chance (otherwise [`StockError::UnknownReservation`]). In-memory stores count their
///   ids from 1, below the top bit: theirs are never a `RedisStore`'s. The ids pass 2^53:
///   a JSON reader that keeps numbers as doubles (JavaScript's) must read them as big
///   integers.
/// - **Deadlines** are microseconds on a shared timebase: the wall clock when the store was
///   built, moved on by its [`Clock`]. Hosts sharing a server should keep their clocks in
///   step (NTP). A hold expires on `commit`/`release`/`extend` past its deadline, on
///   [`expire_due`](StockStore::expire_due), and when a `reserve` or `sell` finds stock
///   short while holds are due (those expire first, then the request is checked again).
/// - **Events** of every change go to the stream `{namespace}:events` in the same script
///   (the transactional outbox; one entry per SKU and change, one field `event` whose
///   value is `"kind id quantity on_hand reserved version SKU"`, decimal integers and the
///   SKU's key last, e.g. `"reserved 9800308112334530441 2 98 2 7 SKU1004"`). `kind` is
///   `restocked`, `reserved`, `committed`, `released`, `expired`, `sold` or `low_stock`;
///   `id` is the hold's public id, the number a [`ReservationId`] holds (what
///   [`ReservationId::get`] returns and what it serializes to), 0 for a sale, a restock and
///   a crossing; a `low_stock` entry per crossing carries available, threshold and 0 in
///   the quantity, on hand and reserved places. The stream shows the holds callers
///   received: a waiting hold's `reserved` entries go out when its waiter picks it up
///   (with the levels each of its takes left), and a waiter that timed out, or whose
///   lease ran out, leaves no entry (its takes and give-backs move the counts and the
///   version, as in memory, where a timed-out waiter sends no event either). The stream
///   is trimmed approximately to at least [`EVENTS_MAX`] entries; this store's own
///   [`EventSink`](crate::EventSink) gets the events of the calls made through it, after
///   the call, with no connection held. Parsing an entry:
///
///   ```
///   use stockledger::ReservationId;
///
///   let event = "reserved 9800308112334530441 2 98 2 7 SKU 1004"; // the entry's `event`
///   let mut fields = event.splitn(7, ' ');
///   let kind = fields.next().unwrap();
///   let numbers: Vec<u64> = fields.by_ref().take(5).map(|n| n.parse().unwrap()).collect();
///   let sku = fields.next().unwrap(); // the rest: a SKU may hold spaces
///   let id = (numbers[0] != 0).then(|| ReservationId::from_u64(numbers[0]));
///   assert_eq!((kind, sku), ("reserved", "SKU 1004"));
///   assert_eq!(id.map(ReservationId::get), Some(9_800_308_112_334_530_441));
///   let (quantity, on_hand, reserved, version) = (numbers[1], numbers[2], numbers[3], numbers[4]);
///   assert_eq!((quantity, on_hand, reserved, version), (2, 98, 2, 7));
///   ```
/// - **Statistics** are the namespace's, shared by every process.
/// - **Waiting** ([`WaitingStore::reserve_timeout`]): a waiter queues per SKU on the server
///   (FIFO across processes, no barging); stock freed by any process goes to the head
///   first; a waiter that times out leaves and passes the turn on. A grant is final only
///   once its waiter has it: the waiter's own call picks it up, and the hold opens with
///   its deadline in that call. A waiter whose process died (or that lost the server)
///   renews no lease; once its lease ([`wait_lease`](RedisStoreBuilder::wait_lease), 10 s
///   by default) has run out, [`expire_due`](StockStore::expire_due) (and so the
///   [`Reaper`](crate::Reaper)), or any call that serves a queue, gives back every line it
///   held, granted or not, whatever queue it sits in. A waiter may wait for at most its
///   SKU's on hand plus [`wait_units_max`](RedisStoreBuilder::wait_units_max) units
///   ([`WAIT_UNITS_MAX`](Self::WAIT_UNITS_MAX) by default, as on
///   [`MonitorStore`](crate::MonitorStore)); a larger request is
///   [`StockError::WaitTooLarge`] at once, before it queues.
///
/// # Failures
///
/// Faults are normal here: a reply can be lost, a connection cut, a primary fail over.
/// Every mutating call carries a request id the store makes (random per store, counted per
/// call); its script records its answer under that id for
/// [`REQUEST_RETENTION`](Self::REQUEST_RETENTION). When a call's connection fails before
/// its answer arrives, the store sends the same call once more on a fresh connection: a
/// call that did run answers with its recorded answer (it is never applied twice), one
/// that did not runs now. Every script declares every key it touches and refuses before
/// its first write, so a refused call (or one a cluster stops) changes nothing: that
/// includes a key another program overwrote with another type (checked once per namespace
/// and load of the scripts, then answered `Unavailable` naming the key) and a server out of
/// memory (the scripts are refused whole, never stopped midway).
///
/// When the resend fails too (the server cannot be reached, times out or fails), a call
/// returns [`StockError::Unavailable`]: **the call may or may not have taken effect**.
/// Retry a hold with an [`idempotency_key`](ReserveOptions::idempotency_key) so that a
/// retry never holds twice. A hold **without** a key whose `reserve` returned
/// `Unavailable` is nobody's, yet the script may have opened it: the store drew its id and
/// made the request, so its next call the server answers aborts that request (an attempt
/// still on its way then opens nothing) and releases the hold (presumed abort), and no hold
/// is left without an owner, TTL or not. A reply the store does not expect (of the wrong shape) is
/// `Unavailable` too, with its text, never a panic.
///
/// The infallible reads answer as if the ledger were empty while the server is down:
/// [`level`](StockStore::level) answers `None` both for a SKU the ledger does not know
/// **and** for a server it cannot reach, [`reservation`](StockStore::reservation) `None`
/// for an unknown hold and a server error alike, [`expire_due`](StockStore::expire_due)
/// expires nothing, [`stats`](StockStore::stats) are zero. To tell a missing SKU from an
/// outage, use their twins [`try_level`](StockStore::try_level),
/// [`try_reservation`](Self::try_reservation),
/// [`try_expire_due`](StockStore::try_expire_due) and [`try_stats`](StockStore::try_stats),
/// which return `Unavailable` instead.
///
/// # Blocking, and async code
///
/// Every call **blocks the calling thread** for at least one network round trip (up to the
/// [`command_timeout`](RedisStoreBuilder::command_timeout), twice with the resend), and
/// [`reserve_timeout`](WaitingStore::reserve_timeout) blocks up to its timeout. In async
/// code, run the calls on the runtime's blocking pool, never on an executor thread: with
/// tokio, `tokio::task::spawn_blocking(move || store.reserve(&lines))` with the store in an
/// `Arc`. The checkout service example (`examples/checkout_service`, `App::blocking`) does
/// so for every call, its waits included. [`reserve_wait`](WaitingStore::reserve_wait)
/// does not wait on this store (see there).
///
/// ```no_run
/// use std::sync::Arc;
/// use stockledger::{RedisStore, StockStore};
///
/// # async fn hold(store: Arc<RedisStore<String>>) -> Result<(), Box<dyn std::error::Error>> {
/// let lines = vec![("SKU1004".to_string(), 1)];
/// let hold = tokio::task::spawn_blocking(move || store.reserve(&lines)).await??;
/// # let _ = hold;
/// # Ok(())
/// # }
/// ```
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
    /// The connections: to one server, or to the primary of the namespace's slot.
    wire: Wire,
    /// `WAIT <replicas> <timeout ms>` after every change, when set (see
    /// [`RedisStoreBuilder::wait_replicas`]).
    wait_replicas: Option<(u32, u64)>,
    namespace: String,
    /// The namespace's keys, which every call declares (see `scripts/common.lua`): levels,
    /// holds, deadlines, idempotency, retired, sequence, events, stats, waiters, leases,
    /// queues, wakes.
    keys: [String; 12],
    /// `<16 random hex digits>-`: this store's request ids, then a count.
    request_prefix: String,
    /// `{namespace}:requests:`: the hashes of the recorded answers, then the second.
    requests_prefix: String,
    /// The count of the last request id.
    requests: AtomicU64,
    /// Holds without an idempotency key whose `reserve` returned `Unavailable`: no caller
    /// has them; the next call releases them (see [`InDoubt`]).
    in_doubt: InDoubt,
    /// A waiter's lease, in microseconds.
    wait_lease_us: u64,
    /// How many units beyond a SKU's on hand one waiter may wait for.
    wait_units_max: u64,
    clock: Arc<dyn Clock>,
    timebase: Timebase,
    events: Events<K>,
    idempotency_retention_us: u64,
    idempotency_keys_max: usize,
    events_max: usize,
    command_timeout: Duration,
}

/// `prefix` then the decimal digits of `n`, in one allocation (`format!` costs about a
/// thousand instructions a call more, callgrind).
fn decimal_after(prefix: &str, n: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n);
    let mut text = String::with_capacity(prefix.len() + digits.len());
    text.push_str(prefix);
    text.push_str(digits);
    text
}

/// The ids of holds without an idempotency key whose `reserve` returned
/// [`StockError::Unavailable`]: the script may have opened the hold (its reply was lost,
/// and so was the resend's), and then no caller has it and, without a TTL, nothing would
/// ever give its units back. The store drew the id and made the request, so it knows both:
/// its next answered call aborts the request (records an answer under its request id, so
/// that an attempt still on its way finds it and opens nothing) and then releases the hold
/// (a hold that was never opened answers "unknown", which is fine).
/// This is presumed abort, as in two-phase commit (Gray and Reuter, *Transaction
/// Processing*, 1993): an outcome the caller never learned is undone. A keyed hold is not
/// released: its caller retries with the key and gets it.
#[derive(Debug, Default)]
pub(crate) struct InDoubt {
    /// Whether `ids` may hold any: one load on every call, the lock only when set.
    any: std::sync::atomic::AtomicBool,
    /// Each hold's id and the request of its `reserve`.
    ids: crate::sync::Mutex<Vec<(ReservationId, Request)>>,
}

/// One call's request: the requests hash it is recorded in, its id, and the store's time
/// when it was made (us).
#[derive(Debug, Clone)]
pub(crate) struct Request {
    now_us: u64,
    requests: String,
    id: String,
}

impl InDoubt {
    fn push(&self, entry: (ReservationId, Request)) {
        self.ids.lock().push(entry);
        self.any.store(true, Ordering::Release);
    }

    /// Takes every entry (none when none is in doubt: one atomic load).
    fn take(&self) -> Vec<(ReservationId, Request)> {
        if !self.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut ids = self.ids.lock();
        self.any.store(false, Ordering::Release);
        std::mem::take(&mut *ids)
    }
}

/// A script's refusal, before it becomes a [`StockError`] naming the SKU.
type Refused = (String, Vec<Value>);

/// Where a store's calls go.
enum Wire {
    /// One server (or a proxy in front of one).
    Single {
        /// Blocking connections with read and write timeouts.
        pool: r2d2::Pool<Connector>,
        /// The pool's connector, for the fresh connection of a resend.
        connector: Connector,
    },
    /// The primary that owns the namespace's slot on a Redis Cluster.
    Cluster(cluster::Route),
}

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

    /// How long the server keeps a call's answer under its request id, so that the
    /// store's resend of a call whose reply was lost gets the first answer back instead of
    /// applying the call twice (see "Failures" above): 60 s, far more than the resend
    /// takes (at most two command timeouts).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(stockledger::RedisStore::<String>::REQUEST_RETENTION, Duration::from_secs(60));
    /// ```
    pub const REQUEST_RETENTION: Duration = engine::REQUEST_RETENTION;

    /// How long a waiter's lease lasts unless [`wait_lease`](RedisStoreBuilder::wait_lease)
    /// says otherwise: 10 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(stockledger::RedisStore::<String>::WAIT_LEASE, Duration::from_secs(10));
    /// ```
    pub const WAIT_LEASE: Duration = WAIT_LEASE;

    /// How many units beyond a SKU's on hand one waiter may wait for unless
    /// [`wait_units_max`](RedisStoreBuilder::wait_units_max) says otherwise: 100, the same
    /// bound as [`MonitorStore::WAIT_UNITS_MAX`](crate::MonitorStore::WAIT_UNITS_MAX). A
    /// larger waiting request is [`StockError::WaitTooLarge`] at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use stockledger::{MonitorStore, RedisStore};
    /// assert_eq!(RedisStore::<String>::WAIT_UNITS_MAX, MonitorStore::<String>::WAIT_UNITS_MAX);
    /// ```
    pub const WAIT_UNITS_MAX: u64 = crate::wait::WAIT_UNITS_MAX;

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
        let prefix = queue_prefix(&self.key_of(sku)?);
        let mut first = b"[".to_vec();
        first.extend(&prefix);
        let mut last = b"(".to_vec();
        last.extend(&prefix);
        last.push(0xff);
        let length: usize = self.command(
            redis::cmd("ZLEXCOUNT")
                .arg(&self.keys[10])
                .arg(first)
                .arg(last),
        )?;
        Ok(length)
    }

    /// The open hold `id` as it is now (its lines and current deadline), read from the
    /// server; `None` when no open hold has that id: never issued, committed, released,
    /// expired, or past its deadline (the next call that finds it expires it), and for a
    /// waiter whose hold is not picked up yet. [`reservation`](StockStore::reservation)
    /// answers the same, with `None` for a server error too.
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] when the server cannot be reached or fails.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use stockledger::{RedisStore, StockStore};
    ///
    /// let store = RedisStore::<String>::connect("redis://127.0.0.1/", "shop")?;
    /// let sku = "SKU1004".to_string();
    /// store.restock(&sku, 1)?;
    /// let hold = store.reserve(&[(sku, 1)])?;
    /// assert_eq!(store.try_reservation(hold.id())?, Some(hold.clone()));
    /// store.commit(hold.id())?;
    /// assert_eq!(store.try_reservation(hold.id())?, None);
    /// # Ok::<(), stockledger::StockError<String>>(())
    /// ```
    ///
    /// # Blocking
    ///
    /// One round trip to the server (a read-only function: it writes nothing).
    pub fn try_reservation(
        &self,
        id: ReservationId,
    ) -> Result<Option<Reservation<K>>, StockError<K>> {
        let Some(id_arg) = Self::id_arg(id) else {
            return Ok(None);
        };
        let reply = self.run(&SCRIPTS.lookup, &[id_arg])?;
        match reply.status.as_str() {
            "unknown_reservation" => Ok(None),
            "ok" => {
                let hold = self.hold_of(&reply.payload)?;
                if hold.id() != id {
                    return Err(StockError::Unavailable {
                        reason: engine::malformed("the answer names another hold"),
                    });
                }
                Ok(Some(hold))
            }
            status => Err(StockError::Unavailable {
                reason: engine::malformed(&format!("unexpected status {status:?}")),
            }),
        }
    }

    /// The bytes of `sku`'s key.
    fn key_of(&self, sku: &K) -> Result<Vec<u8>, StockError<K>> {
        let key = sku.to_redis_key();
        if key.len() > SKU_KEY_BYTES_MAX {
            return Err(StockError::InvalidSku(sku.clone()));
        }
        Ok(key)
    }

    /// Runs one plain command (a read) on a pooled connection, and once more on a fresh
    /// connection when the first one fails below the command level.
    fn command<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, StockError<K>> {
        let value = self.send(|connection, _again| command.query::<Value>(connection))?;
        redis::from_redis_value(value).map_err(unavailable)
    }

    /// Runs `send` on a pooled connection; when that connection fails below the command
    /// level (cut, timed out: the reply is lost, the call may have run), runs it once more
    /// on a fresh connection, telling it that this is a resend (`again`). A server's error
    /// answer is final.
    fn send(
        &self,
        send: impl Fn(&mut redis::Connection, bool) -> redis::RedisResult<Value>,
    ) -> Result<Value, StockError<K>> {
        let (pool, connector) = match &self.wire {
            Wire::Single { pool, connector } => (pool, connector),
            Wire::Cluster(route) => {
                return route
                    .send(send)
                    .map_err(|reason| StockError::Unavailable { reason })
            }
        };
        let first = {
            let mut link = pool.get().map_err(unavailable)?;
            match send(&mut link.connection, false) {
                Ok(value) => return Ok(value),
                Err(error) if matches!(error.kind(), redis::ErrorKind::Server(_)) => {
                    return Err(unavailable(error));
                }
                Err(error) => {
                    link.broken = true;
                    error
                }
            }
        };
        let resend = (|| {
            let mut link = r2d2::ManageConnection::connect(connector)?;
            send(&mut link.connection, true)
        })();
        resend.map_err(|again| StockError::Unavailable {
            reason: format!("{first}; sent again on a fresh connection: {again}"),
        })
    }

    /// A new request id: this store's 16 random hex digits and the next count.
    fn request_id(&self) -> String {
        let count = self.requests.fetch_add(1, Ordering::Relaxed);
        decimal_after(&self.request_prefix, count)
    }

    /// Runs the library function `function` (one of [`SCRIPTS`]', under the name whose
    /// reply carries the events when this store has a sink) with every key of the
    /// namespace and the requests hash of this second declared, the common head, `args`
    /// and a new request id; resent once on a fresh connection when the reply is lost (the
    /// script answers a resend with the answer it recorded).
    fn run(&self, function: &Function, args: &[Vec<u8>]) -> Result<Reply, StockError<K>> {
        let keys: [&str; 12] = std::array::from_fn(|i| self.keys[i].as_str());
        let reply = self.run_on(function, &keys, args)?;
        // The server answers again: undo what failed calls may have left.
        self.release_in_doubt();
        Ok(reply)
    }

    /// [`run`](Self::run) declaring `keys` (then the requests hash of this second) instead
    /// of every key of the namespace: for a function that touches only those.
    fn run_on(
        &self,
        function: &Function,
        keys: &[&str],
        args: &[Vec<u8>],
    ) -> Result<Reply, StockError<K>> {
        self.run_request(function, keys, args, &self.new_request())
    }

    /// A new request: the requests hash of this second and a new request id.
    fn new_request(&self) -> Request {
        let now_us = self.timebase.now_us(self.clock.now());
        let bucket_us = u64::try_from(engine::REQUEST_BUCKET.as_micros()).unwrap_or(1);
        Request {
            now_us,
            requests: decimal_after(&self.requests_prefix, now_us / bucket_us),
            id: self.request_id(),
        }
    }

    /// [`run_on`](Self::run_on) under the request `request` (its requests hash, id and
    /// time): an abort sends the request of the call it aborts.
    fn run_request(
        &self,
        function: &Function,
        keys: &[&str],
        args: &[Vec<u8>],
        request: &Request,
    ) -> Result<Reply, StockError<K>> {
        let Request {
            now_us,
            requests,
            id: request_id,
        } = request;
        let now_us = *now_us;
        let events = self.events.enabled();
        // The command's arguments and their bytes, so that it is written into one buffer
        // allocated once (growing it argument by argument reallocated it about ten times a
        // call: a third of the client's instructions per `sell`, callgrind).
        let arg_count = 7 + keys.len() + args.len();
        let data_bytes = 64
            + keys.iter().map(|key| key.len()).sum::<usize>()
            + requests.len()
            + request_id.len()
            + args.iter().map(Vec::len).sum::<usize>();
        // The same command on a resend: the script answers it from the record of the
        // attempt that ran, whichever of the two reaches the server first.
        let mut fcall = redis::Cmd::with_capacity(arg_count, data_bytes);
        fcall
            .arg("FCALL")
            .arg(function.name(events))
            .arg(keys.len() + 1)
            .arg(keys)
            .arg(requests)
            .arg(now_us)
            .arg(self.events_max);
        for arg in args {
            fcall.arg(arg.as_slice());
        }
        fcall.arg(request_id);
        // Changes wait for replicas when asked to, on the connection that made them (a read
        // changes nothing). `u64::MAX`: no WAIT was sent.
        let wait = self
            .wait_replicas
            .filter(|_| !std::ptr::eq(function, &SCRIPTS.lookup));
        let acknowledged = std::cell::Cell::new(u64::MAX);
        let value = self.send(|connection, again| {
            let value = engine::call(connection, &fcall)?;
            if let Some((replicas, timeout_ms)) = wait {
                let count = self
                    .wait_for_replicas(connection, again, replicas, timeout_ms)
                    .map_err(|error| {
                        // The call ran: a failure now must lead to a resend under its
                        // request id (an I/O error), never to a redirect that runs it anew.
                        redis::RedisError::from(std::io::Error::other(format!(
                            "the call ran, then waiting for replicas failed: {error}"
                        )))
                    })?;
                acknowledged.set(count);
            }
            Ok(value)
        })?;
        if let Some((replicas, timeout_ms)) = wait {
            if acknowledged.get() < u64::from(replicas) {
                return Err(StockError::Unavailable {
                    reason: format!(
                        "the call ran on the primary, but {} of the {replicas} replicas asked \
                         for confirmed it within {timeout_ms} ms: it may be lost if the \
                         primary fails now",
                        acknowledged.get()
                    ),
                });
            }
        }
        let reply = Reply::parse(value).map_err(|reason| StockError::Unavailable { reason })?;
        if reply.status == "wrong_type" {
            let text = |index| engine::text(reply.payload.get(index)).unwrap_or_default();
            return Err(StockError::Unavailable {
                reason: format!(
                    "the key {} holds a {}, not what the store keeps there: another program \
                     wrote it; nothing was changed",
                    text(0),
                    text(1)
                ),
            });
        }
        Ok(reply)
    }

    /// Aborts the requests and releases the holds in doubt (see [`InDoubt`]), after a
    /// call the server answered; when one fails to reach it, that hold and the rest stay in
    /// doubt for the next answered call. Events and statistics count these releases as
    /// any.
    fn release_in_doubt(&self) {
        let mut entries = self.in_doubt.take().into_iter();
        while let Some((id, request)) = entries.next() {
            let keys: [&str; 12] = std::array::from_fn(|i| self.keys[i].as_str());
            let aborted = self.run_request(&SCRIPTS.abort, &keys, &[], &request);
            let released = aborted.and_then(|_| match self.resolve(id, "release") {
                Err(error @ StockError::Unavailable { .. }) => Err(error),
                _ => Ok(()),
            });
            if released.is_err() {
                self.in_doubt.push((id, request));
                entries.for_each(|entry| self.in_doubt.push(entry));
                return;
            }
        }
    }

    /// `WAIT replicas timeout_ms` on `connection`, after a call ran on it: how many replicas
    /// have every write of the connection. A resend (`again`) on a fresh connection may have
    /// written nothing (its answer was recorded by the first attempt, on another
    /// connection), and `WAIT` would then confirm nothing: it first writes the namespace's
    /// fence key (`{namespace}:fence`, kept one request retention), so that the replicas
    /// must reach the primary's present offset, past the first attempt's writes.
    fn wait_for_replicas(
        &self,
        connection: &mut redis::Connection,
        again: bool,
        replicas: u32,
        timeout_ms: u64,
    ) -> redis::RedisResult<u64> {
        if again {
            redis::cmd("SET")
                .arg(format!("{{{}}}:fence", self.namespace))
                .arg(self.request_prefix.as_str())
                .arg("PX")
                .arg(u64::try_from(engine::REQUEST_RETENTION.as_millis()).unwrap_or(u64::MAX))
                .query::<()>(connection)?;
        }
        redis::cmd("WAIT")
            .arg(replicas)
            .arg(timeout_ms)
            .query(connection)
    }

    /// A new hold id: 63 random bits under [`ID_BIT`].
    fn new_id(&self) -> Result<u64, StockError<K>> {
        let mut bytes = [0_u8; 8];
        getrandom::getrandom(&mut bytes).map_err(unavailable)?;
        Ok(u64::from_le_bytes(bytes) | ID_BIT)
    }

    /// The id's text for the scripts; `None` for an id no `RedisStore` draws.
    fn id_arg(id: ReservationId) -> Option<Vec<u8>> {
        (id.get() & ID_BIT != 0).then(|| id.get().to_string().into_bytes())
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

    /// The answer of a script that found the idempotency key `key` seen before (see
    /// `keyed_answer` in `scripts/common.lua`): the key's open hold ("replay"),
    /// [`StockError::HoldEnded`] ("hold_ended") or [`StockError::IdempotencyConflict`].
    /// Delivers the reply's events (of queues it served on the way) first.
    fn seen_key(&self, key: &str, reply: &Reply) -> Result<Reservation<K>, StockError<K>> {
        let malformed = |reason: String| StockError::Unavailable { reason };
        self.deliver(&reply.events, None);
        if reply.status == "replay" {
            return self.hold_of(&reply.payload);
        }
        let id = ReservationId::from_u64(engine::number(reply.payload.first()).map_err(malformed)?);
        if reply.status == "idempotency_conflict" {
            return Err(StockError::IdempotencyConflict {
                key: key.to_string(),
                id,
            });
        }
        let outcome = match engine::text(reply.payload.get(1))
            .map_err(malformed)?
            .as_str()
        {
            "committed" => HoldOutcome::Committed,
            "released" => HoldOutcome::Released,
            "expired" => HoldOutcome::Expired,
            other => {
                return Err(malformed(engine::malformed(&format!(
                    "a hold that ended as {other:?}"
                ))))
            }
        };
        Err(StockError::HoldEnded {
            key: key.to_string(),
            id,
            outcome,
        })
    }

    /// A hold from its reply `{id, deadline_us, SKU, quantity, ...}`.
    fn hold_of(&self, reply: &[Value]) -> Result<Reservation<K>, StockError<K>> {
        let malformed = |reason: String| StockError::Unavailable { reason };
        let id = engine::number(reply.first()).map_err(malformed)?;
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
        if lines.is_empty() {
            return Err(malformed(engine::malformed("a hold without lines")));
        }
        Ok(Reservation::from_parts(
            ReservationId::from_u64(id),
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
        // The idempotency key of the hold whose tuples follow a "key" tuple.
        let mut keyed: Option<(u64, Arc<str>)> = None;
        for tuple in flat.chunks(7) {
            let field = |index: usize| engine::number(tuple.get(index)).unwrap_or(0);
            let Ok(kind) = engine::text(tuple.first()) else {
                continue;
            };
            if kind == "key" {
                keyed = engine::text(tuple.get(2))
                    .ok()
                    .map(|key| (field(1), Arc::from(key)));
                continue;
            }
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
            let id = ReservationId::from_u64(group.1);
            let key = keyed
                .as_ref()
                .filter(|(hold, _)| *hold == group.1)
                .map(|(_, key)| Arc::clone(key));
            let lines = vec![line];
            let event = match group.0.as_str() {
                "restocked" => StockEvent::Restocked {
                    line: lines.into_iter().next().expect("one line"),
                },
                "reserved" => StockEvent::Reserved {
                    id,
                    lines,
                    expires_at,
                    key,
                },
                "committed" => StockEvent::Committed { id, lines, key },
                "released" => StockEvent::Released { id, lines, key },
                "expired" => StockEvent::Expired { id, lines, key },
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

    /// Delivers the events `flat` of the new hold `hold` to the sink. When the sink panics,
    /// the hold is released before the panic goes on, as in memory: its caller never gets
    /// the hold's id, so a hold left open would be one nobody knows (without a TTL, stock
    /// reserved for good). If the release's own events panic too, the hold is released all
    /// the same and the first panic goes on.
    fn report_opened(&self, flat: &[Value], hold: &Reservation<K>) {
        let reported = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.deliver(flat, hold.expires_at());
        }));
        if let Err(sink_panic) = reported {
            let _released =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.release(hold.id())));
            std::panic::resume_unwind(sink_panic);
        }
    }

    /// The deadline in microseconds of a hold given `ttl` now; 0 for none (no TTL, or one
    /// too long to represent).
    fn deadline_us(&self, ttl: Option<Duration>) -> u64 {
        ttl.and_then(|ttl| self.clock.now().checked_add(ttl))
            .map_or(0, |deadline| self.timebase.deadline_us(deadline))
    }

    /// `commit` (`change` "commit") or `release` ("release").
    fn resolve(&self, id: ReservationId, change: &str) -> Result<Reservation<K>, StockError<K>> {
        let id_arg = Self::id_arg(id).ok_or(StockError::UnknownReservation(id))?;
        let reply = self.run(&SCRIPTS.resolve, &[id_arg, change.as_bytes().to_vec()])?;
        self.settled(id, reply)
    }

    /// The answer of a script that resolved (or expired) the hold `id`.
    fn settled(&self, id: ReservationId, reply: Reply) -> Result<Reservation<K>, StockError<K>> {
        match reply.status.as_str() {
            "unknown_reservation" => Err(StockError::UnknownReservation(id)),
            "expired" | "ok" => {
                let hold = self.hold_of(&reply.payload)?;
                if hold.id() != id {
                    return Err(StockError::Unavailable {
                        reason: engine::malformed("the answer names another hold"),
                    });
                }
                self.deliver(&reply.events, None);
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
            if reply.status != "ok" {
                return Err(StockError::Unavailable {
                    reason: engine::malformed(&format!("unexpected status {:?}", reply.status)),
                });
            }
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
}

/// The [`StockError::Unavailable`] of a call that found every id it drew taken.
fn id_draws_exhausted<K>() -> StockError<K> {
    StockError::Unavailable {
        reason: format!("{ID_DRAWS_MAX} random ids in a row were taken"),
    }
}

/// The prefix of a SKU's members in the namespace's queues set (see
/// `scripts/common.lua`): the length of its key in 8 hex digits, then the key.
fn queue_prefix(key: &[u8]) -> Vec<u8> {
    let mut prefix = format!("{:08x}", key.len()).into_bytes();
    prefix.extend(key);
    prefix
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
        match reply.status.as_str() {
            "ok" => {}
            "overflow" => return Err(StockError::Overflow { sku: sku.clone() }),
            status => {
                return Err(StockError::Unavailable {
                    reason: engine::malformed(&format!("unexpected status {status:?}")),
                })
            }
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

    /// The SKU's level read from the server, or `None`: **both** for a SKU the ledger does
    /// not know and for a server that cannot be reached or fails. Call
    /// [`try_level`](StockStore::try_level) to tell them apart (it answers
    /// [`StockError::Unavailable`] for the second).
    ///
    /// # Blocking
    ///
    /// One round trip to the server.
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
            Vec::new(),
            deadline_us.to_string().into_bytes(),
            key.as_bytes().to_vec(),
        ];
        if options.idempotency_key.is_some() {
            // Only a keyed hold forgets old keys: the others do not send the settings.
            args.push(self.idempotency_retention_us.to_string().into_bytes());
            args.push(self.idempotency_keys_max.to_string().into_bytes());
        }
        args.extend(self.line_args(&lines)?);
        for _ in 0..ID_DRAWS_MAX {
            let id = self.new_id()?;
            args[0] = id.to_string().into_bytes();
            let request = self.new_request();
            let keys: [&str; 12] = std::array::from_fn(|i| self.keys[i].as_str());
            let reply = match self.run_request(&SCRIPTS.reserve, &keys, &args, &request) {
                Ok(reply) => {
                    self.release_in_doubt();
                    reply
                }
                Err(unavailable) => {
                    if options.idempotency_key.is_none() {
                        // It may have opened the hold; nobody has it: undone next call.
                        self.in_doubt.push((ReservationId::from_u64(id), request));
                    }
                    return Err(unavailable);
                }
            };
            return match reply.status.as_str() {
                "id_taken" => continue,
                "ok" => {
                    // The hold's id, lines and deadline are the request's.
                    let hold = Reservation::from_parts(
                        ReservationId::from_u64(id),
                        lines.into_owned(),
                        self.timebase.instant(deadline_us),
                    );
                    self.report_opened(&reply.events, &hold);
                    Ok(hold)
                }
                "replay" | "hold_ended" | "idempotency_conflict" => self.seen_key(key, &reply),
                status => {
                    let refusal = self.refusal((status.to_string(), reply.payload), &lines);
                    if !matches!(refusal, StockError::Unavailable { .. }) {
                        self.deliver(&reply.events, None);
                    }
                    Err(refusal)
                }
            };
        }
        Err(id_draws_exhausted())
    }

    fn commit(&self, id: ReservationId) -> Result<Reservation<K>, StockError<K>> {
        self.resolve(id, "commit")
    }

    fn release(&self, id: ReservationId) -> Result<Reservation<K>, StockError<K>> {
        self.resolve(id, "release")
    }

    /// As [`StockStore::commit_partial`], in one script (`commit_partial.lua`): the lines
    /// are checked against the hold on the server before its first write.
    ///
    /// # Errors
    ///
    /// As [`StockStore::commit_partial`], and [`StockError::Unavailable`] when the server
    /// cannot be reached or answers unexpectedly.
    ///
    /// # Blocking
    ///
    /// One round trip to the server (two when the first reply is lost).
    fn commit_partial(
        &self,
        id: ReservationId,
        lines: &[(K, u64)],
    ) -> Result<Reservation<K>, StockError<K>> {
        let lines = crate::lines::merge(lines)?;
        let id_arg = Self::id_arg(id).ok_or(StockError::UnknownReservation(id))?;
        let mut args = vec![id_arg];
        args.extend(self.line_args(&lines)?);
        let reply = self.run(&SCRIPTS.commit_partial, &args)?;
        let line = engine::number(reply.payload.first())
            .ok()
            .and_then(|index| usize::try_from(index).ok())
            .and_then(|index| lines.get(index.wrapping_sub(1)));
        match (reply.status.as_str(), line) {
            ("not_in_hold", Some((sku, _))) => Err(StockError::NotInHold {
                id,
                sku: sku.clone(),
            }),
            ("above_hold", Some((sku, requested))) => Err(StockError::AboveHold {
                id,
                sku: sku.clone(),
                held: engine::number(reply.payload.get(1)).unwrap_or(0),
                requested: *requested,
            }),
            _ => self.settled(id, reply),
        }
    }

    fn extend(&self, id: ReservationId, ttl: Duration) -> Result<Reservation<K>, StockError<K>> {
        let id_arg = Self::id_arg(id).ok_or(StockError::UnknownReservation(id))?;
        let deadline = self.deadline_us(Some(ttl));
        let reply = self.run(
            &SCRIPTS.extend,
            &[id_arg, deadline.to_string().into_bytes()],
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
            "unknown_sku" => Err(StockError::UnknownSku(sku.clone())),
            status => Err(StockError::Unavailable {
                reason: engine::malformed(&format!("unexpected status {status:?}")),
            }),
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
        let args = self.line_args(&lines)?;
        if lines.len() == 1 {
            // The common case on three keys; "general" (nothing written) sends `sell`.
            let keys = [self.keys[0].as_str(), self.keys[6].as_str()];
            let reply = self.run_on(&SCRIPTS.sell_one, &keys, &args)?;
            if reply.status == "ok" {
                self.deliver(&reply.events, None);
                return Ok(());
            }
        }
        let reply = self.run(&SCRIPTS.sell, &args)?;
        let outcome = match reply.status.as_str() {
            "ok" => Ok(()),
            status => Err(self.refusal((status.to_string(), reply.payload), &lines)),
        };
        if !matches!(outcome, Err(StockError::Unavailable { .. })) {
            self.deliver(&reply.events, None);
        }
        outcome
    }

    /// The open hold `id` as it is now, read from the server (see
    /// [`try_reservation`](RedisStore::try_reservation)). This signature cannot return
    /// [`StockError::Unavailable`]: a server that cannot be reached or fails answers
    /// `None` here, as for an unknown or ended hold; call
    /// [`try_reservation`](RedisStore::try_reservation) to tell them apart.
    ///
    /// # Blocking
    ///
    /// One round trip to the server.
    fn reservation(&self, id: ReservationId) -> Option<Reservation<K>> {
        self.try_reservation(id).ok().flatten()
    }

    /// `Some(self)`: a `RedisStore` waits (see its [`WaitingStore`] implementation).
    fn as_waiting(&self) -> Option<&dyn WaitingStore<K>> {
        Some(self)
    }

    fn quantity_max(&self) -> u64 {
        Self::QUANTITY_MAX
    }
}

impl<K: RedisSku> WaitingStore<K> for RedisStore<K> {
    /// Holds every line, waiting up to `timeout` in the SKUs' server-side queues (FIFO
    /// across every process, no barging), as [`WaitingStore::reserve_timeout_with`]
    /// describes. The hold opens with its deadline (its TTL runs from the moment its
    /// waiter picks it up) in the same script that hands it over, so no hold is ever
    /// without an owner and a deadline: until the waiter has it, its lines are covered by
    /// the waiter's lease.
    ///
    /// With an idempotency key, a key already seen answers at once, without waiting (the
    /// key's open hold, [`StockError::HoldEnded`] or [`StockError::IdempotencyConflict`]);
    /// a new key waits like any request, and is remembered in the script that hands the
    /// waiter its hold. Should another call have used the key meanwhile (a retry that held
    /// at once, or a second waiter with the key served first), the waiter holds nothing:
    /// its lines go back and it answers as that call's key does.
    ///
    /// # Errors
    ///
    /// Those of [`WaitingStore::reserve_timeout_with`] ([`StockError::WaitTooLarge`] past
    /// the store's [`wait_units_max`](RedisStoreBuilder::wait_units_max) included),
    /// [`StockError::InvalidSku`] for a SKU longer than [`SKU_KEY_BYTES_MAX`], and
    /// [`StockError::Unavailable`] when the
    /// server fails meanwhile: lines held then go back once the waiter's lease runs out.
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread up to `timeout`, in slices of at most half a second
    /// (`XREAD BLOCK` on the namespace's wake-up stream), renewing its lease after each.
    fn reserve_timeout_with(
        &self,
        lines: &[(K, u64)],
        timeout: Duration,
        options: &ReserveOptions,
    ) -> Result<Reservation<K>, StockError<K>> {
        let key = options.idempotency_key.as_deref().unwrap_or("");
        if options.idempotency_key.is_some() {
            crate::lifecycle::idempotency::validate_key(key)?;
        }
        self.wait_for(lines, timeout, options.ttl, key)
    }

    /// **Does not wait yet** on this store: the future answers on its first poll like
    /// [`reserve_timeout_with`](Self::reserve_timeout_with) with a zero timeout (a hold
    /// when the stock is there and nobody queues before it, else
    /// [`StockError::Timeout`]). Its waits block on `XREAD BLOCK`, which an executor's poll must
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
    /// The waiting hold of [`reserve_timeout_with`](WaitingStore::reserve_timeout_with):
    /// its hold lives `ttl` from the moment it is picked up; `key` is its idempotency key
    /// ("": none).
    fn wait_for(
        &self,
        lines: &[(K, u64)],
        timeout: Duration,
        ttl: Option<Duration>,
        key: &str,
    ) -> Result<Reservation<K>, StockError<K>> {
        let lines = crate::lines::merge(lines)?.into_owned();
        let deadline = Instant::now().checked_add(timeout);
        let ttl_us = ttl.map_or(0, |ttl| {
            u64::try_from(ttl.as_micros())
                .unwrap_or(u64::MAX)
                .min(engine::TIME_US_MAX)
        });
        let mut args = vec![
            Vec::new(),
            self.wait_lease_us.to_string().into_bytes(),
            ttl_us.to_string().into_bytes(),
            key.as_bytes().to_vec(),
            self.idempotency_retention_us.to_string().into_bytes(),
            self.idempotency_keys_max.to_string().into_bytes(),
            // From QUANTITY_MAX up no line can pass the bound: none is sent (-1).
            if self.wait_units_max >= Self::QUANTITY_MAX {
                b"-1".to_vec()
            } else {
                self.wait_units_max.to_string().into_bytes()
            },
        ];
        args.extend(self.line_args(&lines)?);
        for _ in 0..ID_DRAWS_MAX {
            let id = self.new_id()?;
            args[0] = id.to_string().into_bytes();
            let reply = self.run(&SCRIPTS.wait_begin, &args)?;
            if reply.status == "id_taken" {
                continue;
            }
            if let Some(outcome) = self.waited(id, &lines, key, &reply) {
                return outcome;
            }
            let last_wake = engine::text(reply.payload.first())
                .map_err(|reason| StockError::Unavailable { reason })?;
            return self.wait(id, (&lines, key), deadline, last_wake);
        }
        Err(id_draws_exhausted())
    }

    /// The outcome of a waiting call's reply `reply` for the waiter `id` of merged
    /// `lines` with the idempotency key `key` ("": none): `None` while it is queued.
    fn waited(
        &self,
        id: u64,
        lines: &[(K, u64)],
        key: &str,
        reply: &Reply,
    ) -> Option<Result<Reservation<K>, StockError<K>>> {
        let malformed = |reason: String| StockError::Unavailable { reason };
        Some(match reply.status.as_str() {
            "queued" => return None,
            "replay" | "hold_ended" | "idempotency_conflict" => self.seen_key(key, reply),
            "granted" => engine::number(reply.payload.first())
                .map_err(malformed)
                .map(|deadline_us| {
                    let hold = Reservation::from_parts(
                        ReservationId::from_u64(id),
                        lines.to_vec(),
                        self.timebase.instant(deadline_us),
                    );
                    self.report_opened(&reply.events, &hold);
                    hold
                }),
            "timeout" | "gone" => {
                self.deliver(&reply.events, None);
                Err(StockError::Timeout)
            }
            "wait_too_large" => {
                let line = engine::number(reply.payload.first())
                    .ok()
                    .and_then(|index| usize::try_from(index).ok())
                    .and_then(|index| lines.get(index.wrapping_sub(1)));
                let on_hand = engine::number(reply.payload.get(1));
                match (line, on_hand) {
                    (Some((sku, requested)), Ok(on_hand)) => Err(StockError::WaitTooLarge {
                        sku: sku.clone(),
                        requested: *requested,
                        limit: on_hand.saturating_add(self.wait_units_max),
                    }),
                    _ => Err(malformed(engine::malformed("a wait too large"))),
                }
            }
            status => Err(self.refusal((status.to_string(), reply.payload.clone()), lines)),
        })
    }

    /// Waits for the queued waiter `id` until `deadline`: blocks on the wake-up stream
    /// after its entry `last_wake` for a slice, then polls (renewing the lease).
    fn wait(
        &self,
        id: u64,
        (lines, key): (&[(K, u64)], &str),
        deadline: Option<Instant>,
        mut last_wake: String,
    ) -> Result<Reservation<K>, StockError<K>> {
        let slice_max = WAIT_SLICE
            .min(self.command_timeout / 2)
            .min(Duration::from_micros(self.wait_lease_us / 4));
        let id_text = id.to_string();
        loop {
            let remaining =
                deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
            let action = if remaining == Some(Duration::ZERO) {
                "cancel"
            } else {
                let slice = remaining.unwrap_or(slice_max).min(slice_max);
                self.sleep_until_woken(&id_text, slice, &mut last_wake)?;
                "poll"
            };
            let reply = self.run(
                &SCRIPTS.wait_poll,
                &[
                    id_text.clone().into_bytes(),
                    action.as_bytes().to_vec(),
                    self.wait_lease_us.to_string().into_bytes(),
                ],
            )?;
            if let Some(outcome) = self.waited(id, lines, key, &reply) {
                return outcome;
            }
            last_wake = engine::text(reply.payload.first())
                .map_err(|reason| StockError::Unavailable { reason })?;
        }
    }

    /// Blocks up to `slice` until the wake-up stream has an entry for the waiter `id`
    /// after `last_wake` (which moves on with what it reads).
    fn sleep_until_woken(
        &self,
        id: &str,
        slice: Duration,
        last_wake: &mut String,
    ) -> Result<(), StockError<K>> {
        let until = Instant::now() + slice;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let block_ms = left.as_millis().max(1);
            if left.is_zero() {
                return Ok(());
            }
            let read: Value = self.command(
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1000)
                    .arg("BLOCK")
                    .arg(u64::try_from(block_ms).unwrap_or(u64::MAX))
                    .arg("STREAMS")
                    .arg(&self.keys[11])
                    .arg(last_wake.as_str()),
            )?;
            let Value::Array(streams) = read else {
                return Ok(()); // nothing within the block: the slice is over
            };
            let mut woken = false;
            for entry in wake_entries(&streams) {
                let (entry_id, waiter) = entry;
                woken |= waiter == id.as_bytes();
                *last_wake = entry_id;
            }
            if woken {
                return Ok(());
            }
        }
    }
}

/// `(entry id, waiter id)` of the entries of an `XREAD` reply of the wake-up stream.
fn wake_entries(streams: &[Value]) -> Vec<(String, Vec<u8>)> {
    let mut entries = Vec::new();
    for stream in streams {
        let Value::Array(stream) = stream else {
            continue;
        };
        let Some(Value::Array(items)) = stream.get(1) else {
            continue;
        };
        for item in items {
            let Value::Array(item) = item else { continue };
            let Ok(entry_id) = engine::text(item.first()) else {
                continue;
            };
            let waiter = match item.get(1) {
                Some(Value::Array(fields)) => engine::bytes(fields.get(1)).unwrap_or_default(),
                _ => &[],
            };
            entries.push((entry_id, waiter.to_vec()));
        }
    }
    entries
}

impl<K> fmt::Debug for RedisStore<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (connections, idle_connections, node) = match &self.wire {
            Wire::Single { pool, .. } => {
                let state = pool.state();
                (state.connections, state.idle_connections, None)
            }
            Wire::Cluster(route) => {
                let (connections, idle) = route.state();
                (connections, idle, Some(route.owner_address()))
            }
        };
        f.debug_struct("RedisStore")
            .field("namespace", &self.namespace)
            .field("node", &node)
            .field("wait_replicas", &self.wait_replicas)
            .field("connections", &connections)
            .field("idle_connections", &idle_connections)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}
