//! Temporary destinations (JMS `createTemporaryQueue` / `Topic`): made by
//! one connection, consumed only by it, removed with it. Other connections
//! may send to one while it lives (request/reply: the reply-to of a
//! request), so the live ones are known broker-wide here, and announced on
//! [`ADVISORY_TOPIC`] (ActiveMQ's clients refuse to send to a temporary
//! destination they have not heard of).
//!
//! Their messages are never stored: a temporary destination ends with its
//! connection, and so with a crash of the broker (as in ActiveMQ).

use std::collections::HashMap;
use std::sync::Mutex;

use super::ops::ConnRef;
use super::Destination;

/// Where the broker announces temporary destinations made and removed
/// (ActiveMQ's `ActiveMQ.Advisory.TempQueue` and `TempTopic` in one); a
/// reserved name (see `destination::ADVISORY_PREFIX`): only the broker
/// publishes there.
pub const ADVISORY_TOPIC: &str = "$advisory:temporary-destinations";

/// Temporary destinations one connection may have at once.
pub const MAX_PER_CONNECTION: usize = 1000;

/// The live temporary destinations and the connection that made each.
#[derive(Debug, Default)]
pub struct TempDestinations {
    live: Mutex<HashMap<Destination, ConnRef>>,
}

impl TempDestinations {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<Destination, ConnRef>> {
        // Nothing is left half-done under the lock: one insert or remove.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `conn` made `dest`. False if another connection holds that name.
    pub fn add(&self, dest: &Destination, conn: ConnRef) -> bool {
        let mut live = self.live();
        match live.get(dest) {
            Some(owner) => *owner == conn,
            None => {
                live.insert(dest.clone(), conn);
                true
            }
        }
    }

    /// `conn` removed `dest` (or ended). False if it was not `conn`'s.
    pub fn remove(&self, dest: &Destination, conn: ConnRef) -> bool {
        let mut live = self.live();
        if live.get(dest) == Some(&conn) {
            live.remove(dest);
            true
        } else {
            false
        }
    }

    /// The connection that made `dest`, while it lives.
    pub fn owner(&self, dest: &Destination) -> Option<ConnRef> {
        self.live().get(dest).copied()
    }

    /// Every live one (for a new watcher of [`ADVISORY_TOPIC`]).
    pub fn all(&self) -> Vec<Destination> {
        self.live().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_belongs_to_the_connection_that_made_it_until_it_removes_it() {
        let t = TempDestinations::default();
        let (a, b) = (ConnRef { shard: 0, conn: 1 }, ConnRef { shard: 1, conn: 1 });
        let q = Destination::temporary("ID:x:1:1", false);
        assert!(t.add(&q, a));
        assert!(!t.add(&q, b), "another connection's name");
        assert_eq!(t.owner(&q), Some(a));
        assert!(!t.remove(&q, b));
        assert!(t.remove(&q, a));
        assert_eq!(t.owner(&q), None);
        assert!(t.all().is_empty());
    }
}
