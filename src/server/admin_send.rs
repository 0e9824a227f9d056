//! The console's Send, run on a shard: the messages take the same way as a
//! producer's (routed to the destination's owner, journaled there) and the
//! answer waits for the same fence a RECEIPT waits for, so "sent" means
//! durable, as for a STOMP client that asked for a receipt. The shard
//! stands in for a connection with a mailbox of its own for that fence.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::connection::over_limit;
use super::mailbox::Mailbox;
use super::shard::{Outbound, ShardContext};
use crate::broker::message::{now_ms, Message, Property};
use crate::broker::ops::{ConnRef, Op, ShardMsg};
use crate::broker::Destination;

/// Messages an operator asked to send.
#[derive(Debug, Clone)]
pub struct AdminSend {
    pub destination: Destination,
    pub properties: Vec<Property>,
    pub body: Bytes,
    pub persistent: bool,
    pub priority: u8,
    /// Absolute, ms since the epoch; 0 = never.
    pub expires_ms: u64,
    pub count: usize,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SendRefusal {
    #[error("the broker is at its memory or store limit; try again later")]
    Full,
    #[error("the store did not confirm the messages within {0:?}")]
    NotConfirmed(Duration),
}

/// How long a Send waits for its messages to be durable.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(30);

pub async fn send(ctx: Rc<ShardContext>, req: AdminSend) -> Result<usize, SendRefusal> {
    if over_limit(&ctx, req.persistent) {
        return Err(SendRefusal::Full);
    }
    let id = ctx.next_conn_id();
    let mailbox: Mailbox<Outbound> = Mailbox::default();
    ctx.conns.borrow_mut().insert(id, mailbox.clone());
    let conn = ConnRef {
        shard: ctx.id as u16,
        conn: id,
    };
    let owner = req.destination.owner(ctx.shared.shards);
    let mut work: Vec<(usize, ShardMsg)> = Vec::with_capacity(req.count + 1);
    for _ in 0..req.count {
        let footprint = Message::footprint(&req.properties, &req.body);
        let msg = Message {
            id: ctx.ids.next(),
            destination: req.destination.clone(),
            properties: req.properties.clone(),
            body: req.body.clone(),
            priority: req.priority,
            expires_ms: req.expires_ms,
            persistent: req.persistent,
            timestamp_ms: now_ms(),
            charge: ctx.shared.usage.charge(footprint),
        };
        work.push((owner, ShardMsg::Op(Op::Send(Arc::new(msg)))));
    }
    work.push((owner, ShardMsg::Op(Op::Fence { conn, token: 0 })));
    ctx.route_all(work);
    let fenced = async {
        loop {
            let items = mailbox.take_all(Vec::new()).await;
            if items.is_empty() {
                return false;
            }
            if items.iter().any(|i| matches!(i, Outbound::Fenced(_))) {
                return true;
            }
        }
    };
    let timeout = async {
        glommio::timer::sleep(CONFIRM_WITHIN).await;
        false
    };
    let confirmed = futures_lite::future::or(fenced, timeout).await;
    ctx.conns.borrow_mut().remove(&id);
    if confirmed {
        Ok(req.count)
    } else {
        Err(SendRefusal::NotConfirmed(CONFIRM_WITHIN))
    }
}
