//! The wire: a pool of blocking connections with timeouts, the Lua scripts, the replies
//! they send, and the store's timebase (its clock in microseconds).

use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{ConnectionLike, Script, Value};

/// One pooled connection; `broken` once a call on it failed below the script level, so
/// the pool drops it instead of handing out a connection with a stale reply in flight.
pub(crate) struct Link {
    pub(crate) connection: redis::Connection,
    pub(crate) broken: bool,
}

/// Connections a [`RedisStore`](super::RedisStore) keeps open by default (its pool's maximum): one per
/// thread that calls it at once; more threads wait for a free connection.
///
/// # Examples
///
/// ```
/// assert_eq!(stockledger::POOL_SIZE, 16);
/// ```
pub const POOL_SIZE: u32 = 16;

/// How long a [`RedisStore`](super::RedisStore) waits for a connection, for the server to answer one call,
/// or for a free pooled connection, by default; then the call is sent once more on a fresh
/// connection (see [`RedisStore`](super::RedisStore)'s "Failures"), and if that fails too it is
/// [`StockError::Unavailable`](crate::StockError::Unavailable).
///
/// # Examples
///
/// ```
/// assert_eq!(stockledger::COMMAND_TIMEOUT, std::time::Duration::from_secs(5));
/// ```
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens connections for the r2d2 pool: connect timeout, then read and write timeouts
/// (the command timeout) on the socket.
#[derive(Debug)]
pub(crate) struct Connector {
    pub(crate) client: redis::Client,
    pub(crate) command_timeout: Duration,
}

impl r2d2::ManageConnection for Connector {
    type Connection = Link;
    type Error = redis::RedisError;

    fn connect(&self) -> Result<Link, redis::RedisError> {
        let connection = self
            .client
            .get_connection_with_timeout(self.command_timeout)?;
        connection.set_read_timeout(Some(self.command_timeout))?;
        connection.set_write_timeout(Some(self.command_timeout))?;
        Ok(Link {
            connection,
            broken: false,
        })
    }

    fn is_valid(&self, link: &mut Link) -> Result<(), redis::RedisError> {
        redis::cmd("PING").query::<()>(&mut link.connection)
    }

    fn has_broken(&self, link: &mut Link) -> bool {
        link.broken || !link.connection.is_open()
    }
}

/// The shared helpers: the head of the function library.
const COMMON: &str = include_str!("scripts/common.lua");

/// The scripts, by name: each the body of one function of the library.
const BODIES: [(&str, &str); 11] = [
    ("restock", include_str!("scripts/restock.lua")),
    ("reserve", include_str!("scripts/reserve.lua")),
    ("sell", include_str!("scripts/sell.lua")),
    ("resolve", include_str!("scripts/resolve.lua")),
    ("commit_partial", include_str!("scripts/commit_partial.lua")),
    ("abort", include_str!("scripts/abort.lua")),
    ("extend", include_str!("scripts/extend.lua")),
    ("expire_due", include_str!("scripts/expire_due.lua")),
    ("threshold", include_str!("scripts/threshold.lua")),
    ("wait_begin", include_str!("scripts/wait_begin.lua")),
    ("wait_poll", include_str!("scripts/wait_poll.lua")),
];

/// The one-line sale's fast function: three keys declared instead of thirteen; answers
/// "general" (nothing written) when the sale needs `sell`.
const SELL_ONE: &str = include_str!("scripts/sell_one.lua");

/// The read-only scripts, by name: registered (under both names, neither with events)
/// with the `no-writes` flag, they record no answer under the call's request id (a resend
/// reads again) and change nothing.
const READS: [(&str, &str); 1] = [("lookup", include_str!("scripts/lookup.lua"))];

/// How long the server keeps the answer of a call under the call's request id at least: a
/// resend of the call within it gets that answer back instead of applying the call again
/// (see [`RedisStore`](super::RedisStore)'s "Failures"). The store resends at most once, at
/// once after a failed attempt, so this covers two command timeouts and a reconnection
/// with a wide margin. The answers of one second of calls share one hash
/// (`{namespace}:requests:<second>`), which the server drops whole once the retention and
/// that second have passed: memory for about a minute of calls, freed a second at a time.
pub(crate) const REQUEST_RETENTION: Duration = Duration::from_secs(60);

/// The span of calls whose answers share one requests hash.
pub(crate) const REQUEST_BUCKET: Duration = Duration::from_secs(1);

/// The placeholder of the library's version in [`BODIES`]' function names.
const VERSION: &str = "@VERSION@";

