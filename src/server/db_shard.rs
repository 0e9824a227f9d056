//! A shard in a database mode: its state rebuilt from the tables at
//! takeover, and its flusher, which hands each batch of rows to its lane of
//! the writer on the side runtime and releases the receipts that waited for
//! it once it committed. One batch in flight per shard, and while it
//! commits the next one (see [`flusher`]): what arrives meanwhile joins
//! the next one (the lanes of all shards commit side by side, and the
//! database groups their commits).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use tracing::info;

use super::shard::{release_durable, ShardContext};
use crate::broker::message::MemoryUsage;
use crate::broker::restore::{Restored, Restorer, TxOutcome};
use crate::broker::Destination;
use crate::idmap::IdMap;
use crate::store::sql::recover;
use crate::store::sql::shard_store::DbShardStore;
use crate::store::sql::writer::WriteRequest;
use crate::store::sql::Loaded;
use crate::store::{Durable, RecordRef, Store, StoredDestination};

/// What every shard of a database-mode master shares.
#[derive(Clone)]
pub struct DbShared {
    /// The writer's lane of each shard (see `writer::spawn`).
    pub writer: Vec<flume::Sender<WriteRequest>>,
    /// The tables as read at takeover, until every shard took its part
    /// (then `forget_loaded`): restored messages share their bodies' bytes
    /// with these rows, so keeping the rows would keep every restored body
    /// alive after consumers are done with it.
    pub loaded: Arc<std::sync::Mutex<Option<Arc<Loaded>>>>,
    /// See [`DbShared::new`].
    pub overlap: bool,
}

impl DbShared {
    /// `overlap`: whether the lanes begin a transaction while the one
    /// before commits, and so say when it is about to (see [`flusher`]).
    pub fn new(
        writer: Vec<flume::Sender<WriteRequest>>,
        loaded: Loaded,
        overlap: bool,
    ) -> DbShared {
        DbShared {
            writer,
            loaded: Arc::new(std::sync::Mutex::new(Some(Arc::new(loaded)))),
            overlap,
        }
    }

