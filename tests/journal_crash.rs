//! Crash recovery with real processes: a child process (this test binary, run again with
//! an environment variable) takes orders on a journaled store and logs every change the
//! journal acknowledged to a side file; the parent kills it with SIGKILL at a random
//! moment, several times, and checks what recovery gives back against the side file.
//!
//! Two crash models: `kill -9` of the process (the page cache survives: every written
//! record does), and a crash of the machine, modelled by cutting the newest journal file
//! back to the last position the journal reported durable before the kill. The negative
//! control runs the checker on a journal that acknowledges before it syncs (`EverySec`)
//! under the machine model: it must catch the loss; and under `kill -9`, since
//! `EverySec` buffers its events in the process for up to a second, too.
//!
//! The child's worker threads share its SKUs, so their records reach the journal in any
//! order; the journal writes a change after the end of a hold before it on its SKU (the
//! recovery of records out of order is also checked in `tests/journal.rs`).
#![cfg(feature = "journal")]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stockledger::{
    AdaptiveStore, EventSink, JournalPosition, JournalSink, MonitorStore, OptimisticStore,
    PessimisticStore, ReservationId, ReserveOptions, Snapshot, StockEvent, StockStore, SyncPolicy,
};

/// The child's directory (set: this process is a child).
const CHILD_DIR: &str = "STOCKLEDGER_CRASH_CHILD_DIR";
/// The child's sync policy: `always` or `everysec`.
const CHILD_POLICY: &str = "STOCKLEDGER_CRASH_CHILD_POLICY";
/// The child's store: `pessimistic`, `optimistic`, `monitor` or `adaptive`.
const CHILD_STORE: &str = "STOCKLEDGER_CRASH_CHILD_STORE";
/// Whether the child compacts the journal every 50 ms (`1`).
const CHILD_COMPACTS: &str = "STOCKLEDGER_CRASH_CHILD_COMPACTS";

const WORKERS: usize = 2;
const SKUS_PER_WORKER: usize = 4;
const START_UNITS: u64 = 100_000;
const HOLD_TTL: Duration = Duration::from_secs(3600);

/// The side file of acknowledgements in `dir`'s parent.
fn ack_log(dir: &Path) -> PathBuf {
    dir.with_extension("acks")
}

/// An event sink that passes each event to the journal and, once the journal returned
/// (the change is acknowledged), logs it with the journal's durable position.
struct Acknowledged {
    journal: Arc<JournalSink<String>>,
    log: Mutex<File>,
}

impl EventSink<String> for Acknowledged {
    fn on_event(&self, event: &StockEvent<String>) {
        self.journal.on_event(event);
        if matches!(event, StockEvent::LowStock { .. }) {
            return;
        }
        let durable = self.journal.durable();
        let line = format!(
            "{} {} {}\n",
            durable.generation,
            durable.offset,
            serde_json::to_string(event).unwrap()
        );
        // One write per line, to a file opened for appending.
        self.log.lock().unwrap().write_all(line.as_bytes()).unwrap();
    }
}

/// The child's entry: does nothing unless this process was started as a child.
#[test]
fn child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let policy = match std::env::var(CHILD_POLICY).as_deref() {
        Ok("everysec") => SyncPolicy::EverySec,
        _ => SyncPolicy::Always,
    };
    let store = std::env::var(CHILD_STORE).unwrap_or_default();
    match store.as_str() {
        "optimistic" => run_child::<OptimisticStore<String>>(Path::new(&dir), policy),
        "monitor" => run_child::<MonitorStore<String>>(Path::new(&dir), policy),
        "adaptive" => run_child::<AdaptiveStore<String>>(Path::new(&dir), policy),
        _ => run_child::<PessimisticStore<String>>(Path::new(&dir), policy),
    }
}

/// A store the child can run.
trait ChildStore: StockStore<String> + Sized + 'static {
    fn open(snapshot: Snapshot<String>, sink: Arc<Acknowledged>) -> Self;
    fn take(&self) -> Result<Snapshot<String>, stockledger::SnapshotError>;
}

macro_rules! child_store {
    ($store:ident) => {
        impl ChildStore for $store<String> {
            fn open(snapshot: Snapshot<String>, sink: Arc<Acknowledged>) -> Self {
                $store::builder()
                    .restore(snapshot)
                    .unwrap()
                    .event_sink(sink)
                    .build()
            }
            fn take(&self) -> Result<Snapshot<String>, stockledger::SnapshotError> {
                self.snapshot()
            }
        }
    };
}

