//! The journal in one process, on real files in temporary directories: recovery of
//! snapshot plus journal, a torn tail cut at every byte, damage in the middle refused,
//! records that arrive out of order, compaction, group commit under concurrent callers.
#![cfg(feature = "journal")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use stockledger::{
    EventLine, HoldOutcome, JournalError, JournalSink, OptimisticStore, PessimisticStore,
    ReservationId, ReserveOptions, Snapshot, StockError, StockEvent, StockLevel, StockStore,
    SyncPolicy,
};

fn sku(name: &str) -> String {
    name.to_string()
}

/// The journal files of `dir`, oldest first.
fn journals(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    files.sort();
    files
}

/// `(on hand, reserved, version)` per SKU and the open hold ids: what must survive.
type Essence = (BTreeMap<String, (u64, u64, u64)>, Vec<ReservationId>);

/// The [`Essence`] of a snapshot.
fn essence(snapshot: &Snapshot<String>) -> Essence {
    let skus = snapshot
        .skus
        .iter()
        .map(|sku| (sku.sku.clone(), (sku.on_hand, sku.reserved, sku.version)))
        .collect();
    (skus, snapshot.holds.iter().map(|hold| hold.id).collect())
}

#[test]
fn a_reopened_journal_gives_back_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, recovered) = JournalSink::<String>::open(dir.path(), SyncPolicy::Always).unwrap();
    let store = OptimisticStore::builder()
        .restore(recovered.snapshot)
        .unwrap()
        .event_sink(journal.clone())
        .snapshots()
        .build();
    store.restock(&sku("a"), 10).unwrap();
    store.restock(&sku("b"), 4).unwrap();
    let keyed = ReserveOptions::new()
        .ttl(Duration::from_secs(600))
        .idempotency_key("order-1");
    let open = store
        .reserve_with(&[(sku("a"), 2), (sku("b"), 1)], &keyed)
        .unwrap();
    let done = store
        .reserve_with(
            &[(sku("a"), 1)],
            &ReserveOptions::new().idempotency_key("order-0"),
        )
        .unwrap();
    store.commit(done.id()).unwrap();
    store.sell(&[(sku("a"), 3), (sku("b"), 1)]).unwrap();
    let released = store.reserve(&[(sku("b"), 1)]).unwrap();
    store.release(released.id()).unwrap();
    let before = store.snapshot().unwrap();
    drop((store, journal));

    let (_journal, recovered) =
        JournalSink::<String>::open(dir.path(), SyncPolicy::Always).unwrap();
    assert_eq!(recovered.records, 8);
    assert_eq!(recovered.torn_bytes, 0);
    assert_eq!(essence(&recovered.snapshot), essence(&before));
    let ttl = recovered.snapshot.holds[0].ttl_ms.unwrap();
    assert!(
        ttl <= 600_000 && ttl > 590_000,
        "the deadline comes back: {ttl} ms left"
    );
    let store = OptimisticStore::builder()
        .restore(recovered.snapshot)
        .unwrap()
        .build();
    assert_eq!(
        store
            .reserve_with(&[(sku("a"), 2), (sku("b"), 1)], &keyed)
            .unwrap()
            .id(),
        open.id()
    );
    let retry = store.reserve_with(
        &[(sku("a"), 1)],
        &ReserveOptions::new().idempotency_key("order-0"),
    );
    assert!(
        matches!(
            retry,
            Err(StockError::HoldEnded {
                outcome: HoldOutcome::Committed,
                ..
            })
        ),
        "{retry:?}"
    );
    store.commit(open.id()).unwrap();
    assert_eq!(store.level(&sku("a")).unwrap().on_hand, 10 - 1 - 3 - 2);
}

