//! One queue of messages with competing consumers: priority order, prefetch
//! credit, round-robin dispatch, acks, redelivery. A queue destination is one
//! of these; a topic holds one per subscription.

use std::collections::VecDeque;

use super::message::{MessageId, SharedMessage};
use super::ops::{ConnRef, Seen};
use super::paging::PagedEntry;
use super::restore::RestoredEntry;
use super::selector::Selector;
use crate::idmap::IdMap;

mod selective;

/// Identifies one subscription of one connection anywhere in the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConsumerKey {
    pub shard: u16,
    pub conn: u64,
    pub sub: u64,
}

impl ConsumerKey {
    /// The connection this subscription belongs to.
    pub fn conn_ref(self) -> ConnRef {
        ConnRef {
            shard: self.shard,
            conn: self.conn,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub msg: SharedMessage,
    /// How often this message was handed out and came back unacknowledged.
    pub redeliveries: u32,
    /// Journaled: its retirement must be journaled too.
    pub stored: bool,
}

/// A waiting message as [`MessageQueue::waiting`] shows it.
#[derive(Debug, Clone, Copy)]
pub enum Waiting<'a> {
    Memory(&'a Entry),
    Paged(&'a PagedEntry),
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: SharedMessage,
    pub redelivered: bool,
    /// How many times it was delivered before (JMS's redelivery counter).
    pub redeliveries: u32,
}

/// Most a consumer's prefetch grows by DELIVERED acks: a client that
/// says it handed everything to its application must not take a whole
/// backlog into the broker's in-flight messages.
const MAX_EXTENSION: u32 = 65_536;

#[derive(Debug)]
struct Consumer {
    key: ConsumerKey,
    prefetch: u32,
    in_flight: u32,
    /// Messages the client says it handed to the application without
    /// acknowledging them yet (JMS's DELIVERED ack, sent by a transacted or
    /// CLIENT_ACKNOWLEDGE session): they stop counting against the prefetch
    /// until acknowledged, or the session could never receive more than
    /// its prefetch before it commits. Never more than `in_flight`.
    extension: u32,
    /// Messages asked for one at a time (JMS's MessagePull, by a consumer
    /// with prefetch 0), not yet handed out.
    pulls: u32,
    selector: Option<Selector>,
    /// JMS's exclusive consumer: while it is the first such one, it is
    /// the only consumer that receives.
    exclusive: bool,
}

impl Consumer {
    fn window(&self) -> u32 {
        self.prefetch.saturating_add(self.extension)
    }

    fn has_credit(&self) -> bool {
        self.in_flight < self.window() || self.pulls > 0
    }

    fn credit(&self) -> u32 {
        self.window().saturating_sub(self.in_flight) + self.pulls
    }
}

/// What came back from consumers.
#[derive(Debug, Default)]
pub struct Requeued {
    /// Past `max_redeliveries`: for the dead-letter queue.
    pub dead: Vec<Entry>,
    /// Stored messages now waiting again, with their redelivery count.
    pub counted: Vec<(MessageId, u32)>,
}

/// What a dispatch pass produced.
#[derive(Debug, Default)]
pub struct Dispatched {
    pub deliveries: Vec<(ConsumerKey, Delivery)>,
    /// Expired before delivery: never handed to anyone.
    pub expired: Vec<Entry>,
}

#[derive(Debug, Default)]
pub struct MessageQueue {
    /// One FIFO per priority 0..=9; dispatch takes from the highest first.
    pending: [VecDeque<Entry>; 10],
    pending_len: usize,
    /// Per priority, the waiting messages paged out (see `broker::paging`):
    /// all of them behind that priority's messages in memory.
    paged: [VecDeque<PagedEntry>; 10],
    paged_len: usize,
    /// Paged messages with an expiry: the sweep looks at the paged part
    /// only when there are some.
    paged_expiring: usize,
    consumers: Vec<Consumer>,
    /// Round-robin cursor into `consumers`.
    next: usize,
    in_flight: IdMap<(ConsumerKey, Entry)>,
    /// Deliveries a prepared transaction acknowledges (see `reserve`).
    reserved: usize,
    pub enqueued: u64,
    pub dequeued: u64,
    /// Consumers with a selector; while there are none, dispatch takes
    /// the head of the queue without looking at it.
    selective: usize,
}

impl MessageQueue {
    pub fn enqueue(&mut self, entry: Entry) {
        self.enqueued += 1;
        self.push(entry, false);
    }

    fn push(&mut self, entry: Entry, front: bool) {
        let p = entry.msg.priority.min(9) as usize;
        if front {
            self.pending[p].push_front(entry);
        } else {
            self.pending[p].push_back(entry);
        }
        self.pending_len += 1;
    }

    /// The next message to hand out: the highest priority's first. None
    /// also when the highest priority waiting has only paged messages: a
    /// lower one must not overtake it while it is read back.
    fn pop(&mut self) -> Option<Entry> {
        for p in (0..10).rev() {
            if let Some(e) = self.pending[p].pop_front() {
                self.pending_len -= 1;
                return Some(e);
            }
            if !self.paged[p].is_empty() {
                return None;
            }
        }
        None
    }

    /// Messages not yet acknowledged: waiting (in memory or paged) plus in
    /// flight.
    pub fn pending(&self) -> usize {
        self.pending_len + self.paged_len + self.in_flight.len() + self.reserved
    }

    /// Waiting messages whose bytes are in the spool.
    pub fn paged(&self) -> usize {
        self.paged_len
    }

    /// Whether a stored message of `priority` arriving now goes to the
    /// spool: always behind paged ones of its priority; else under memory
    /// pressure once the queue holds its minimum window.
    pub fn should_page_out(&self, priority: u8, pressure: bool, min_window: usize) -> bool {
        !self.paged[priority.min(9) as usize].is_empty()
            || (pressure && self.pending_len >= min_window)
    }

    /// A new message, paged out on arrival.
    pub fn enqueue_paged(&mut self, entry: PagedEntry) {
        self.enqueued += 1;
        self.restore_paged(entry);
    }

    /// Puts a paged message behind the others of its priority.
    pub fn restore_paged(&mut self, entry: PagedEntry) {
        self.paged_expiring += usize::from(entry.expires_ms != 0);
        self.paged[entry.priority.min(9) as usize].push_back(entry);
        self.paged_len += 1;
    }

    /// Takes out the paged messages that have expired (to be read back
    /// and dead-lettered, as expired messages in memory are).
    pub fn take_expired_paged(&mut self, now_ms: u64) -> Vec<PagedEntry> {
        if self.paged_expiring == 0 {
            return Vec::new();
        }
        let mut expired = Vec::new();
        for q in &mut self.paged {
            if q.iter().any(|e| e.is_expired(now_ms)) {
                let (gone, keep): (VecDeque<PagedEntry>, VecDeque<PagedEntry>) =
                    q.drain(..).partition(|e| e.is_expired(now_ms));
                *q = keep;
                expired.extend(gone);
            }
        }
        self.paged_len -= expired.len();
        self.paged_expiring -= expired.len();
        self.dequeued += expired.len() as u64;
        expired
    }

    /// How many paged messages to read back now: enough for the consumers'
    /// free prefetch plus `lookahead` (only the minimum window under
    /// pressure). None without consumers: nobody is waiting for them.
    ///
    /// Only messages in memory that are dispatched before the highest
    /// paged priority count against the target: lower ones wait behind it
    /// anyway. When none does, at least one is read, or the queue would
    /// wait for good (see `pop`).
    pub fn page_in_wanted(&self, pressure: bool, min_window: usize, lookahead: usize) -> usize {
        if self.paged_len == 0 || self.consumers.is_empty() {
            return 0;
        }
        let Some(top) = (0..10).rev().find(|&p| !self.paged[p].is_empty()) else {
            return 0;
        };
        let ahead: usize = self.pending[top..].iter().map(VecDeque::len).sum();
        let target = if pressure {
            min_window
        } else {
            // Only consumers that may receive now (an exclusive one shuts
            // the others out).
            let owner = self.exclusive_owner();
            let credit: usize = (0..self.consumers.len())
                .filter(|&ci| owner.is_none_or(|o| o == ci))
                .map(|ci| self.consumers[ci].credit() as usize)
                .sum();
            credit + lookahead
        };
        let floor = usize::from(ahead == 0);
        target.saturating_sub(ahead).max(floor).min(self.paged_len)
    }

    /// Takes up to `n` paged messages (and about `max_bytes` of them, at
    /// least one) in the order they would be dispatched, to be read back
    /// and given to [`MessageQueue::paged_in`].
    pub fn take_paged(&mut self, n: usize, max_bytes: usize) -> Vec<PagedEntry> {
        let mut out = Vec::with_capacity(n.min(self.paged_len));
        let mut bytes = 0;
        'levels: for q in self.paged.iter_mut().rev() {
            while out.len() < n {
                if bytes >= max_bytes {
                    break 'levels;
                }
                let Some(e) = q.pop_front() else { break };
                bytes += e.at.bytes() as usize;
                out.push(e);
            }
        }
        self.paged_len -= out.len();
        self.paged_expiring -= out.iter().filter(|e| e.expires_ms != 0).count();
        out
    }

    /// The paged messages in the order [`MessageQueue::take_paged`] takes
    /// them (for reading ahead).
    pub fn next_paged(&self) -> impl Iterator<Item = &PagedEntry> {
        self.paged.iter().rev().flat_map(|q| q.iter())
    }

    /// Messages read back (taken by [`MessageQueue::take_paged`]): each
    /// goes behind those in memory of its priority, ahead of those still
    /// paged.
    pub fn paged_in(&mut self, entries: Vec<Entry>) {
        for e in entries {
            self.push(e, false);
        }
    }

    /// Takes out every paged message (purge, delete).
    pub fn take_paged_all(&mut self) -> Vec<PagedEntry> {
        let all: Vec<PagedEntry> = self.paged.iter_mut().flat_map(|q| q.drain(..)).collect();
        self.paged_len = 0;
        self.paged_expiring = 0;
        all
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    pub fn add_consumer(&mut self, key: ConsumerKey, prefetch: u32) {
        self.add_selective_consumer(key, prefetch, None);
    }

    /// A consumer that receives only the messages `selector` matches.
    pub fn add_selective_consumer(
        &mut self,
        key: ConsumerKey,
        prefetch: u32,
        selector: Option<Selector>,
    ) {
        self.selective += usize::from(selector.is_some());
        self.consumers.push(Consumer {
            key,
            // 0: it receives only what it pulls (see `pull`).
            prefetch,
            in_flight: 0,
            extension: 0,
            pulls: 0,
            selector,
            exclusive: false,
        });
    }

    /// Makes `key` an exclusive consumer: the first of them (in the
    /// order they came) takes every message; when it goes, the next does.
    pub fn make_exclusive(&mut self, key: ConsumerKey) {
        if let Some(c) = self.consumers.iter_mut().find(|c| c.key == key) {
            c.exclusive = true;
        }
    }

    /// The consumer that receives everything, if an exclusive one is here.
    fn exclusive_owner(&self) -> Option<usize> {
        self.consumers.iter().position(|c| c.exclusive)
    }

    /// Whether consumer `ci` may be given messages now.
    fn eligible(&self, ci: usize, owner: Option<usize>) -> bool {
        owner.is_none_or(|o| o == ci) && self.consumers[ci].has_credit()
    }

    /// Removes a consumer; its unacknowledged messages go back to the head of
    /// the queue, those its client may have `seen` as redeliveries. Returns
    /// those that exceeded `max_redeliveries` (for the dead-letter queue).
    pub fn remove_consumer(
        &mut self,
        key: ConsumerKey,
        max_redeliveries: u32,
        seen: &Seen,
    ) -> Requeued {
        self.consumers.retain(|c| c.key != key);
        self.selective = self
            .consumers
            .iter()
            .filter(|c| c.selector.is_some())
            .count();
        if self.next >= self.consumers.len() {
            self.next = 0;
        }
        let mut ids: Vec<MessageId> = self
            .in_flight
            .iter()
            .filter(|(_, (k, _))| *k == key)
            .map(|(id, _)| *id)
            .collect();
        // Put them back in their original order (ids grow per producer shard).
        ids.sort_unstable();
        self.requeue_seen(key, &ids, max_redeliveries, seen)
    }

    /// Hands pending messages to consumers that have prefetch credit.
    pub fn dispatch(&mut self, now_ms: u64, out: &mut Dispatched) {
        if self.selective > 0 {
            return self.dispatch_selective(now_ms, out);
        }
        while self.pending_len > 0 {
            let Some(ci) = self.next_with_credit() else {
                return;
            };
            let Some(entry) = self.pop() else { return };
            if entry.msg.is_expired(now_ms) {
                out.expired.push(entry);
                continue;
            }
            self.hand_out(ci, entry, out);
        }
    }

    /// Gives `entry` to consumer `ci`; the round-robin goes on after it.
    fn hand_out(&mut self, ci: usize, entry: Entry, out: &mut Dispatched) {
        let c = &mut self.consumers[ci];
        if c.in_flight >= c.window() {
            c.pulls = c.pulls.saturating_sub(1);
        }
        c.in_flight += 1;
        let key = c.key;
        out.deliveries.push((
            key,
            Delivery {
                msg: entry.msg.clone(),
                redelivered: entry.redeliveries > 0,
                redeliveries: entry.redeliveries,
            },
        ));
        self.in_flight.insert(entry.msg.id, (key, entry));
        self.next = (ci + 1) % self.consumers.len();
    }

    fn next_with_credit(&self) -> Option<usize> {
        let n = self.consumers.len();
        let owner = self.exclusive_owner();
        (0..n)
            .map(|i| (self.next + i) % n)
            .find(|&i| self.eligible(i, owner))
    }

    fn release_credit(&mut self, key: ConsumerKey, n: u32) {
        if let Some(c) = self.consumers.iter_mut().find(|c| c.key == key) {
            c.in_flight = c.in_flight.saturating_sub(n);
            // What was acknowledged (or came back) no longer widens the
            // window: the extension only covers what the client holds.
            c.extension = c.extension.saturating_sub(n).min(c.in_flight);
        }
    }

    /// `key` asks for one more message (MessagePull), or (`cancel`) no
    /// longer waits for the one it asked for. Returns whether it may now
    /// get one.
    pub fn pull(&mut self, key: ConsumerKey, cancel: bool) -> bool {
        let Some(c) = self.consumers.iter_mut().find(|c| c.key == key) else {
            return false;
        };
        c.pulls = if cancel { 0 } else { 1 };
        !cancel
    }

    /// `key`'s prefetch is now `prefetch`. Returns whether it gained
    /// credit. A consumer with a prefetch no longer pulls: a pull it had
    /// asked for goes.
    pub fn set_prefetch(&mut self, key: ConsumerKey, prefetch: u32) -> bool {
        let Some(c) = self.consumers.iter_mut().find(|c| c.key == key) else {
            return false;
        };
        let before = c.credit();
        c.prefetch = prefetch;
        if prefetch > 0 {
            c.pulls = 0;
        }
        c.credit() > before
    }

    /// `key`'s client handed `n` more of its deliveries to the application
    /// without acknowledging them (see `Consumer::extension`): that much
    /// more may be dispatched to it. Returns whether it gained credit.
    pub fn extend_credit(&mut self, key: ConsumerKey, n: u32) -> bool {
        let Some(c) = self.consumers.iter_mut().find(|c| c.key == key) else {
            return false;
        };
        let before = c.extension;
        c.extension = c
            .extension
            .saturating_add(n)
            .min(c.in_flight)
            .min(MAX_EXTENSION);
        c.extension > before
    }

    /// Acknowledges messages delivered to `key`; ids it does not hold are
    /// ignored (they were already redelivered elsewhere). Returns the
    /// acknowledged entries.
    pub fn ack(&mut self, key: ConsumerKey, ids: &[MessageId]) -> Vec<Entry> {
        let mut acked = Vec::new();
        for id in ids {
            if matches!(self.in_flight.get(id), Some((k, _)) if *k == key) {
                if let Some((_, e)) = self.in_flight.remove(id) {
                    acked.push(e);
                }
            }
        }
        self.release_credit(key, acked.len() as u32);
        self.dequeued += acked.len() as u64;
        acked
    }

    /// Takes deliveries to `key` that a transaction acknowledges out of
    /// flight until it is applied ([`MessageQueue::settle_reserved`]): they
    /// are no one else's, a consumer that leaves meanwhile does not get
    /// them back, and they keep the consumer's prefetch credit and count as
    /// pending. Ids `key` does not hold are ignored.
    pub fn reserve(&mut self, key: ConsumerKey, ids: &[MessageId]) -> Vec<Entry> {
        let mut taken = Vec::new();
        for id in ids {
            if matches!(self.in_flight.get(id), Some((k, _)) if *k == key) {
                if let Some((_, e)) = self.in_flight.remove(id) {
                    taken.push(e);
                }
            }
        }
        self.reserved += taken.len();
        taken
    }

    /// `n` reserved deliveries to `key` are acknowledged for good.
    pub fn settle_reserved(&mut self, key: ConsumerKey, n: usize) {
        self.reserved = self.reserved.saturating_sub(n);
        self.release_credit(key, n as u32);
        self.dequeued += n as u64;
    }

    /// Returns messages to the queue as redeliveries; those past
    /// `max_redeliveries` are taken out for dead-lettering.
    pub fn requeue(
        &mut self,
        key: ConsumerKey,
        ids: &[MessageId],
        max_redeliveries: u32,
    ) -> Requeued {
        self.requeue_seen(key, ids, max_redeliveries, &Seen::All)
    }

    /// [`MessageQueue::requeue`], counting only what the client may have
    /// seen: the others go back as they were.
    fn requeue_seen(
        &mut self,
        key: ConsumerKey,
        ids: &[MessageId],
        max_redeliveries: u32,
        seen: &Seen,
    ) -> Requeued {
        let mut out = Requeued::default();
        let mut back = Vec::new();
        for id in ids {
            if !matches!(self.in_flight.get(id), Some((k, _)) if *k == key) {
                continue;
            }
            let Some((_, mut entry)) = self.in_flight.remove(id) else {
                continue;
            };
            if !seen.covers(*id) {
                back.push(entry);
                continue;
            }
            entry.redeliveries += 1;
            if entry.redeliveries > max_redeliveries {
                self.dequeued += 1;
                out.dead.push(entry);
            } else {
                if entry.stored {
                    out.counted.push((entry.msg.id, entry.redeliveries));
                }
                back.push(entry);
            }
        }
        self.release_credit(key, (out.dead.len() + back.len()) as u32);
        // Reverse so that push_front restores the original order.
        for entry in back.into_iter().rev() {
            self.push(entry, true);
        }
        out
    }

    /// Takes out every waiting message (a purge): those in flight stay
    /// with their consumers, as in ActiveMQ.
    pub fn take_waiting(&mut self) -> Vec<Entry> {
        let all: Vec<Entry> = self.pending.iter_mut().flat_map(|q| q.drain(..)).collect();
        self.pending_len = 0;
        self.dequeued += all.len() as u64;
        all
    }

    /// The waiting messages in the order they would be dispatched
    /// (highest priority first, then arrival; paged ones after those in
    /// memory of their priority), without taking them.
    pub fn waiting(&self) -> impl Iterator<Item = Waiting<'_>> {
        self.pending
            .iter()
            .zip(&self.paged)
            .rev()
            .flat_map(|(m, p)| {
                m.iter()
                    .map(Waiting::Memory)
                    .chain(p.iter().map(Waiting::Paged))
            })
    }

    /// Messages delivered and not yet acknowledged (or reserved by a
    /// prepared transaction).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len() + self.reserved
    }

    /// Takes out everything, waiting and in flight (a durable subscription
    /// being deleted).
    pub fn drain_all(&mut self) -> Vec<Entry> {
        let mut all: Vec<Entry> = self.pending.iter_mut().flat_map(|q| q.drain(..)).collect();
        all.extend(self.in_flight.drain().map(|(_, (_, e))| e));
        self.pending_len = 0;
        all
    }

    /// Puts a recovered message back in journal order.
    pub fn restore(&mut self, entry: RestoredEntry) {
        match entry {
            RestoredEntry::Memory(e) => self.push(e, false),
            RestoredEntry::Paged(p) => self.restore_paged(p),
        }
    }

    /// Takes out every waiting message that has expired.
    pub fn take_expired(&mut self, now_ms: u64) -> Vec<Entry> {
        let mut expired = Vec::new();
        for q in &mut self.pending {
            if q.iter().any(|e| e.msg.is_expired(now_ms)) {
                let (gone, keep): (VecDeque<Entry>, VecDeque<Entry>) =
                    q.drain(..).partition(|e| e.msg.is_expired(now_ms));
                *q = keep;
                expired.extend(gone);
            }
        }
        self.pending_len -= expired.len();
        self.dequeued += expired.len() as u64;
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::destination::Destination;
    use crate::broker::message::{MemoryUsage, Message};
    use bytes::Bytes;
    use std::sync::Arc;

    pub(super) fn msg(id: u64, priority: u8, expires_ms: u64) -> Entry {
        let usage = Arc::new(MemoryUsage::default());
        Entry {
            msg: Arc::new(Message {
                body: Bytes::new(),
                priority,
                expires_ms,
                ..Message::for_tests(id, Destination::queue("q"), &usage)
            }),
            redeliveries: 0,
            stored: false,
        }
    }

    pub(super) fn key(sub: u64) -> ConsumerKey {
        ConsumerKey {
            shard: 0,
            conn: 1,
            sub,
        }
    }

    #[test]
    fn a_consumer_restored_with_prefetch_0_receives_once_its_prefetch_comes_back() {
        let mut q = MessageQueue::default();
        q.add_consumer(key(1), 0);
        q.enqueue(msg(1, 4, 0));
        q.enqueue(msg(2, 4, 0));
        let mut out = Dispatched::default();
        q.dispatch(0, &mut out);
        assert!(out.deliveries.is_empty(), "prefetch 0 and no pull");
        assert!(q.set_prefetch(key(1), 1000));
        q.dispatch(0, &mut out);
        assert_eq!(out.deliveries.len(), 2);
        assert!(!q.set_prefetch(key(9), 5), "an unknown consumer");
    }

    #[test]
    fn the_first_exclusive_consumer_takes_everything_until_it_goes() {
        let mut q = MessageQueue::default();
        q.add_consumer(key(1), 100);
        q.add_consumer(key(2), 100);
        q.add_consumer(key(3), 100);
        q.make_exclusive(key(2));
        q.make_exclusive(key(3));
        for id in 1..=4 {
            q.enqueue(msg(id, 4, 0));
        }
        let mut out = Dispatched::default();
        q.dispatch(0, &mut out);
        assert!(out.deliveries.iter().all(|(k, _)| *k == key(2)), "{out:?}");
        assert_eq!(out.deliveries.len(), 4);
        // The next exclusive one takes over, with what came back.
        q.remove_consumer(key(2), 10, &Seen::All);
        let mut out = Dispatched::default();
        q.dispatch(0, &mut out);
        assert_eq!(out.deliveries.len(), 4);
        assert!(out.deliveries.iter().all(|(k, _)| *k == key(3)));
        q.remove_consumer(key(3), 10, &Seen::All);
        let mut out = Dispatched::default();
        q.dispatch(0, &mut out);
        assert!(out.deliveries.iter().all(|(k, _)| *k == key(1)));
    }

    fn ids(d: &Dispatched) -> Vec<(u64, u64)> {
        d.deliveries
            .iter()
            .map(|(k, d)| (k.sub, d.msg.id))
            .collect()
    }

    #[test]
    fn an_acknowledged_delivery_no_longer_widens_the_window() {
        let mut q = MessageQueue::default();
        let k = key(1);
        q.add_consumer(k, 1);
        for id in 1..=3 {
            q.enqueue(msg(id, 4, 0));
        }
        let mut d = Dispatched::default();
        q.dispatch(0, &mut d);
        assert!(q.extend_credit(k, 1));
        q.dispatch(0, &mut d);
        assert_eq!(d.deliveries.len(), 2);
        // The first is committed: one is held, the window is 1 again.
        assert_eq!(q.ack(k, &[1]).len(), 1);
        q.dispatch(0, &mut d);
        assert_eq!(
            d.deliveries.len(),
            2,
            "no third while one is held with prefetch 1"
        );
    }

    #[test]
    fn delivered_messages_stop_counting_against_the_prefetch_until_acked() {
        let mut q = MessageQueue::default();
        let k = key(1);
        q.add_consumer(k, 1);
        for id in 1..=5 {
            q.enqueue(msg(id, 4, 0));
        }
        let mut d = Dispatched::default();
        q.dispatch(0, &mut d);
        assert_eq!(d.deliveries.len(), 1, "prefetch 1");
        assert!(q.extend_credit(k, 1), "handed to the application");
        q.dispatch(0, &mut d);
        assert_eq!(d.deliveries.len(), 2, "one more");
        assert!(q.extend_credit(k, 5), "up to what is in flight");
        assert!(!q.extend_credit(k, 5), "never past what is in flight");
        q.dispatch(0, &mut d);
        assert_eq!(d.deliveries.len(), 3);
        assert_eq!(q.ack(k, &[1, 2, 3]).len(), 3);
        q.dispatch(0, &mut d);
        assert_eq!(d.deliveries.len(), 4, "acked: back to the plain prefetch");
    }

    #[test]
    fn round_robin_respects_prefetch() {
        let mut q = MessageQueue::default();
        for i in 0..5 {
            q.enqueue(msg(i, 4, 0));
        }
        q.add_consumer(key(1), 1);
        q.add_consumer(key(2), 2);
        let mut d = Dispatched::default();
        q.dispatch(0, &mut d);
        assert_eq!(ids(&d), vec![(1, 0), (2, 1), (2, 2)]);
        assert_eq!(q.pending(), 5);
        assert_eq!(q.ack(key(1), &[0]).len(), 1);
        let mut d = Dispatched::default();
        q.dispatch(0, &mut d);
        assert_eq!(ids(&d), vec![(1, 3)]);
    }

    #[test]
    fn higher_priority_first() {
        let mut q = MessageQueue::default();
        q.enqueue(msg(1, 1, 0));
        q.enqueue(msg(2, 9, 0));
        q.enqueue(msg(3, 4, 0));
        q.add_consumer(key(1), 10);
        let mut d = Dispatched::default();
        q.dispatch(0, &mut d);
        assert_eq!(ids(&d), vec![(1, 2), (1, 3), (1, 1)]);
    }

    #[test]
    fn expired_messages_are_never_delivered() {
        let mut q = MessageQueue::default();
        q.enqueue(msg(1, 4, 100));
        q.enqueue(msg(2, 4, 0));
        q.add_consumer(key(1), 10);
        let mut d = Dispatched::default();
        q.dispatch(200, &mut d);
        assert_eq!(ids(&d), vec![(1, 2)]);
        assert_eq!(d.expired.len(), 1);
    }

    #[test]
    fn closed_consumer_messages_are_redelivered_in_order_then_dead_lettered() {
        let mut q = MessageQueue::default();
        q.enqueue(msg(1, 4, 0));
        q.enqueue(msg(2, 4, 0));
        for round in 1..=3 {
            q.add_consumer(key(round), 10);
            let mut d = Dispatched::default();
            q.dispatch(0, &mut d);
            assert_eq!(ids(&d), vec![(round, 1), (round, 2)]);
            assert_eq!(d.deliveries[0].1.redelivered, round > 1);
            let back = q.remove_consumer(key(round), 2, &Seen::All);
            assert_eq!(back.dead.len(), if round == 3 { 2 } else { 0 });
        }
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn only_deliveries_the_client_may_have_seen_count_as_redelivered() {
        let mut q = MessageQueue::default();
        for id in 1..=3 {
            q.enqueue(msg(id, 4, 0));
        }
        q.add_consumer(key(1), 10);
        q.dispatch(0, &mut Dispatched::default());
        // At most 0 redeliveries: a seen one is dead-lettered at once.
        let back = q.remove_consumer(key(1), 0, &Seen::only([2]));
        let dead: Vec<MessageId> = back.dead.iter().map(|e| e.msg.id).collect();
        assert_eq!(dead, vec![2]);
        q.add_consumer(key(2), 10);
        let mut d = Dispatched::default();
        q.dispatch(0, &mut d);
        assert_eq!(ids(&d), vec![(2, 1), (2, 3)], "in their order");
        assert!(
            d.deliveries.iter().all(|(_, x)| !x.redelivered),
            "never seen: not marked"
        );
    }

    #[test]
    fn reserved_deliveries_stay_pending_and_do_not_come_back() {
        let mut q = MessageQueue::default();
        q.enqueue(msg(1, 4, 0));
        q.enqueue(msg(2, 4, 0));
        q.enqueue(msg(3, 4, 0));
        q.add_consumer(key(1), 2);
        q.dispatch(0, &mut Dispatched::default());
        assert_eq!(q.reserve(key(2), &[1]).len(), 0, "not its delivery");
        let taken = q.reserve(key(1), &[1, 3]);
        assert_eq!(taken.len(), 1, "3 was never delivered");
        assert_eq!(q.pending(), 3);
        // The consumer leaves before the transaction is applied: only the
        // unreserved delivery comes back.
        let back = q.remove_consumer(key(1), 6, &Seen::All);
        assert!(back.dead.is_empty());
        q.add_consumer(key(2), 10);
        let mut d = Dispatched::default();
        q.dispatch(0, &mut d);
        assert_eq!(ids(&d), vec![(2, 2), (2, 3)]);
        q.settle_reserved(key(1), 1);
        assert_eq!(q.pending(), 2);
        assert_eq!(q.dequeued, 1);
    }

    #[test]
    fn ack_from_wrong_consumer_is_ignored() {
        let mut q = MessageQueue::default();
        q.enqueue(msg(1, 4, 0));
        q.add_consumer(key(1), 10);
        q.dispatch(0, &mut Dispatched::default());
        assert!(q.ack(key(2), &[1]).is_empty());
        assert_eq!(q.ack(key(1), &[1]).len(), 1);
        assert_eq!(q.pending(), 0);
    }
}
