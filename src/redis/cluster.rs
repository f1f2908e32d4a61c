//! `RedisStore` on a Redis Cluster: the shared handle of a cluster's connection pools
//! ([`RedisCluster`]) and the route of one namespace's slot to its primary (`Route`).
//!
//! A namespace is one slot (every key under the hash tag `{namespace}`), so a store talks
//! to one primary: the route keeps that primary's address, follows `MOVED` (the slot moved
//! for good: a failover or a finished migration), `ASK` with `ASKING` (a migration under
//! way), and waits out `TRYAGAIN`, `CLUSTERDOWN` and friends (a migration or failover under
//! way). All of these mean the call did not run, so they are followed freely. A call whose
//! outcome is unknown (the connection failed or timed out after the call was sent) is sent
//! again only under its request id, at most once, as on a single server: the script
//! answers a resend with the answer it recorded.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use redis::{
    ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, ServerErrorKind, Value,
};
use scheduled_thread_pool::ScheduledThreadPool;

use super::engine::{self, Connector, Link, COMMAND_TIMEOUT, POOL_SIZE};

/// How long a call on a cluster follows redirects and waits for a failover or a migration
/// to finish by default before it is [`StockError::Unavailable`](crate::StockError).
///
/// A replica takes over about `cluster-node-timeout` (15 s by default in Redis) after its
/// primary stopped answering, so keep this above the cluster's `cluster-node-timeout` plus
/// a second or two, and well under [`RedisStore::REQUEST_RETENTION`](super::RedisStore)
/// (60 s), the time within which a resent call gets its first answer back.
///
/// # Examples
///
/// ```
/// assert_eq!(stockledger::FAILOVER_TIMEOUT, std::time::Duration::from_secs(20));
/// ```
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);

/// Most redirects and waits one call follows before it gives up (a bound beside the
/// failover timeout, against a redirect loop between nodes that disagree).
const REROUTES_MAX: usize = 256;

/// The longest pause between two attempts while a slot has no reachable owner.
const PAUSE_MAX: Duration = Duration::from_millis(200);

