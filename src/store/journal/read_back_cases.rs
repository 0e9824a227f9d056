//! Reading SEND records back through the real writer and recovery: from
//! the pending chunks, from a chunk being written, from disk after rounds
//! and rolls, and from segments recovery read; a damaged record is an
//! error, never another message.
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use super::crash_cases::{ack, q, resume};
use super::*;
use crate::store::record::{Record, RecordRef};
use crate::store::{ReadBackError, RecordAt, Store};

/// Small segments: a few dozen messages roll the journal.
const SEG: u64 = 64 * 1024;

fn body(id: u64) -> Vec<u8> {
    // Sizes vary so records straddle rounds and blocks differently.
    let len = 500 + (id as usize * 397) % 3000;
    (0..len).map(|i| (id as usize + i) as u8).collect()
}

fn send(j: &RefCell<Journal>, id: u64) -> RecordAt {
    let d = q();
    let b = body(id);
    let mut j = j.borrow_mut();
    j.append(
        &RecordRef::Send {
            id,
            destination: &d,
            priority: 4,
            expires_ms: 0,
            timestamp_ms: id * 10,
            properties: &[],
            body: &b,
        },
        1,
    );
    j.last_send_at().expect("a SEND says where it is")
}

/// Every record at `at` reads back as the SEND of its message.
fn check(j: &RefCell<Journal>, at: &[(u64, RecordAt)]) {
    let refs: Vec<RecordAt> = at.iter().map(|(_, a)| *a).collect();
    let read = j.borrow().read_records(&refs);
    assert_eq!(read.len(), at.len());
    for ((id, a), r) in at.iter().zip(read) {
        match r {
            Ok(Record::Send {
                id: got,
                body: b,
                timestamp_ms,
                ..
            }) => {
                assert_eq!(got, *id, "at {a:?}");
                assert_eq!(&b[..], &body(*id)[..], "body of {id}");
                assert_eq!(timestamp_ms, id * 10);
            }
            other => panic!("message {id} at {a:?}: {other:?}"),
        }
    }
}

async fn start(dir: &Path) -> (Rc<RefCell<Journal>>, Vec<(u64, RecordAt)>) {
    let mut sends = Vec::new();
    let r = recovery::recover(dir, SEG, false, |recs, at| {
        for (rec, a) in recs.into_iter().zip(at) {
            if let Record::Send { id, .. } = rec {
                sends.push((id, a));
            }
        }
    })
    .expect("recover");
    let j = resume(dir, SEG, r.layout).await;
    (j, sends)
}

#[test]
fn records_read_back_before_during_and_after_their_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    glommio::LocalExecutor::default().run(async {
        let (j, _) = start(&dir).await;
        let mut live = Vec::new();
        // Pending: appended, not written.
        for id in 1..=5 {
            live.push((id, send(&j, id)));
        }
        check(&j, &live);
        // Being written: the flusher holds the chunk while it waits on the
        // disk; the record reads from memory meanwhile.
        let writing = glommio::spawn_local({
            let j = j.clone();
            async move {
                let w = write_pending(&j).await.unwrap();
                sync(&j, w).await.unwrap();
            }
        });
        glommio::executor().yield_now().await;
        assert!(!j.borrow().in_flight.is_empty(), "the write is under way");
        assert!(j.borrow().pending.is_empty());
        check(&j, &live);
        writing.await;
        assert!(j.borrow().in_flight.is_empty());
        check(&j, &live);
        // Many rounds over several segments, some acknowledged.
        for id in 6..=120 {
            live.push((id, send(&j, id)));
            if id % 7 == 0 {
                flush(&j).await.unwrap();
            }
            if id % 3 == 0 {
                ack(&j, id);
                live.retain(|(x, _)| *x != id);
            }
        }
        check(&j, &live);
        flush(&j).await.unwrap();
        let segments: std::collections::HashSet<u32> =
            live.iter().map(|(_, a)| a.segment).collect();
        assert!(
            segments.len() > 3,
            "the test must cross segments: {segments:?}"
        );
        check(&j, &live);
    });
}

