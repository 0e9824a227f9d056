//! Store records and their journal encoding. One record on disk:
//!
//! ```text
//! len: u32 LE      bytes of type + payload
//! gen: u32 LE      low 32 bits of the segment's generation
//! crc: u32 LE      CRC32C over gen, type and payload
//! type: u8
//! payload
//! ```
//!
//! `len == 0` or a `gen` from another generation marks the end of the data in
//! a segment (segments are zero-filled when made and reused without zeroing,
//! so older generations' bytes follow the live data). A record of this
//! generation whose CRC or layout is wrong is a torn write or corruption.
//!
//! Payloads are a plain little-endian layout, decoded as zero-copy slices of
//! the segment buffer (bodies and headers are `Bytes` into it).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, Bytes};

pub const HEADER_BYTES: usize = 13;

const T_SEND: u8 = 1;
const T_ACK: u8 = 2;
const T_REDELIVERED: u8 = 3;
const T_DURABLE_ADD: u8 = 4;
const T_DURABLE_REMOVE: u8 = 5;
const T_TX_SEND: u8 = 6;
const T_TX_ACK: u8 = 7;
const T_TX_COMMIT: u8 = 8;
const T_TX_DONE: u8 = 9;

/// A destination as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoredDestination {
    pub topic: bool,
    pub name: Arc<str>,
}

/// A durable subscription's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoredSub {
    pub client_id: Arc<str>,
    pub name: Arc<str>,
}

/// Durable subscriptions per topic, each with its selector.
pub type DurableSubs = HashMap<Arc<str>, HashMap<StoredSub, Option<Arc<str>>>>;

/// A record to append, borrowing from the broker's own structures.
#[derive(Debug)]
pub enum RecordRef<'a> {
    Send {
        id: u64,
        destination: &'a StoredDestination,
        priority: u8,
        expires_ms: u64,
        timestamp_ms: u64,
        properties: &'a [(Bytes, Bytes)],
        body: &'a [u8],
    },
    /// The message left the queue (or durable subscription `sub`) for good.
    Ack {
        destination: &'a StoredDestination,
        sub: Option<&'a StoredSub>,
        id: u64,
    },
    /// The message was handed out and came back `count` times in all.
    Redelivered {
        destination: &'a StoredDestination,
        sub: Option<&'a StoredSub>,
        id: u64,
        count: u32,
    },
    DurableAdd {
        topic: &'a str,
        sub: &'a StoredSub,
        /// The subscription's JMS selector: kept with it, so that it
        /// filters what arrives while no consumer is attached, also after
        /// a restart.
        selector: Option<&'a str>,
    },
    DurableRemove {
        topic: &'a str,
        sub: &'a StoredSub,
    },
    /// A SEND prepared by transaction `tx`: in effect only once the
    /// transaction is decided (see [`RecordRef::TxCommit`]).
    TxSend {
        tx: u64,
        id: u64,
        destination: &'a StoredDestination,
        priority: u8,
        expires_ms: u64,
        timestamp_ms: u64,
        properties: &'a [(Bytes, Bytes)],
        body: &'a [u8],
    },
    /// An ACK prepared by transaction `tx`, in effect as its SENDs are.
    TxAck {
        tx: u64,
        destination: &'a StoredDestination,
        sub: Option<&'a StoredSub>,
        id: u64,
    },
    /// The coordinator's decision: every participant prepared `tx`, so its
    /// prepared records are in effect on every shard.
    TxCommit {
        tx: u64,
    },
    /// This shard applied its part of `tx`: its prepared records here are in
    /// effect without the coordinator's decision.
    TxDone {
        tx: u64,
    },
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Send {
        id: u64,
        destination: StoredDestination,
        priority: u8,
        expires_ms: u64,
        timestamp_ms: u64,
        properties: Vec<(Bytes, Bytes)>,
        body: Bytes,
    },
    Ack {
        destination: StoredDestination,
        sub: Option<StoredSub>,
        id: u64,
    },
    Redelivered {
        destination: StoredDestination,
        sub: Option<StoredSub>,
        id: u64,
        count: u32,
    },
    DurableAdd {
        topic: Arc<str>,
        sub: StoredSub,
        selector: Option<Arc<str>>,
    },
    DurableRemove {
        topic: Arc<str>,
        sub: StoredSub,
    },
    TxSend {
        tx: u64,
        id: u64,
        destination: StoredDestination,
        priority: u8,
        expires_ms: u64,
        timestamp_ms: u64,
        properties: Vec<(Bytes, Bytes)>,
        body: Bytes,
    },
    TxAck {
        tx: u64,
        destination: StoredDestination,
        sub: Option<StoredSub>,
        id: u64,
    },
    TxCommit {
        tx: u64,
    },
    TxDone {
        tx: u64,
    },
}