/// A handle on a Redis Cluster that many [`RedisStore`](super::RedisStore)s share: one
/// connection pool per node (created on first use), the seed nodes to learn the cluster
/// from, and the settings of its connections. Cloning it is cheap (an `Arc`); the clones
/// share the pools.
///
/// Each namespace is one slot (its keys share the hash tag `{namespace}`), so each store
/// talks to the one primary that owns its slot, and a cluster of `p` primaries serves `p`
/// times the calls of one server only when the namespaces spread over the primaries: give
/// each warehouse, region or tenant a namespace, and check where they landed with
/// `CLUSTER KEYSLOT {namespace}` and `CLUSTER SLOTS` (or move slots with
/// `redis-cli --cluster reshard`). Stores built from one handle share its pools: a store
/// per namespace costs no connections of its own.
///
/// # Failovers, migrations, lost replies
///
/// A store follows its slot: `MOVED` (after a failover or a finished slot migration) makes
/// it call the new owner from then on, `ASK` makes it send `ASKING` and the call to the
/// importing node, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `LOADING` and `READONLY` make
/// it wait a little, read `CLUSTER SLOTS` again and retry, for up to the
/// [`failover_timeout`](Self::failover_timeout). The script did not run in any of these
/// cases, so following them never applies a call twice. A call whose connection fails or
/// times out after it was sent (its outcome unknown) is sent again once, on a fresh
/// connection to the slot's owner of then, under the same request id (the script answers
/// with the answer it recorded, see [`RedisStore`](super::RedisStore)'s "Failures"); a
/// second such failure is `Unavailable`. So a store follows a failover without being
/// rebuilt, and a hold opened before it can be committed after it.
///
/// Redis replicates asynchronously: a primary killed (`kill -9`, a lost host) can take the
/// last writes it acknowledged with it, request records included. Build stores with
/// [`wait_replicas`](super::RedisStoreBuilder::wait_replicas) to have each change confirmed by
/// replicas before its call returns.
///
/// During a live slot migration the namespace's scripts, which declare every key of the
/// namespace (some of which may not exist), are refused with `TRYAGAIN` until the
/// migration finishes: the calls wait (up to the failover timeout) and then run whole on
/// the new owner, or are [`StockError::Unavailable`](crate::StockError) having changed
/// nothing.
///
/// # Why plain connections, not redis-rs's `ClusterConnection`
///
/// A store needs one route (its slot's primary) and must decide itself which failures may
/// be resent. redis-rs's cluster client (`ClusterConnection`, redis-rs 1.8) resends a
/// command on its own after an I/O error or a timeout, each time as a new call: measured
/// with `examples/redis_cluster_resends.rs`, one script that outlived its 100 ms response
/// timeout (its primary busy for 0.8 s) ran 8 times with the default retries, while
/// `RedisStore` sold once. One counter bounds its redirects and its resends alike, so
/// `retries(0)` runs such a call once but also follows no `MOVED` or `ASK`. It also keeps
/// a connection to every node per client and has no pool. Plain pooled connections to the
/// slot's owner, found with `CLUSTER SLOTS` and kept up to date from `MOVED`, keep the
/// single-server path (the same pools, the same resend under the request id) and add no
/// dependency.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use stockledger::{RedisCluster, RedisStore, StockStore};
///
/// let cluster = RedisCluster::new(["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/"])
///     .pool_size(8)
///     .command_timeout(Duration::from_secs(1));
/// // One store per namespace, all on the same pools.
/// let eu: RedisStore<String> = cluster.store("eu").build()?;
/// let us: RedisStore<String> = cluster
///     .store("us")
///     .wait_replicas(1, Duration::from_millis(100))
///     .build()?;
/// eu.restock(&"SKU1004".to_string(), 10)?;
/// us.restock(&"SKU1004".to_string(), 5)?;
/// # Ok::<(), stockledger::StockError<String>>(())
/// ```
#[derive(Clone)]
pub struct RedisCluster {
    inner: Arc<Inner>,
}

struct Inner {
    /// The URLs the cluster is learnt from; the first that parses also gives every node's
    /// connection settings (user, password, protocol), with the node's address.
    seeds: Vec<String>,
    /// Connections per node at most.
    pool_size: u32,
    command_timeout: Duration,
    failover_timeout: Duration,
    /// The connection settings of the first seed that parses (set on first use).
    template: OnceLock<Result<ConnectionInfo, String>>,
    /// A pool per node, by `host:port`.
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    /// The nodes this handle loaded the function library on.
    loaded: Mutex<HashSet<String>>,
    /// The one maintenance thread of every node's pool (started with the first pool).
    threads: OnceLock<Arc<ScheduledThreadPool>>,
}

/// One node: its pool and the connector of a resend's fresh connection.
pub(crate) struct Node {
    address: String,
    pool: r2d2::Pool<Connector>,
    connector: Connector,
}

impl RedisCluster {
    /// A handle on the cluster reachable through any of `seeds` (`redis://host:port/`
    /// URLs of some of its nodes, primaries or replicas), with the default settings:
    /// [`POOL_SIZE`] connections per node, [`COMMAND_TIMEOUT`] and [`FAILOVER_TIMEOUT`].
    /// Connects to nothing yet: the first [`store`](Self::store)'s `build` does, and
    /// reports a bad URL or an unreachable cluster.
    ///
    /// # Examples
    ///
    /// ```
    /// let cluster = stockledger::RedisCluster::new(["redis://127.0.0.1:30001/"]);
    /// assert_eq!(cluster.seeds(), ["redis://127.0.0.1:30001/"]);
    /// ```
    pub fn new<I, S>(seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_settings(
            seeds.into_iter().map(Into::into).collect(),
            POOL_SIZE,
            COMMAND_TIMEOUT,
            FAILOVER_TIMEOUT,
        )
    }