/// The scripts as one Redis function library (`FUNCTION LOAD`): the helpers of
/// `common.lua` are defined once when the library loads, not on every call as an `EVAL`
/// script's prelude would be (that alone cost about as much as a bare one-command script).
/// Each script is one Lua function of the library, registered twice: as
/// `stockledger_<16 hex digits>_<script>`, whose caller wants no events back, and as
/// `..._<script>_events`, whose caller does (a flag in the name costs the server nothing;
/// an argument costs it a string and a growth of the `ARGV` table). The library is named
/// after the SHA-1 of its code (`stockledger_<16 hex digits>`), so processes of different
/// versions share a server as `EVALSHA` scripts would. Functions persist with the data
/// (RDB, AOF) and replicate; a server that lost them (a flush, a fresh server after a
/// failover) answers "Function not found", and [`call`] loads the library again.
pub(crate) struct Library {
    /// `FUNCTION LOAD`'s argument.
    code: String,
    pub(crate) restock: Function,
    pub(crate) reserve: Function,
    pub(crate) sell: Function,
    /// `sell_one.lua`: the keys are levels, events and the requests hash only.
    pub(crate) sell_one: Function,
    pub(crate) resolve: Function,
    pub(crate) commit_partial: Function,
    /// `abort.lua`: records "aborted" under a request id that has no answer yet.
    pub(crate) abort: Function,
    pub(crate) extend: Function,
    pub(crate) expire_due: Function,
    pub(crate) threshold: Function,
    pub(crate) wait_begin: Function,
    pub(crate) wait_poll: Function,
    pub(crate) lookup: Function,
}

/// The two registered names of one script.
///
/// Every call, a first attempt as much as a resend, looks up the answer recorded under its
/// request id before it runs: a first attempt held up on its way can reach the server after
/// the resend that overtook it (the server runs the calls of two connections in no
/// promised order), and must then answer from the record, not apply the call again
/// (`tests/redis_faults.rs`, `a_resend_that_overtakes_its_first_attempt_applies_the_call_once`).
pub(crate) struct Function {
    /// `stockledger_<version>_<script>`: no events in the reply.
    pub(crate) plain: String,
    /// `stockledger_<version>_<script>_events`: the call's events in the reply.
    pub(crate) events: String,
}

impl Function {
    /// The name to call: with or without the events in the reply.
    pub(crate) fn name(&self, events: bool) -> &str {
        if events {
            &self.events
        } else {
            &self.plain
        }
    }
}

pub(crate) static SCRIPTS: LazyLock<Library> = LazyLock::new(|| {
    let mut code = format!("{COMMON}\n");
    for (name, body) in BODIES {
        code.push_str(&format!(
            "local function run_{name}()\n{body}\nend\n\
             redis.register_function('stockledger_{VERSION}_{name}', function(keys, args)\n\
             begin(keys, args, false)\nreturn wrong_type() or recorded() or record_reply(run_{name}())\nend)\n\
             redis.register_function('stockledger_{VERSION}_{name}_events', function(keys, args)\n\
             begin(keys, args, true)\nreturn wrong_type() or recorded() or record_reply(run_{name}())\nend)\n"
        ));
    }
    // The one-line sale's fast function declares three keys and records its answer only
    // when it sold (see sell_one.lua).
    code.push_str(&format!(
        "local function run_sell_one()\n{SELL_ONE}\nend\n\
         redis.register_function('stockledger_{VERSION}_sell_one', function(keys, args)\n\
         begin_one(keys, args, false)\nreturn wrong_type_one() or recorded() or run_sell_one()\nend)\n\
         redis.register_function('stockledger_{VERSION}_sell_one_events', function(keys, args)\n\
         begin_one(keys, args, true)\nreturn wrong_type_one() or recorded() or run_sell_one()\nend)\n"
    ));
    for (name, body) in READS {
        code.push_str(&format!(
            "local function run_{name}()\n{body}\nend\n\
             local function read_{name}(keys, args)\n\
             begin(keys, args, false)\nreturn wrong_type() or run_{name}()\nend\n\
             redis.register_function{{function_name = 'stockledger_{VERSION}_{name}', \
             callback = read_{name}, flags = {{ 'no-writes' }}}}\n\
             redis.register_function{{function_name = 'stockledger_{VERSION}_{name}_events', \
             callback = read_{name}, flags = {{ 'no-writes' }}}}\n"
        ));
    }
    let code = code.replace(
        "REQUEST_KEY_TTL_MS",
        &(REQUEST_RETENTION + REQUEST_BUCKET).as_millis().to_string(),
    );
    let version = Script::new(&code).get_hash()[..16].to_string();
    let function = |script: &str| Function {
        plain: format!("stockledger_{version}_{script}"),
        events: format!("stockledger_{version}_{script}_events"),
    };
    Library {
        code: format!(
            "#!lua name=stockledger_{version}\n{}",
            code.replace(VERSION, &version)
        ),
        restock: function("restock"),
        reserve: function("reserve"),
        sell: function("sell"),
        sell_one: function("sell_one"),
        resolve: function("resolve"),
        commit_partial: function("commit_partial"),
        abort: function("abort"),
        extend: function("extend"),
        expire_due: function("expire_due"),
        threshold: function("threshold"),
        wait_begin: function("wait_begin"),
        wait_poll: function("wait_poll"),
        lookup: function("lookup"),
    }
});