#[test]
fn records_recovery_read_are_read_back_where_it_found_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    let mut live = Vec::new();
    glommio::LocalExecutor::default().run(async {
        let (j, _) = start(&dir).await;
        for id in 1..=80 {
            live.push((id, send(&j, id)));
            if id % 5 == 0 {
                flush(&j).await.unwrap();
            }
            if id % 4 == 0 {
                ack(&j, id);
                live.retain(|(x, _)| *x != id);
            }
        }
        flush(&j).await.unwrap();
    });
    let dir2 = dir.clone();
    glommio::LocalExecutor::default().run(async move {
        let (j, found) = start(&dir2).await;
        // Recovery hands every SEND it read with its place; the live ones
        // read back from there, and so do new ones after them.
        let found: Vec<(u64, RecordAt)> = found
            .into_iter()
            .filter(|(id, _)| live.iter().any(|(x, _)| x == id))
            .collect();
        assert_eq!(found.len(), live.len());
        check(&j, &found);
        let mut all = found;
        for id in 200..=260 {
            all.push((id, send(&j, id)));
        }
        flush(&j).await.unwrap();
        check(&j, &all);
    });
}

#[test]
fn a_damaged_record_reads_as_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    glommio::LocalExecutor::default().run(async {
        let (j, _) = start(&dir).await;
        let a = send(&j, 1);
        let b = send(&j, 2);
        flush(&j).await.unwrap();
        check(&j, &[(1, a), (2, b)]);
        // Flip a byte inside message 1's record on disk (a fresh reader:
        // nothing cached in the journal's own state).
        let path = j.borrow().segments[a.segment as usize].path.clone();
        let file_at = j.borrow().segments[a.segment as usize]
            .stream
            .file_offset_for_test(a.at, a.len as u64)
            .unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(file_at + a.len as u64 / 2) as usize] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let read = j.borrow().read_records(&[a, b]);
        assert!(
            matches!(read[0], Err(ReadBackError::Damaged { .. })),
            "{:?}",
            read[0]
        );
        assert!(
            matches!(read[1], Ok(Record::Send { id: 2, .. })),
            "{:?}",
            read[1]
        );
        // A place that holds another record is not that message either.
        let wrong = RecordAt { len: b.len, ..a };
        let read = j.borrow().read_records(&[wrong]);
        assert!(read[0].is_err(), "{:?}", read[0]);
    });
}

/// Waits (with a deadline) until no record of `at` is being read ahead.
fn until_read(j: &RefCell<Journal>, at: &[(u64, RecordAt)]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while at.iter().any(|(_, a)| j.borrow().reading(a)) {
        assert!(
            std::time::Instant::now() < deadline,
            "reads ahead never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn records_read_ahead_read_back_the_same_woken_or_not() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    let mut live = Vec::new();
    glommio::LocalExecutor::default().run(async {
        let (j, _) = start(&dir).await;
        for id in 1..=150 {
            live.push((id, send(&j, id)));
            if id % 9 == 0 {
                flush(&j).await.unwrap();
            }
            // Gaps: another queue's records between this one's.
            if id % 5 == 0 {
                ack(&j, id);
                live.retain(|(x, _)| *x != id);
            }
        }
        flush(&j).await.unwrap();
        // Nobody to wake: a read waits for the run being read ahead.
        let refs: Vec<RecordAt> = live.iter().map(|(_, a)| *a).collect();
        j.borrow().advise_read_ahead(&refs, 1 << 30);
        check(&j, &live);
        // Again, without anything in the way of the next checks.
        check(&j, &live);
    });
    let dir2 = dir.clone();
    glommio::LocalExecutor::default().run(async move {
        let (j, found) = start(&dir2).await;
        let live: Vec<(u64, RecordAt)> = found
            .into_iter()
            .filter(|(id, _)| live.iter().any(|(x, _)| x == id))
            .collect();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let tx = std::sync::Mutex::new(tx);
        j.borrow_mut()
            .wake_on_read_ahead(std::sync::Arc::new(move || {
                let _ = tx.lock().unwrap().send(());
            }));
        let refs: Vec<RecordAt> = live.iter().map(|(_, a)| *a).collect();
        // Only the first half: the rest is read the plain way.
        let half = refs.len() / 2;
        j.borrow().advise_read_ahead(&refs[..half], 1 << 30);
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("the reader wakes its journal's owner");
        until_read(&j, &live);
        assert!(
            parked(&j) > 0,
            "the first half waits in the reader's buffers"
        );
        check(&j, &live);
        assert_eq!(parked(&j), 0, "taken: the runs are gone");
        // Read ahead twice over: asked again, what is parked is not read
        // again, and every record still reads back right.
        j.borrow().advise_read_ahead(&refs, 1 << 30);
        j.borrow().advise_read_ahead(&refs, 1 << 30);
        until_read(&j, &live);
        assert!(parked(&j) > 0);
        check(&j, &live);
        check(&j, &live);
    });
}

fn parked(j: &RefCell<Journal>) -> usize {
    j.borrow()
        .read_ahead
        .running()
        .map_or(0, |ra| ra.parked_bytes())
}