    fn with_settings(
        seeds: Vec<String>,
        pool_size: u32,
        command_timeout: Duration,
        failover_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                seeds,
                pool_size,
                command_timeout,
                failover_timeout,
                template: OnceLock::new(),
                nodes: Mutex::new(HashMap::new()),
                loaded: Mutex::new(HashSet::new()),
                threads: OnceLock::new(),
            }),
        }
    }

    /// At most `pool_size` connections to each node (at least 1; default [`POOL_SIZE`]).
    /// Set it before building stores: the handle it returns has fresh, empty pools
    /// (clones made before keep theirs).
    ///
    /// # Examples
    ///
    /// ```
    /// let cluster = stockledger::RedisCluster::new(["redis://127.0.0.1:30001/"]).pool_size(4);
    /// # let _ = cluster;
    /// ```
    #[must_use = "the setting is on the returned handle"]
    pub fn pool_size(self, pool_size: u32) -> Self {
        let inner = &self.inner;
        Self::with_settings(
            inner.seeds.clone(),
            pool_size.max(1),
            inner.command_timeout,
            inner.failover_timeout,
        )
    }

    /// The command timeout of every connection (default [`COMMAND_TIMEOUT`]; at least
    /// 10 ms), as [`RedisStoreBuilder::command_timeout`](super::RedisStoreBuilder::command_timeout) on a single server. Set it before
    /// building stores (see [`pool_size`](Self::pool_size)).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let cluster = stockledger::RedisCluster::new(["redis://127.0.0.1:30001/"])
    ///     .command_timeout(Duration::from_millis(500));
    /// # let _ = cluster;
    /// ```
    #[must_use = "the setting is on the returned handle"]
    pub fn command_timeout(self, timeout: Duration) -> Self {
        let inner = &self.inner;
        Self::with_settings(
            inner.seeds.clone(),
            inner.pool_size,
            timeout.max(Duration::from_millis(10)),
            inner.failover_timeout,
        )
    }

    /// How long one call follows redirects and waits for its slot's owner (a failover, a
    /// migration) before it is [`StockError::Unavailable`](crate::StockError) (default
    /// [`FAILOVER_TIMEOUT`]). Set it before building stores (see
    /// [`pool_size`](Self::pool_size)).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let cluster = stockledger::RedisCluster::new(["redis://127.0.0.1:30001/"])
    ///     .failover_timeout(Duration::from_secs(5));
    /// # let _ = cluster;
    /// ```
    #[must_use = "the setting is on the returned handle"]
    pub fn failover_timeout(self, timeout: Duration) -> Self {
        let inner = &self.inner;
        Self::with_settings(
            inner.seeds.clone(),
            inner.pool_size,
            inner.command_timeout,
            timeout,
        )
    }

    /// The seed URLs this handle learns the cluster from.
    ///
    /// # Examples
    ///
    /// ```
    /// let cluster = stockledger::RedisCluster::new(vec!["redis://127.0.0.1:30001/".to_string()]);
    /// assert_eq!(cluster.seeds().len(), 1);
    /// ```
    pub fn seeds(&self) -> &[String] {
        &self.inner.seeds
    }

    pub(crate) fn command_timeout_of(&self) -> Duration {
        self.inner.command_timeout
    }

    /// The connection settings of the node at `address` (`host:port`).
    fn info_of(&self, address: &str) -> Result<ConnectionInfo, String> {
        let template = self
            .inner
            .template
            .get_or_init(|| {
                let mut last = "no seed nodes given".to_string();
                for seed in &self.inner.seeds {
                    match seed.as_str().into_connection_info() {
                        Ok(info) => return Ok(info),
                        Err(error) => last = format!("seed {seed:?}: {error}"),
                    }
                }
                Err(last)
            })
            .clone()?;
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("not a node address: {address:?}"))?;
        Ok(template.set_addr(ConnectionAddr::Tcp(host.to_string(), port)))
    }

    /// The node at `address` (`host:port`), its pool created on first use.
    fn node(&self, address: &str) -> Result<Arc<Node>, String> {
        let mut nodes = self
            .inner
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(node) = nodes.get(address) {
            return Ok(Arc::clone(node));
        }
        let client = redis::Client::open(self.info_of(address)?).map_err(|e| e.to_string())?;
        let timeout = self.inner.command_timeout;
        let pool = r2d2::Pool::builder()
            .max_size(self.inner.pool_size)
            .min_idle(Some(0))
            .connection_timeout(timeout)
            .test_on_check_out(false)
            .thread_pool(Arc::clone(self.inner.threads.get_or_init(|| {
                Arc::new(
                    ScheduledThreadPool::builder()
                        .num_threads(1)
                        .thread_name_pattern("stockledger-redis-{}")
                        .build(),
                )
            })))
            .build_unchecked(Connector {
                client: client.clone(),
                command_timeout: timeout,
            });
        let node = Arc::new(Node {
            address: address.to_string(),
            pool,
            connector: Connector {
                client,
                command_timeout: timeout,
            },
        });
        nodes.insert(address.to_string(), Arc::clone(&node));
        Ok(node)
    }

    /// Addresses to ask about the cluster: the seeds', then every node met since.
    fn candidates(&self) -> Vec<String> {
        let mut addresses: Vec<String> = self
            .inner
            .seeds
            .iter()
            .filter_map(
                |seed| match seed.as_str().into_connection_info().ok()?.addr() {
                    ConnectionAddr::Tcp(host, port) => Some(format!("{host}:{port}")),
                    _ => None,
                },
            )
            .collect();
        let nodes = self
            .inner
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for address in nodes.keys() {
            if !addresses.contains(address) {
                addresses.push(address.clone());
            }
        }
        addresses
    }

    /// Runs `command` on a fresh connection to the node at `address`.
    fn ask(&self, address: &str, command: &redis::Cmd) -> Result<Value, String> {
        let node = self.node(address)?;
        let mut link =
            r2d2::ManageConnection::connect(&node.connector).map_err(|e| e.to_string())?;
        command
            .query(&mut link.connection)
            .map_err(|error| error.to_string())
    }

    /// The cluster's view of `slot` from the first node that answers `CLUSTER SLOTS`:
    /// the owner's address, and every primary's.
    fn slots(&self, slot: u16) -> Result<(String, Vec<String>), String> {
        let mut last = "no node to ask".to_string();
        for address in self.candidates() {
            match self
                .ask(&address, redis::cmd("CLUSTER").arg("SLOTS"))
                .and_then(|reply| owners(&reply, slot))
            {
                Ok((Some(owner), primaries)) => return Ok((owner, primaries)),
                Ok((None, _)) => last = format!("{address}: no node owns slot {slot}"),
                Err(error) => last = format!("{address}: {error}"),
            }
        }
        Err(last)
    }

    /// Loads the function library on the node at `address`, once per handle.
    fn load_library(&self, address: &str) -> Result<(), String> {
        let loaded = self
            .inner
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(address);
        if loaded {
            return Ok(());
        }
        let node = self.node(address)?;
        let mut link = node.pool.get().map_err(|e| format!("{address}: {e}"))?;
        engine::load_library(&mut link.connection).map_err(|e| format!("{address}: {e}"))?;
        self.inner
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(address.to_string());
        Ok(())
    }
}

