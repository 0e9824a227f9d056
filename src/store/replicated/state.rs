//! A node's copy of the replicated log: the tables as of the last applied
//! entry, and the entries held but not (yet known to be) committed.
//! Only committed entries reach the tables, so what a master never got a
//! quorum for never becomes broker state on a standby; a node that wins
//! an election applies everything it holds (Raft: a new leader's log is
//! the truth, and its epoch marker commits it).

use std::collections::VecDeque;

use bytes::Bytes;

use super::tables::Tables;
use super::wire::{self, Pos};
use super::Batch;

/// An entry held: its frame (sent and written as is) and its batches.
#[derive(Debug, Clone)]
pub struct Entry {
    pub pos: Pos,
    pub frame: Bytes,
    pub batches: Vec<Batch>,
}

impl Entry {
    /// An entry made by a master (the frame encoded here, once).
    pub fn make(pos: Pos, batches: Vec<Batch>) -> Entry {
        let refs: Vec<&Batch> = batches.iter().collect();
        let frame = wire::entry(pos, &refs);
        Entry {
            pos,
            frame,
            batches,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplicaError {
    #[error("entry {got:?} does not follow {held:?}")]
    Gap { held: Pos, got: Pos },
}

#[derive(Debug, Default)]
pub struct Replica {
    pub tables: Tables,
    applied: Pos,
    pending: VecDeque<Entry>,
}

impl Replica {
    /// The tables as of `applied` (a snapshot), nothing pending.
    pub fn from_snapshot(tables: Tables, applied: Pos) -> Replica {
        Replica {
            tables,
            applied,
            pending: VecDeque::new(),
        }
    }

    /// The last entry held (applied or not): what this node offers in an
    /// election.
    pub fn position(&self) -> Pos {
        self.pending.back().map_or(self.applied, |e| e.pos)
    }

    /// The last entry applied to the tables.
    pub fn applied(&self) -> Pos {
        self.applied
    }

    /// Entries held and not applied, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &Entry> {
        self.pending.iter()
    }

    /// Holds the next entry. It must follow the last one held: the index
    /// one more, the epoch no older.
    pub fn push(&mut self, e: Entry) -> Result<(), ReplicaError> {
        let held = self.position();
        if e.pos.index != held.index + 1 || e.pos.epoch < held.epoch {
            return Err(ReplicaError::Gap { held, got: e.pos });
        }
        self.pending.push_back(e);
        Ok(())
    }

    /// Applies the held entries up to index `commit`; returns how many.
    pub fn apply_upto(&mut self, commit: u64) -> usize {
        let mut done = 0;
        while self.pending.front().is_some_and(|e| e.pos.index <= commit) {
            let e = self.pending.pop_front().expect("checked");
            for b in e.batches {
                self.tables.apply_owned(b);
            }
            self.applied = e.pos;
            done += 1;
        }
        done
    }

    /// Applies everything held (this node won an election).
    pub fn apply_all(&mut self) {
        let last = self.position().index;
        self.apply_upto(last);
    }

    /// Replaces everything with a master's snapshot.
    pub fn install(&mut self, tables: Tables, applied: Pos) {
        *self = Replica::from_snapshot(tables, applied);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(epoch: u64, index: u64, delete: i64) -> Entry {
        Entry::make(
            Pos { epoch, index },
            vec![Batch {
                deletes: vec![delete],
                ..Batch::default()
            }],
        )
    }

    #[test]
    fn entries_must_follow_and_apply_in_order() {
        let mut r = Replica::default();
        r.push(e(1, 1, 1)).unwrap();
        assert!(r.push(e(1, 3, 1)).is_err());
        r.push(e(1, 2, 1)).unwrap();
        assert!(r.push(e(0, 3, 1)).is_err(), "an older epoch cannot follow");
        r.push(e(2, 3, 1)).unwrap();
        assert_eq!(r.position(), Pos { epoch: 2, index: 3 });
        assert_eq!(r.apply_upto(2), 2);
        assert_eq!(r.applied(), Pos { epoch: 1, index: 2 });
        assert_eq!(r.position(), Pos { epoch: 2, index: 3 });
        r.apply_all();
        assert_eq!(r.applied(), r.position());
    }
}