/// One store's run, single threaded, each call one record: the state after each call.
fn scripted_run(dir: &Path) -> Vec<Snapshot<String>> {
    let (journal, recovered) = JournalSink::<String>::open(dir, SyncPolicy::Always).unwrap();
    let store = PessimisticStore::builder()
        .restore(recovered.snapshot)
        .unwrap()
        .event_sink(journal.clone())
        .build();
    let mut states = vec![store.snapshot().unwrap()];
    store.restock(&sku("a"), 5).unwrap();
    states.push(store.snapshot().unwrap());
    store.restock(&sku("b"), 5).unwrap();
    states.push(store.snapshot().unwrap());
    let hold = store.reserve(&[(sku("a"), 2), (sku("b"), 1)]).unwrap();
    states.push(store.snapshot().unwrap());
    store.sell(&[(sku("a"), 1)]).unwrap();
    states.push(store.snapshot().unwrap());
    store.commit(hold.id()).unwrap();
    states.push(store.snapshot().unwrap());
    let hold = store.reserve(&[(sku("b"), 3)]).unwrap();
    states.push(store.snapshot().unwrap());
    store.release(hold.id()).unwrap();
    states.push(store.snapshot().unwrap());
    states
}

#[test]
fn a_torn_tail_recovers_to_the_last_whole_record_wherever_it_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let states = scripted_run(dir.path());
    let journal = journals(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&journal).unwrap();
    // Record boundaries, from the recovery of every prefix: a cut at a boundary keeps
    // every record before it, a cut inside a record drops that record only.
    let mut whole_records_seen = Vec::new();
    // The cuts: every byte of the header, and around and inside every record (its length
    // is the frame's first 4 bytes, little endian; 24 bytes of frame before the payload).
    let mut cuts: Vec<usize> = (0..=8).collect();
    let mut start = 8;
    while start < bytes.len() {
        let length = u32::from_le_bytes(bytes[start..start + 4].try_into().unwrap()) as usize;
        let end = start + 24 + length;
        cuts.extend([
            start + 1,
            start + 4,
            start + 12,
            start + 23,
            start + 24,
            start + 24 + length / 2,
            end - 1,
            end,
        ]);
        start = end;
    }
    assert_eq!(start, bytes.len(), "the frames tile the file");
    for cut in cuts {
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
        }
        std::fs::write(
            copy.path().join(journal.file_name().unwrap()),
            &bytes[..cut],
        )
        .unwrap();
        let (_journal, recovered) = JournalSink::<String>::open(copy.path(), SyncPolicy::No)
            .unwrap_or_else(|error| panic!("cut at {cut}: {error}"));
        let records = recovered.records as usize;
        assert_eq!(
            essence(&recovered.snapshot),
            essence(&states[records]),
            "cut at byte {cut}: the state after {records} records"
        );
        let whole = recovered.torn_bytes == 0;
        if whole {
            whole_records_seen.push(records);
        }
    }
    whole_records_seen.dedup(); // an empty file and the bare header both hold no record
    let every_prefix: Vec<usize> = (0..states.len()).collect();
    assert_eq!(
        whole_records_seen, every_prefix,
        "one clean cut per record boundary"
    );
}