// Shared by the stores of many threads.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<RedisCluster>();
    send_sync::<Route>();
};

/// The owner of `slot` and every primary's address in a `CLUSTER SLOTS` reply.
fn owners(reply: &Value, slot: u16) -> Result<(Option<String>, Vec<String>), String> {
    let Value::Array(ranges) = reply else {
        return Err(engine::malformed("CLUSTER SLOTS is not an array"));
    };
    let mut owner = None;
    let mut primaries = Vec::new();
    for range in ranges {
        let Value::Array(range) = range else {
            return Err(engine::malformed("a slot range is not an array"));
        };
        let first = engine::number(range.first())?;
        let last = engine::number(range.get(1))?;
        let Some(Value::Array(primary)) = range.get(2) else {
            return Err(engine::malformed("a slot range without its primary"));
        };
        let address = format!(
            "{}:{}",
            engine::text(primary.first())?,
            engine::number(primary.get(1))?
        );
        if (first..=last).contains(&u64::from(slot)) {
            owner = Some(address.clone());
        }
        if !primaries.contains(&address) {
            primaries.push(address);
        }
    }
    Ok((owner, primaries))
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self
            .inner
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        f.debug_struct("RedisCluster")
            .field("seeds", &self.inner.seeds)
            .field("nodes", &nodes)
            .field("pool_size", &self.inner.pool_size)
            .field("command_timeout", &self.inner.command_timeout)
            .field("failover_timeout", &self.inner.failover_timeout)
            .finish()
    }
}

