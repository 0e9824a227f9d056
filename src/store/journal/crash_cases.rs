//! Crash cases found by review, as regression tests: each builds a journal
//! through the real writer, simulates a crash or power loss by editing the
//! files, and checks what recovery makes of it.
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use super::*;
use crate::store::record::{Record, RecordRef, StoredDestination, StoredSub};

const SEG: u64 = 64 * 1024;

fn open(dir: &Path) -> (Vec<Record>, recovery::Recovered) {
    let mut recs = Vec::new();
    let r = recovery::recover(dir, SEG, false, |v, _| recs.extend(v)).expect("recover");
    (recs, r)
}

async fn start(dir: &Path) -> (Rc<RefCell<Journal>>, Vec<Record>) {
    let (recs, r) = open(dir);
    (resume(dir, SEG, r.layout).await, recs)
}

/// The writer resumed from a recovered layout, as a start does: flushed,
/// sealed, in a fresh segment.
pub(super) async fn resume(
    dir: &Path,
    segment_size_bytes: u64,
    layout: recovery::Layout,
) -> Rc<RefCell<Journal>> {
    let j = Rc::new(RefCell::new(Journal::from_recovery(
        JournalConfig {
            dir: dir.to_path_buf(),
            segment_size_bytes,
        },
        Arc::new(StoreUsage::default()),
        layout,
    )));
    flush(&j).await.unwrap();
    write_seal(&j, true).await.unwrap();
    start_fresh(&j).await.unwrap();
    flush(&j).await.unwrap();
    j
}

pub(super) fn q() -> StoredDestination {
    StoredDestination {
        topic: false,
        name: "q".into(),
    }
}

fn send(j: &RefCell<Journal>, id: u64, body: &[u8]) {
    let d = q();
    j.borrow_mut().append(
        &RecordRef::Send {
            id,
            destination: &d,
            priority: 4,
            expires_ms: 0,
            timestamp_ms: 0,
            properties: &[],
            body,
        },
        1,
    );
}

pub(super) fn ack(j: &RefCell<Journal>, id: u64) {
    let d = q();
    j.borrow_mut().append(
        &RecordRef::Ack {
            destination: &d,
            sub: None,
            id,
        },
        0,
    );
    j.borrow_mut().release(id);
}

fn gen_of_file(p: &Path) -> Option<u64> {
    let b = std::fs::read(p).ok()?;
    match read_header(&b[..BLOCK as usize]) {
        Some(SegmentHeader::Current(g, _)) => Some(g),
        _ => None,
    }
}

fn files(dir: &Path) -> Vec<(std::path::PathBuf, Option<u64>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| {
            let g = gen_of_file(&p);
            (p, g)
        })
        .collect();
    v.sort();
    v
}

/// F1: a round in an earlier chunk of a write claims a segment free
/// (first_gen) on the strength of an ACK that sits in a later chunk of the
/// same write. Crash after the first chunk landed, before the second.
#[test]
fn eager_first_gen_makes_everything_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    glommio::LocalExecutor::default().run(async {
        let (j, _) = start(&dir).await;
        let topic = "t";
        let sub = StoredSub {
            client_id: "c".into(),
            name: "s".into(),
        };
        j.borrow_mut().append(
            &RecordRef::DurableAdd {
                topic,
                sub: &sub,
                selector: None,
            },
            0,
        );
        // Fill most of the first segment with queue messages 1..=10.
        for id in 1..=10 {
            send(&j, id, &[7u8; 4000]);
        }
        flush(&j).await.unwrap();
        for id in 1..=9 {
            ack(&j, id);
        }
        flush(&j).await.unwrap();
        // One batch: a SEND that does not fit (roll), then the ACK that frees
        // the first segment.
        send(&j, 11, &[8u8; 30000]);
        ack(&j, 10);
        eprintln!(
            "in_use before write: {:?}",
            j.borrow()
                .in_use
                .iter()
                .map(|&i| j.borrow().segments[i].generation)
                .collect::<Vec<_>>()
        );
        flush(&j).await.unwrap();
    });
    eprintln!("files: {:?}", files(&dir));
    // The crash: the second chunk (the new segment's header + round, holding
    // ACK 10 and SEND 11) never landed. Nothing was receipted for either.
    for (p, g) in files(&dir) {
        if g == Some(2) {
            std::fs::write(&p, vec![0u8; SEG as usize]).unwrap();
        }
    }
    let (recs, r) = open(&dir);
    eprintln!("records replayed: {}", recs.len());
    eprintln!("durables after recovery: {:?}", r.layout.durables);
    eprintln!(
        "live holders: {:?}",
        r.layout.holders.keys().copied().collect::<Vec<_>>()
    );
    assert!(
        !r.layout.durables.is_empty(),
        "durable subscription t/c:s lost"
    );
    assert!(
        r.layout.holders.iter().any(|(id, _)| *id == 10),
        "message 10 lost although its ACK was never durable"
    );
}

