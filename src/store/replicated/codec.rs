//! The bytes of a [`Batch`] in the replicated log, and of a [`Tables`]
//! snapshot. No checksum here: the log's framing adds one.
//!
//! Layout, all integers little endian:
//!
//! ```text
//! header    u8 version (1), u8 kind (1 = batch, 2 = snapshot)
//! i64       8 bytes, two's complement
//! str       u32 byte length, UTF-8 bytes
//! opt_str   u8 0 (none) | u8 1 (some), str
//! body      u32 byte length, bytes
//! list<T>   u32 row count N, N x T
//!
//! MsgRow      i64 id, str container, i64 expiration, i64 priority,
//!             opt_str xid, body msg
//! SubRow      str container, str client_id, str sub_name, opt_str selector
//! TopicAck    i64 id, str client_id, str sub_name
//! Redelivery  i64 id, str sub_key, i64 count
//! TxAck       i64 tx, i64 id, str sub_key
//! ProducerSeq str container, str producer, i64 seq
//! Gone        str container, str producer
//!
//! batch     header, then Batch's fields in declaration order:
//!           list<MsgRow> inserts, list<TopicAck> topic_acks,
//!           list<Redelivery> redeliveries, list<SubRow> subs_added,
//!           list<TxAck> tx_acks, list<i64> tx_decided, list<i64> deletes,
//!           list<i64> xid_cleared, list<TxAck> tx_acks_done,
//!           list<i64> tx_forgotten, list<SubRow> subs_removed,
//!           list<ProducerSeq> producer_seqs, list<Gone> producer_seqs_gone
//! snapshot  header, list<MsgRow> messages, list<SubRow> subs,
//!           list<TopicAck> topic_acks, list<Redelivery> redeliveries,
//!           list<TxAck> tx_acks, list<i64> tx_decided,
//!           list<ProducerSeq> producer_seqs
//! ```
//!
//! Nothing may follow the last list. A batch's encoding is canonical (what
//! decodes re-encodes to the same bytes); a snapshot's rows come in no
//! particular order, and a snapshot repeating a key is refused.
//!
//! Decoding treats its input as untrusted: a damaged buffer is an error,
//! never a panic; a row count is checked against the bytes left (at the
//! smallest size a row can take) before anything is allocated for it, and
//! every row consumes bytes, so decoding ends. Bodies are slices of the
//! input buffer (`Bytes::slice`), not copies.

use bytes::Bytes;

use super::tables::Tables;
use crate::store::sql::{Batch, MsgRow, ProducerSeq, Redelivery, SubRow, TopicAck, TxAckRow};

/// The layout this build writes and reads.
pub const VERSION: u8 = 1;
const KIND_BATCH: u8 = 1;
const KIND_SNAPSHOT: u8 = 2;

/// Smallest encoded size of each row type (all strings empty), for
/// checking counts against the bytes left.
const MIN_MSG: usize = 8 + 4 + 8 + 8 + 1 + 4;
const MIN_SUB: usize = 4 + 4 + 4 + 1;
const MIN_TOPIC_ACK: usize = 8 + 4 + 4;
const MIN_REDELIVERY: usize = 8 + 4 + 8;
const MIN_TX_ACK: usize = 8 + 8 + 4;
const MIN_I64: usize = 8;
const MIN_PRODUCER_SEQ: usize = 4 + 4 + 8;
const MIN_GONE: usize = 4 + 4;

/// Why bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error(
        "truncated: {section}.{field} needs {need} bytes at offset {offset}, only {left} left"
    )]
    Truncated {
        section: &'static str,
        field: &'static str,
        offset: usize,
        need: usize,
        left: usize,
    },
    #[error("unknown encoding version {found} (this build reads {VERSION})")]
    Version { found: u8 },
    #[error("expected a {expected}, found kind byte {found}")]
    Kind { expected: &'static str, found: u8 },
    #[error(
        "{section} claims {count} rows but only {left} bytes follow (a row takes at least {min})"
    )]
    CountTooLarge {
        section: &'static str,
        count: u32,
        left: usize,
        min: usize,
    },
    #[error("{section}.{field} at offset {offset} is not UTF-8")]
    NotUtf8 {
        section: &'static str,
        field: &'static str,
        offset: usize,
    },
    #[error("{section}.{field} at offset {offset}: option tag {tag}, expected 0 or 1")]
    BadTag {
        section: &'static str,
        field: &'static str,
        offset: usize,
        tag: u8,
    },
    #[error("{left} bytes follow the last section")]
    Trailing { left: usize },
    #[error("the snapshot repeats a key in {section}")]
    Duplicate { section: &'static str },
}