#[test]
fn damage_before_whole_records_is_an_error_not_a_silent_loss() {
    let dir = tempfile::tempdir().unwrap();
    scripted_run(dir.path());
    let journal = journals(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes[8 + 30] ^= 0xFF; // inside the first record's payload
    std::fs::write(&journal, &bytes).unwrap();
    let opened = JournalSink::<String>::open(dir.path(), SyncPolicy::No);
    assert!(
        matches!(opened, Err(JournalError::Corrupt { .. })),
        "{opened:?}"
    );
    // Control: the same flip in the last record is a torn tail.
    let dir = tempfile::tempdir().unwrap();
    scripted_run(dir.path());
    let journal = journals(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&journal).unwrap();
    let end = bytes.len();
    bytes[end - 3] ^= 0xFF;
    std::fs::write(&journal, &bytes).unwrap();
    let (_, recovered) = JournalSink::<String>::open(dir.path(), SyncPolicy::No).unwrap();
    assert!(recovered.torn_bytes > 0);
}

fn line(name: &str, quantity: u64, on_hand: u64, reserved: u64, version: u64) -> EventLine<String> {
    EventLine {
        sku: sku(name),
        quantity,
        level: StockLevel {
            on_hand,
            reserved,
            version,
        },
    }
}

/// Records in another order than their changes: the counts of highest version win, a
/// close before its open still closes the hold, a hold whose opening record was lost is
/// free again.
#[test]
fn recovery_does_not_depend_on_the_order_of_records() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = JournalSink::<String>::open(dir.path(), SyncPolicy::Always).unwrap();
    let (h1, h2) = (ReservationId::from_u64(101), ReservationId::from_u64(102));
    let events = [
        StockEvent::Restocked {
            line: line("a", 10, 10, 0, 1),
        },
        // v3 (a sale) arrives before v2 (a hold), as two threads may deliver them.
        StockEvent::Sold {
            lines: vec![line("a", 1, 9, 2, 3)],
        },
        // h1 expired (v4) before its opening record (v2) was delivered.
        StockEvent::Expired {
            id: h1,
            lines: vec![line("a", 2, 9, 0, 4)],
            key: None,
        },
        StockEvent::Reserved {
            id: h1,
            lines: vec![line("a", 2, 10, 2, 2)],
            expires_at: None,
            key: None,
        },
        StockEvent::Reserved {
            id: h2,
            lines: vec![line("a", 3, 9, 3, 5)],
            expires_at: None,
            key: Some(Arc::from("k")),
        },
    ];
    for event in &events {
        journal.on_event_for_test(event);
    }
    drop(journal);
    let (_, recovered) = JournalSink::<String>::open(dir.path(), SyncPolicy::Always).unwrap();
    let (skus, holds) = essence(&recovered.snapshot);
    assert_eq!(skus[&sku("a")], (9, 3, 5));
    assert_eq!(holds, [h2]);
    assert_eq!(
        recovered.snapshot.holds[0].idempotency_key.as_deref(),
        Some("k")
    );
}

/// The window of `JournalSink`'s docs (**Order**): a commit's record lost while a later
/// sale of its SKU was written. Recovery refuses to guess (a hold still open, counts that
/// already sold its units); the control, the same records with the commit's, recovers.
#[test]
fn a_lost_close_before_a_later_change_is_detected() {
    let h = ReservationId::from_u64(9);
    let records = |with_commit: bool| {
        let mut events = vec![
            StockEvent::Restocked {
                line: line("a", 10, 10, 0, 1),
            },
            StockEvent::Reserved {
                id: h,
                lines: vec![line("a", 4, 10, 4, 2)],
                expires_at: None,
                key: None,
            },
        ];
        if with_commit {
            events.push(StockEvent::Committed {
                id: h,
                lines: vec![line("a", 4, 6, 0, 3)],
                key: None,
            });
        }
        // The sale after the commit: its counts hold the commit (on hand 6 - 1, none reserved).
        events.push(StockEvent::Sold {
            lines: vec![line("a", 1, 5, 0, 4)],
        });
        events
    };
    for with_commit in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = JournalSink::<String>::open(dir.path(), SyncPolicy::No).unwrap();
        // Records in the order given, as a journal that does not wait for order writes them.
        journal.set_order_wait_max(Duration::ZERO);
        for event in records(with_commit) {
            journal.on_event_for_test(&event);
        }
        drop(journal);
        let opened = JournalSink::<String>::open(dir.path(), SyncPolicy::No);
        if with_commit {
            let (_, recovered) = opened.unwrap();
            assert_eq!(essence(&recovered.snapshot).0[&sku("a")], (5, 0, 4));
        } else {
            assert!(
                matches!(
                    opened,
                    Err(JournalError::LostClose {
                        held: 4,
                        reserved: 0,
                        ..
                    })
                ),
                "{opened:?}"
            );
        }
    }
}

