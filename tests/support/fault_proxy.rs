//! A fault-injecting TCP proxy for the tests of `RedisStore` (feature `redis`): it sits
//! between the store and a real `redis-server`, forwards requests and replies, and on
//! demand loses chosen replies (after the server applied the call), cuts connections
//! before a request reaches the server, or severs every connection (a client whose host
//! died or was cut off).
//!
//! Replies are framed with a small RESP reader, so a rule acts on one whole reply: a
//! dropped reply is swallowed and its connection cut, as a reply lost with its TCP
//! connection would be.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// What the proxy does to the traffic now.
#[derive(Debug, Default)]
struct Rules {
    /// Replies containing the bytes are lost (the count of each: how many more).
    lose_matching: Vec<(Vec<u8>, usize)>,
    /// Requests containing the bytes are held this long before they go on to the server
    /// (the count of each: how many more).
    delay_matching: Vec<(Vec<u8>, std::time::Duration, usize)>,
    /// A reply containing these bytes is lost and the proxy severs every connection (see
    /// `FaultProxy::sever`).
    sever_at: Option<Vec<u8>>,
    /// Each reply is lost with this chance (per million).
    lose_per_million: u64,
    /// Each request is cut (its connection closed before it reaches the server) with this
    /// chance (per million).
    cut_per_million: u64,
    /// The state of the proxy's random numbers (xorshift).
    random: u64,
}

impl Rules {
    fn chance(&mut self, per_million: u64) -> bool {
        if per_million == 0 {
            return false;
        }
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        self.random % 1_000_000 < per_million
    }
}

#[derive(Debug, Default)]
struct Shared {
    rules: Mutex<Rules>,
    /// Both ends of every open connection, to cut them all at once.
    open: Mutex<Vec<(TcpStream, TcpStream)>>,
    severed: AtomicBool,
    lost: AtomicU64,
    cut: AtomicU64,
    /// Requests held by a delay rule that went on to the server.
    delayed: AtomicU64,
}

/// A proxy on a free port of 127.0.0.1 in front of `127.0.0.1:upstream`; it stops
/// accepting when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Starts a proxy in front of the server listening on `upstream`.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("a free port");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        shared.rules.lock().unwrap().random = 0x9e37_79b9_7f4a_7c15;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    if shared.severed.load(Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    connect(&shared, client, server);
                }
            });
        }
        FaultProxy { port, shared, stop }
    }

    /// The URL of the proxied server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Loses the next `times` replies that contain `pattern` (the server applied their
    /// calls), cutting their connections.
    pub fn lose_replies_containing(&self, pattern: &[u8], times: usize) {
        let mut rules = self.shared.rules.lock().unwrap();
        rules.lose_matching.push((pattern.to_vec(), times));
    }

    /// Holds the next `times` requests that contain `pattern` for `delay` before they go on
    /// to the server (on their connection, even if the client gave up on it meanwhile): a
    /// call held up on its way, which a resend can overtake.
    pub fn delay_requests_containing(
        &self,
        pattern: &[u8],
        delay: std::time::Duration,
        times: usize,
    ) {
        let mut rules = self.shared.rules.lock().unwrap();
        rules.delay_matching.push((pattern.to_vec(), delay, times));
    }

    /// Loses the next reply that contains `pattern` (the server applied its call), severs
    /// every connection and refuses new ones: the client's host died as that reply was on
    /// its way.
    pub fn sever_at_reply_containing(&self, pattern: &[u8]) {
        self.shared.rules.lock().unwrap().sever_at = Some(pattern.to_vec());
    }

    /// Loses each reply with chance `lose_per_million` / 10^6 and cuts each request's
    /// connection before it reaches the server with chance `cut_per_million` / 10^6.
    pub fn random_faults(&self, lose_per_million: u64, cut_per_million: u64, seed: u64) {
        let mut rules = self.shared.rules.lock().unwrap();
        rules.lose_per_million = lose_per_million;
        rules.cut_per_million = cut_per_million;
        rules.random = seed | 1;
    }

    /// Cuts every open connection and refuses new ones until [`heal`](Self::heal): the
    /// store behind it is cut off (as if its host died).
    pub fn sever(&self) {
        self.shared.severed.store(true, Ordering::SeqCst);
        cut_all(&self.shared);
    }

    /// Accepts connections again after [`sever`](Self::sever).
    pub fn heal(&self) {
        self.shared.severed.store(false, Ordering::SeqCst);
    }

    /// How many replies were lost so far.
    pub fn lost(&self) -> u64 {
        self.shared.lost.load(Ordering::SeqCst)
    }

    /// How many requests held by [`delay_requests_containing`](Self::delay_requests_containing)
    /// went on to the server so far.
    pub fn delayed(&self) -> u64 {
        self.shared.delayed.load(Ordering::SeqCst)
    }

    /// How many requests were cut so far.
    pub fn cut(&self) -> u64 {
        self.shared.cut.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        cut_all(&self.shared);
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn cut_all(shared: &Shared) {
    for (client, server) in shared.open.lock().unwrap().drain(..) {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    }
}

/// Pumps one connection both ways on two threads.
fn connect(shared: &Arc<Shared>, client: TcpStream, server: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    shared.open.lock().unwrap().push((client_copy, server_copy));
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    {
        let shared = Arc::clone(shared);
        let (client, server) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        thread::spawn(move || {
            let mut buffer = [0_u8; 16 * 1024];
            while let Ok(read) = client_in.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                let cut = shared.rules.lock().unwrap().chance_cut();
                if cut {
                    shared.cut.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                let delay = shared.rules.lock().unwrap().delay(&buffer[..read]);
                if let Some(delay) = delay {
                    thread::sleep(delay);
                }
                let written = server_out.write_all(&buffer[..read]);
                if delay.is_some() {
                    shared.delayed.fetch_add(1, Ordering::SeqCst);
                }
                if written.is_err() {
                    break;
                }
            }
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        });
    }
    let shared = Arc::clone(shared);
    thread::spawn(move || {
        let (mut server_in, mut client_out) = (server, client);
        let mut pending: Vec<u8> = Vec::new();
        let mut buffer = [0_u8; 16 * 1024];
        'pump: while let Ok(read) = server_in.read(&mut buffer) {
            if read == 0 {
                break;
            }
            pending.extend_from_slice(&buffer[..read]);
            while let Some(end) = frame_end(&pending, 0) {
                let reply: Vec<u8> = pending.drain(..end).collect();
                if shared.rules.lock().unwrap().lose(&reply) {
                    shared.lost.fetch_add(1, Ordering::SeqCst);
                    break 'pump;
                }
                let sever = {
                    let mut rules = shared.rules.lock().unwrap();
                    let hit = rules.sever_at.as_ref().is_some_and(|pattern| {
                        reply.windows(pattern.len()).any(|window| window == pattern)
                    });
                    if hit {
                        rules.sever_at = None;
                    }
                    hit
                };
                if sever {
                    shared.lost.fetch_add(1, Ordering::SeqCst);
                    shared.severed.store(true, Ordering::SeqCst);
                    cut_all(&shared);
                    break 'pump;
                }
                if client_out.write_all(&reply).is_err() {
                    break 'pump;
                }
            }
        }
        let _ = server_in.shutdown(Shutdown::Both);
        let _ = client_out.shutdown(Shutdown::Both);
    });
}