/// Runs `fcall` (an `FCALL` of one of [`SCRIPTS`]' functions) on `connection`; when the
/// server does not have the library (a fresh or flushed server), loads it and runs
/// `fcall` again.
pub(crate) fn call(
    connection: &mut redis::Connection,
    fcall: &redis::Cmd,
) -> redis::RedisResult<Value> {
    match fcall.query(connection) {
        Err(error) if error.to_string().contains("Function not found") => {
            let _: Value = redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg("REPLACE")
                .arg(&SCRIPTS.code)
                .query(connection)?;
            fcall.query(connection)
        }
        answer => answer,
    }
}

/// Loads the function library on the server of `connection` (`FUNCTION LOAD REPLACE`): a
/// cluster store does so on every primary when it is built.
pub(crate) fn load_library(connection: &mut redis::Connection) -> redis::RedisResult<()> {
    let _: Value = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&SCRIPTS.code)
        .query(connection)?;
    Ok(())
}

/// What a script answered: `{status, payload, events}` (see `scripts/common.lua`).
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: String,
    pub(crate) payload: Vec<Value>,
    pub(crate) events: Vec<Value>,
}

/// A reply that does not have the shape the scripts send.
pub(crate) fn malformed(what: &str) -> String {
    format!("malformed reply from the server: {what}")
}

impl Reply {
    /// A reply as the scripts send it (`answer` in `scripts/common.lua`): the status alone
    /// (no payload, no events) or one flat array `{status, payload length, payload...,
    /// events...}`; anything else is malformed.
    pub(crate) fn parse(value: Value) -> Result<Reply, String> {
        let mut parts = match value {
            Value::Array(parts) => parts,
            status @ (Value::BulkString(_) | Value::SimpleString(_)) => {
                return Ok(Reply {
                    status: text(Some(&status))?,
                    payload: Vec::new(),
                    events: Vec::new(),
                });
            }
            _ => return Err(malformed("neither a status nor an array")),
        };
        let status = text(parts.first())?;
        let length = number(parts.get(1))?;
        let end = usize::try_from(length)
            .ok()
            .and_then(|length| length.checked_add(2))
            .filter(|end| *end <= parts.len())
            .ok_or_else(|| malformed("a payload longer than the reply"))?;
        let events = parts.split_off(end);
        let payload = parts.split_off(2);
        Ok(Reply {
            status,
            payload,
            events,
        })
    }
}

/// The bytes of a string reply.
pub(crate) fn bytes(value: Option<&Value>) -> Result<&[u8], String> {
    match value {
        Some(Value::BulkString(bytes)) => Ok(bytes),
        Some(Value::SimpleString(text)) => Ok(text.as_bytes()),
        _ => Err(malformed("expected a string")),
    }
}

pub(crate) fn text(value: Option<&Value>) -> Result<String, String> {
    Ok(String::from_utf8_lossy(bytes(value)?).into_owned())
}

/// A count in a reply (scripts send integers; never negative).
pub(crate) fn number(value: Option<&Value>) -> Result<u64, String> {
    match value {
        Some(Value::Int(n)) => u64::try_from(*n).map_err(|_| malformed("negative count")),
        Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| malformed("not a count")),
        _ => Err(malformed("expected an integer")),
    }
}

/// The store's clock in microseconds on a shared timebase: the wall clock when the store
/// was built, moved on by the store's [`Clock`](crate::Clock). Hosts that share a Redis
/// server should keep their wall clocks in step (NTP): deadlines are compared across them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timebase {
    /// The store clock's reading when the store was built.
    anchor: Instant,
    /// Microseconds since the Unix epoch at `anchor`.
    anchor_us: u64,
}

/// The largest time the scripts keep exactly (2^53 - 1 us, about 285 years after 1970).
pub(crate) const TIME_US_MAX: u64 = (1 << 53) - 1;

impl Timebase {
    pub(crate) fn new(anchor: Instant) -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            anchor,
            anchor_us: u64::try_from(since_epoch.as_micros()).unwrap_or(TIME_US_MAX),
        }
    }

    /// `now` in microseconds, rounded down (so a deadline is never reached early).
    pub(crate) fn now_us(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.anchor).as_micros();
        self.anchor_us
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
            .min(TIME_US_MAX)
    }

    /// A deadline in microseconds, rounded up (so it is never reached early); at most
    /// [`TIME_US_MAX`].
    pub(crate) fn deadline_us(&self, deadline: Instant) -> u64 {
        let after = deadline.saturating_duration_since(self.anchor);
        let whole = u64::try_from(after.as_micros()).unwrap_or(u64::MAX);
        let rounded = whole.saturating_add(u64::from(after.subsec_nanos() % 1_000 != 0));
        self.anchor_us.saturating_add(rounded).clamp(1, TIME_US_MAX)
    }

    /// The instant of a deadline in microseconds; `None` for 0 (no deadline).
    pub(crate) fn instant(&self, deadline_us: u64) -> Option<Instant> {
        if deadline_us == 0 {
            return None;
        }
        match deadline_us.checked_sub(self.anchor_us) {
            Some(after) => self.anchor.checked_add(Duration::from_micros(after)),
            None => self
                .anchor
                .checked_sub(Duration::from_micros(self.anchor_us - deadline_us)),
        }
    }
}
