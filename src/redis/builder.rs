//! The builder of a [`RedisStore`]: pool size, command timeout, clock, event sink,
//! idempotency settings, stream cap.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use super::cluster::{RedisCluster, Route};
use super::engine::{Connector, Timebase, COMMAND_TIMEOUT, POOL_SIZE};
use super::{RedisSku, RedisStore, Wire};
use crate::error::StockError;
use crate::lifecycle::clock::{Clock, SystemClock};
use crate::lifecycle::event::{EventSink, Events};
use crate::lifecycle::idempotency::{IDEMPOTENCY_KEYS_MAX, IDEMPOTENCY_RETENTION};

/// The cap of the namespace's event stream by default: each script trims it approximately
/// (`XADD ... MAXLEN ~`), so the stream keeps at least this many entries (a little more
/// until Redis can drop a whole node of them, which is what keeps trimming cheap);
/// consumers should keep up within it.
///
/// # Examples
///
/// ```
/// assert_eq!(stockledger::EVENTS_MAX, 1_000_000);
/// ```
pub const EVENTS_MAX: usize = 1_000_000;

/// Most bytes of a namespace.
const NAMESPACE_BYTES_MAX: usize = 256;

/// Builds a [`RedisStore`]; from [`RedisStore::builder`].
///
/// # Examples
///
/// ```no_run
/// use std::{sync::Arc, time::Duration};
/// use stockledger::{ChannelSink, RedisStore, StockStore};
///
/// let (sink, events) = ChannelSink::unbounded();
/// let store = RedisStore::<String>::builder("redis://127.0.0.1/", "shop")
///     .pool_size(8)
///     .command_timeout(Duration::from_millis(500))
///     .event_sink(sink)
///     .idempotency_retention(Duration::from_secs(3600))
///     .build()?;
/// store.restock(&"SKU1004".to_string(), 1)?;
/// assert_eq!(events.try_iter().count(), 1);
/// # Ok::<(), stockledger::StockError<String>>(())
/// ```
#[must_use = "a builder does nothing until `.build()`"]
pub struct RedisStoreBuilder<K> {
    url: String,
    /// The cluster the store runs on, when not on the single server at `url`.
    cluster: Option<RedisCluster>,
    namespace: String,
    /// `WAIT` for this many replicas, this long at most, after every change.
    wait_replicas: Option<(u32, Duration)>,
    pool_size: u32,
    command_timeout: Duration,
    clock: Arc<dyn Clock>,
    event_sink: Option<Arc<dyn EventSink<K>>>,
    idempotency_retention: Duration,
    idempotency_keys_max: usize,
    events_max: usize,
    wait_lease: Duration,
    wait_units_max: u64,
    sku: PhantomData<fn() -> K>,
}

impl<K: RedisSku> RedisStoreBuilder<K> {
    pub(crate) fn new(url: &str, namespace: &str) -> Self {
        Self {
            url: url.to_string(),
            cluster: None,
            namespace: namespace.to_string(),
            wait_replicas: None,
            pool_size: POOL_SIZE,
            command_timeout: COMMAND_TIMEOUT,
            clock: Arc::new(SystemClock),
            event_sink: None,
            idempotency_retention: IDEMPOTENCY_RETENTION,
            idempotency_keys_max: IDEMPOTENCY_KEYS_MAX,
            events_max: EVENTS_MAX,
            wait_lease: super::WAIT_LEASE,
            wait_units_max: crate::wait::WAIT_UNITS_MAX,
            sku: PhantomData,
        }
    }

    /// A builder of the store of `namespace` on `cluster` (see [`RedisCluster::store`]).
    pub(crate) fn on_cluster(cluster: RedisCluster, namespace: &str) -> Self {
        let mut builder = Self::new("", namespace);
        builder.command_timeout = cluster.command_timeout_of();
        builder.cluster = Some(cluster);
        builder
    }