impl Record {
    /// The message a SEND, ACK or redelivery count record is about.
    pub fn message_id(&self) -> Option<u64> {
        match self {
            Record::Send { id, .. }
            | Record::Ack { id, .. }
            | Record::Redelivered { id, .. }
            | Record::TxSend { id, .. }
            | Record::TxAck { id, .. } => Some(*id),
            Record::DurableAdd { .. }
            | Record::DurableRemove { .. }
            | Record::TxCommit { .. }
            | Record::TxDone { .. } => None,
        }
    }

    /// The transaction a record belongs to. Transaction ids come from the
    /// same issuer as message ids, so they too must stay unique.
    pub fn tx_id(&self) -> Option<u64> {
        match self {
            Record::TxSend { tx, .. }
            | Record::TxAck { tx, .. }
            | Record::TxCommit { tx }
            | Record::TxDone { tx } => Some(*tx),
            _ => None,
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_dest(out: &mut Vec<u8>, d: &StoredDestination) {
    out.push(u8::from(d.topic));
    put_bytes(out, d.name.as_bytes());
}

#[allow(clippy::too_many_arguments)]
fn put_send(
    out: &mut Vec<u8>,
    id: u64,
    destination: &StoredDestination,
    priority: u8,
    expires_ms: u64,
    timestamp_ms: u64,
    properties: &[(Bytes, Bytes)],
    body: &[u8],
) {
    out.extend_from_slice(&id.to_le_bytes());
    put_dest(out, destination);
    out.push(priority);
    out.extend_from_slice(&expires_ms.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(&(properties.len() as u32).to_le_bytes());
    for (k, v) in properties.iter() {
        put_bytes(out, k);
        put_bytes(out, v);
    }
    put_bytes(out, body);
}

fn put_sub(out: &mut Vec<u8>, s: Option<&StoredSub>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_bytes(out, s.client_id.as_bytes());
            put_bytes(out, s.name.as_bytes());
        }
    }
}

/// Appends the encoded record to `out`.
pub fn encode(r: &RecordRef<'_>, generation: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 12]);
    match r {
        RecordRef::Send {
            id,
            destination,
            priority,
            expires_ms,
            timestamp_ms,
            properties,
            body,
        } => {
            out.push(T_SEND);
            put_send(
                out,
                *id,
                destination,
                *priority,
                *expires_ms,
                *timestamp_ms,
                properties,
                body,
            );
        }
        RecordRef::TxSend {
            tx,
            id,
            destination,
            priority,
            expires_ms,
            timestamp_ms,
            properties,
            body,
        } => {
            out.push(T_TX_SEND);
            out.extend_from_slice(&tx.to_le_bytes());
            put_send(
                out,
                *id,
                destination,
                *priority,
                *expires_ms,
                *timestamp_ms,
                properties,
                body,
            );
        }
        RecordRef::TxAck {
            tx,
            destination,
            sub,
            id,
        } => {
            out.push(T_TX_ACK);
            out.extend_from_slice(&tx.to_le_bytes());
            put_dest(out, destination);
            put_sub(out, *sub);
            out.extend_from_slice(&id.to_le_bytes());
        }
        RecordRef::TxCommit { tx } => {
            out.push(T_TX_COMMIT);
            out.extend_from_slice(&tx.to_le_bytes());
        }
        RecordRef::TxDone { tx } => {
            out.push(T_TX_DONE);
            out.extend_from_slice(&tx.to_le_bytes());
        }
        RecordRef::Ack {
            destination,
            sub,
            id,
        } => {
            out.push(T_ACK);
            put_dest(out, destination);
            put_sub(out, *sub);
            out.extend_from_slice(&id.to_le_bytes());
        }
        RecordRef::Redelivered {
            destination,
            sub,
            id,
            count,
        } => {
            out.push(T_REDELIVERED);
            put_dest(out, destination);
            put_sub(out, *sub);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        RecordRef::DurableAdd {
            topic,
            sub,
            selector,
        } => {
            out.push(T_DURABLE_ADD);
            put_bytes(out, topic.as_bytes());
            put_sub(out, Some(sub));
            // Older journals end the record here: no selector.
            if let Some(s) = selector {
                put_bytes(out, s.as_bytes());
            }
        }
        RecordRef::DurableRemove { topic, sub } => {
            out.push(T_DURABLE_REMOVE);
            put_bytes(out, topic.as_bytes());
            put_sub(out, Some(sub));
        }
    }
    let len = (out.len() - start - 12) as u32;
    let gen = generation as u32;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&gen.to_le_bytes()), &out[start + 12..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&gen.to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// What lies at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Record(Record, usize),
    /// No more records of this generation: clean end of data.
    End,
    /// A record of this generation that does not check out.
    Bad {
        reason: &'static str,
        claimed_len: Option<usize>,
    },
}

/// Destination and subscription names met while decoding: the records of
/// one destination share one `Arc<str>` rather than allocating one each.
#[derive(Debug, Default)]
pub struct Names(std::collections::HashMap<Bytes, Arc<str>>);

impl Names {
    /// Distinct names kept before the cache starts over (bounds its memory
    /// on a journal with very many destinations).
    const MAX: usize = 4096;

    fn get(&mut self, raw: Bytes) -> Option<Arc<str>> {
        if let Some(name) = self.0.get(&raw) {
            return Some(name.clone());
        }
        let name: Arc<str> = Arc::from(std::str::from_utf8(&raw).ok()?);
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(raw, name.clone());
        Some(name)
    }
}

/// Reads the record at `pos` of `buf` written under `generation`.
pub fn decode_at(buf: &Bytes, pos: usize, generation: u64) -> Decoded {
    decode_named(buf, pos, generation, &mut Names::default())
}

/// [`decode_at`], sharing names through `names` across calls.
pub fn decode_named(buf: &Bytes, pos: usize, generation: u64, names: &mut Names) -> Decoded {
    if pos + 12 > buf.len() {
        return Decoded::End;
    }
    let h = &buf[pos..pos + 12];
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let gen = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let crc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if len == 0 || gen != generation as u32 {
        return Decoded::End;
    }
    let end = pos + 12 + len;
    if end > buf.len() {
        return Decoded::Bad {
            reason: "record runs past the end of the segment",
            claimed_len: None,
        };
    }
    let body = &buf[pos + 12..end];
    if crc32c::crc32c_append(crc32c::crc32c(&gen.to_le_bytes()), body) != crc {
        return Decoded::Bad {
            reason: "CRC mismatch",
            claimed_len: Some(len),
        };
    }
    match parse(buf.slice(pos + 12..end), names) {
        Some(r) => Decoded::Record(r, end),
        None => Decoded::Bad {
            reason: "malformed payload",
            claimed_len: Some(len),
        },
    }
}

struct Reader<'a>(Bytes, &'a mut Names);

struct SendFields {
    id: u64,
    destination: StoredDestination,
    priority: u8,
    expires_ms: u64,
    timestamp_ms: u64,
    properties: Vec<(Bytes, Bytes)>,
    body: Bytes,
}

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        (self.0.remaining() >= 1).then(|| self.0.get_u8())
    }
    fn u32(&mut self) -> Option<u32> {
        (self.0.remaining() >= 4).then(|| self.0.get_u32_le())
    }
    fn u64(&mut self) -> Option<u64> {
        (self.0.remaining() >= 8).then(|| self.0.get_u64_le())
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.u32()? as usize;
        (self.0.remaining() >= n).then(|| self.0.split_to(n))
    }
    fn str(&mut self) -> Option<Arc<str>> {
        let b = self.bytes()?;
        self.1.get(b)
    }
    fn dest(&mut self) -> Option<StoredDestination> {
        let topic = self.u8()? != 0;
        Some(StoredDestination {
            topic,
            name: self.str()?,
        })
    }
    /// A SEND's payload after its type (and, tagged, its transaction).
    fn send(&mut self) -> Option<SendFields> {
        let id = self.u64()?;
        let destination = self.dest()?;
        let priority = self.u8()?;
        let expires_ms = self.u64()?;
        let timestamp_ms = self.u64()?;
        let n = self.u32()? as usize;
        let mut properties = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            properties.push((self.bytes()?, self.bytes()?));
        }
        let body = self.bytes()?;
        Some(SendFields {
            id,
            destination,
            priority,
            expires_ms,
            timestamp_ms,
            properties,
            body,
        })
    }
    fn sub(&mut self) -> Option<Option<StoredSub>> {
        match self.u8()? {
            0 => Some(None),
            _ => Some(Some(StoredSub {
                client_id: self.str()?,
                name: self.str()?,
            })),
        }
    }
}

