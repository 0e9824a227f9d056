//! A full disk, on the journal's state alone (no files): what a failed
//! round gives back, when a segment that has no file may take a freed
//! segment's, and what the reserve segment is for.
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::store::record::{RecordRef, StoredDestination};

const SEG: u64 = 64 * 1024;
const BODY: usize = 20 * 1024;

/// A journal on no disk: from an empty recovery, its first segment started
/// (a slot with no file yet).
fn journal() -> Journal {
    let cfg = JournalConfig {
        dir: PathBuf::from("/nonexistent/brokk-journal-unit"),
        segment_size_bytes: SEG,
    };
    Journal::from_recovery(
        cfg,
        Arc::new(StoreUsage::default()),
        recovery::Layout::default(),
    )
}

fn dest() -> StoredDestination {
    StoredDestination {
        topic: false,
        name: "q".into(),
    }
}

fn send(j: &mut Journal, id: u64) -> u64 {
    let d = dest();
    let body = vec![b'x'; BODY];
    j.append(
        &RecordRef::Send {
            id,
            destination: &d,
            priority: 4,
            expires_ms: 0,
            timestamp_ms: 0,
            properties: &[],
            body: &body,
        },
        1,
    )
}

fn ack(j: &mut Journal, id: u64) {
    let d = dest();
    j.append(
        &RecordRef::Ack {
            destination: &d,
            sub: None,
            id,
        },
        0,
    );
    j.release(id);
}

/// Gives segment `i` (waiting for a file) a file, as `segment_file` does
/// when it makes one.
fn place(j: &mut Journal, i: usize) {
    assert!(j.segments[i].unplaced.take().is_some());
    j.unplaced -= 1;
}

/// What `write_pending` and `sync` do to the journal's state when every
/// chunk is written and synced.
fn flush_all(j: &mut Journal) {
    let basis = j.durable;
    for p in lay_out(j) {
        assert!(
            j.segments[p.chunk.segment].unplaced.is_none(),
            "flushed a segment with no file"
        );
        j.durable = j.durable.max(p.chunk.upto);
    }
    j.claimed = j.claimed.max(Some(basis));
}

#[test]
fn a_chunk_put_back_gives_its_place_back_and_merges_with_what_its_segment_got_meanwhile() {
    let mut j = journal();
    place(&mut j, 0);
    send(&mut j, 1);
    let j = RefCell::new(j);
    // write_pending lays the chunk out (its place claimed); its write
    // fails; meanwhile one more record came for the same segment.
    let plans = lay_out(&mut j.borrow_mut());
    assert!(j.borrow().segments[0].write_at > BLOCK);
    let first_len = plans[0].bytes.len();
    assert!(first_len > 0);
    let seq = send(&mut j.borrow_mut(), 2);
    let mut plans = plans.into_iter();
    let plan = plans.next().unwrap();
    put_back(&j, plan, plans);
    let j = j.into_inner();
    assert_eq!(
        j.segments[0].write_at, BLOCK,
        "the claimed place is given back"
    );
    assert_eq!(j.pending.len(), 1, "one round where the failed one was");
    let c = &j.pending[0];
    assert!(c.fresh, "the segment's header block is still to be written");
    assert!(!c.ends_segment);
    assert_eq!(c.upto, seq);
    assert!(c.bytes.len() > first_len);
    assert_eq!(j.pending_len, c.bytes.len() as u64, "fits() sees it all");
}

#[test]
fn a_failed_chunk_gives_back_the_places_of_every_later_chunk() {
    let mut j = journal();
    place(&mut j, 0);
    send(&mut j, 1);
    send(&mut j, 2);
    // The third does not fit: the first segment is closed, a new one
    // (with no file) started.
    send(&mut j, 3);
    assert_eq!(j.in_use.len(), 2);
    let next = *j.in_use.back().unwrap();
    let j = RefCell::new(j);
    let plans = lay_out(&mut j.borrow_mut());
    assert_eq!(plans.len(), 2);
    assert!(plans[0].chunk.ends_segment && plans[1].chunk.fresh);
    assert!(j.borrow().segments[next].write_at > BLOCK);
    let mut plans = plans.into_iter();
    let plan = plans.next().unwrap();
    put_back(&j, plan, plans);
    let j = j.into_inner();
    assert_eq!(j.segments[0].write_at, BLOCK);
    assert_eq!(j.segments[next].write_at, BLOCK);
    assert_eq!(j.pending.len(), 2, "in order, one chunk per segment");
    assert!(j.pending[0].ends_segment && j.pending[0].segment == 0);
    assert!(j.pending[1].fresh && j.pending[1].segment == next);
    assert_eq!(j.pending[1].upto, j.appended);
}

