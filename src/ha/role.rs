//! The role state machine: standby -> recovering -> master -> fenced.
//! Recovering starts when the lock is won: the epoch is raised, the broker
//! waits out the previous master's fencing interval, then reads the
//! journal. Fenced is final: the process exits (code 3) right after.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Standby,
    Recovering,
    Master,
    /// Lost mastership (lock file replaced, epoch raised by another
    /// broker): no more journal writes or receipts; exiting.
    Fenced,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Recovering => "recovering",
            Role::Master => "master",
            Role::Fenced => "fenced",
        }
    }
}

/// The current role, readable from any thread (status endpoint, signals).
#[derive(Debug)]
pub struct RoleCell(AtomicU8, OnceLock<Instant>);

impl RoleCell {
    pub fn new(role: Role) -> RoleCell {
        RoleCell(AtomicU8::new(role as u8), OnceLock::new())
    }

    /// When this broker won the lock, lease or election and began
    /// recovering: how long the takeover took is logged against it.
    pub fn recovering_since(&self) -> Option<Instant> {
        self.1.get().copied()
    }

    pub fn get(&self) -> Role {
        match self.0.load(Ordering::SeqCst) {
            0 => Role::Standby,
            1 => Role::Recovering,
            2 => Role::Master,
            _ => Role::Fenced,
        }
    }

    pub fn set(&self, role: Role) {
        if role == Role::Recovering {
            let _ = self.1.set(Instant::now());
        }
        self.0.store(role as u8, Ordering::SeqCst);
    }
}