fn parse(payload: Bytes, names: &mut Names) -> Option<Record> {
    let mut r = Reader(payload, names);
    let record = match r.u8()? {
        T_SEND => {
            let f = r.send()?;
            Record::Send {
                id: f.id,
                destination: f.destination,
                priority: f.priority,
                expires_ms: f.expires_ms,
                timestamp_ms: f.timestamp_ms,
                properties: f.properties,
                body: f.body,
            }
        }
        T_TX_SEND => {
            let tx = r.u64()?;
            let f = r.send()?;
            Record::TxSend {
                tx,
                id: f.id,
                destination: f.destination,
                priority: f.priority,
                expires_ms: f.expires_ms,
                timestamp_ms: f.timestamp_ms,
                properties: f.properties,
                body: f.body,
            }
        }
        T_TX_ACK => Record::TxAck {
            tx: r.u64()?,
            destination: r.dest()?,
            sub: r.sub()?,
            id: r.u64()?,
        },
        T_TX_COMMIT => Record::TxCommit { tx: r.u64()? },
        T_TX_DONE => Record::TxDone { tx: r.u64()? },
        T_ACK => Record::Ack {
            destination: r.dest()?,
            sub: r.sub()?,
            id: r.u64()?,
        },
        T_REDELIVERED => Record::Redelivered {
            destination: r.dest()?,
            sub: r.sub()?,
            id: r.u64()?,
            count: r.u32()?,
        },
        t @ (T_DURABLE_ADD | T_DURABLE_REMOVE) => {
            let topic = r.str()?;
            let sub = r.sub()??;
            if t == T_DURABLE_ADD {
                let selector = match r.0.is_empty() {
                    true => None,
                    false => Some(r.str()?),
                };
                Record::DurableAdd {
                    topic,
                    sub,
                    selector,
                }
            } else {
                Record::DurableRemove { topic, sub }
            }
        }
        _ => return None,
    };
    r.0.is_empty().then_some(record)
}