child_store!(PessimisticStore);
child_store!(OptimisticStore);
child_store!(MonitorStore);
child_store!(AdaptiveStore);

fn sku_name(worker: usize, index: usize) -> String {
    format!("w{worker}-sku{index}")
}

/// Opens the journal in `dir`, restores the store and takes orders until killed.
fn run_child<S: ChildStore>(dir: &Path, policy: SyncPolicy) {
    let (journal, recovered) = JournalSink::<String>::open(dir, policy).unwrap();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(ack_log(dir))
        .unwrap();
    let sink = Arc::new(Acknowledged {
        journal: journal.clone(),
        log: Mutex::new(log),
    });
    let store = Arc::new(S::open(recovered.snapshot, sink));
    for worker in 0..WORKERS {
        for index in 0..SKUS_PER_WORKER {
            let name = sku_name(worker, index);
            if store.level(&name).is_none() {
                store.restock(&name, START_UNITS).unwrap();
            }
        }
    }
    let compacts = std::env::var(CHILD_COMPACTS).as_deref() == Ok("1");
    std::thread::scope(|scope| {
        for worker in 0..WORKERS {
            let store = &store;
            scope.spawn(move || take_orders(store.as_ref(), worker));
        }
        if compacts {
            loop {
                std::thread::sleep(Duration::from_millis(50));
                journal.compact(|| store.take()).unwrap();
            }
        }
    });
}

/// One worker's orders on its own SKUs, forever: sales, holds committed, released or
/// left open (each keyed and with a TTL of an hour).
fn take_orders(store: &dyn StockStore<String>, worker: usize) {
    let mut state = u64::from(std::process::id()) << 8 | worker as u64 | 1;
    let mut next = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let mut open = Vec::new();
    for n in 0.. {
        let mut pick = || {
            sku_name(
                next(WORKERS as u64) as usize,
                next(SKUS_PER_WORKER as u64) as usize,
            )
        };
        let (a, b) = (pick(), pick());
        match next(4) {
            0 => store.sell(&[(a, 1 + next(2))]).unwrap(),
            _ => {
                let key = format!("order-{}-{worker}-{n}", std::process::id());
                let options = ReserveOptions::new().ttl(HOLD_TTL).idempotency_key(key);
                let hold = store.reserve_with(&[(a, 1), (b, 1)], &options).unwrap();
                open.push(hold.id());
                if open.len() > 3 || next(3) > 0 {
                    let id = open.remove(next(open.len() as u64) as usize);
                    if next(2) == 0 {
                        store.commit(id).unwrap();
                    } else {
                        store.release(id).unwrap();
                    }
                }
            }
        }
    }
}

/// Starts a child on `dir`.
fn spawn_child(dir: &Path, policy: &str, store: &str, compacts: bool) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_POLICY, policy)
        .env(CHILD_STORE, store)
        .env(CHILD_COMPACTS, if compacts { "1" } else { "0" })
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// An acknowledged event, with the journal's durable position when it was logged.
struct Ack {
    durable: JournalPosition,
    event: StockEvent<String>,
}

/// The whole lines of the side file (a line cut by the kill is skipped).
fn read_acks(dir: &Path) -> Vec<Ack> {
    let text = std::fs::read_to_string(ack_log(dir)).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let generation = parts.next()?.parse().ok()?;
            let offset = parts.next()?.parse().ok()?;
            let event = serde_json::from_str(parts.next()?).ok()?;
            Some(Ack {
                durable: JournalPosition { generation, offset },
                event,
            })
        })
        .collect()
}