    /// After every change, waits until `replicas` replicas of the server (or of the
    /// slot's primary, on a cluster) have it, for up to `timeout` (Redis's
    /// `WAIT replicas timeout`, on the connection that made the change), before the call
    /// returns. Off by default.
    ///
    /// Redis replicates asynchronously: without this, a primary that dies (`kill -9`, a
    /// lost host) right after answering can take changes its callers were told about with
    /// it, and the replica that takes over never saw them (sales and holds lost, request
    /// records too, so a resend could apply its call again; on one host, where the replica
    /// keeps up, the crate's tests saw no acknowledged change lost to a `kill -9` even
    /// without it: the window is the replication lag). With it, a change is
    /// confirmed by `replicas` replicas first; it costs a round trip to the replicas on
    /// every change (on a local 2-core cluster, sales per second fell to 0.76× and 0.61× at
    /// 8 and 32 threads: `BENCHMARKS.md`) and does not make Redis strongly consistent (a
    /// replica that confirmed may still lose the election to one that did not, with more
    /// than one replica per primary).
    ///
    /// A change that fewer than `replicas` replicas confirmed within `timeout` is
    /// [`StockError::Unavailable`]: it did run on the primary and stands there, but may
    /// be lost if the primary fails now (retry a hold with an idempotency key to get it
    /// back). `timeout` is at least 1 ms (Redis reads 0 as forever) and at most half the
    /// command timeout; reads do not wait. A call resent after a lost reply (answered from
    /// the server's record on a fresh connection) first writes the key
    /// `{namespace}:fence` (it expires after a minute), so that its `WAIT` covers the first
    /// attempt's writes too.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let store = stockledger::RedisStore::<u64>::builder("redis://127.0.0.1/", "shop")
    ///     .wait_replicas(1, Duration::from_millis(100))
    ///     .build()?;
    /// # Ok::<(), stockledger::StockError<u64>>(())
    /// ```
    pub fn wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// At most `pool_size` connections (at least 1; default [`POOL_SIZE`]). On a cluster
    /// the pools are the [`RedisCluster`]'s: set [`RedisCluster::pool_size`] instead.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let store = stockledger::RedisStore::<u64>::builder("redis://127.0.0.1/", "shop")
    ///     .pool_size(4)
    ///     .build()?;
    /// # Ok::<(), stockledger::StockError<u64>>(())
    /// ```
    pub fn pool_size(mut self, pool_size: u32) -> Self {
        self.pool_size = pool_size.max(1);
        self
    }