/// The journal writes a change after the end of a hold before it on its SKU, though it
/// came first: the sale (delivered first, on another thread) waits for the commit's
/// record, so the file never holds the sale without the commit. Control: with no waiting,
/// the same deliveries leave a file whose recovery finds the lost close.
#[test]
fn a_change_waits_for_the_end_of_a_hold_before_it() {
    let h = ReservationId::from_u64(11);
    let commit = StockEvent::Committed {
        id: h,
        lines: vec![line("a", 4, 6, 0, 3)],
        key: None,
    };
    let sale = StockEvent::Sold {
        lines: vec![line("a", 1, 5, 0, 4)],
    };
    let reserved = StockEvent::Reserved {
        id: h,
        lines: vec![line("a", 4, 10, 4, 2)],
        expires_at: None,
        key: None,
    };
    for wait in [true, false] {
        // The sale waits for the commit when the journal waits: delivered on a thread of
        // its own.
        let (sold, whole) =
            race_with_a_crash(std::slice::from_ref(&reserved), &sale, &commit, wait);
        assert_eq!(
            essence(&whole.snapshot).0[&sku("a")],
            (5, 0, 4),
            "wait {wait}"
        );
        if wait {
            // Crashed before the commit's record: the sale was not written either.
            let crashed = sold.unwrap();
            assert_eq!(essence(&crashed.snapshot).0[&sku("a")], (10, 4, 2));
        } else {
            assert!(
                matches!(sold, Err(JournalError::LostClose { .. })),
                "{sold:?}"
            );
        }
    }
}

/// Delivers `before` (after a restock of 10 units of SKU "a"), then `late` (on a thread
/// of its own when `wait`: it waits for `end`'s record) and `end` to a journal that waits
/// for the end of a hold (`wait`) or never does; copies the journal's files between
/// `late`'s delivery and `end`'s (a crash then). Returns the recovery of the crash copy
/// and of the whole journal.
fn race_with_a_crash(
    before: &[StockEvent<String>],
    late: &StockEvent<String>,
    end: &StockEvent<String>,
    wait: bool,
) -> (
    Result<stockledger::Recovery<String>, JournalError>,
    stockledger::Recovery<String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = JournalSink::<String>::open(dir.path(), SyncPolicy::Always).unwrap();
    journal.set_order_wait_max(if wait {
        Duration::from_secs(60)
    } else {
        Duration::ZERO
    });
    journal.on_event_for_test(&StockEvent::Restocked {
        line: line("a", 10, 10, 0, 1),
    });
    for event in before {
        journal.on_event_for_test(event);
    }
    let crash = tempfile::tempdir().unwrap();
    let copy_the_file = || {
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, crash.path().join(path.file_name().unwrap())).unwrap();
        }
    };
    std::thread::scope(|scope| {
        if wait {
            let late = scope.spawn(|| journal.on_event_for_test(late));
            std::thread::sleep(Duration::from_millis(20));
            copy_the_file();
            journal.on_event_for_test(end);
            late.join().unwrap();
        } else {
            journal.on_event_for_test(late); // written (and synced) at once
            copy_the_file();
            journal.on_event_for_test(end);
        }
    });
    let crashed = JournalSink::<String>::open(crash.path(), SyncPolicy::No).map(|(_, r)| r);
    drop(journal);
    let (_, whole) = JournalSink::<String>::open(dir.path(), SyncPolicy::No).unwrap();
    (crashed, whole)
}

