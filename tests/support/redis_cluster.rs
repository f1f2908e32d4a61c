//! A real Redis Cluster for the tests of `RedisStore` (feature `redis`): 3 primaries and 3
//! replicas (`redis-server --cluster-enabled yes`, joined by
//! `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`) on free loopback
//! ports, each node in its own directory of one temporary directory. Every node runs under
//! a watchdog shell that kills it when its standard input closes, so dropping the cluster
//! (or the test process dying, a panic included) stops exactly the processes it started.
//!
//! A missing `redis-server` or `redis-cli` is a clear failure, never a silent skip.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the cluster may take to come up, or to settle after a fault.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// `cluster-node-timeout` of every node: a dead primary's replica takes over about this
/// long after the primary stopped answering (plus an election).
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1000);

/// Nodes of the cluster: 3 primaries, each with one replica.
const NODES: usize = 6;

/// One `redis-server` of the cluster.
#[derive(Debug)]
struct Node {
    port: u16,
    dir: PathBuf,
    /// The shell that runs the server and kills it when its standard input closes.
    watchdog: Option<(Child, ChildStdin)>,
    pid: u32,
}

impl Node {
    fn launch(port: u16, dir: PathBuf) -> Node {
        std::fs::create_dir_all(&dir).expect("the node's directory");
        let port_text = port.to_string();
        let dir_text = dir.display().to_string();
        let timeout = NODE_TIMEOUT.as_millis().to_string();
        let args = [
            "--port",
            &port_text,
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir_text,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
            "--protected-mode",
            "no",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &timeout,
            // `DEBUG SLEEP`: a primary busy for a while, so that calls outlive their timeout.
            "--enable-debug-command",
            "local",
        ];
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(r#"redis-server "$@" & pid=$!; echo $pid; cat >/dev/null; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; exit 0"#)
            .arg("sh")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts");
        let stdin = watchdog.stdin.take().expect("piped stdin");
        let mut pid = String::new();
        BufReader::new(watchdog.stdout.take().expect("piped stdout"))
            .read_line(&mut pid)
            .expect("the watchdog prints the pid");
        Node {
            port,
            dir,
            watchdog: Some((watchdog, stdin)),
            pid: pid.trim().parse().expect("a pid"),
        }
    }

    fn alive(&self) -> bool {
        self.watchdog.is_some()
    }

    /// SIGKILL, then waits until the port no longer answers.
    fn kill(&mut self) {
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            let _ = Command::new("kill")
                .args(["-9", &self.pid.to_string()])
                .status();
            drop(stdin);
            let _ = watchdog.wait();
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                assert!(Instant::now() < deadline, "the killed node still answers");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = watchdog.wait();
        }
    }
}