/// Issue A: appends made while a multi-chunk write is between chunks see
/// the new segment's write_at still at BLOCK and pending_len reset to 0.
#[test]
fn appends_between_chunks_overflow_the_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    glommio::LocalExecutor::default().run(async {
        let (j, _) = start(&dir).await;
        for id in 1..=14 {
            send(&j, id, &[7u8; 4000]);
        }
        flush(&j).await.unwrap();
        // Rolls: pending = [W End, X fresh + 40 KB].
        send(&j, 100, &[1u8; 40000]);
        let j2 = j.clone();
        let task = glommio::spawn_local(async move { write_pending(&j2).await.unwrap() });
        futures_lite::future::yield_now().await;
        // X's chunk is not laid out yet: these all "fit".
        for id in 101..=103 {
            send(&j, id, &[2u8; 15000]);
        }
        eprintln!(
            "in_use: {:?}",
            j.borrow()
                .in_use
                .iter()
                .map(|&i| j.borrow().segments[i].generation)
                .collect::<Vec<_>>()
        );
        let w = task.await;
        sync(&j, w).await.unwrap();
        flush(&j).await.unwrap();
        let a = j.borrow().active();
        eprintln!(
            "active write_at {} segment size {}",
            j.borrow().segments[a].write_at,
            SEG
        );
    });
    for (p, g) in files(&dir) {
        let len = std::fs::metadata(&p).unwrap().len();
        eprintln!("{} gen {:?} len {}", p.display(), g, len);
    }
    let (recs, r) = open(&dir);
    eprintln!(
        "recovered {} records, truncated {:?}, live {:?}",
        recs.len(),
        r.truncated_at,
        r.layout.holders.keys().copied().collect::<Vec<_>>()
    );
    for (p, _) in files(&dir) {
        assert!(
            std::fs::metadata(&p).unwrap().len() <= SEG,
            "segment grew past its preallocated size"
        );
    }
}