/// The other order: a hold's opening record that comes after a change whose counts left
/// its units (the hold ended in between) waits for the end's record, so the file never
/// holds the hold open beside those counts. Control: with no waiting, the crash copy's
/// recovery finds the lost close.
#[test]
fn a_late_open_waits_for_the_end_of_its_hold() {
    let h = ReservationId::from_u64(12);
    let reserved = StockEvent::Reserved {
        id: h,
        lines: vec![line("a", 4, 10, 4, 2)],
        expires_at: None,
        key: None,
    };
    let commit = StockEvent::Committed {
        id: h,
        lines: vec![line("a", 4, 6, 0, 3)],
        key: None,
    };
    let sale = StockEvent::Sold {
        lines: vec![line("a", 1, 5, 0, 4)],
    };
    for wait in [true, false] {
        let (crashed, whole) =
            race_with_a_crash(std::slice::from_ref(&sale), &reserved, &commit, wait);
        assert_eq!(
            essence(&whole.snapshot),
            (BTreeMap::from([(sku("a"), (5, 0, 4))]), vec![])
        );
        if wait {
            assert_eq!(essence(&crashed.unwrap().snapshot).0[&sku("a")], (5, 0, 4));
        } else {
            assert!(
                matches!(crashed, Err(JournalError::LostClose { .. })),
                "{crashed:?}"
            );
        }
    }
}

/// A new journal at `Always` in a directory of its own, and an optimistic store built from
/// its (empty) recovery that journals every change to it.
fn journaled_store() -> (
    tempfile::TempDir,
    Arc<JournalSink<String>>,
    OptimisticStore<String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let (journal, recovered) = JournalSink::<String>::open(dir.path(), SyncPolicy::Always).unwrap();
    let store = OptimisticStore::builder()
        .restore(recovered.snapshot)
        .unwrap()
        .event_sink(journal.clone())
        .build();
    (dir, journal, store)
}

trait OnEvent {
    fn on_event_for_test(&self, event: &StockEvent<String>);
}

impl OnEvent for Arc<JournalSink<String>> {
    fn on_event_for_test(&self, event: &StockEvent<String>) {
        stockledger::EventSink::on_event(self.as_ref(), event);
    }
}

/// A close that reached the journal before its open survives a compaction: the late open
/// in the new file does not bring the hold back.
#[test]
fn a_close_before_its_open_survives_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = JournalSink::<String>::open(dir.path(), SyncPolicy::Always).unwrap();
    let h = ReservationId::from_u64(7);
    journal.on_event_for_test(&StockEvent::Restocked {
        line: line("a", 5, 5, 0, 1),
    });
    journal.on_event_for_test(&StockEvent::Expired {
        id: h,
        lines: vec![line("a", 1, 5, 0, 3)],
        key: None,
    });
    let empty_state = |on_hand| {
        let store = PessimisticStore::builder().snapshots().build();
        store.restock(&sku("a"), on_hand).unwrap();
        store.snapshot()
    };
    // The snapshot of the compaction: the hold already gone (its units back).
    journal.compact(|| empty_state(5)).unwrap();
    assert_eq!(journals(dir.path()).len(), 1, "the older journal is gone");
    journal.on_event_for_test(&StockEvent::Reserved {
        id: h,
        lines: vec![line("a", 1, 5, 1, 2)],
        expires_at: None,
        key: None,
    });
    drop(journal);
    let (_, recovered) = JournalSink::<String>::open(dir.path(), SyncPolicy::Always).unwrap();
    assert!(
        recovered.snapshot.holds.is_empty(),
        "{:?}",
        recovered.snapshot.holds
    );
}

#[test]
fn compaction_keeps_the_state_and_drops_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, recovered) =
        JournalSink::<String>::open(dir.path(), SyncPolicy::EverySec).unwrap();
    let store = PessimisticStore::builder()
        .restore(recovered.snapshot)
        .unwrap()
        .event_sink(journal.clone())
        .build();
    store.restock(&sku("a"), 10).unwrap();
    let early = store.reserve(&[(sku("a"), 2)]).unwrap();
    journal.compact(|| store.snapshot()).unwrap();
    store.sell(&[(sku("a"), 1)]).unwrap();
    store.commit(early.id()).unwrap();
    let late = store.reserve(&[(sku("a"), 3)]).unwrap();
    journal.compact(|| store.snapshot()).unwrap();
    store.sell(&[(sku("a"), 1)]).unwrap();
    let before = store.snapshot().unwrap();
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 2, "one snapshot and one journal");
    drop((store, journal));
    let (_, recovered) = JournalSink::<String>::open(dir.path(), SyncPolicy::Always).unwrap();
    assert_eq!(
        recovered.records, 1,
        "only the journal after the last snapshot is replayed"
    );
    assert_eq!(essence(&recovered.snapshot), essence(&before));
    assert_eq!(recovered.snapshot.holds[0].id, late.id());
}