#[test]
fn a_waiting_segment_gets_a_freed_file_only_once_a_durable_round_declares_it_free() {
    let mut j = journal();
    place(&mut j, 0);
    // A spare, ready.
    assert_eq!(spare(&mut j), 1);
    let first_path = j.segments[0].path.clone();
    // Two sends fill the first segment; both are acknowledged while it is
    // still active, and durable.
    send(&mut j, 1);
    send(&mut j, 2);
    ack(&mut j, 1);
    ack(&mut j, 2);
    flush_all(&mut j);
    assert_eq!(j.free.len(), 1, "the active segment is not freed");
    // The third closes it (freed as of this send, whose round comes after)
    // and goes to the spare; the fifth finds no segment that a durable
    // round says is free.
    let freed_as_of = send(&mut j, 3);
    assert_eq!(j.in_use.iter().copied().collect::<Vec<_>>(), vec![1]);
    assert_eq!(
        j.free.iter().copied().collect::<Vec<_>>(),
        vec![(0, Some(freed_as_of))]
    );
    send(&mut j, 4);
    send(&mut j, 5);
    let waiting = *j.in_use.back().unwrap();
    assert_eq!(j.segments[waiting].unplaced, Some(freed_as_of + 1));
    // No room for new files: the freed segment is its home, and no more.
    j.note_no_room("test".into());
    assert!(j.disk_full(), "nothing left for the roll after it");
    assert!(!j.take_free_file(waiting), "not free on disk yet");
    // The records that freed it are durable, but no durable round laid out
    // since says so: still not.
    j.durable = freed_as_of + 1;
    assert!(!j.take_free_file(waiting), "durable alone is not enough");
    assert!(j.wants_durable_seal(), "a durable seal would say it");
    // A durable round (the seal) laid out once they were durable.
    j.claimed = Some(j.durable);
    assert!(j.take_free_file(waiting));
    assert_eq!(j.segments[waiting].path, first_path);
    assert_eq!(j.unplaced, 0);
    assert!(j.free.is_empty());
}

#[test]
fn a_segment_closed_with_nothing_live_is_no_home_for_the_next() {
    let mut j = journal();
    place(&mut j, 0);
    send(&mut j, 1);
    send(&mut j, 2);
    ack(&mut j, 1);
    ack(&mut j, 2);
    flush_all(&mut j);
    // No spare: the roll frees the first segment as of the send that
    // starts the next, which is in that next segment itself.
    send(&mut j, 3);
    let waiting = *j.in_use.back().unwrap();
    assert!(j.segments[waiting].unplaced.is_some());
    assert_eq!(j.free.len(), 1, "freed at the roll");
    j.note_no_room("test".into());
    assert!(j.disk_full());
    assert!(j.waiting_for_space());
    j.durable = j.appended - 1;
    j.claimed = Some(j.durable);
    assert!(!j.take_free_file(waiting));
}

#[test]
fn a_held_end_round_leaves_its_segment_open_for_a_seal() {
    let mut j = journal();
    place(&mut j, 0);
    send(&mut j, 1);
    send(&mut j, 2);
    assert_eq!(j.seal_target(), None, "records pending");
    flush_all(&mut j);
    assert_eq!(j.seal_target(), Some(0), "idle: the active segment");
    // The third starts a segment with no file: what is pending for the
    // first is its End round alone (as write_pending leaves it when it
    // holds that round back), so a seal still goes into the first.
    send(&mut j, 3);
    let next = *j.in_use.back().unwrap();
    assert_ne!(next, 0);
    assert!(j.pending[0].bytes.is_empty() && j.pending[0].ends_segment);
    assert_eq!(j.seal_target(), Some(0));
}

/// Adds a free segment with a file and nothing in it (a spare, as
/// `ensure_spare` makes), reusable at once.
fn spare(j: &mut Journal) -> usize {
    let k = j.segments.len();
    j.segments.push(Segment {
        path: PathBuf::from(format!("/nonexistent/spare-{k}")),
        generation: 0,
        salt: 0,
        live: 0,
        write_at: BLOCK,
        file: None,
        unplaced: None,
        stream: super::read_back::Stream::new(BLOCK),
    });
    j.free.push_front((k, None));
    k
}

/// Appends acknowledgements of messages that are not in the journal (they
/// free nothing) until the active segment rolls; returns the new one.
fn acks_until_roll(j: &mut Journal, first_id: u64) -> usize {
    let d = dest();
    let active = *j.in_use.back().unwrap();
    let mut id = first_id;
    while *j.in_use.back().unwrap() == active {
        j.append(
            &RecordRef::Ack {
                destination: &d,
                sub: None,
                id,
            },
            0,
        );
        id += 1;
    }
    *j.in_use.back().unwrap()
}