    /// The command timeout (default [`COMMAND_TIMEOUT`]; at least 10 ms; on a cluster the
    /// [`RedisCluster`]'s: set [`RedisCluster::command_timeout`] instead). A call whose
    /// connection fails or times out is sent once more on a fresh connection, so a call
    /// takes up to about twice this before it is [`StockError::Unavailable`]; keep it well
    /// under half of [`RedisStore::REQUEST_RETENTION`] (60 s), the time within which a
    /// resent call gets its first answer back.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let store = stockledger::RedisStore::<u64>::builder("redis://127.0.0.1/", "shop")
    ///     .command_timeout(Duration::from_secs(1))
    ///     .build()?;
    /// # Ok::<(), stockledger::StockError<u64>>(())
    /// ```
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout.max(Duration::from_millis(10));
        self
    }

    /// The time source of hold deadlines and idempotency retention (default
    /// [`SystemClock`]). Its readings are mapped onto the wall clock at `build` time.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use stockledger::{ManualClock, RedisStore};
    ///
    /// let clock = Arc::new(ManualClock::new());
    /// let store = RedisStore::<u64>::builder("redis://127.0.0.1/", "test").clock(clock).build()?;
    /// # Ok::<(), stockledger::StockError<u64>>(())
    /// ```
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Where the events of the calls made through this store go, after each call.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let (sink, _events) = stockledger::ChannelSink::unbounded();
    /// let store = stockledger::RedisStore::<u64>::builder("redis://127.0.0.1/", "shop")
    ///     .event_sink(sink)
    ///     .build()?;
    /// # Ok::<(), stockledger::StockError<u64>>(())
    /// ```
    pub fn event_sink(mut self, sink: Arc<dyn EventSink<K>>) -> Self {
        self.event_sink = Some(sink);
        self
    }

    /// How long a resolved hold's idempotency key is remembered (default
    /// [`IDEMPOTENCY_RETENTION`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let store = stockledger::RedisStore::<u64>::builder("redis://127.0.0.1/", "shop")
    ///     .idempotency_retention(Duration::from_secs(600))
    ///     .build()?;
    /// # Ok::<(), stockledger::StockError<u64>>(())
    /// ```
    pub fn idempotency_retention(mut self, retention: Duration) -> Self {
        self.idempotency_retention = retention;
        self
    }

    /// How many resolved idempotency keys are remembered at most, oldest forgotten first
    /// (default [`IDEMPOTENCY_KEYS_MAX`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let store = stockledger::RedisStore::<u64>::builder("redis://127.0.0.1/", "shop")
    ///     .idempotency_keys_max(1_000)
    ///     .build()?;
    /// # Ok::<(), stockledger::StockError<u64>>(())
    /// ```
    pub fn idempotency_keys_max(mut self, keys_max: usize) -> Self {
        self.idempotency_keys_max = keys_max;
        self
    }

    /// The approximate cap of the event stream (default [`EVENTS_MAX`]; at least 1).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let store = stockledger::RedisStore::<u64>::builder("redis://127.0.0.1/", "shop")
    ///     .events_max(10_000)
    ///     .build()?;
    /// # Ok::<(), stockledger::StockError<u64>>(())
    /// ```
    pub fn events_max(mut self, events_max: usize) -> Self {
        self.events_max = events_max.max(1);
        self
    }

    /// How long a waiter's lease lasts (default [`RedisStore::WAIT_LEASE`], 10 s; at
    /// least 100 ms): a waiting call renews it at least four times a lease, and a waiter
    /// that did not renew it for this long (its process died, or lost the server) leaves
    /// its queue and gives back every line it held, granted or not. Every store of a
    /// namespace should use the same lease.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let store = stockledger::RedisStore::<u64>::builder("redis://127.0.0.1/", "shop")
    ///     .wait_lease(Duration::from_secs(3))
    ///     .build()?;
    /// # Ok::<(), stockledger::StockError<u64>>(())
    /// ```
    pub fn wait_lease(mut self, lease: Duration) -> Self {
        self.wait_lease = lease.max(Duration::from_millis(100));
        self
    }

    /// How many units beyond a SKU's on hand one waiter may wait for (default
    /// [`RedisStore::WAIT_UNITS_MAX`], the same as
    /// [`MonitorStore::WAIT_UNITS_MAX`](crate::MonitorStore::WAIT_UNITS_MAX)). A waiting
    /// request with a line for more than its SKU's on hand plus this is refused at once
    /// with [`StockError::WaitTooLarge`], before it queues, so it never keeps the SKU from
    /// other buyers. `0`: waiters may wait only for units on hand (held by others, to be
    /// released); `u64::MAX` (or anything from [`RedisStore::QUANTITY_MAX`] up): no bound.
    /// Every store of a namespace should use the same bound.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let store = stockledger::RedisStore::<u64>::builder("redis://127.0.0.1/", "shop")
    ///     .wait_units_max(1_000)
    ///     .build()?;
    /// # Ok::<(), stockledger::StockError<u64>>(())
    /// ```
    pub fn wait_units_max(mut self, units: u64) -> Self {
        self.wait_units_max = units;
        self
    }

    /// Connects and returns the store.
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] when the URL is invalid, the server cannot be reached
    /// within the command timeout or is older than Redis 7, or the namespace is empty,
    /// longer than 256 bytes or contains `{` or `}`. Also when the kind of server is not
    /// the builder's: a builder of [`RedisStore::builder`] pointed at a Redis Cluster node
    /// (`redis_mode:cluster`) refuses to bind to that one node (whose other slots it
    /// could not reach: build it with [`RedisCluster::store`]), and one of
    /// [`RedisCluster::store`] refuses a server that is not a cluster node. On a cluster,
    /// when no seed node answers, or loading the function library on the namespace's
    /// primary fails (the other primaries are loaded too; one that fails now gets the
    /// library when it first answers "Function not found").
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let store = stockledger::RedisStore::<u64>::builder("redis://127.0.0.1/", "shop").build()?;
    /// # Ok::<(), stockledger::StockError<u64>>(())
    /// ```
    ///
    /// # Blocking
    ///
    /// Blocks while it connects (up to the command timeout).
    pub fn build(self) -> Result<RedisStore<K>, StockError<K>> {
        let namespace = &self.namespace;
        if namespace.is_empty()
            || namespace.len() > NAMESPACE_BYTES_MAX
            || namespace.contains(['{', '}'])
        {
            return Err(StockError::Unavailable {
                reason: format!(
                    "invalid namespace {namespace:?}: 1 to {NAMESPACE_BYTES_MAX} bytes without '{{' or '}}'"
                ),
            });
        }
        let wire = match &self.cluster {
            Some(cluster) => Wire::Cluster(
                Route::bind(cluster, namespace)
                    .map_err(|reason| StockError::Unavailable { reason })?,
            ),
            None => self.single_wire()?,
        };
        let command_timeout = self.command_timeout;
        let wait_replicas = self.wait_replicas.map(|(replicas, timeout)| {
            let timeout = timeout.clamp(Duration::from_millis(1), command_timeout / 2);
            (
                replicas,
                u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            )
        });
        let prefix = format!("{{{namespace}}}:");

        let keys = [
            "levels",
            "holds",
            "deadlines",
            "idempotency",
            "retired",
            "sequence",
            "events",
            "stats",
            "waiters",
            "leases",
            "queues",
            "wakes",
        ]
        .map(|name| format!("{prefix}{name}"));
        let mut random = [0_u8; 8];
        getrandom::getrandom(&mut random).map_err(super::unavailable)?;
        let store = RedisStore {
            wire,
            wait_replicas,
            namespace: namespace.clone(),
            request_prefix: format!("{:016x}-", u64::from_le_bytes(random)),
            requests_prefix: format!("{prefix}requests:"),
            requests: std::sync::atomic::AtomicU64::new(0),
            in_doubt: super::InDoubt::default(),
            wait_lease_us: u64::try_from(self.wait_lease.as_micros()).unwrap_or(u64::MAX),
            wait_units_max: self.wait_units_max,
            keys,
            timebase: Timebase::new(self.clock.now()),
            clock: self.clock,
            events: Events::new(self.event_sink),
            idempotency_retention_us: u64::try_from(self.idempotency_retention.as_micros())
                .unwrap_or(u64::MAX)
                .min(super::engine::TIME_US_MAX),
            idempotency_keys_max: self.idempotency_keys_max,
            events_max: self.events_max,
            command_timeout: self.command_timeout,
        };
        store.check_server(self.cluster.is_some(), &self.url)?;
        Ok(store)
    }

    /// The pool of connections to the single server at the builder's URL.
    fn single_wire(&self) -> Result<Wire, StockError<K>> {
        let client = redis::Client::open(self.url.as_str()).map_err(super::unavailable)?;
        let connector = Connector {
            client: client.clone(),
            command_timeout: self.command_timeout,
        };
        let pool = r2d2::Pool::builder()
            .max_size(self.pool_size)
            .min_idle(Some(1))
            .connection_timeout(self.command_timeout)
            .test_on_check_out(false)
            .build(Connector {
                client,
                command_timeout: self.command_timeout,
            })
            .map_err(super::unavailable)?;
        Ok(Wire::Single { pool, connector })
    }
}