/// A copy of the files of `dir` in a new directory: what a crash of the process at this
/// moment would leave (the page cache survives it).
fn copy_of(dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
    }
    copy
}

/// `EverySec` and `No` keep appended events in memory until their thread writes them,
/// once a second: `sync()` writes them at once (a copy of the files taken right after it
/// recovers every change), and so does dropping the sink.
#[test]
fn everysec_and_no_write_their_buffer_on_sync_and_on_drop() {
    for policy in [SyncPolicy::EverySec, SyncPolicy::No] {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = JournalSink::<String>::open(dir.path(), policy).unwrap();
        let store = PessimisticStore::builder()
            .event_sink(journal.clone())
            .build();
        store.restock(&sku("a"), 10).unwrap();
        let hold = store.reserve(&[(sku("a"), 3)]).unwrap();
        store.sell(&[(sku("a"), 2)]).unwrap();
        journal.sync();
        let (_, synced) = JournalSink::<String>::open(copy_of(dir.path()).path(), policy).unwrap();
        assert_eq!(
            essence(&synced.snapshot),
            (BTreeMap::from([(sku("a"), (8, 3, 3))]), vec![hold.id()]),
            "{policy:?}: after sync()"
        );
        store.commit(hold.id()).unwrap();
        store.sell(&[(sku("a"), 1)]).unwrap();
        drop((store, journal));
        let (_, dropped) = JournalSink::<String>::open(dir.path(), policy).unwrap();
        assert_eq!(
            essence(&dropped.snapshot),
            (BTreeMap::from([(sku("a"), (4, 0, 5))]), vec![]),
            "{policy:?}: after drop"
        );
    }
}

/// Under `EverySec` the buffer is written once it passes 1 MiB, before its thread's tick:
/// memory stays bounded however fast changes come.
#[test]
fn everysec_writes_a_full_buffer_without_waiting_for_its_tick() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = JournalSink::<String>::open(dir.path(), SyncPolicy::EverySec).unwrap();
    let store = PessimisticStore::builder()
        .event_sink(journal.clone())
        .build();
    let name = sku(&"x".repeat(100)); // about 120 bytes a sale
    store.restock(&name, 1 << 40).unwrap();
    for _ in 0..10_000 {
        store.sell(&[(name.clone(), 1)]).unwrap();
    }
    let written = std::fs::metadata(journals(dir.path()).pop().unwrap())
        .unwrap()
        .len();
    assert!(written >= 1 << 20, "{written} bytes written");
}

/// A journal file of format 1 (each record one event as JSON, before the binary
/// encoding) is still recovered.
#[test]
fn a_journal_of_format_1_is_still_read() {
    /// CRC-32 (IEEE), bit by bit.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for byte in bytes {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let events = [
        StockEvent::Restocked {
            line: line("a", 10, 10, 0, 1),
        },
        StockEvent::Sold {
            lines: vec![line("a", 4, 6, 0, 2)],
        },
    ];
    let mut file = b"SLJRNL01".to_vec();
    for (sequence, event) in (1u64..).zip(&events) {
        let payload = serde_json::to_vec(event).unwrap();
        let mut body = sequence.to_le_bytes().to_vec();
        body.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
        body.extend_from_slice(&payload);
        file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        file.extend_from_slice(&crc32(&body).to_le_bytes());
        file.extend_from_slice(&body);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("journal-0000000000000001.log"), &file).unwrap();
    let (_, recovered) = JournalSink::<String>::open(dir.path(), SyncPolicy::No).unwrap();
    assert_eq!((recovered.records, recovered.last_sequence), (2, Some(2)));
    assert_eq!(essence(&recovered.snapshot).0[&sku("a")], (6, 0, 2));
    // Control: a flipped bit in the first record is damage, not a format.
    file[8 + 24] ^= 1;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("journal-0000000000000001.log"), &file).unwrap();
    let opened = JournalSink::<String>::open(dir.path(), SyncPolicy::No);
    assert!(
        matches!(opened, Err(JournalError::Corrupt { .. })),
        "{opened:?}"
    );
}