impl Rules {
    fn chance_cut(&mut self) -> bool {
        let per_million = self.cut_per_million;
        self.chance(per_million)
    }

    /// How long `request` is held, if a delay rule matches it.
    fn delay(&mut self, request: &[u8]) -> Option<std::time::Duration> {
        for (pattern, delay, times) in &mut self.delay_matching {
            if *times > 0
                && request
                    .windows(pattern.len())
                    .any(|window| window == pattern)
            {
                *times -= 1;
                return Some(*delay);
            }
        }
        None
    }

    /// Whether `reply` is lost.
    fn lose(&mut self, reply: &[u8]) -> bool {
        for (pattern, times) in &mut self.lose_matching {
            if *times > 0 && reply.windows(pattern.len()).any(|window| window == pattern) {
                *times -= 1;
                return true;
            }
        }
        let per_million = self.lose_per_million;
        self.chance(per_million)
    }
}

/// The end of the RESP frame starting at `at` in `buffer`, when it is complete.
pub fn frame_end(buffer: &[u8], at: usize) -> Option<usize> {
    let kind = *buffer.get(at)?;
    let line = buffer
        .get(at + 1..)?
        .windows(2)
        .position(|pair| pair == b"\r\n")?
        + at
        + 1;
    let next = line + 2;
    let number = || -> Option<i64> {
        std::str::from_utf8(&buffer[at + 1..line])
            .ok()?
            .parse()
            .ok()
    };
    match kind {
        b'$' | b'!' | b'=' => {
            let length = number()?;
            if length < 0 {
                return Some(next);
            }
            let end = next + usize::try_from(length).ok()? + 2;
            (buffer.len() >= end).then_some(end)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let count = number()?;
            if count < 0 {
                return Some(next);
            }
            let elements = if matches!(kind, b'%' | b'|') {
                2 * count
            } else {
                count
            };
            let mut end = next;
            for _ in 0..elements {
                end = frame_end(buffer, end)?;
            }
            Some(end)
        }
        _ => Some(next),
    }
}
