//! Takeover in the database modes: the tables, read back ([`super::Loaded`]),
//! become the record stream the broker's `Restorer` takes from a journal,
//! per shard: durable subscriptions first (a topic message belongs to the
//! subscriptions that exist), then the messages in ID order, then what
//! refers to them (acknowledgements by durable subscriptions, redelivery
//! counts, prepared acknowledgements), then transaction decisions.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{error, warn};

use super::shard_store::TxPart;
use super::{encoding, Loaded};
use crate::store::{Record, StoredDestination, StoredSub};

/// `queue://NAME` / `topic://NAME` back to a destination.
pub fn parse_container(c: &str) -> Option<StoredDestination> {
    let (topic, name) = if let Some(n) = c.strip_prefix("queue://") {
        (false, n)
    } else if let Some(n) = c.strip_prefix("topic://") {
        (true, n)
    } else {
        return None;
    };
    (!name.is_empty()).then(|| StoredDestination {
        topic,
        name: name.into(),
    })
}

/// `LEN:CLIENT_ID:NAME` (see `shard_store::sub_key`) back to a durable
/// subscription.
pub fn parse_sub_key(k: &str) -> Option<StoredSub> {
    let (len, rest) = k.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let client = rest.get(..len)?;
    let name = rest.get(len..)?.strip_prefix(':')?;
    Some(StoredSub {
        client_id: client.into(),
        name: name.into(),
    })
}

/// The consumer a redelivery count or prepared ack names: None for a
/// queue (empty key).
fn sub_of(key: &str) -> Option<StoredSub> {
    if key.is_empty() {
        None
    } else {
        parse_sub_key(key)
    }
}

fn tx_of(xid: &str) -> Option<u64> {
    xid.strip_prefix("tx:")?.parse().ok()
}

/// Messages (or bytes of them) handed to `emit` at a time: with a spilled
/// load, only these bodies are in memory at once (besides what the
/// restorer keeps).
const RECORDS_PER_EMIT: usize = 1024;
const BYTES_PER_EMIT: usize = 1024 * 1024;

/// The records of the destinations `mine` accepts, given to `emit` in
/// order, a batch at a time; `decisions` adds the transaction decisions
/// (one shard carries them: every shard's recovery sees them through the
/// shared commit set).
pub fn records(
    loaded: &Loaded,
    mine: impl Fn(&StoredDestination) -> bool,
    decisions: bool,
    mut emit: impl FnMut(Vec<Record>),
) {
    let mut out = Vec::new();
    let mut out_bytes = 0;
    for s in &loaded.subs {
        let Some(d) = parse_container(&s.container).filter(|d| d.topic && mine(d)) else {
            continue;
        };
        out.push(Record::DurableAdd {
            topic: d.name.clone(),
            sub: StoredSub {
                client_id: s.client_id.as_str().into(),
                name: s.sub_name.as_str().into(),
            },
            selector: s.selector.as_deref().map(Arc::from),
        });
    }
    // Message id -> its destination, for the records that refer to it.
    let mut dest_of: HashMap<i64, StoredDestination> = HashMap::new();
    for m in &loaded.messages {
        let Some(d) = parse_container(&m.container) else {
            warn!(id = m.id, container = %m.container, "a row of ACTIVEMQ_MSGS names no queue:// or topic:// container; skipped");
            continue;
        };
        if !mine(&d) {
            continue;
        }
        let msg = match &loaded.spill {
            None => m.msg.clone(),
            Some(s) => match s.msg(m) {
                Ok(b) => b,
                Err(e) => {
                    // Serving without it would strand a receipted message
                    // (and could reuse its id): no takeover rather than
                    // a partial one; a broker started again reads the
                    // table again.
                    error!(id = m.id, container = %m.container, error = %e, "a loaded message cannot be read back from the takeover's spill file; stopping");
                    std::process::exit(1);
                }
            },
        };
        out_bytes += msg.len();
        let decoded = match encoding::decode(&msg) {
            Ok(x) => x,
            Err(e) => {
                warn!(id = m.id, container = %m.container, error = %e, "a row of ACTIVEMQ_MSGS has a MSG Brokk cannot read; skipped");
                continue;
            }
        };
        dest_of.insert(m.id, d.clone());
        let priority = m.priority.clamp(0, 9) as u8;
        let expires_ms = m.expiration.max(0) as u64;
        match m.xid.as_deref().map(tx_of) {
            None => out.push(Record::Send {
                id: m.id as u64,
                destination: d,
                priority,
                expires_ms,
                timestamp_ms: decoded.timestamp_ms,
                properties: decoded.properties,
                body: decoded.body,
            }),
            Some(Some(tx)) => out.push(Record::TxSend {
                tx,
                id: m.id as u64,
                destination: d,
                priority,
                expires_ms,
                timestamp_ms: decoded.timestamp_ms,
                properties: decoded.properties,
                body: decoded.body,
            }),
            Some(None) => {
                warn!(id = m.id, xid = ?m.xid, "a row of ACTIVEMQ_MSGS has an XID Brokk did not write; skipped");
            }
        }
        if out.len() >= RECORDS_PER_EMIT || out_bytes >= BYTES_PER_EMIT {
            emit(std::mem::take(&mut out));
            out_bytes = 0;
        }
    }
    for a in &loaded.topic_acks {
        if let Some(d) = dest_of.get(&a.id) {
            out.push(Record::Ack {
                destination: d.clone(),
                sub: Some(StoredSub {
                    client_id: a.client_id.as_str().into(),
                    name: a.sub_name.as_str().into(),
                }),
                id: a.id as u64,
            });
        }
    }
    for r in &loaded.redeliveries {
        if let Some(d) = dest_of.get(&r.id) {
            out.push(Record::Redelivered {
                destination: d.clone(),
                sub: sub_of(&r.sub_key),
                id: r.id as u64,
                count: r.count.clamp(0, i64::from(u32::MAX)) as u32,
            });
        }
    }
    for a in &loaded.tx_acks {
        if let Some(d) = dest_of.get(&a.id) {
            out.push(Record::TxAck {
                tx: a.tx as u64,
                destination: d.clone(),
                sub: sub_of(&a.sub_key),
                id: a.id as u64,
            });
        }
    }
    if decisions {
        for &tx in &loaded.tx_decided {
            out.push(Record::TxCommit { tx: tx as u64 });
        }
    }
    emit(out);
}