/// Many threads at `Always`: every acknowledged change is recovered (group commit shares
/// syncs without losing anyone's record).
#[test]
fn concurrent_callers_at_always_all_survive() {
    let (dir, journal, store) = journaled_store();
    for n in 0..8 {
        store.restock(&sku(&format!("s{n}")), 1_000).unwrap();
    }
    std::thread::scope(|scope| {
        for n in 0..8 {
            let store = &store;
            scope.spawn(move || {
                for _ in 0..25 {
                    store.sell(&[(sku(&format!("s{n}")), 1)]).unwrap();
                }
            });
        }
    });
    drop((store, journal));
    let (_, recovered) = JournalSink::<String>::open(dir.path(), SyncPolicy::Always).unwrap();
    assert_eq!(recovered.records, 8 + 8 * 25);
    for sku in &recovered.snapshot.skus {
        assert_eq!((sku.on_hand, sku.version), (975, 26), "{}", sku.sku);
    }
}

/// The journal's public types can cross threads (a sink is shared by every caller).
#[test]
fn journal_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<JournalSink<String>>();
    send_sync::<stockledger::Recovery<String>>();
    send_sync::<JournalError>();
    send_sync::<SyncPolicy>();
    send_sync::<stockledger::JournalPosition>();
}

/// One store's run (single threaded, holds with TTLs and keys, commits, releases, sales,
/// restocks, expiries), its events delivered to a journal in a shuffled order: whatever
/// the order, recovery gives the store's final state. Control: the same records less the
/// last change give another state; less a commit followed by another change of its SKU,
/// the lost close is detected.
#[test]
fn recovery_is_independent_of_the_order_of_records() {
    use stockledger::{EventSink, ManualClock};
    #[derive(Default)]
    struct Log(std::sync::Mutex<Vec<StockEvent<String>>>);
    impl EventSink<String> for Log {
        fn on_event(&self, event: &StockEvent<String>) {
            self.0.lock().unwrap().push(event.clone());
        }
    }
    let log = Arc::new(Log::default());
    let clock = Arc::new(ManualClock::new());
    let store = PessimisticStore::builder()
        .snapshots()
        .clock(clock.clone())
        .event_sink(log.clone())
        .build();
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let mut next = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    for n in 0..4 {
        store.restock(&sku(&format!("s{n}")), 50).unwrap();
    }
    let mut open = Vec::new();
    for step in 0..300 {
        let a = sku(&format!("s{}", next(4)));
        let b = sku(&format!("s{}", next(4)));
        match next(7) {
            0 => drop(store.sell(&[(a, 1)])),
            1 => drop(store.restock(&a, 2)),
            2 | 3 => {
                let options = ReserveOptions::new()
                    .ttl(Duration::from_secs(1 + next(30)))
                    .idempotency_key(format!("k{step}"));
                if let Ok(hold) = store.reserve_with(&[(a, 1), (b, 1)], &options) {
                    open.push(hold.id());
                }
            }
            4 if !open.is_empty() => {
                let id = open.remove(next(open.len() as u64) as usize);
                let _ = store.commit(id);
            }
            5 if !open.is_empty() => {
                let id = open.remove(next(open.len() as u64) as usize);
                let _ = store.release(id);
            }
            _ => {
                clock.advance(Duration::from_secs(1));
                store.expire_due();
            }
        }
    }
    let end = store.snapshot().unwrap();
    let events: Vec<StockEvent<String>> = log.0.lock().unwrap().clone();
    let recover = |events: &[StockEvent<String>]| {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = JournalSink::<String>::open(dir.path(), SyncPolicy::No).unwrap();
        // Written in the shuffled order (no waiting for order): recovery alone must cope.
        journal.set_order_wait_max(Duration::ZERO);
        for event in events {
            journal.on_event_for_test(event);
        }
        drop(journal);
        JournalSink::<String>::open(dir.path(), SyncPolicy::No).map(|(_, recovered)| recovered)
    };
    for round in 0..20 {
        let mut shuffled = events.clone();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, next(i as u64 + 1) as usize);
        }
        let recovered = recover(&shuffled).unwrap();
        assert_eq!(essence(&recovered.snapshot), essence(&end), "order {round}");
        let keys = |snapshot: &Snapshot<String>| {
            let mut keys: Vec<String> = snapshot
                .holds
                .iter()
                .filter_map(|h| h.idempotency_key.clone())
                .collect();
            keys.sort();
            keys
        };
        assert_eq!(keys(&recovered.snapshot), keys(&end), "order {round}");
    }
    // Control: the checker catches a lost record: the run's last change missing gives
    // another state.
    let last = events
        .iter()
        .rposition(|event| !event.lines().is_empty())
        .expect("a change");
    let mut lossy = events.clone();
    lossy.remove(last);
    match recover(&lossy) {
        Ok(recovered) => assert_ne!(essence(&recovered.snapshot), essence(&end)),
        Err(error) => panic!("a lost last change is not an error: {error}"),
    }
    // A commit's record lost while a later change of its SKU is there: detected.
    let mut lossy = events.clone();
    let committed = lossy
        .iter()
        .position(|event| matches!(event, StockEvent::Committed { .. }))
        .expect("a commit");
    let committed_sku = lossy[committed].lines()[0].sku.clone();
    let changed_after = lossy[committed + 1..]
        .iter()
        .any(|e| e.lines().iter().any(|l| l.sku == committed_sku));
    lossy.remove(committed);
    assert!(
        changed_after,
        "the run changes the SKU after its first commit"
    );
    let verdict = recover(&lossy);
    assert!(
        matches!(verdict, Err(JournalError::LostClose { .. })),
        "{verdict:?}"
    );
}