    /// The tables as read at takeover (empty once forgotten).
    fn loaded(&self) -> Arc<Loaded> {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// The highest id counter among the rows read at takeover, every row
    /// (those restored count through the restorer too): new ids start
    /// above it. A row the broker could not read (another writer's, or
    /// damaged) stays in the table, so an id issued again would make a new
    /// message's INSERT a duplicate that is ignored: receipted, never
    /// stored.
    ///
    /// Counters far past any clock (2^55 µs is the year 3111) are left
    /// out: a foreign row's id near the counter's top would otherwise pin
    /// every shard's ids at it, and a broker's ids never reach it.
    pub fn max_id_counter(&self) -> u64 {
        const FAR_FUTURE: u64 = 1 << 55;
        self.loaded()
            .messages
            .iter()
            .filter(|m| m.id >= 0)
            .map(|m| crate::broker::message_ids::counter(m.id as u64))
            .filter(|c| *c < FAR_FUTURE)
            .max()
            .unwrap_or(0)
    }

    /// Every shard has restored its part: the rows can go.
    pub fn forget_loaded(&self) {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Shard `id`'s writer lane.
    pub fn lane(&self, id: usize) -> &flume::Sender<WriteRequest> {
        &self.writer[id % self.writer.len()]
    }
}

/// This shard's records, from the tables: the destinations it owns. The
/// prepared transaction parts among them go to `store` too, for recovery
/// to apply or drop (see `settle_transactions`).
pub fn restorer(
    id: usize,
    shards: usize,
    db: &DbShared,
    usage: Arc<MemoryUsage>,
    pager: Option<crate::broker::paging::Pager>,
    store: &mut DbShardStore,
) -> Restorer {
    let owner = |d: &StoredDestination| Destination::from(d).owner(shards);
    let mine = |d: &StoredDestination| owner(d) == id;
    let loaded = db.loaded();
    for (tx, part) in recover::prepared_parts(&loaded, mine, id == 0) {
        store.restore_part(tx, part);
    }
    let mut r = Restorer::new(usage, pager);
    // Producers' highest sequences, which outlive their acknowledged
    // messages: a failover resend of one is still recognised. Before the
    // messages, so that past the audit's bound these go first and the
    // pending messages' windows stay.
    for p in &loaded.producer_seqs {
        let Some(d) = recover::parse_container(&p.container).filter(|d| mine(d)) else {
            continue;
        };
        let Ok(seq) = u64::try_from(p.seq) else {
            continue;
        };
        r.remember_producer(&Destination::from(&d), p.producer.as_bytes(), seq);
        store.restore_producer(&p.container, &p.producer, p.seq);
    }
    recover::records(&loaded, mine, id == 0, |batch| {
        // Only this shard's side rows: they mark messages it will retire.
        for rec in &batch {
            store.note_restored(rec);
        }
        r.feed(batch)
    });
    r
}

/// Holders of the restored messages: one per queue message, one per
/// durable subscription a topic message is still pending in, and one per
/// acknowledgement of a transaction recovery applies (the restored state
/// already left those out; `settle_transactions` releases them).
pub fn hold_restored(s: &mut DbShardStore, restored: &Restored, tx: &TxOutcome) {
    let mut count: IdMap<u32> = IdMap::default();
    // (Once read from an emptied copy of `tx`: the ACKed messages of
    // transactions recovery applied had no holder, their release deleted
    // nothing, and they came back at the next takeover.)
    // Likewise the durable subscriptions whose selector passes over a
    // message of such a transaction (`TxOutcome::passed_over`).
    for id in tx
        .applied_acks
        .iter()
        .chain(tx.passed_over.iter().map(|(_, _, id)| id))
    {
        *count.entry(*id).or_default() += 1;
    }
    let entries = restored
        .queues
        .iter()
        .flat_map(|(_, e)| e.iter())
        .chain(restored.subs.iter().flat_map(|(_, _, e)| e.iter()));
    for e in entries {
        *count.entry(e.id()).or_default() += 1;
    }
    for (id, n) in count {
        s.hold(id, n);
    }
    for (topic, _, entries) in &restored.subs {
        for e in entries {
            s.hold_topic(e.id(), topic);
        }
    }
}

/// The tables' side of the transactions recovery decided (see the file
/// mode's `settle_transactions`), written before serving.
pub async fn settle_transactions(
    id: usize,
    s: &Rc<RefCell<DbShardStore>>,
    db: &DbShared,
    tx: &TxOutcome,
) {
    {
        let mut s = s.borrow_mut();
        for t in &tx.undone {
            s.append(&RecordRef::TxDone { tx: *t }, 0);
        }
        for id in &tx.applied_acks {
            s.release(*id);
        }
        for (topic, sub, id) in &tx.passed_over {
            s.append(
                &RecordRef::Ack {
                    destination: topic,
                    sub: Some(sub),
                    id: *id,
                },
                0,
            );
            s.release(*id);
        }
        for id in &tx.dropped_sends {
            s.forget(*id);
        }
        // What is left was prepared for transactions never decided.
        s.drop_parts();
    }
    if !tx.undone.is_empty() || !tx.applied_acks.is_empty() || !tx.dropped_sends.is_empty() {
        info!(
            applied = tx.undone.len(),
            dropped_sends = tx.dropped_sends.len(),
            "transactions settled by recovery"
        );
    }
    write_pending(s, db.lane(id)).await;
}

/// After every shard settled its parts (the second recovery barrier):
/// the decisions found in the tables are needed no more.
pub async fn forget_decisions(
    id: usize,
    s: &Rc<RefCell<DbShardStore>>,
    db: &DbShared,
    commits: &[u64],
) {
    if commits.is_empty() {
        return;
    }
    {
        let mut s = s.borrow_mut();
        for tx in commits {
            s.forget_decision(*tx);
        }
    }
    write_pending(s, db.lane(id)).await;
}

/// Writes what is pending now and waits until it committed.
async fn write_pending(
    s: &Rc<RefCell<DbShardStore>>,
    writer: &flume::Sender<WriteRequest>,
) -> bool {
    let Some(flight) = hand_over(s, writer, false).await else {
        return false;
    };
    if flight.done.recv_async().await.is_err() {
        return false;
    }
    s.borrow_mut().committed(flight.upto);
    true
}

/// A batch handed to the writer, not answered yet.
struct Flight {
    /// The sequence number it makes durable.
    upto: u64,
    /// Fires once its transaction is about to COMMIT (a lane that
    /// overlaps its transactions, see `writer`); closes unfired otherwise.
    committing: Option<flume::Receiver<()>>,
    /// Whether `committing` fired: the lane may begin the next batch.
    next_welcome: bool,
    /// Fires once it committed; closes if the writer is gone.
    done: flume::Receiver<()>,
}

/// Hands what is pending now to the writer. None when nothing is pending
/// (or the writer is gone, which only happens when the process ends).
async fn hand_over(
    s: &Rc<RefCell<DbShardStore>>,
    writer: &flume::Sender<WriteRequest>,
    overlap: bool,
) -> Option<Flight> {
    let (batch, upto) = {
        let mut s = s.borrow_mut();
        if !s.has_pending() {
            return None;
        }
        s.take()
    };
    let (reply, done) = flume::bounded(1);
    // Asked only of a lane that overlaps: one that does not would only
    // drop it, and that wake-up across cores costs as much as the answer.
    let (committing, committing_rx) = match overlap {
        true => {
            let (tx, rx) = flume::bounded(1);
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    writer
        .send_async(WriteRequest {
            batch,
            reply,
            committing,
        })
        .await
        .ok()?;
    Some(Flight {
        upto,
        committing: committing_rx,
        next_welcome: false,
        done,
    })
}

/// What the flusher waits for.
enum Event {
    /// The oldest batch in flight committed (false: the writer is gone).
    Answered(bool),
    /// The oldest batch is about to COMMIT (false: it will not say).
    Committing(bool),
    /// More to write (empty: the shard closes).
    Woken(Vec<()>),
}

/// The database mode's flusher: a batch at a time, receipts after COMMIT,
/// and while one commits, the next one. A batch is whatever came since the
/// one before was taken, so batches grow with load; the next one is taken
/// only once the lane says the one in flight is about to COMMIT (it begins
/// the next one then, see `writer`): taken sooner it would be smaller, and
/// a message sent and consumed before its batch is taken costs the
/// database nothing (measured: at the closed-loop peak handing batches over
/// as they came cost 15-20% of the throughput). Without `overlap` (or in
/// zk mode, whose leader never says so): one batch at a time.
pub async fn flusher(
    ctx: Rc<ShardContext>,
    s: Rc<RefCell<DbShardStore>>,
    writer: flume::Sender<WriteRequest>,
    overlap: bool,
) {
    let mut spare = Vec::new();
    let mut in_flight: std::collections::VecDeque<Flight> = std::collections::VecDeque::new();
    let mut closing = false;
    loop {
        let may_hand_over = match in_flight.len() {
            0 => true,
            1 => in_flight[0].next_welcome,
            _ => false,
        };
        if may_hand_over {
            if let Some(flight) = hand_over(&s, &writer, overlap).await {
                in_flight.push_back(flight);
                continue;
            }
        }
        let Some(oldest) = in_flight.front() else {
            if closing {
                return;
            }
            let woken = ctx.flush_wakeup.take_all(std::mem::take(&mut spare)).await;
            closing = woken.is_empty();
            spare = woken;
            continue;
        };
        let answered = async { Event::Answered(oldest.done.recv_async().await.is_ok()) };
        let committing = async {
            match oldest.committing.as_ref() {
                Some(c) if in_flight.len() == 1 && !oldest.next_welcome => {
                    Event::Committing(c.recv_async().await.is_ok())
                }
                _ => std::future::pending().await,
            }
        };
        let listen = may_hand_over && !closing;
        let spare_now = if listen {
            std::mem::take(&mut spare)
        } else {
            Vec::new()
        };
        let woken = async {
            if listen {
                Event::Woken(ctx.flush_wakeup.take_all(spare_now).await)
            } else {
                std::future::pending().await
            }
        };
        let event =
            futures_lite::future::or(answered, futures_lite::future::or(committing, woken)).await;
        match event {
            Event::Woken(woken) => {
                closing = woken.is_empty();
                spare = woken;
            }
            Event::Committing(said) => {
                if let Some(f) = in_flight.front_mut() {
                    if said {
                        f.next_welcome = true;
                    } else {
                        f.committing = None;
                    }
                }
            }
            Event::Answered(false) => return,
            Event::Answered(true) => {
                // The next one may be answered already (it commits right
                // after): one release for both.
                let mut upto = in_flight.pop_front().map_or(0, |f| f.upto);
                if let Some(f) = in_flight.front() {
                    match f.done.try_recv() {
                        Ok(()) => {
                            upto = f.upto;
                            in_flight.pop_front();
                        }
                        Err(flume::TryRecvError::Empty) => {}
                        Err(flume::TryRecvError::Disconnected) => return,
                    }
                }
                s.borrow_mut().committed(upto);
                let durable = s.borrow().durable();
                release_durable(&ctx, durable);
            }
        }
    }
}