/// The prepared transaction parts of the destinations `mine` accepts: the
/// SENDs with an XID and the prepared acknowledgements of their messages.
/// `orphans`: also the prepared acknowledgements whose message is gone (so
/// that one shard removes them).
pub fn prepared_parts(
    loaded: &Loaded,
    mine: impl Fn(&StoredDestination) -> bool,
    orphans: bool,
) -> HashMap<u64, TxPart> {
    let mut parts: HashMap<u64, TxPart> = HashMap::new();
    let mut owned: HashMap<i64, bool> = HashMap::new();
    for m in &loaded.messages {
        let is_mine = parse_container(&m.container).is_some_and(|d| mine(&d));
        owned.insert(m.id, is_mine);
        if !is_mine {
            continue;
        }
        if let Some(tx) = m.xid.as_deref().and_then(tx_of) {
            parts.entry(tx).or_default().sends.push(m.id as u64);
        }
    }
    for a in &loaded.tx_acks {
        let take = match owned.get(&a.id) {
            Some(&m) => m,
            None => orphans,
        };
        if take {
            parts
                .entry(a.tx as u64)
                .or_default()
                .acks
                .push((a.id as u64, sub_of(&a.sub_key)));
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_keys_round_trip_whatever_the_client_id_holds() {
        for (client, name) in [("c", "s"), ("ID:host-1:2", "sub:x"), ("", "n")] {
            let sub = StoredSub {
                client_id: client.into(),
                name: name.into(),
            };
            let key = super::super::shard_store::sub_key(Some(&sub));
            assert_eq!(parse_sub_key(&key), Some(sub), "{key}");
        }
        assert_eq!(parse_sub_key("x:y"), None);
        assert_eq!(parse_sub_key("9:ab:c"), None);
    }

    #[test]
    fn containers_round_trip_and_bad_ones_are_refused() {
        let d = parse_container("queue://orders").unwrap();
        assert!(!d.topic);
        assert_eq!(&*d.name, "orders");
        assert!(parse_container("topic://prices").unwrap().topic);
        assert!(parse_container("queue://").is_none());
        assert!(parse_container("temp-queue://x").is_none());
        assert_eq!(
            super::super::shard_store::container(&d),
            "queue://orders".to_string()
        );
    }
}