/// A partial commit through the journal: its two records (the released part, then the
/// committed part) end the hold once, the units sold are the committed part's, and the
/// key remembers the hold as committed.
#[test]
fn a_partial_commit_recovers() {
    let (dir, journal, store) = journaled_store();
    store.restock(&sku("a"), 10).unwrap();
    store.restock(&sku("b"), 10).unwrap();
    let keyed = ReserveOptions::new().idempotency_key("order-9");
    let hold = store
        .reserve_with(&[(sku("a"), 5), (sku("b"), 2)], &keyed)
        .unwrap();
    store.commit_partial(hold.id(), &[(sku("a"), 2)]).unwrap();
    drop((store, journal));
    let (_, recovered) = JournalSink::<String>::open(dir.path(), SyncPolicy::Always).unwrap();
    let (skus, holds) = essence(&recovered.snapshot);
    assert!(holds.is_empty());
    assert_eq!((skus[&sku("a")].0, skus[&sku("a")].1), (8, 0));
    assert_eq!((skus[&sku("b")].0, skus[&sku("b")].1), (10, 0));
    let store = OptimisticStore::builder()
        .restore(recovered.snapshot)
        .unwrap()
        .build();
    let retry = store.reserve_with(&[(sku("a"), 5), (sku("b"), 2)], &keyed);
    assert!(
        matches!(
            retry,
            Err(StockError::HoldEnded {
                outcome: HoldOutcome::Committed,
                ..
            })
        ),
        "{retry:?}"
    );
}
