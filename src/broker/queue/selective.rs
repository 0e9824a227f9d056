//! Dispatch on a queue where some consumer has a selector.
//!
//! Each waiting message, in dispatch order, goes to the next consumer
//! (round-robin) that has credit and whose selector matches it. A message
//! that no such consumer matches stays where it is, for a consumer that
//! comes later or has credit later, and the pass moves on past it: it
//! blocks no one, and it is not lost. ActiveMQ does the same within its
//! paged-in window.
//!
//! The cost: every pass looks at the messages parked ahead of the ones it
//! delivers, so a queue that accumulates many messages no consumer wants
//! makes each dispatch slower. With paging (see `broker::paging`) the
//! window bounds this, and, as in ActiveMQ with its `maxPageSize`, a
//! window full of messages no consumer selects holds back the paged ones
//! behind it until a consumer that wants them comes, or they expire.

use super::{Dispatched, MessageQueue};
use crate::broker::selector::{admits, Candidate};

impl MessageQueue {
    pub(super) fn dispatch_selective(&mut self, now_ms: u64, out: &mut Dispatched) {
        let owner = self.exclusive_owner();
        for p in (0..self.pending.len()).rev() {
            let mut i = 0;
            while i < self.pending[p].len() {
                if !(0..self.consumers.len()).any(|ci| self.eligible(ci, owner)) {
                    return;
                }
                let Some(entry) = self.pending[p].get(i) else {
                    break;
                };
                if entry.msg.is_expired(now_ms) {
                    if let Some(gone) = self.pending[p].remove(i) {
                        self.pending_len -= 1;
                        out.expired.push(gone);
                    }
                    continue;
                }
                let subject = Candidate {
                    msg: &entry.msg,
                    redeliveries: entry.redeliveries,
                };
                let n = self.consumers.len();
                let taker = (0..n).map(|k| (self.next + k) % n).find(|&ci| {
                    self.eligible(ci, owner)
                        && admits(self.consumers[ci].selector.as_ref(), &subject)
                });
                let Some(ci) = taker else {
                    i += 1;
                    continue;
                };
                if let Some(entry) = self.pending[p].remove(i) {
                    self.pending_len -= 1;
                    self.hand_out(ci, entry, out);
                }
            }
            // Paged messages of this priority come before any lower one:
            // the pass ends here until they are read back.
            if !self.paged[p].is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::super::tests::{key, msg};
    use super::super::{Entry, MessageQueue};
    use super::*;
    use crate::broker::ops::Seen;
    use crate::broker::selector::Selector;

    fn colored(id: u64, color: &str, priority: u8) -> Entry {
        let mut e = msg(id, priority, 0);
        Arc::get_mut(&mut e.msg)
            .expect("a fresh message")
            .properties = vec![(Bytes::from_static(b"color"), Bytes::from(color.to_string()))];
        e
    }
    fn color(c: &str) -> Option<Selector> {
        Some(Selector::parse(&format!("color = '{c}'")).unwrap())
    }

    fn run(q: &mut MessageQueue) -> Vec<(u64, u64)> {
        let mut d = Dispatched::default();
        q.dispatch(0, &mut d);
        d.deliveries
            .iter()
            .map(|(k, d)| (k.sub, d.msg.id))
            .collect()
    }

    #[test]
    fn each_message_goes_to_a_consumer_that_matches_it() {
        let mut q = MessageQueue::default();
        q.add_selective_consumer(key(1), 10, color("red"));
        q.add_selective_consumer(key(2), 10, color("blue"));
        for (i, c) in ["red", "blue", "blue", "red", "green"].iter().enumerate() {
            q.enqueue(colored(i as u64, c, 4));
        }
        assert_eq!(run(&mut q), vec![(1, 0), (2, 1), (2, 2), (1, 3)]);
        // Nobody wants green: it waits, neither lost nor in anyone's way.
        assert_eq!(q.pending(), 5);
        assert_eq!(q.waiting().count(), 1);
        q.enqueue(colored(5, "red", 4));
        assert_eq!(run(&mut q), vec![(1, 5)]);
        // A consumer that takes anything gets it.
        q.add_consumer(key(3), 10);
        assert_eq!(run(&mut q), vec![(3, 4)]);
    }

    #[test]
    fn a_parked_message_does_not_hold_back_later_ones() {
        let mut q = MessageQueue::default();
        q.add_selective_consumer(key(1), 1, color("red"));
        q.enqueue(colored(1, "blue", 9));
        q.enqueue(colored(2, "blue", 4));
        q.enqueue(colored(3, "red", 4));
        q.enqueue(colored(4, "red", 4));
        assert_eq!(run(&mut q), vec![(1, 3)]);
        // Out of credit: nothing more until an ack.
        assert_eq!(run(&mut q), vec![]);
        assert_eq!(q.ack(key(1), &[3]).len(), 1);
        assert_eq!(run(&mut q), vec![(1, 4)]);
    }

    #[test]
    fn a_selective_consumer_leaving_restores_plain_dispatch() {
        let mut q = MessageQueue::default();
        q.add_selective_consumer(key(1), 10, color("red"));
        q.add_consumer(key(2), 10);
        q.enqueue(colored(1, "red", 4));
        q.enqueue(colored(2, "blue", 4));
        assert_eq!(run(&mut q), vec![(1, 1), (2, 2)]);
        // Its unacknowledged message goes back, to the one left.
        let back = q.remove_consumer(key(1), 5, &Seen::All);
        assert!(back.dead.is_empty());
        assert_eq!(q.selective, 0);
        assert_eq!(run(&mut q), vec![(2, 1)]);
    }

    #[test]
    fn redelivered_messages_are_seen_as_such() {
        let mut q = MessageQueue::default();
        let first_time = Selector::parse("NOT JMSRedelivered").unwrap();
        q.add_selective_consumer(key(1), 10, Some(first_time));
        q.enqueue(colored(1, "red", 4));
        assert_eq!(run(&mut q), vec![(1, 1)]);
        q.requeue(key(1), &[1], 5);
        assert_eq!(run(&mut q), vec![]);
        assert_eq!(q.waiting().count(), 1);
    }
}