/// F-triple: the two newest segments hold no valid round (one batch filled a
/// whole segment; power loss kept their header blocks but not their rounds):
/// oldest_live_gen falls back to 0 and free segments' stale content is
/// replayed.
#[test]
fn two_newest_without_rounds_replays_stale_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    glommio::LocalExecutor::default().run(async {
        let (j, _) = start(&dir).await;
        for id in 1..=12 {
            send(&j, id, &[7u8; 4000]);
        }
        flush(&j).await.unwrap();
        send(&j, 100, &[1u8; 40000]);
        for id in 1..=12 {
            ack(&j, id);
        }
        send(&j, 200, &[1u8; 40000]);
        ack(&j, 100);
        send(&j, 300, &[1u8; 40000]);
        ack(&j, 200);
        flush(&j).await.unwrap();
        let jb = j.borrow();
        eprintln!(
            "run 1: in_use {:?} free {:?}",
            jb.in_use
                .iter()
                .map(|&i| jb.segments[i].generation)
                .collect::<Vec<_>>(),
            jb.free
                .iter()
                .map(|&(i, _)| (
                    jb.segments[i].path.file_name().unwrap().to_owned(),
                    jb.segments[i].generation
                ))
                .collect::<Vec<_>>()
        );
    });
    eprintln!("after run 1: {:?}", files(&dir));
    glommio::LocalExecutor::default().run(async {
        let (j, recs) = start(&dir).await;
        eprintln!("run 2 recovered {} records", recs.len());
        {
            // read_dir order decides recovery's free order: simulate one
            // that lists seg-000000 last.
            let mut jb = j.borrow_mut();
            let mut f: Vec<_> = jb.free.drain(..).collect();
            f.sort_by_key(|&(i, _)| {
                std::cmp::Reverse(jb.segments[i].path.ends_with("seg-000000.log") as u8)
            });
            f.reverse();
            jb.free = f.into_iter().collect();
            eprintln!(
                "run 2 free order {:?}",
                jb.free
                    .iter()
                    .map(|&(i, _)| jb.segments[i].path.file_name().unwrap().to_owned())
                    .collect::<Vec<_>>()
            );
        }
        send(&j, 400, &[1u8; 40000]);
        send(&j, 500, &[1u8; 40000]);
        flush(&j).await.unwrap();
    });
    let fs = files(&dir);
    eprintln!("after run 2: {:?}", fs);
    // Power loss: the two new segments kept their header block, not their rounds.
    for (p, g) in &fs {
        if matches!(g, Some(5) | Some(6)) {
            let mut b = std::fs::read(p).unwrap();
            b[BLOCK as usize..].fill(0);
            std::fs::write(p, b).unwrap();
        }
    }
    let (recs, r) = open(&dir);
    let live: Vec<u64> = r.layout.holders.keys().copied().collect();
    eprintln!("recovered {} records; live {:?}", recs.len(), live);
    assert!(
        !live.iter().any(|id| *id <= 12),
        "messages 1..=12, acked and durable, came back"
    );
}