// ------------------------------------------------------------- encoding

/// A length or count as the u32 the layout holds. Rows and fields come
/// from frames the broker caps far below 4 GiB, and a batch holds far
/// fewer than 2^32 rows, so a larger value is a bug, not input.
fn u32_len(n: usize) -> [u8; 4] {
    match u32::try_from(n) {
        Ok(n) => n.to_le_bytes(),
        Err(_) => panic!("replicated codec: a field or list of {n} exceeds u32"),
    }
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32_len(b.len()));
    out.extend_from_slice(b);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// A list: its count, then each row.
fn put_list<T>(out: &mut Vec<u8>, rows: &[T], mut put: impl FnMut(&mut Vec<u8>, &T)) {
    out.extend_from_slice(&u32_len(rows.len()));
    for r in rows {
        put(out, r);
    }
}

fn put_msg(out: &mut Vec<u8>, m: &MsgRow) {
    put_i64(out, m.id);
    put_str(out, &m.container);
    put_i64(out, m.expiration);
    put_i64(out, m.priority);
    put_opt_str(out, m.xid.as_deref());
    put_bytes(out, &m.msg);
}

fn put_sub(out: &mut Vec<u8>, container: &str, client_id: &str, name: &str, sel: Option<&str>) {
    put_str(out, container);
    put_str(out, client_id);
    put_str(out, name);
    put_opt_str(out, sel);
}

fn put_topic_ack(out: &mut Vec<u8>, id: i64, client_id: &str, sub_name: &str) {
    put_i64(out, id);
    put_str(out, client_id);
    put_str(out, sub_name);
}

fn put_redelivery(out: &mut Vec<u8>, id: i64, sub_key: &str, count: i64) {
    put_i64(out, id);
    put_str(out, sub_key);
    put_i64(out, count);
}

fn put_tx_ack(out: &mut Vec<u8>, tx: i64, id: i64, sub_key: &str) {
    put_i64(out, tx);
    put_i64(out, id);
    put_str(out, sub_key);
}

fn put_producer_seq(out: &mut Vec<u8>, container: &str, producer: &str, seq: i64) {
    put_str(out, container);
    put_str(out, producer);
    put_i64(out, seq);
}

/// Appends `b`'s encoding to `out`.
pub fn encode_batch(b: &Batch, out: &mut Vec<u8>) {
    // Bodies dominate; the rest is small next to them.
    out.reserve(2 + b.bytes() + b.rows() * 32 + 13 * 4);
    out.extend_from_slice(&[VERSION, KIND_BATCH]);
    put_list(out, &b.inserts, put_msg);
    put_list(out, &b.topic_acks, |o, a| {
        put_topic_ack(o, a.id, &a.client_id, &a.sub_name)
    });
    put_list(out, &b.redeliveries, |o, r| {
        put_redelivery(o, r.id, &r.sub_key, r.count)
    });
    put_list(out, &b.subs_added, |o, s| {
        put_sub(
            o,
            &s.container,
            &s.client_id,
            &s.sub_name,
            s.selector.as_deref(),
        )
    });
    put_list(out, &b.tx_acks, |o, a| {
        put_tx_ack(o, a.tx, a.id, &a.sub_key)
    });
    put_list(out, &b.tx_decided, |o, &t| put_i64(o, t));
    // One list on the wire: the replicated tables delete a message's side
    // rows with it by id at no cost (`msg_deletes` only spares a
    // database three statements).
    out.extend_from_slice(&u32_len(b.deletes.len() + b.msg_deletes.len()));
    for &id in b.deletes.iter().chain(&b.msg_deletes) {
        put_i64(out, id);
    }
    put_list(out, &b.xid_cleared, |o, &id| put_i64(o, id));
    put_list(out, &b.tx_acks_done, |o, a| {
        put_tx_ack(o, a.tx, a.id, &a.sub_key)
    });
    put_list(out, &b.tx_forgotten, |o, &t| put_i64(o, t));
    put_list(out, &b.subs_removed, |o, s| {
        put_sub(
            o,
            &s.container,
            &s.client_id,
            &s.sub_name,
            s.selector.as_deref(),
        )
    });
    put_list(out, &b.producer_seqs, |o, p| {
        put_producer_seq(o, &p.container, &p.producer, p.seq)
    });
    put_list(out, &b.producer_seqs_gone, |o, (c, p)| {
        put_str(o, c);
        put_str(o, p);
    });
}