impl<K: RedisSku> RedisStore<K> {
    /// Refuses a server older than Redis 7 (the scripts need 7.0's commands), and a
    /// cluster node for a single-server store (`cluster` false, the server at `url`) or a
    /// single server for a cluster store.
    fn check_server(&self, cluster: bool, url: &str) -> Result<(), StockError<K>> {
        let info: String = self.command(redis::cmd("INFO").arg("server"))?;
        let mode = info
            .lines()
            .find_map(|line| line.strip_prefix("redis_mode:"))
            .map(str::trim);
        match (cluster, mode) {
            (false, Some("cluster")) => {
                return Err(StockError::Unavailable {
                    reason: format!(
                        "the server at {url} is a Redis Cluster node: a store bound to one \
                         node would reach only its slots; build it with \
                         RedisCluster::new([seed URLs]).store(namespace)"
                    ),
                })
            }
            (true, mode) if mode != Some("cluster") => {
                return Err(StockError::Unavailable {
                    reason: format!(
                        "the seed nodes are not a Redis Cluster (redis_mode {mode:?}): build \
                         the store with RedisStore::builder(url, namespace)"
                    ),
                })
            }
            _ => {}
        }
        let major = info
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .and_then(|version| version.split('.').next())
            .and_then(|major| major.trim().parse::<u32>().ok());
        match major {
            Some(major) if major >= 7 => Ok(()),
            _ => Err(StockError::Unavailable {
                reason: format!("the server is not Redis 7 or later ({major:?})"),
            }),
        }
    }
}

impl<K> fmt::Debug for RedisStoreBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("namespace", &self.namespace)
            .field("cluster", &self.cluster)
            .field("wait_replicas", &self.wait_replicas)
            .field("pool_size", &self.pool_size)
            .field("command_timeout", &self.command_timeout)
            .field("event_sink", &self.event_sink.is_some())
            .field("idempotency_retention", &self.idempotency_retention)
            .field("idempotency_keys_max", &self.idempotency_keys_max)
            .field("events_max", &self.events_max)
            .field("wait_lease", &self.wait_lease)
            .field("wait_units_max", &self.wait_units_max)
            .finish_non_exhaustive()
    }
}

impl RedisCluster {
    /// A builder for the store of `namespace` on this cluster, sharing this handle's pools
    /// (the builder's [`pool_size`](RedisStoreBuilder::pool_size) and
    /// [`command_timeout`](RedisStoreBuilder::command_timeout) are this handle's, not the
    /// builder's, on a cluster).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let cluster = stockledger::RedisCluster::new(["redis://127.0.0.1:30001/"]);
    /// let store = cluster.store::<String>("eu").build()?;
    /// # Ok::<(), stockledger::StockError<String>>(())
    /// ```
    pub fn store<K: RedisSku>(&self, namespace: &str) -> RedisStoreBuilder<K> {
        RedisStoreBuilder::on_cluster(self.clone(), namespace)
    }
}