/// F2: from_recovery reuses a segment that only recovery's own count found
/// free, before the start seal records it; a torn first write to it (header
/// block lost, snapshot round landed) then reads as damage to durable data.
#[test]
fn recovery_freed_segment_reused_before_seal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    let sub = StoredSub {
        client_id: "c".into(),
        name: "s".into(),
    };
    glommio::LocalExecutor::default().run(async {
        let (j, _) = start(&dir).await;
        j.borrow_mut().append(
            &RecordRef::DurableAdd {
                topic: "t",
                sub: &sub,
                selector: None,
            },
            0,
        );
        send(&j, 1, &[7u8; 4000]);
        ack(&j, 1);
        flush(&j).await.unwrap();
        send(&j, 100, &[1u8; 54000]); // roll to gen 2; gen 1 has nothing live but stays in use
        flush(&j).await.unwrap();
        send(&j, 200, &[1u8; 54000]); // roll to gen 3 (new file): [gen2 End, gen3 fresh]
        flush(&j).await.unwrap();
    });
    // Crash: gen 2's End landed, gen 3's file was never made.
    for (p, g) in files(&dir) {
        if g == Some(3) {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let old_head = std::fs::read(dir.join("seg-000000.log")).unwrap()[..BLOCK as usize].to_vec();
    glommio::LocalExecutor::default().run(async {
        let (_recs, r) = open(&dir);
        eprintln!(
            "run 2: ended {} in_use {:?} free {:?}",
            r.layout.ended, r.layout.in_use, r.layout.free
        );
        let j = Rc::new(RefCell::new(Journal::from_recovery(
            JournalConfig {
                dir: dir.to_path_buf(),
                segment_size_bytes: SEG,
            },
            Arc::new(StoreUsage::default()),
            r.layout,
        )));
        let a = j.borrow().active();
        eprintln!(
            "run 2 rolled into {:?} gen {}",
            j.borrow().segments[a].path,
            j.borrow().segments[a].generation
        );
        flush(&j).await.unwrap();
        // power loss before the start seal
    });
    // The header block of that first write did not land; its snapshot round did.
    let p = dir.join("seg-000000.log");
    let mut b = std::fs::read(&p).unwrap();
    b[..BLOCK as usize].copy_from_slice(&old_head);
    std::fs::write(&p, b).unwrap();
    let mut recs = Vec::new();
    let r = recovery::recover(&dir, SEG, false, |v, _| recs.extend(v));
    eprintln!(
        "run 3: {:?}",
        r.as_ref().map(|r| r.records).map_err(|e| e.to_string())
    );
    assert!(
        r.is_ok(),
        "refuses to start after a torn write that nothing acknowledged"
    );
}

/// A shard broker over journal `j` with durable subscription `c:s` on
/// `/topic/t` (consumer key `key`), and a persistent message 4242 for it.
fn durable_subscriber(
    j: &Rc<RefCell<Journal>>,
) -> (
    crate::broker::shard::ShardBroker,
    crate::broker::Destination,
    crate::broker::queue::ConsumerKey,
    crate::broker::SharedMessage,
    Arc<crate::broker::message::MemoryUsage>,
) {
    use crate::broker::message::{MemoryUsage, Message};
    use crate::broker::message_ids::MessageIds;
    use crate::broker::ops::{DurableName, Op, SubscribeOp};
    use crate::broker::queue::ConsumerKey;
    use crate::broker::shard::{BrokerSettings, ShardBroker};
    use crate::broker::Destination;
    let usage = Arc::new(MemoryUsage::default());
    let store: Rc<RefCell<dyn crate::store::Store>> = j.clone();
    let mut b = ShardBroker::new(
        0,
        BrokerSettings {
            shards: 1,
            max_redeliveries: 6,
            dead_letter_queue: Destination::queue("DLQ"),
            temporary: Default::default(),
        },
        usage.clone(),
        store,
        Rc::new(MessageIds::new(0, 0)),
        None,
    );
    let topic = Destination::parse("/topic/t").unwrap();
    let key = ConsumerKey {
        shard: 0,
        conn: 1,
        sub: 1,
    };
    b.apply(
        Op::Subscribe(SubscribeOp {
            destination: topic.clone(),
            consumer: key,
            prefetch: 10,
            selector: None,
            durable: Some(DurableName {
                client_id: "c".into(),
                name: "s".into(),
            }),
            exclusive: false,
            no_local: None,
        }),
        &mut Vec::new(),
    );
    let msg = Arc::new(Message {
        persistent: true,
        ..Message::for_tests(4242, topic.clone(), &usage)
    });
    (b, topic, key, msg, usage)
}

#[test]
fn a_durable_subscription_destroyed_under_a_prepared_send_lets_go_of_it() {
    use crate::broker::ops::{ConnRef, Op, Seen, TxPart};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    glommio::LocalExecutor::default().run(async {
        let (j, _) = start(&dir).await;
        let (mut b, topic, key, msg, _) = durable_subscriber(&j);
        let mut out = Vec::new();
        let conn = ConnRef { shard: 0, conn: 9 };
        // Prepared (not alone: waits for the decision).
        b.tx_prepare(
            7,
            conn,
            0,
            TxPart {
                sends: vec![msg],
                acks: Vec::new(),
            },
            false,
            &mut out,
        );
        // The durable subscription is destroyed meanwhile.
        b.apply(
            Op::Unsubscribe {
                destination: topic.clone(),
                consumer: key,
                destroy_durable: true,
                seen: Seen::All,
            },
            &mut out,
        );
        // Decided and applied.
        b.tx_decided(7, &mut out);
        flush(&j).await.unwrap();
        assert!(
            !j.borrow().holders.contains_key(&4242),
            "released at runtime"
        );
        drop(b);
        drop(j);
        let (_, r) = open(&dir);
        assert!(
            !r.layout.holders.contains_key(&4242),
            "holder of 4242 survives recovery with nothing restoring it: segment pinned forever"
        );
    });
}

#[test]
fn a_durable_subscription_destroyed_under_a_prepared_ack_lets_go_of_it() {
    use crate::broker::ops::{ConnRef, Op, Seen, TxAck, TxPart};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    glommio::LocalExecutor::default().run(async {
        let (j, _) = start(&dir).await;
        let (mut b, topic, key, msg, usage) = durable_subscriber(&j);
        let mut out = Vec::new();
        b.apply(Op::Send(msg), &mut out); // delivered to the consumer
        let conn = ConnRef { shard: 0, conn: 1 };
        b.tx_prepare(
            7,
            conn,
            0,
            TxPart {
                sends: Vec::new(),
                acks: vec![TxAck {
                    destination: topic.clone(),
                    consumer: key,
                    ids: vec![4242],
                    nack: false,
                }],
            },
            false,
            &mut out,
        );
        b.apply(
            Op::Unsubscribe {
                destination: topic.clone(),
                consumer: key,
                destroy_durable: true,
                seen: Seen::All,
            },
            &mut out,
        );
        flush(&j).await.unwrap();
        // crash: no decision
        drop(b);
        drop(j);
        let (recs, r) = open(&dir);
        let mut restorer = crate::broker::restore::Restorer::new(usage.clone(), None);
        restorer.feed(recs);
        let (restored, _) = restorer.finish(&r.copy_out, &crate::idmap::IdSet::default());
        assert!(
            !r.layout.holders.contains_key(&4242) || restored.message_count() > 0,
            "held, but restored nowhere"
        );
    });
}

/// A fenced master's round that lands after its successor took over: it is
/// written where the old master thought the journal ended, over the End
/// round the successor closed that segment with. It must neither count
/// (its records were never receipted) nor make recovery refuse to start.
#[test]
fn a_fenced_masters_late_round_over_the_end_round_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    // The old master: messages 1..=3, durable, then it is "paused".
    glommio::LocalExecutor::default().run(async {
        let (j, _) = start(&dir).await;
        for id in 1..=3 {
            send(&j, id, &[7u8; 100]);
        }
        flush(&j).await.unwrap();
    });
    // What the old master would write next, at its next round position.
    let (old_gen, old_salt, stray_at) = {
        let (_, r) = open(&dir);
        let a = *r.layout.in_use.back().unwrap();
        let s = &r.layout.segments[a];
        (s.generation, s.salt, r.layout.active_write_at)
    };
    // The successor recovers (closing that segment at the same place) and
    // writes message 4 in a fresh segment.
    glommio::LocalExecutor::default().run(async {
        let (j, recs) = start(&dir).await;
        assert_eq!(recs.len(), 3);
        send(&j, 4, &[8u8; 100]);
        flush(&j).await.unwrap();
    });
    // The stray round lands: a valid round of the old segment, SEND 999.
    let old_path = files(&dir)
        .into_iter()
        .find(|(_, g)| *g == Some(old_gen))
        .map(|(p, _)| p)
        .unwrap();
    let mut records = Vec::new();
    let d = q();
    record::encode(
        &RecordRef::Send {
            id: 999,
            destination: &d,
            priority: 4,
            expires_ms: 0,
            timestamp_ms: 0,
            properties: &[],
            body: b"stray",
        },
        old_gen,
        &mut records,
    );
    let mut block = vec![0u8; BLOCK as usize];
    RoundHeader {
        kind: RoundKind::Data,
        len: records.len() as u64,
        durable: (old_gen, stray_at),
        first_gen: old_gen,
        epoch: 0,
    }
    .put(old_gen, old_salt, &mut block);
    block[ROUND_HEADER_BYTES as usize..ROUND_HEADER_BYTES as usize + records.len()]
        .copy_from_slice(&records);
    let mut bytes = std::fs::read(&old_path).unwrap();
    bytes[stray_at as usize..stray_at as usize + BLOCK as usize].copy_from_slice(&block);
    std::fs::write(&old_path, bytes).unwrap();
    let (recs, r) = open(&dir);
    let ids: Vec<u64> = recs.iter().filter_map(|r| r.message_id()).collect();
    assert_eq!(ids, vec![1, 2, 3, 4], "the stray round does not count");
    assert!(r.truncated_at.is_none());
}
