//! The service's own blocking Redis connections (feature `redis`), for what it keeps beside
//! the ledger when several instances share one server: hold tokens, idempotency records,
//! the naive peer's counts. Its keys start with `checkout:{namespace}:`, apart from the
//! ledger's own `{namespace}:` keys.
//!
//! # Blocking
//!
//! Every call is a network round trip: call it from `tokio::task::spawn_blocking` (as
//! [`App::blocking`](crate::app::App::blocking) does), never on an async worker thread.

use std::sync::Mutex;
use std::time::Duration;

use stockledger::StockError;

/// How long one command may take before the call is `Unavailable`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept for reuse; more may be open while busy.
const IDLE_MAX: usize = 32;

/// A small pool of blocking connections to one server.
pub(crate) struct RedisPool {
    client: redis::Client,
    /// Connections not in use (locked only to push or pop one).
    idle: Mutex<Vec<redis::Connection>>,
    /// `checkout:{namespace}:`, the prefix of this service's keys.
    prefix: String,
}

impl std::fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPool")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisPool {
    /// Opens a pool on `url` for the service's keys of `namespace`, checking that the
    /// server answers.
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] when the URL is bad or the server does not answer.
    pub(crate) fn open(url: &str, namespace: &str) -> Result<Self, StockError<String>> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let pool = Self {
            client,
            idle: Mutex::new(Vec::new()),
            prefix: format!("checkout:{{{namespace}}}:"),
        };
        pool.with(|connection| redis::cmd("PING").query::<()>(connection))?;
        Ok(pool)
    }

    /// The key `name` of this service's namespace.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs `work` on a pooled connection; a connection that failed is dropped.
    ///
    /// # Errors
    ///
    /// [`StockError::Unavailable`] when connecting or `work` fails.
    pub(crate) fn with<T>(
        &self,
        work: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StockError<String>> {
        let idle = self.idle.lock().unwrap().pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => self.connect()?,
        };
        let answer = work(&mut connection).map_err(unavailable)?;
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < IDLE_MAX {
            idle.push(connection);
        }
        Ok(answer)
    }

    fn connect(&self) -> Result<redis::Connection, StockError<String>> {
        let connection = self
            .client
            .get_connection_with_timeout(COMMAND_TIMEOUT)
            .map_err(unavailable)?;
        connection
            .set_read_timeout(Some(COMMAND_TIMEOUT))
            .and_then(|()| connection.set_write_timeout(Some(COMMAND_TIMEOUT)))
            .map_err(unavailable)?;
        Ok(connection)
    }
}

fn unavailable(error: redis::RedisError) -> StockError<String> {
    StockError::Unavailable {
        reason: error.to_string(),
    }
}