/// A running cluster of 3 primaries and 3 replicas, owned by the test.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts 6 nodes on free ports, joins them as 3 primaries with one replica each, and
    /// waits until every node reports `cluster_state:ok` and every replica is in sync.
    ///
    /// # Panics
    ///
    /// When `redis-server` or `redis-cli` is missing (the message names the install
    /// command), or the cluster does not come up within 30 s (the message carries the
    /// nodes' logs).
    pub fn start() -> Self {
        for binary in ["redis-server", "redis-cli"] {
            let found = Command::new(binary)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            assert!(
                found,
                "{binary} was not found on PATH: the Redis Cluster tests need real servers. \
                 Install it with `apt-get install -y redis-server` (Debian/Ubuntu; redis-cli \
                 comes with it), then run `cargo test --features redis` again."
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("stockledger-cluster-")
            .tempdir()
            .expect("a temporary directory");
        let ports = free_ports(NODES);
        let cluster = RedisCluster {
            nodes: ports
                .iter()
                .map(|port| Node::launch(*port, dir.path().join(port.to_string())))
                .collect(),
            _dir: dir,
        };
        for node in &cluster.nodes {
            cluster.wait_for(&format!("node {} to answer", node.port), || {
                query::<String>(node.port, &["PING"]).is_ok()
            });
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let output = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_settled();
        cluster
    }

    /// `redis://127.0.0.1:<port>/` of every node started (live or not), primaries first as
    /// created.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|node| url(node.port)).collect()
    }

    /// The ports of the live nodes.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.alive())
            .map(|node| node.port)
            .collect()
    }

    /// The port of the primary that owns `slot`, as a live node sees it.
    pub fn owner_of(&self, slot: u16) -> u16 {
        let port = *self.ports().first().expect("a live node");
        slot_owner(port, slot).expect("the slot has an owner")
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = *self.ports().first().expect("a live node");
        query(port, &["CLUSTER", "KEYSLOT", key]).expect("CLUSTER KEYSLOT answers")
    }

    /// The ports of the primaries that own slots now.
    /// The slot of a store namespace's keys (`{namespace}:...`).
    pub fn namespace_slot(&self, namespace: &str) -> u16 {
        self.slot_of(&format!("{{{namespace}}}"))
    }

    /// The entries of the stream `stream` on the node on `port`: `(kind, quantity,
    /// version, SKU)` each.
    pub fn stream_entries(&self, port: u16, stream: &str) -> Vec<(String, u64, u64, String)> {
        use redis::streams::StreamRangeReply;
        let reply: StreamRangeReply = self.command(port, &["XRANGE", stream, "-", "+"]);
        reply
            .ids
            .iter()
            .map(|entry| {
                let event: String = entry.get("event").unwrap();
                let mut fields = event.splitn(7, ' ');
                let kind = fields.next().unwrap().to_string();
                let numbers: Vec<u64> = fields
                    .by_ref()
                    .take(5)
                    .map(|n| n.parse().unwrap())
                    .collect();
                let sku = fields.next().unwrap().to_string();
                (kind, numbers[1], numbers[4], sku)
            })
            .collect()
    }

    pub fn primaries(&self) -> Vec<u16> {
        let mut primaries: Vec<u16> = self
            .ports()
            .into_iter()
            .filter(|port| role(*port).as_deref() == Some("master") && owns_slots(*port))
            .collect();
        primaries.sort_unstable();
        primaries
    }

    /// The port of a live replica of the primary on `primary`.
    pub fn replica_of(&self, primary: u16) -> u16 {
        let primary_id: String = query(primary, &["CLUSTER", "MYID"]).expect("CLUSTER MYID");
        self.ports()
            .into_iter()
            .find(|port| {
                let lines: String = query(*port, &["CLUSTER", "NODES"]).unwrap_or_default();
                lines.lines().any(|line| {
                    line.contains("myself") && line.contains("slave") && line.contains(&primary_id)
                })
            })
            .expect("the primary has a live replica")
    }

    /// Runs a command on the node on `port` and returns its reply.
    ///
    /// # Panics
    ///
    /// When the node cannot be reached or answers with an error.
    pub fn command<T: redis::FromRedisValue>(&self, port: u16, args: &[&str]) -> T {
        query(port, args).unwrap_or_else(|error| panic!("{args:?} on {port}: {error}"))
    }

    /// `CLUSTER FAILOVER` on the replica on `replica`, asked again while the replica refuses
    /// (its link to its primary is down a moment after a busy spell), then waits until it
    /// is a primary that owns slots.
    ///
    /// # Panics
    ///
    /// When the replica refuses or does not take over for 30 s.
    pub fn failover(&self, replica: u16) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while let Err(error) = query::<String>(replica, &["CLUSTER", "FAILOVER"]) {
            assert!(
                Instant::now() < deadline,
                "CLUSTER FAILOVER refused: {error}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.until_primary(replica);
    }

    /// Waits until the node on `port` is a primary that owns slots.
    ///
    /// # Panics
    ///
    /// When that takes longer than 30 s.
    pub fn until_primary(&self, port: u16) {
        self.wait_for(&format!("{port} to take over"), || {
            self.primaries().contains(&port)
        });
    }

    /// Moves `slot` from the primary on `from` to the one on `to` live, as
    /// `redis-cli --cluster reshard` does: IMPORTING, MIGRATING, `MIGRATE ... KEYS` in
    /// batches of 3 keys with pauses (so that calls meet every stage), then
    /// `SETSLOT ... NODE` on both and on every other primary.
    ///
    /// # Panics
    ///
    /// When a node refuses a step.
    pub fn migrate_slot(&self, slot: u16, from: u16, to: u16) {
        let slot_text = slot.to_string();
        let from_id: String = self.command(from, &["CLUSTER", "MYID"]);
        let to_id: String = self.command(to, &["CLUSTER", "MYID"]);
        let _: String = self.command(
            to,
            &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from_id],
        );
        let _: String = self.command(
            from,
            &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to_id],
        );
        std::thread::sleep(Duration::from_millis(150));
        let to_text = to.to_string();
        loop {
            let keys: Vec<String> =
                self.command(from, &["CLUSTER", "GETKEYSINSLOT", &slot_text, "3"]);
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_text, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            let _: String = self.command(from, &args);
            std::thread::sleep(Duration::from_millis(100));
        }
        for port in [to, from] {
            let _: String = self.command(port, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]);
        }
        for port in self.primaries() {
            let _: Result<String, _> =
                query(port, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]);
        }
    }

    /// `kill -9` of the node on `port`; waits until it no longer answers.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.port == port)
            .expect("a node of this cluster");
        node.kill();
    }

    /// Waits until every live node says `cluster_state:ok`, all of them agree on the owner
    /// of every slot, and every live replica's link to its primary is up.
    ///
    /// # Panics
    ///
    /// When that takes longer than 30 s.
    pub fn wait_settled(&self) {
        self.wait_for("the cluster to settle", || {
            let ports = self.ports();
            let all_ok = ports.iter().all(|port| {
                query::<String>(*port, &["CLUSTER", "INFO"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            let owners: Vec<Option<u16>> = (0..3)
                .map(|third| third * 5461 + 100)
                .flat_map(|slot| ports.iter().map(move |port| slot_owner(*port, slot)))
                .collect();
            let agree = owners
                .chunks(ports.len())
                .all(|views| views.iter().all(|view| view.is_some() && *view == views[0]));
            let replicas_synced = ports.iter().all(|port| {
                let Ok(info) = query::<String>(*port, &["INFO", "replication"]) else {
                    return false;
                };
                !info.contains("role:slave") || info.contains("master_link_status:up")
            });
            all_ok && agree && replicas_synced
        });
    }

    fn wait_for(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !ready() {
            if Instant::now() > deadline {
                let logs: String = self
                    .nodes
                    .iter()
                    .map(|node| {
                        let log =
                            std::fs::read_to_string(node.dir.join("redis.log")).unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(15).collect();
                        let tail: Vec<&str> = tail.into_iter().rev().collect();
                        format!("--- node {}:\n{}\n", node.port, tail.join("\n"))
                    })
                    .collect();
                panic!("timed out waiting for {what}:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `redis://127.0.0.1:<port>/`.
pub fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/")
}

/// One command on a fresh connection to the node on `port` (1 s timeouts).
pub fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let client = redis::Client::open(url(port))?;
    let mut connection = client.get_connection_with_timeout(Duration::from_secs(1))?;
    connection.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query(&mut connection)
}

/// `role:` of `INFO replication` on `port`.
fn role(port: u16) -> Option<String> {
    let info: String = query(port, &["INFO", "replication"]).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("role:"))
        .map(|role| role.trim().to_string())
}

/// The node on `port` owns at least one slot (it says so in `CLUSTER NODES`).
fn owns_slots(port: u16) -> bool {
    let Ok(nodes) = query::<String>(port, &["CLUSTER", "NODES"]) else {
        return false;
    };
    nodes
        .lines()
        .find(|line| line.contains("myself"))
        .is_some_and(|line| line.split(' ').count() > 8)
}

/// The port of the owner of `slot` as the node on `port` sees it (`CLUSTER SLOTS`).
pub fn slot_owner(port: u16, slot: u16) -> Option<u16> {
    let ranges: Vec<redis::Value> = query(port, &["CLUSTER", "SLOTS"]).ok()?;
    for range in ranges {
        let redis::Value::Array(range) = range else {
            continue;
        };
        let bound = |index: usize| match range.get(index) {
            Some(redis::Value::Int(value)) => Some(*value),
            _ => None,
        };
        let (Some(first), Some(last)) = (bound(0), bound(1)) else {
            continue;
        };
        if (first..=last).contains(&i64::from(slot)) {
            let Some(redis::Value::Array(primary)) = range.get(2) else {
                return None;
            };
            return match primary.get(1) {
                Some(redis::Value::Int(port)) => u16::try_from(*port).ok(),
                _ => None,
            };
        }
    }
    None
}

/// `count` ports nobody listens on, each with its cluster bus port (`port + 10000`) free.
fn free_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(count);
    while ports.len() < count {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        if port > 55_000 || ports.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            ports.push(port);
        }
    }
    ports
}