/// Copies a message's headers and body out of the buffer they were read
/// into (a journal segment) into one allocation of their own (slices of it).
pub fn detach(properties: &mut [(Bytes, Bytes)], body: &mut Bytes) {
    let total = body.len()
        + properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    let mut buf = Vec::with_capacity(total);
    for (k, v) in properties.iter() {
        buf.extend_from_slice(k);
        buf.extend_from_slice(v);
    }
    buf.extend_from_slice(body);
    let all = Bytes::from(buf);
    let mut off = 0;
    let mut take = |n: usize| {
        let b = all.slice(off..off + n);
        off += n;
        b
    };
    for (k, v) in properties.iter_mut() {
        *k = take(k.len());
        *v = take(v.len());
    }
    *body = take(body.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest() -> StoredDestination {
        StoredDestination {
            topic: false,
            name: "orders".into(),
        }
    }

    #[test]
    fn records_round_trip() {
        let d = dest();
        let sub = StoredSub {
            client_id: "c".into(),
            name: "s".into(),
        };
        let props = vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))];
        let mut buf = Vec::new();
        encode(
            &RecordRef::Send {
                id: 7,
                destination: &d,
                priority: 9,
                expires_ms: 5,
                timestamp_ms: 6,
                properties: &props,
                body: b"a\0b",
            },
            3,
            &mut buf,
        );
        encode(
            &RecordRef::Ack {
                destination: &d,
                sub: Some(&sub),
                id: 7,
            },
            3,
            &mut buf,
        );
        encode(
            &RecordRef::Redelivered {
                destination: &d,
                sub: None,
                id: 7,
                count: 2,
            },
            3,
            &mut buf,
        );
        encode(
            &RecordRef::DurableAdd {
                topic: "t",
                sub: &sub,
                selector: None,
            },
            3,
            &mut buf,
        );
        encode(
            &RecordRef::DurableAdd {
                topic: "t",
                sub: &sub,
                selector: Some("a = 'b'"),
            },
            3,
            &mut buf,
        );
        let b = Bytes::from(buf);
        let mut pos = 0;
        let mut got = Vec::new();
        while let Decoded::Record(r, next) = decode_at(&b, pos, 3) {
            got.push(r);
            pos = next;
        }
        assert_eq!(got.len(), 5);
        assert_eq!(
            got[0],
            Record::Send {
                id: 7,
                destination: d.clone(),
                priority: 9,
                expires_ms: 5,
                timestamp_ms: 6,
                properties: props,
                body: Bytes::from_static(b"a\0b"),
            }
        );
        assert_eq!(
            got[3],
            Record::DurableAdd {
                topic: "t".into(),
                sub: sub.clone(),
                selector: None,
            }
        );
        assert_eq!(
            got[4],
            Record::DurableAdd {
                topic: "t".into(),
                sub,
                selector: Some("a = 'b'".into()),
            }
        );
        assert_eq!(decode_at(&b, pos, 3), Decoded::End);
    }

    #[test]
    fn transaction_records_round_trip() {
        let d = dest();
        let sub = StoredSub {
            client_id: "c".into(),
            name: "s".into(),
        };
        let props = vec![(Bytes::from_static(b"marker"), Bytes::from_static(b"t1"))];
        let mut buf = Vec::new();
        encode(
            &RecordRef::TxSend {
                tx: 99,
                id: 7,
                destination: &d,
                priority: 3,
                expires_ms: 5,
                timestamp_ms: 6,
                properties: &props,
                body: b"x\0y",
            },
            2,
            &mut buf,
        );
        encode(
            &RecordRef::TxAck {
                tx: 99,
                destination: &d,
                sub: Some(&sub),
                id: 4,
            },
            2,
            &mut buf,
        );
        encode(
            &RecordRef::TxAck {
                tx: 99,
                destination: &d,
                sub: None,
                id: 5,
            },
            2,
            &mut buf,
        );
        encode(&RecordRef::TxCommit { tx: 99 }, 2, &mut buf);
        encode(&RecordRef::TxDone { tx: u64::MAX }, 2, &mut buf);
        let b = Bytes::from(buf);
        let mut pos = 0;
        let mut got = Vec::new();
        while let Decoded::Record(r, next) = decode_at(&b, pos, 2) {
            got.push(r);
            pos = next;
        }
        assert_eq!(pos, b.len(), "every record read back");
        assert_eq!(
            got,
            vec![
                Record::TxSend {
                    tx: 99,
                    id: 7,
                    destination: d.clone(),
                    priority: 3,
                    expires_ms: 5,
                    timestamp_ms: 6,
                    properties: props,
                    body: Bytes::from_static(b"x\0y"),
                },
                Record::TxAck {
                    tx: 99,
                    destination: d.clone(),
                    sub: Some(sub),
                    id: 4,
                },
                Record::TxAck {
                    tx: 99,
                    destination: d,
                    sub: None,
                    id: 5,
                },
                Record::TxCommit { tx: 99 },
                Record::TxDone { tx: u64::MAX },
            ]
        );
        assert_eq!(got[0].message_id(), Some(7));
        assert_eq!(got[0].tx_id(), Some(99));
        assert_eq!(got[3].message_id(), None);
        assert_eq!(got[4].tx_id(), Some(u64::MAX));
    }

    #[test]
    fn a_truncated_transaction_record_is_malformed() {
        // A TxCommit whose payload lost its last byte (with a CRC that
        // matches the short payload): the layout check refuses it.
        let mut payload = vec![T_TX_COMMIT];
        payload.extend_from_slice(&7u64.to_le_bytes()[..7]);
        assert_eq!(parse(Bytes::from(payload), &mut Names::default()), None);
        let mut payload = vec![T_TX_DONE];
        payload.extend_from_slice(&7u64.to_le_bytes());
        payload.push(0);
        assert_eq!(
            parse(Bytes::from(payload), &mut Names::default()),
            None,
            "trailing bytes"
        );
    }

    #[test]
    fn other_generation_is_end_and_flipped_byte_is_bad() {
        let d = dest();
        let mut buf = Vec::new();
        encode(
            &RecordRef::Ack {
                destination: &d,
                sub: None,
                id: 1,
            },
            4,
            &mut buf,
        );
        let b = Bytes::from(buf.clone());
        assert_eq!(decode_at(&b, 0, 5), Decoded::End);
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        assert!(matches!(
            decode_at(&Bytes::from(buf), 0, 4),
            Decoded::Bad { .. }
        ));
        assert_eq!(decode_at(&Bytes::from(vec![0u8; 64]), 0, 4), Decoded::End);
    }
}
