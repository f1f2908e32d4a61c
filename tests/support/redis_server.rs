//! A real `redis-server` for the tests of `RedisStore` (feature `redis`): started from
//! `PATH` on a free port in a temporary directory, stopped when dropped or when the test
//! process exits (as redis-rs's `redis-test/src/server.rs` does).
//!
//! A missing `redis-server` is a clear failure, never a silent skip.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a starting server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How the server keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// In memory only (fast; for tests that never restart the server).
    Memory,
    /// `appendonly yes`, `appendfsync always`: every acknowledged write survives a
    /// restart.
    AppendFsyncAlways,
}

/// A running `redis-server`, owned by the test.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    durability: Durability,
    /// The shell that runs the server: it kills the server (and removes `dir` when asked)
    /// when its standard input closes, so a test process that dies leaves no server behind.
    watchdog: Option<(Child, ChildStdin)>,
    /// The server's process id.
    pid: u32,
    _dir_guard: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts a server on a free port in a new temporary directory.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not on `PATH` (the message names the install command) or
    /// does not answer `PING` within 20 s.
    pub fn start(durability: Durability) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("stockledger-redis-")
            .tempdir()
            .expect("a temporary directory");
        let mut server = RedisServer {
            port: free_port(),
            dir: dir.path().to_path_buf(),
            durability,
            watchdog: None,
            pid: 0,
            _dir_guard: Some(dir),
        };
        server.launch();
        server
    }

    /// The URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port this server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server with SIGKILL (no shutdown, no final save) and waits until it is
    /// gone.
    pub fn kill(&mut self) {
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            let status = Command::new("kill")
                .args(["-9", &self.pid.to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill -9 {} failed", self.pid);
            drop(stdin);
            let _ = watchdog.wait();
            let deadline = Instant::now() + START_TIMEOUT;
            while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                assert!(Instant::now() < deadline, "the killed server still answers");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the server again on the same port and directory (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn launch(&mut self) {
        let binary_found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            binary_found,
            "redis-server was not found on PATH: the RedisStore tests need a real server. \
             Install it with `apt-get install -y redis-server` (Debian/Ubuntu), then run \
             `cargo test --features redis` again."
        );
        let port = self.port.to_string();
        let dir = self.dir.display().to_string();
        let mut args = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir,
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
            "--protected-mode",
            "no",
        ];
        if self.durability == Durability::AppendFsyncAlways {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
        }
        // The watchdog shell prints the server's pid, then kills the server as soon as its
        // standard input closes (the test dropped it, or the test process exited).
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(r#"redis-server "$@" & pid=$!; echo $pid; cat >/dev/null; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; exit 0"#)
            .arg("sh")
            .args(&args)
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
        self.pid = pid.trim().parse().expect("a pid");
        self.watchdog = Some((watchdog, stdin));
        self.wait_ready();
    }

    /// Waits until the server answers `PING` (and has loaded its append-only file).
    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ping(self.port) {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                panic!("redis-server on port {} did not start:\n{log}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = watchdog.wait();
        }
    }
}

/// `PING` answered `+PONG` on `port`.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut answer = [0_u8; 7];
    stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// One in-memory server shared by the tests of this test binary; it stops when the
/// process exits.
pub fn shared() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start(Durability::Memory))
}

/// A namespace no other store of this run uses.
pub fn fresh_namespace(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