/// Appends a snapshot of `t` to `out`.
pub fn encode_tables(t: &Tables, out: &mut Vec<u8>) {
    out.reserve(2 + t.message_bytes() as usize + t.messages() * 48 + 7 * 4);
    out.extend_from_slice(&[VERSION, KIND_SNAPSHOT]);
    put_counted(out, t.message_rows(), put_msg);
    put_counted(out, t.sub_rows(), |o, (c, ci, sn, sel)| {
        put_sub(o, c, ci, sn, sel)
    });
    put_counted(out, t.topic_acks(), |o, (id, ci, sn)| {
        put_topic_ack(o, id, ci, sn)
    });
    put_counted(out, t.redeliveries(), |o, (id, k, n)| {
        put_redelivery(o, id, k, n)
    });
    put_counted(out, t.tx_acks(), |o, (tx, id, k)| put_tx_ack(o, tx, id, k));
    put_counted(out, t.decided(), put_i64);
    put_counted(out, t.producer_seqs(), |o, (c, p, n)| {
        put_producer_seq(o, c, p, n)
    });
}

/// A list from an iterator: the count goes first, so its place is kept
/// and filled in once the rows are written (the tables' flattened
/// iterators know no exact length).
fn put_counted<T>(
    out: &mut Vec<u8>,
    rows: impl Iterator<Item = T>,
    mut put: impl FnMut(&mut Vec<u8>, T),
) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut n = 0;
    for r in rows {
        put(out, r);
        n += 1;
    }
    out[at..at + 4].copy_from_slice(&u32_len(n));
}

// ------------------------------------------------------------- decoding

