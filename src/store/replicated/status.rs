//! What `brokk status` shows of replication: the epoch, this node's log
//! position and commit point, and each standby's lag (on a master).

use std::sync::Mutex;
use std::time::Instant;

use super::wire::Pos;

#[derive(Debug, Default)]
pub struct ReplStatus {
    inner: Mutex<View>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct View {
    pub epoch: u64,
    /// The last entry held: (epoch, index).
    pub position: (u64, u64),
    /// Everything up to this index is held by a quorum.
    pub commit: u64,
    /// The master this standby follows (its replication address).
    pub following: Option<String>,
    pub replicas: Vec<ReplicaLag>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaLag {
    pub node: String,
    pub acked: u64,
    /// Entries the master holds that this standby has not acknowledged.
    pub lag_entries: u64,
    /// Since its last acknowledgement (as of this view).
    pub last_heard_ms: u64,
    #[serde(skip)]
    heard: Option<Instant>,
}

impl ReplStatus {
    fn with(&self, f: impl FnOnce(&mut View)) {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn view(&self) -> View {
        let mut v = self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for r in &mut v.replicas {
            r.last_heard_ms = r.heard.map_or(0, |h| h.elapsed().as_millis() as u64);
        }
        v
    }

    pub fn set_epoch(&self, epoch: u64, following: Option<String>) {
        self.with(|v| {
            v.epoch = epoch;
            v.following = following;
        });
    }

    pub fn set_position(&self, pos: Pos, commit: u64) {
        self.with(|v| {
            v.position = (pos.epoch, pos.index);
            v.commit = commit;
        });
    }

    pub fn set_followers(&self, followers: Vec<(String, u64, Instant)>) {
        self.with(|v| {
            let end = v.position.1;
            v.replicas = followers
                .into_iter()
                .map(|(node, acked, heard)| ReplicaLag {
                    node,
                    acked,
                    lag_entries: end.saturating_sub(acked),
                    last_heard_ms: 0,
                    heard: Some(heard),
                })
                .collect();
        });
    }
}