/// The route of one namespace's slot: the cluster's pools and the slot's owner as last
/// seen.
pub(crate) struct Route {
    cluster: RedisCluster,
    slot: u16,
    /// The node that owns the slot, as last learnt (`CLUSTER SLOTS`, `MOVED`).
    owner: Mutex<Arc<Node>>,
}

impl Route {
    /// Finds the slot of `namespace` and its owner from the seeds, and loads the function
    /// library on every primary.
    pub(crate) fn bind(cluster: &RedisCluster, namespace: &str) -> Result<Self, String> {
        let key = format!("{{{namespace}}}");
        let mut last = "no seed nodes given".to_string();
        let mut slot = None;
        for address in cluster.candidates() {
            match cluster.ask(&address, redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key)) {
                Ok(Value::Int(number)) => {
                    slot = u16::try_from(number).ok();
                    break;
                }
                Ok(_) => last = engine::malformed("CLUSTER KEYSLOT is not a number"),
                Err(error) if error.contains("cluster support disabled") => {
                    return Err(format!(
                        "the seed node {address} is not a Redis Cluster node (cluster support \
                         disabled): build the store with RedisStore::builder(url, namespace)"
                    ));
                }
                Err(error) => last = format!("{address}: {error}"),
            }
        }
        let slot = slot.ok_or_else(|| format!("no seed node answered CLUSTER KEYSLOT: {last}"))?;
        let (owner, primaries) = cluster.slots(slot)?;
        // The owner must take the library now; another primary that fails to (down, or
        // failing over) gets it when it first answers "Function not found".
        cluster.load_library(&owner)?;
        for primary in primaries.iter().filter(|primary| **primary != owner) {
            let _ = cluster.load_library(primary);
        }
        Ok(Self {
            owner: Mutex::new(cluster.node(&owner)?),
            cluster: cluster.clone(),
            slot,
        })
    }

    fn owner(&self) -> Arc<Node> {
        Arc::clone(&self.owner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn set_owner(&self, address: &str) {
        if let Ok(node) = self.cluster.node(address) {
            *self.owner.lock().unwrap_or_else(PoisonError::into_inner) = node;
        }
    }

    /// Reads the slot's owner again from the cluster (after a failure that may mean a
    /// failover); keeps the last one when no node answers.
    fn refresh(&self) {
        if let Ok((owner, _)) = self.cluster.slots(self.slot) {
            self.set_owner(&owner);
        }
    }

    /// `send` on a connection to the slot's owner, following redirects (the call did not
    /// run) until the failover timeout, and resending once under the same request id
    /// (`again`) on a fresh connection when an attempt's outcome is unknown. Returns the
    /// reply, or the reason it failed.
    pub(crate) fn send(
        &self,
        send: impl Fn(&mut redis::Connection, bool) -> redis::RedisResult<Value>,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + self.cluster.inner.failover_timeout;
        let mut again = false;
        let mut lost: Option<String> = None;
        let mut asking: Option<Arc<Node>> = None;
        let mut last = String::new();
        let mut pause = Duration::from_millis(5);
        for _ in 0..REROUTES_MAX {
            let ask = asking.take();
            let node = ask.clone().unwrap_or_else(|| self.owner());
            let (mut pooled, mut fresh);
            let link: &mut Link = if again {
                match r2d2::ManageConnection::connect(&node.connector) {
                    Ok(link) => {
                        fresh = link;
                        &mut fresh
                    }
                    Err(error) => {
                        last = format!("{}: {error}", node.address);
                        if !self.wait(deadline, &mut pause) {
                            break;
                        }
                        continue;
                    }
                }
            } else {
                match node.pool.get() {
                    Ok(link) => {
                        pooled = link;
                        &mut pooled
                    }
                    Err(error) => {
                        // Nothing was sent: the node is down, or every connection busy.
                        last = format!("{}: {error}", node.address);
                        if !self.wait(deadline, &mut pause) {
                            break;
                        }
                        continue;
                    }
                }
            };
            let asked = match ask {
                Some(_) => redis::cmd("ASKING").query::<()>(&mut link.connection),
                None => Ok(()),
            };
            let error = match asked.and_then(|()| send(&mut link.connection, again)) {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            last = format!("{}: {error}", node.address);
            match error.kind() {
                ErrorKind::Server(ServerErrorKind::Moved) => {
                    if let Some((address, _)) = error.redirect_node() {
                        self.set_owner(address);
                    }
                }
                ErrorKind::Server(ServerErrorKind::Ask) => {
                    asking = error
                        .redirect_node()
                        .and_then(|(address, _)| self.cluster.node(address).ok());
                }
                // A migration under way, or a loading node: the owner is right, wait.
                ErrorKind::Server(ServerErrorKind::TryAgain | ServerErrorKind::BusyLoading) => {
                    if !self.pause(deadline, &mut pause) {
                        break;
                    }
                }
                // A failover under way: wait, then ask who owns the slot now.
                ErrorKind::Server(
                    ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly,
                ) => {
                    if !self.wait(deadline, &mut pause) {
                        break;
                    }
                }
                // The server ran the command and answered with an error: final.
                ErrorKind::Server(_) => return Err(last),
                // Cut or timed out after the call was sent: its outcome is unknown.
                _ => {
                    link.broken = true;
                    if let Some(first) = lost {
                        return Err(format!("{first}; sent again: {last}"));
                    }
                    lost = Some(last.clone());
                    again = true;
                    self.refresh();
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(match lost {
            Some(first) => format!("{first}; sent again: {last}"),
            None => format!("the call did not run: {last}"),
        })
    }

    /// Pauses before the next attempt and reads the slot's owner again; `false` once the
    /// deadline has passed.
    fn wait(&self, deadline: Instant, pause: &mut Duration) -> bool {
        if !self.pause(deadline, pause) {
            return false;
        }
        self.refresh();
        Instant::now() < deadline
    }

    /// Pauses before the next attempt (twice as long as the last time, up to
    /// [`PAUSE_MAX`]); `false` once the deadline has passed.
    fn pause(&self, deadline: Instant, pause: &mut Duration) -> bool {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep((*pause).min(deadline.saturating_duration_since(Instant::now())));
        *pause = (*pause * 2).min(PAUSE_MAX);
        Instant::now() < deadline
    }

    /// `(connections, idle connections)` of the owner's pool.
    pub(crate) fn state(&self) -> (u32, u32) {
        let state = self.owner().pool.state();
        (state.connections, state.idle_connections)
    }

    /// `host:port` of the slot's owner as last learnt.
    pub(crate) fn owner_address(&self) -> String {
        self.owner().address.clone()
    }
}