/// A cursor over untrusted bytes that errors instead of reading past the
/// end. `section` names the list being read, for errors.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    section: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a Bytes) -> Self {
        Reader {
            buf,
            pos: 0,
            section: "header",
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes as a range of the buffer.
    fn span(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<std::ops::Range<usize>, CodecError> {
        if self.remaining() < n {
            return Err(CodecError::Truncated {
                section: self.section,
                field,
                offset: self.pos,
                need: n,
                left: self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(start..self.pos)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CodecError> {
        let span = self.span(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[span]);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, CodecError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }

    /// A length-prefixed field, as a range of the buffer.
    fn field(&mut self, field: &'static str) -> Result<std::ops::Range<usize>, CodecError> {
        let len = self.u32(field)? as usize;
        self.span(len, field)
    }

    /// A body: shares the buffer.
    fn body(&mut self, field: &'static str) -> Result<Bytes, CodecError> {
        let span = self.field(field)?;
        Ok(self.buf.slice(span))
    }

    fn string(&mut self, field: &'static str) -> Result<String, CodecError> {
        let span = self.field(field)?;
        let offset = span.start;
        match std::str::from_utf8(&self.buf[span]) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(CodecError::NotUtf8 {
                section: self.section,
                field,
                offset,
            }),
        }
    }

    fn opt_string(&mut self, field: &'static str) -> Result<Option<String>, CodecError> {
        let offset = self.pos;
        match self.u8(field)? {
            0 => Ok(None),
            1 => self.string(field).map(Some),
            tag => Err(CodecError::BadTag {
                section: self.section,
                field,
                offset,
                tag,
            }),
        }
    }

    /// A list's row count, refused if the bytes left cannot hold that many
    /// rows of at least `min` bytes (so nothing is allocated for it).
    fn count(&mut self, section: &'static str, min: usize) -> Result<usize, CodecError> {
        self.section = section;
        let count = self.u32("count")?;
        let left = self.remaining();
        if count as usize > left / min {
            return Err(CodecError::CountTooLarge {
                section,
                count,
                left,
                min,
            });
        }
        Ok(count as usize)
    }

    /// A list of rows into a vector sized by its (checked) count.
    fn list<T>(
        &mut self,
        section: &'static str,
        min: usize,
        mut row: impl FnMut(&mut Self) -> Result<T, CodecError>,
    ) -> Result<Vec<T>, CodecError> {
        let n = self.count(section, min)?;
        let mut rows = Vec::with_capacity(n);
        for _ in 0..n {
            rows.push(row(self)?);
        }
        Ok(rows)
    }

    fn header(&mut self, kind: u8, expected: &'static str) -> Result<(), CodecError> {
        let version = self.u8("version")?;
        if version != VERSION {
            return Err(CodecError::Version { found: version });
        }
        let found = self.u8("kind")?;
        if found != kind {
            return Err(CodecError::Kind { expected, found });
        }
        Ok(())
    }

    fn end(&self) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            left => Err(CodecError::Trailing { left }),
        }
    }

    fn msg(&mut self) -> Result<MsgRow, CodecError> {
        Ok(MsgRow {
            id: self.i64("id")?,
            container: self.string("container")?,
            expiration: self.i64("expiration")?,
            priority: self.i64("priority")?,
            xid: self.opt_string("xid")?,
            msg: self.body("msg")?,
        })
    }

    fn sub(&mut self) -> Result<SubRow, CodecError> {
        Ok(SubRow {
            container: self.string("container")?,
            client_id: self.string("client_id")?,
            sub_name: self.string("sub_name")?,
            selector: self.opt_string("selector")?,
        })
    }

    fn topic_ack(&mut self) -> Result<TopicAck, CodecError> {
        Ok(TopicAck {
            id: self.i64("id")?,
            client_id: self.string("client_id")?,
            sub_name: self.string("sub_name")?,
        })
    }

    fn redelivery(&mut self) -> Result<Redelivery, CodecError> {
        Ok(Redelivery {
            id: self.i64("id")?,
            sub_key: self.string("sub_key")?,
            count: self.i64("count")?,
        })
    }

    fn tx_ack(&mut self) -> Result<TxAckRow, CodecError> {
        Ok(TxAckRow {
            tx: self.i64("tx")?,
            id: self.i64("id")?,
            sub_key: self.string("sub_key")?,
        })
    }

    fn producer_seq(&mut self) -> Result<ProducerSeq, CodecError> {
        Ok(ProducerSeq {
            container: self.string("container")?,
            producer: self.string("producer")?,
            seq: self.i64("seq")?,
        })
    }

    fn gone(&mut self) -> Result<(String, String), CodecError> {
        Ok((self.string("container")?, self.string("producer")?))
    }

    /// A snapshot list: each row handed to `insert`, which says whether
    /// its key was new.
    fn rows<T>(
        &mut self,
        section: &'static str,
        min: usize,
        mut row: impl FnMut(&mut Self) -> Result<T, CodecError>,
        mut insert: impl FnMut(T) -> bool,
    ) -> Result<(), CodecError> {
        for _ in 0..self.count(section, min)? {
            if !insert(row(self)?) {
                return Err(CodecError::Duplicate { section });
            }
        }
        Ok(())
    }
}

/// Reads a batch written by [`encode_batch`]; bodies share `buf`.
pub fn decode_batch(buf: &Bytes) -> Result<Batch, CodecError> {
    let mut r = Reader::new(buf);
    r.header(KIND_BATCH, "batch")?;
    let b = Batch {
        inserts: r.list("inserts", MIN_MSG, Reader::msg)?,
        topic_acks: r.list("topic_acks", MIN_TOPIC_ACK, Reader::topic_ack)?,
        redeliveries: r.list("redeliveries", MIN_REDELIVERY, Reader::redelivery)?,
        subs_added: r.list("subs_added", MIN_SUB, Reader::sub)?,
        tx_acks: r.list("tx_acks", MIN_TX_ACK, Reader::tx_ack)?,
        tx_decided: r.list("tx_decided", MIN_I64, |r| r.i64("tx"))?,
        deletes: r.list("deletes", MIN_I64, |r| r.i64("id"))?,
        msg_deletes: Vec::new(),
        xid_cleared: r.list("xid_cleared", MIN_I64, |r| r.i64("id"))?,
        tx_acks_done: r.list("tx_acks_done", MIN_TX_ACK, Reader::tx_ack)?,
        tx_forgotten: r.list("tx_forgotten", MIN_I64, |r| r.i64("tx"))?,
        subs_removed: r.list("subs_removed", MIN_SUB, Reader::sub)?,
        producer_seqs: r.list("producer_seqs", MIN_PRODUCER_SEQ, Reader::producer_seq)?,
        producer_seqs_gone: r.list("producer_seqs_gone", MIN_GONE, Reader::gone)?,
    };
    r.end()?;
    Ok(b)
}

/// Reads a snapshot written by [`encode_tables`]; bodies share `buf`.
pub fn decode_tables(buf: &Bytes) -> Result<Tables, CodecError> {
    let mut r = Reader::new(buf);
    r.header(KIND_SNAPSHOT, "snapshot")?;
    let mut t = Tables::new();
    r.rows("messages", MIN_MSG, Reader::msg, |m| t.insert_message(m))?;
    r.rows("subs", MIN_SUB, Reader::sub, |s| t.upsert_sub(s))?;
    r.rows("topic_acks", MIN_TOPIC_ACK, Reader::topic_ack, |a| {
        t.insert_topic_ack(a)
    })?;
    r.rows("redeliveries", MIN_REDELIVERY, Reader::redelivery, |x| {
        t.upsert_redelivery(x)
    })?;
    r.rows("tx_acks", MIN_TX_ACK, Reader::tx_ack, |a| {
        t.insert_tx_ack(a)
    })?;
    r.rows(
        "tx_decided",
        MIN_I64,
        |r| r.i64("tx"),
        |x| t.insert_decided(x),
    )?;
    r.rows(
        "producer_seqs",
        MIN_PRODUCER_SEQ,
        Reader::producer_seq,
        |p| t.upsert_producer_seq(p),
    )?;
    r.end()?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_batch() -> Batch {
        let sub = |sel: Option<&str>| SubRow {
            container: "topic://t".into(),
            client_id: "c".into(),
            sub_name: "s".into(),
            selector: sel.map(String::from),
        };
        let tx_ack = |id| TxAckRow {
            tx: 7,
            id,
            sub_key: "c:s".into(),
        };
        Batch {
            inserts: vec![
                MsgRow {
                    id: 1,
                    container: "queue://q".into(),
                    expiration: 1_700_000_000_000,
                    priority: 9,
                    xid: Some("tx:7".into()),
                    msg: Bytes::from_static(b"body one"),
                },
                MsgRow {
                    id: 2,
                    container: "topic://tä".into(),
                    expiration: 0,
                    priority: 0,
                    xid: None,
                    msg: Bytes::new(),
                },
            ],
            topic_acks: vec![TopicAck {
                id: 1,
                client_id: "c".into(),
                sub_name: "s".into(),
            }],
            redeliveries: vec![Redelivery {
                id: 1,
                sub_key: String::new(),
                count: 3,
            }],
            subs_added: vec![sub(Some("a = 'b'"))],
            tx_acks: vec![tx_ack(1)],
            tx_decided: vec![7, i64::MAX],
            deletes: vec![i64::MIN, 3],
            // (Sent as part of `deletes`: see the test below.)
            msg_deletes: vec![],
            xid_cleared: vec![1],
            tx_acks_done: vec![tx_ack(2)],
            tx_forgotten: vec![6],
            subs_removed: vec![sub(None)],
            producer_seqs: vec![ProducerSeq {
                container: "queue://q".into(),
                producer: "ID:p-1:1:1".into(),
                seq: 42,
            }],
            producer_seqs_gone: vec![("queue://q".into(), "ID:old".into())],
        }
    }

    fn encoded(b: &Batch) -> Bytes {
        let mut out = Vec::new();
        encode_batch(b, &mut out);
        Bytes::from(out)
    }

    #[test]
    fn deletes_of_messages_without_side_rows_travel_with_the_others() {
        let b = Batch {
            deletes: vec![1],
            msg_deletes: vec![2, 3],
            ..Batch::default()
        };
        let back = decode_batch(&encoded(&b)).unwrap();
        assert_eq!(back.deletes, vec![1, 2, 3]);
        assert!(back.msg_deletes.is_empty());
    }

    #[test]
    fn a_batch_with_every_field_round_trips_and_shares_its_bodies() {
        let b = full_batch();
        let buf = encoded(&b);
        let back = decode_batch(&buf).expect("decodes");
        assert_eq!(back, b);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        assert!(range.contains(&(back.inserts[0].msg.as_ptr() as usize)));
        // Canonical: the same bytes again.
        assert_eq!(encoded(&back), buf);
        assert_eq!(
            decode_batch(&encoded(&Batch::default())),
            Ok(Batch::default())
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let buf = encoded(&full_batch());
        for n in 0..buf.len() {
            let err = decode_batch(&buf.slice(..n)).expect_err("truncated");
            assert!(
                matches!(
                    err,
                    CodecError::Truncated { .. } | CodecError::CountTooLarge { .. }
                ),
                "{n}: {err}"
            );
        }
        let mut tail = buf.to_vec();
        tail.push(0);
        assert_eq!(
            decode_batch(&Bytes::from(tail)),
            Err(CodecError::Trailing { left: 1 })
        );
    }

    #[test]
    fn a_huge_count_is_refused_before_allocating() {
        let mut buf = vec![VERSION, KIND_BATCH];
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        buf.extend_from_slice(&[0; 64]);
        let err = decode_batch(&Bytes::from(buf)).expect_err("too many");
        assert_eq!(
            err,
            CodecError::CountTooLarge {
                section: "inserts",
                count: u32::MAX,
                left: 64,
                min: MIN_MSG,
            }
        );
        assert!(err.to_string().contains("inserts claims 4294967295 rows"));
        // A snapshot checks its counts the same way.
        let mut buf = vec![VERSION, KIND_SNAPSHOT, 0, 0, 0, 0];
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_tables(&Bytes::from(buf)),
            Err(CodecError::CountTooLarge {
                section: "subs",
                ..
            })
        ));
    }

    #[test]
    fn damaged_headers_tags_and_strings_are_named() {
        let good = encoded(&full_batch()).to_vec();
        let mut v = good.clone();
        v[0] = 9;
        assert_eq!(
            decode_batch(&Bytes::from(v)),
            Err(CodecError::Version { found: 9 })
        );
        let mut v = good.clone();
        v[1] = KIND_SNAPSHOT;
        assert!(matches!(
            decode_batch(&Bytes::from(v)),
            Err(CodecError::Kind {
                expected: "batch",
                found: 2
            })
        ));
        // The first row's container: after header, count and id.
        let at = 2 + 4 + 8 + 4;
        let mut v = good.clone();
        v[at] = 0xff;
        assert!(matches!(
            decode_batch(&Bytes::from(v)),
            Err(CodecError::NotUtf8 { section: "inserts", field: "container", offset }) if offset == at
        ));
        // The first row's xid tag: after the container and two i64s.
        let at = at + "queue://q".len() + 16;
        let mut v = good;
        v[at] = 2;
        assert!(matches!(
            decode_batch(&Bytes::from(v)),
            Err(CodecError::BadTag {
                field: "xid",
                tag: 2,
                ..
            })
        ));
    }

    #[test]
    fn a_snapshot_round_trips_and_refuses_repeated_keys() {
        let mut t = Tables::new();
        let mut b = full_batch();
        b.deletes.clear();
        b.xid_cleared.clear();
        b.tx_acks_done.clear();
        b.tx_forgotten.clear();
        b.subs_removed.clear();
        b.producer_seqs_gone.clear();
        t.apply(&b);
        let mut out = Vec::new();
        encode_tables(&t, &mut out);
        let buf = Bytes::from(out);
        let back = decode_tables(&buf).expect("decodes");
        assert_eq!(back, t);
        assert_eq!(back.message_bytes(), t.message_bytes());
        let body = &back.to_loaded().messages[1].msg;
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        assert!(range.contains(&(body.as_ptr() as usize)));
        assert!(matches!(
            decode_batch(&buf),
            Err(CodecError::Kind {
                expected: "batch",
                found: KIND_SNAPSHOT
            })
        ));
        for n in 0..buf.len() {
            assert!(decode_tables(&buf.slice(..n)).is_err(), "{n}");
        }

        // Two decisions for one transaction: damage, not a table.
        let mut v = vec![VERSION, KIND_SNAPSHOT];
        for _ in 0..5 {
            v.extend_from_slice(&0u32.to_le_bytes());
        }
        v.extend_from_slice(&2u32.to_le_bytes());
        v.extend_from_slice(&7i64.to_le_bytes());
        v.extend_from_slice(&7i64.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            decode_tables(&Bytes::from(v)),
            Err(CodecError::Duplicate {
                section: "tx_decided"
            })
        );
    }
}
