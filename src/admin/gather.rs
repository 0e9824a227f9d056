//! Asks every shard for its figures (one request and one batch back per
//! shard, awaited on the side runtime; a shard is never blocked) and routes
//! an operator's action to the shard that owns its destination.

use std::time::Duration;

use crate::broker::shard::{DestinationStats, SubscriberStats};
use crate::broker::Destination;
use crate::metrics::{ConnectionStats, LatencySnapshot};
use crate::server::admin_send::{AdminSend, SendRefusal};
use crate::server::shard::{AdminAnswer, AdminOp, Control};

use super::AdminState;

/// How long one shard may take to answer before the admin side gives up.
const SHARD_ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Every shard's figures, merged.
#[derive(Debug, Default)]
pub struct Gathered {
    pub shards: usize,
    /// Shards that did not answer in time (figures are then partial).
    pub silent_shards: usize,
    pub connections: Vec<ConnectionStats>,
    pub destinations: Vec<DestinationStats>,
    pub subscribers: Vec<SubscriberStats>,
    pub receipt_latency: LatencySnapshot,
}

#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    #[error("this broker is not the master (role: {0}); it holds no destinations")]
    NotMaster(&'static str),
    #[error("shard {0} did not answer in time")]
    Silent(usize),
}

fn controls(state: &AdminState) -> Result<&[flume::Sender<Control>], GatherError> {
    state
        .controls
        .get()
        .map(Vec::as_slice)
        .ok_or_else(|| GatherError::NotMaster(state.role.get().as_str()))
}

/// Destination views need the shards: a standby has none yet.
pub fn require_master(state: &AdminState) -> Result<(), GatherError> {
    controls(state).map(|_| ())
}

pub async fn gather(state: &AdminState) -> Gathered {
    let controls: &[flume::Sender<Control>] = controls(state).unwrap_or(&[]);
    let mut asked = Vec::with_capacity(controls.len());
    for c in controls {
        let (tx, rx) = flume::bounded(1);
        if c.send(Control::Stats(tx)).is_ok() {
            asked.push(rx);
        }
    }
    let mut g = Gathered {
        shards: controls.len(),
        silent_shards: controls.len() - asked.len(),
        ..Gathered::default()
    };
    for rx in asked {
        match tokio::time::timeout(SHARD_ANSWER_WITHIN, rx.recv_async()).await {
            Ok(Ok(s)) => {
                g.connections.extend(s.connections);
                g.destinations.extend(s.destinations);
                g.subscribers.extend(s.subscribers);
                g.receipt_latency.merge(&s.receipt_latency);
            }
            _ => g.silent_shards += 1,
        }
    }
    g.destinations
        .sort_by(|a, b| a.destination.cmp(&b.destination));
    g.subscribers
        .sort_by(|a, b| (&a.topic, &a.client_id, &a.name).cmp(&(&b.topic, &b.client_id, &b.name)));
    g.connections.sort_by_key(|c| c.since_ms);
    g
}

/// Runs `op` on the shard that owns its destination.
pub async fn admin_op(
    state: &AdminState,
    dest: &Destination,
    op: AdminOp,
) -> Result<AdminAnswer, GatherError> {
    let controls = controls(state)?;
    let owner = dest.owner(controls.len());
    // A removal waits for the store (see `ADMIN_DURABLE_WITHIN`).
    let within = match op {
        AdminOp::Browse(..) => SHARD_ANSWER_WITHIN,
        _ => crate::server::shard::ADMIN_DURABLE_WITHIN + SHARD_ANSWER_WITHIN,
    };
    let (tx, rx) = flume::bounded(1);
    controls[owner]
        .send(Control::Admin(op, tx))
        .map_err(|_| GatherError::Silent(owner))?;
    match tokio::time::timeout(within, rx.recv_async()).await {
        Ok(Ok(a)) => Ok(a),
        _ => Err(GatherError::Silent(owner)),
    }
}

/// Sends an operator's messages from shard 0 (any shard would do: the
/// owner is reached the way a producer's messages reach it). The answer
/// comes once they are durable.
pub async fn send(
    state: &AdminState,
    req: AdminSend,
) -> Result<Result<usize, SendRefusal>, GatherError> {
    let controls = controls(state)?;
    let (tx, rx) = flume::bounded(1);
    controls[0]
        .send(Control::Send(req, tx))
        .map_err(|_| GatherError::Silent(0))?;
    // The shard bounds its own wait for durability; this is the backstop.
    let within = crate::server::admin_send::CONFIRM_WITHIN + SHARD_ANSWER_WITHIN;
    match tokio::time::timeout(within, rx.recv_async()).await {
        Ok(Ok(r)) => Ok(r),
        _ => Err(GatherError::Silent(0)),
    }
}