/// At a truly full disk (no file can be made), acknowledgements that fill
/// the active segment roll into the reserve, a segment with a file: their
/// records are written and free what they retire. Producers stay paused
/// until a freed segment has refilled the reserve and one more is free.
/// (Without the reserve they rolled into a segment with no file, were never
/// written, and the segments they freed could never become its home.)
#[test]
fn acknowledgements_at_a_full_disk_roll_into_the_reserve_and_free_segments() {
    let mut j = journal();
    place(&mut j, 0);
    spare(&mut j);
    spare(&mut j);
    send(&mut j, 1);
    send(&mut j, 2);
    // The third rolls into a spare: the reserve is left.
    send(&mut j, 3);
    assert_eq!(j.reusable_count(), RESERVE_SEGMENTS);
    flush_all(&mut j);
    // The spare for the next roll cannot be made: producers pause, with
    // the reserve still there.
    j.note_no_room("test".into());
    assert!(j.disk_full(), "only the reserve is left: producers pause");
    // Acknowledgements that free nothing fill the active segment: they
    // roll into the reserve, which has a file.
    let reserve = acks_until_roll(&mut j, 10_000);
    assert!(
        j.segments[reserve].unplaced.is_none(),
        "the roll took the reserve, not a segment with no file"
    );
    flush_all(&mut j);
    // Consumers acknowledge the first segment's messages: it is freed, and
    // (once a durable round says so) reusable. That refills the reserve;
    // producers still wait.
    ack(&mut j, 1);
    ack(&mut j, 2);
    flush_all(&mut j);
    j.claimed = Some(j.durable);
    assert_eq!(j.reusable_count(), 1);
    assert!(j.disk_full(), "the freed segment only refills the reserve");
    // The second segment freed as well: one more than the reserve.
    ack(&mut j, 3);
    flush_all(&mut j);
    j.claimed = Some(j.durable);
    assert!(!j.disk_full(), "producers resume");
    // More acknowledgements roll into a freed segment's file.
    let next = acks_until_roll(&mut j, 90_000);
    assert!(j.segments[next].unplaced.is_none());
    assert_eq!(j.unplaced, 0);
}

/// With nothing live, no acknowledgement can come: the reserve is not held
/// back, and a full file system does not pause producers (broker-wide)
/// with nothing left that could free a segment.
#[test]
fn with_nothing_live_the_reserve_is_not_held_back() {
    let mut j = journal();
    place(&mut j, 0);
    spare(&mut j);
    j.note_no_room("test".into());
    assert!(
        !j.disk_full(),
        "an empty journal with a free segment pauses nobody"
    );
    send(&mut j, 1);
    assert!(
        j.disk_full(),
        "something live: the free segment is the reserve"
    );
    ack(&mut j, 1);
    assert!(!j.disk_full(), "nothing live again");
    assert!(!j.counted_full, "and the broker-wide count says so");
}

/// While a spare is being made (not yet counted), the roll that leaves
/// only the reserve asks `statvfs` for room for two segments: a spare that
/// may still fail does not let a burst take the reserve.
#[test]
fn a_spare_being_made_needs_its_own_room() {
    let dir = tempfile::tempdir().unwrap();
    let free = available_bytes(dir.path()).unwrap();
    // Segments of two thirds of the free space: one more fits, two do not.
    let seg = (free / 3 * 2 / BLOCK) * BLOCK;
    let cfg = JournalConfig {
        dir: dir.path().to_path_buf(),
        segment_size_bytes: seg,
    };
    let mut j = Journal::from_recovery(
        cfg,
        Arc::new(StoreUsage::default()),
        recovery::Layout::default(),
    );
    place(&mut j, 0);
    spare(&mut j);
    spare(&mut j);
    j.roll(true);
    assert!(j.no_room.is_none(), "room for one more spare");
    j.making_spare = true;
    spare(&mut j);
    j.roll(true);
    assert!(
        j.no_room.is_some(),
        "a spare in the making plus another would not fit: producers must pause"
    );
}

/// A start rolls into a fresh segment only if one with a file is free;
/// otherwise it continues in the recovered one (no segment without a file
/// that another shard's spare could leave without room).
#[test]
fn a_start_without_a_free_segment_continues_in_the_recovered_one() {
    // As recovered from a journal that existed (not started here).
    let recovered = || {
        let mut j = journal();
        place(&mut j, 0);
        j.started_fresh = false;
        j
    };
    let mut j = recovered();
    j.start_fresh_segment();
    assert_eq!(j.active(), 0, "no roll");
    assert_eq!(j.unplaced, 0);
    let mut j = recovered();
    let k = spare(&mut j);
    j.start_fresh_segment();
    assert_eq!(j.active(), k, "rolled into the free segment");
    assert_eq!(j.unplaced, 0);
}