/// Waits until the side file has more than `count` acknowledgements, then kills `child`
/// after a random pause.
fn kill_after_acks(mut child: Child, dir: &Path, count: usize, pause: Duration) {
    let started = Instant::now();
    while read_acks(dir).len() <= count + 20 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child died on its own"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the child acknowledged nothing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(pause);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// The machine-crash model: the newest journal file loses what was not reported durable
/// before the kill (cut back to the largest durable position the side file logged for it).
fn drop_unsynced_tail(dir: &Path, acks: &[Ack]) {
    let mut journals: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    journals.sort();
    let Some(newest) = journals.pop() else { return };
    let name = newest.file_stem().unwrap().to_str().unwrap();
    let generation = u64::from_str_radix(name.trim_start_matches("journal-"), 16).unwrap();
    let durable = acks
        .iter()
        .filter(|ack| ack.durable.generation == generation)
        .map(|ack| ack.durable.offset)
        .max()
        .unwrap_or(8); // the header, synced when the file was made
    let file = OpenOptions::new().write(true).open(&newest).unwrap();
    if file.metadata().unwrap().len() > durable {
        file.set_len(durable).unwrap();
    }
}

/// What the parent learned from earlier recoveries: holds whose close recovery found
/// though the child never logged it (killed between the journal and the side file).
#[derive(Default)]
struct Known {
    closed: BTreeSet<ReservationId>,
}

/// Why `recovered` does not hold every acknowledged change in `acks` as a prefix of the
/// child's history (see the module docs); `known` carries what earlier rounds recovered.
fn check(recovered: &Snapshot<String>, acks: &[Ack], known: &mut Known) -> Result<(), String> {
    // Per SKU: its acknowledged lines by version: (on hand, units sold by that change).
    let mut history: BTreeMap<&str, BTreeMap<u64, (u64, u64)>> = BTreeMap::new();
    // Each acknowledged hold's SKUs, with their versions at its open.
    let mut opened: HashMap<ReservationId, Vec<(&str, u64)>> = HashMap::new();
    let mut closed: BTreeSet<ReservationId> = known.closed.clone();
    for ack in acks {
        let sells = matches!(
            ack.event,
            StockEvent::Sold { .. } | StockEvent::Committed { .. }
        );
        for line in ack.event.lines() {
            let sold = if sells { line.quantity } else { 0 };
            history
                .entry(&line.sku)
                .or_default()
                .insert(line.level.version, (line.level.on_hand, sold));
        }
        match &ack.event {
            StockEvent::Reserved { id, lines, .. } => {
                let lines = lines
                    .iter()
                    .map(|line| (line.sku.as_str(), line.level.version));
                opened.insert(*id, lines.collect());
            }
            StockEvent::Committed { id, .. } | StockEvent::Released { id, .. } => {
                closed.insert(*id);
            }
            _ => {}
        }
    }
    let skus: HashMap<&str, _> = recovered
        .skus
        .iter()
        .map(|sku| (sku.sku.as_str(), sku))
        .collect();
    for (name, changes) in &history {
        // Conservation along the acknowledged history: from one version to the next, on
        // hand falls by exactly what that change sold, and the first restock is the start.
        if let Some((1, (on_hand, _))) = changes.iter().next().map(|(v, c)| (*v, *c)) {
            if on_hand != START_UNITS {
                return Err(format!("{name}: restocked to {on_hand}, not {START_UNITS}"));
            }
        }
        for ((v1, (on_hand1, _)), (v2, (on_hand2, sold2))) in
            changes.iter().zip(changes.iter().skip(1))
        {
            if *v2 == v1 + 1 && on_hand1.checked_sub(*sold2) != Some(*on_hand2) {
                return Err(format!(
                    "{name}: on hand {on_hand1} at {v1}, {on_hand2} at {v2} after selling {sold2}"
                ));
            }
        }
        let (version, (on_hand, _)) = changes
            .iter()
            .next_back()
            .map(|(v, c)| (*v, *c))
            .expect("a change");
        let Some(sku) = skus.get(name) else {
            return Err(format!("{name}: acknowledged, not recovered"));
        };
        if sku.version < version {
            return Err(format!(
                "{name}: recovered at version {}, version {version} was acknowledged",
                sku.version
            ));
        }
        // Each worker has at most one change in flight, acknowledged or not.
        if sku.version > version + WORKERS as u64 {
            return Err(format!(
                "{name}: version {} is more changes past the acknowledged {version} than workers",
                sku.version
            ));
        }
        if sku.version == version && sku.on_hand != on_hand {
            return Err(format!(
                "{name}: on hand {} at version {version}, acknowledged {on_hand}",
                sku.on_hand
            ));
        }
        if sku.reserved > sku.on_hand {
            return Err(format!(
                "{name}: reserved {} > on hand {}",
                sku.reserved, sku.on_hand
            ));
        }
    }
    let holds: BTreeMap<ReservationId, _> =
        recovered.holds.iter().map(|hold| (hold.id, hold)).collect();
    for id in &closed {
        if holds.contains_key(id) {
            return Err(format!("hold {id}: its acknowledged close was lost"));
        }
    }
    for (id, lines) in &opened {
        if closed.contains(id) || holds.contains_key(id) {
            continue;
        }
        // Closed by a change not acknowledged: then each of its SKUs has, after the open
        // and up to the recovered version, a version no acknowledged change has.
        let unacknowledged_after = |(name, opened_at): &(&str, u64)| {
            let logged = &history[name];
            (opened_at + 1..=skus[name].version).any(|version| !logged.contains_key(&version))
        };
        if !lines.iter().all(unacknowledged_after) {
            return Err(format!("hold {id}: acknowledged open, not recovered"));
        }
        known.closed.insert(*id);
    }
    for hold in holds.values() {
        let ttl = hold
            .ttl_ms
            .ok_or(format!("hold {}: no deadline", hold.id))?;
        let full = HOLD_TTL.as_millis() as u64;
        if ttl > full || ttl + 120_000 < full {
            return Err(format!("hold {}: {ttl} ms left of a one-hour TTL", hold.id));
        }
        if hold.idempotency_key.is_none() {
            return Err(format!("hold {}: lost its key", hold.id));
        }
    }
    Ok(())
}

/// Recovers `dir` (in this process) and checks it against the side file.
fn recover_and_check(dir: &Path, known: &mut Known) -> Result<Snapshot<String>, String> {
    let acks = read_acks(dir);
    let (journal, recovered) = JournalSink::<String>::open(dir, SyncPolicy::Always)
        .map_err(|error| format!("recovery failed: {error}"))?;
    drop(journal);
    check(&recovered.snapshot, &acks, known)?;
    Ok(recovered.snapshot)
}

#[test]
fn kill_9_loses_no_acknowledged_change() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("journal");
    let stores = [
        "pessimistic",
        "optimistic",
        "monitor",
        "adaptive",
        "pessimistic",
        "optimistic",
    ];
    let (mut pause_ms, mut known, mut holds_recovered) = (7, Known::default(), 0);
    for (round, store) in stores.iter().enumerate() {
        let acked = read_acks(&dir).len();
        let child = spawn_child(&dir, "always", store, round % 2 == 0);
        pause_ms = (pause_ms * 37 + 11) % 150;
        kill_after_acks(child, &dir, acked, Duration::from_millis(pause_ms));
        let recovered = recover_and_check(&dir, &mut known)
            .unwrap_or_else(|why| panic!("round {round} ({store}): {why}"));
        holds_recovered += recovered.holds.len();
    }
    assert!(holds_recovered > 0, "some holds were open at a kill");
}

