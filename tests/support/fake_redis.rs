//! A fake Redis server for the tests of `RedisStore` (feature `redis`): it answers the
//! handshake a store makes (`PING`, `INFO`) like a Redis 7 server and every other command
//! with one fixed raw reply, so that a test can hand the store replies no real server
//! sends (empty, of the wrong type, truncated) and check that it answers `Unavailable`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// The fake server, on a free port of 127.0.0.1; it answers until the test process ends.
#[derive(Debug)]
pub struct FakeRedis {
    port: u16,
    reply: Arc<Mutex<Vec<u8>>>,
}

impl FakeRedis {
    /// Starts a fake server that answers every command but `PING` and `INFO` with
    /// `reply` (raw RESP bytes); a reply that is not a whole frame is sent, then the
    /// connection is closed (a truncated reply).
    pub fn start(reply: &[u8]) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("a free port");
        let port = listener.local_addr().unwrap().port();
        let reply = Arc::new(Mutex::new(reply.to_vec()));
        {
            let reply = Arc::clone(&reply);
            thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let reply = Arc::clone(&reply);
                    thread::spawn(move || serve(stream, &reply));
                }
            });
        }
        FakeRedis { port, reply }
    }

    /// The URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Answers with `reply` from now on.
    pub fn set_reply(&self, reply: &[u8]) {
        *self.reply.lock().unwrap() = reply.to_vec();
    }
}

/// Answers the commands of one connection.
fn serve(mut stream: TcpStream, reply: &Mutex<Vec<u8>>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        let Ok(read) = stream.read(&mut buffer) else {
            return;
        };
        if read == 0 {
            return;
        }
        pending.extend_from_slice(&buffer[..read]);
        while let Some(end) = super_frame_end(&pending) {
            let command: Vec<u8> = pending.drain(..end).collect();
            let upper = String::from_utf8_lossy(&command).to_ascii_uppercase();
            let answer: Vec<u8> = if upper.contains("\r\nCLIENT\r\n") {
                b"+OK\r\n".to_vec()
            } else if upper.contains("\r\nPING\r\n") {
                b"+PONG\r\n".to_vec()
            } else if upper.contains("\r\nINFO\r\n") {
                let info = "# Server\r\nredis_version:7.0.15\r\n";
                format!("${}\r\n{info}\r\n", info.len()).into_bytes()
            } else {
                reply.lock().unwrap().clone()
            };
            let whole = crate::fault_proxy::frame_end(&answer, 0) == Some(answer.len());
            if stream.write_all(&answer).is_err() || !whole {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

fn super_frame_end(buffer: &[u8]) -> Option<usize> {
    crate::fault_proxy::frame_end(buffer, 0)
}