#[test]
fn a_machine_crash_loses_no_change_acknowledged_at_always() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("journal");
    let mut known = Known::default();
    for (round, pause_ms) in [30, 90, 10].into_iter().enumerate() {
        let acked = read_acks(&dir).len();
        let child = spawn_child(&dir, "always", "pessimistic", round == 1);
        kill_after_acks(child, &dir, acked, Duration::from_millis(pause_ms));
        drop_unsynced_tail(&dir, &read_acks(&dir));
        recover_and_check(&dir, &mut known).unwrap_or_else(|why| panic!("round {round}: {why}"));
    }
}

/// Negative control: a journal that acknowledges before it syncs (`EverySec`) loses
/// acknowledged changes when the machine crashes, and the checker says so.
///
/// `EverySec` buffers its events in memory and writes them once a second, so a kill of
/// the process loses them too (about the last second, here everything since the child
/// started or since its last tick): recovery still opens a consistent state (no damage,
/// no lost close), and the checker catches the loss. It could miss it only if the kill
/// came in the instant after a tick's write and before the next acknowledgement.
#[test]
fn a_machine_crash_is_caught_losing_changes_acknowledged_before_the_sync() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("journal");
    let child = spawn_child(&dir, "everysec", "pessimistic", false);
    kill_after_acks(child, &dir, 0, Duration::from_millis(20));
    drop_unsynced_tail(&dir, &read_acks(&dir));
    let verdict = recover_and_check(&dir, &mut Known::default());
    assert!(
        verdict.is_err(),
        "the checker missed lost acknowledged changes"
    );
    // The same kill without the machine crash: what was still in the buffer is lost.
    let dir = root.path().join("journal-2");
    let child = spawn_child(&dir, "everysec", "pessimistic", false);
    kill_after_acks(child, &dir, 0, Duration::from_millis(20));
    let acks = read_acks(&dir);
    let (journal, recovered) = JournalSink::<String>::open(&dir, SyncPolicy::Always)
        .unwrap_or_else(|error| panic!("recovery after a kill at EverySec failed: {error}"));
    drop(journal);
    let verdict = check(&recovered.snapshot, &acks, &mut Known::default());
    assert!(
        verdict.is_err(),
        "a kill at EverySec lost no acknowledged change: its buffer was written early"
    );
}
