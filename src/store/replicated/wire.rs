//! Frames of the replication link and of a node's local copy (the same
//! entry frames go to both, encoded once).
//!
//! A frame: `len: u32 LE` (of kind and body), `kind: u8`, the body,
//! `crc32c: u32 LE` of kind and body. Integers are little-endian; a
//! string is `u32 LE` length then UTF-8.
//!
//! | kind | direction | body |
//! |---|---|---|
//! | HELLO | standby -> master | `epoch u64`, `cluster str`, `node str` |
//! | REFUSE | master -> standby | `reason str` |
//! | SNAPSHOT | master -> standby, and the file `snapshot` | `epoch u64`, `index u64`, the tables (`codec::encode_tables`) |
//! | ENTRY | master -> standby, and the file `log` | `epoch u64`, `index u64`, then batches: `len u32` + `codec::encode_batch` each |
//! | COMMIT | master -> standby (also the heartbeat) | `commit u64` |
//! | ACK | standby -> master | `index u64` (what it holds: in memory, or synced under `quorum_disk`) |
//! | HISTORY | the files `snapshot` and `log`, first | `id u64`: a log is read only after the snapshot of its history |

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::codec::{self, CodecError};
use super::Batch;

pub const HELLO: u8 = 1;
pub const REFUSE: u8 = 2;
pub const SNAPSHOT: u8 = 3;
pub const ENTRY: u8 = 4;
pub const COMMIT: u8 = 5;
pub const ACK: u8 = 6;
pub const HISTORY: u8 = 7;

/// Largest frame accepted (a snapshot is one frame).
pub const MAX_FRAME: usize = 1 << 31;

/// Where a log entry stands: the epoch of the master that made it and its
/// index in the log (one sequence across epochs). Ordered as Raft orders
/// logs: a later epoch wins, then a longer log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Pos {
    pub epoch: u64,
    pub index: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is larger than the limit")]
    TooLarge(usize),
    #[error("frame checksum mismatch")]
    Crc,
    #[error("truncated frame: {0}")]
    Truncated(&'static str),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("bad string in {0}")]
    Utf8(&'static str),
    #[error("batch: {0}")]
    Codec(#[from] CodecError),
}

/// A decoded frame. Bodies are slices of the frame's bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Hello {
        epoch: u64,
        cluster: String,
        node: String,
    },
    Refuse {
        reason: String,
    },
    Snapshot {
        pos: Pos,
        tables: Bytes,
    },
    Entry {
        pos: Pos,
        /// The encoded batches (see [`entry_batches`]).
        batches: Bytes,
    },
    Commit {
        commit: u64,
    },
    Ack {
        index: u64,
    },
    History {
        id: u64,
    },
}

/// Wraps `kind` and `body` into a frame.
fn seal(kind: u8, body: &[&[u8]]) -> Bytes {
    let len = 1 + body.iter().map(|b| b.len()).sum::<usize>();
    let mut out = BytesMut::with_capacity(len + 8);
    out.put_u32_le(len as u32);
    out.put_u8(kind);
    for b in body {
        out.put_slice(b);
    }
    let crc = crc32c::crc32c(&out[4..]);
    out.put_u32_le(crc);
    out.freeze()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn hello(epoch: u64, cluster: &str, node: &str) -> Bytes {
    let mut b = epoch.to_le_bytes().to_vec();
    put_str(&mut b, cluster);
    put_str(&mut b, node);
    seal(HELLO, &[&b])
}

pub fn refuse(reason: &str) -> Bytes {
    let mut b = Vec::new();
    put_str(&mut b, reason);
    seal(REFUSE, &[&b])
}

fn pos_bytes(pos: Pos) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&pos.epoch.to_le_bytes());
    p[8..].copy_from_slice(&pos.index.to_le_bytes());
    p
}

pub fn snapshot(pos: Pos, tables: &[u8]) -> Bytes {
    seal(SNAPSHOT, &[&pos_bytes(pos), tables])
}

/// An entry frame for `batches`, encoded straight into the frame (message
/// bodies are copied once, and the frame is then shared by every standby
/// and the local copy).
pub fn entry(pos: Pos, batches: &[&Batch]) -> Bytes {
    let mut out = Vec::with_capacity(
        4 + 1
            + 16
            + batches
                .iter()
                .map(|b| 4 + 64 + b.bytes() + b.rows() * 48)
                .sum::<usize>()
            + 4,
    );
    out.extend_from_slice(&[0; 4]);
    out.push(ENTRY);
    out.extend_from_slice(&pos_bytes(pos));
    for b in batches {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        codec::encode_batch(b, &mut out);
        let n = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&out[4..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Bytes::from(out)
}

pub fn commit(commit: u64) -> Bytes {
    seal(COMMIT, &[&commit.to_le_bytes()])
}

pub fn ack(index: u64) -> Bytes {
    seal(ACK, &[&index.to_le_bytes()])
}

pub fn history(id: u64) -> Bytes {
    seal(HISTORY, &[&id.to_le_bytes()])
}

/// The batches of an entry's body.
pub fn entry_batches(body: &Bytes) -> Result<Vec<Batch>, WireError> {
    let mut rest = body.clone();
    let mut out = Vec::new();
    while rest.has_remaining() {
        if rest.remaining() < 4 {
            return Err(WireError::Truncated("entry batch length"));
        }
        let n = rest.get_u32_le() as usize;
        if rest.remaining() < n {
            return Err(WireError::Truncated("entry batch"));
        }
        let one = rest.split_to(n);
        out.push(codec::decode_batch(&one)?);
    }
    Ok(out)
}

/// The length of the whole frame starting `head` (its first 4 bytes: the
/// length, the kind and body it counts, and the CRC), checked against the
/// limit.
pub fn frame_len(head: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(head) as usize;
    if len == 0 {
        return Err(WireError::Truncated("empty frame"));
    }
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    Ok(len + 8)
}

fn take_u64(b: &mut Bytes, what: &'static str) -> Result<u64, WireError> {
    if b.remaining() < 8 {
        return Err(WireError::Truncated(what));
    }
    Ok(b.get_u64_le())
}

fn take_str(b: &mut Bytes, what: &'static str) -> Result<String, WireError> {
    if b.remaining() < 4 {
        return Err(WireError::Truncated(what));
    }
    let n = b.get_u32_le() as usize;
    if b.remaining() < n {
        return Err(WireError::Truncated(what));
    }
    String::from_utf8(b.split_to(n).to_vec()).map_err(|_| WireError::Utf8(what))
}

/// Decodes what follows a frame's length: `rest` is kind, body and CRC.
pub fn decode(rest: Bytes) -> Result<Frame, WireError> {
    if rest.len() < 5 {
        return Err(WireError::Truncated("frame"));
    }
    let (body, crc) = rest.split_at(rest.len() - 4);
    let want = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != want {
        return Err(WireError::Crc);
    }
    let kind = body[0];
    let mut b = rest.slice(1..rest.len() - 4);
    let frame = match kind {
        HELLO => Frame::Hello {
            epoch: take_u64(&mut b, "hello epoch")?,
            cluster: take_str(&mut b, "hello cluster")?,
            node: take_str(&mut b, "hello node")?,
        },
        REFUSE => Frame::Refuse {
            reason: take_str(&mut b, "refuse reason")?,
        },
        SNAPSHOT | ENTRY => {
            let pos = Pos {
                epoch: take_u64(&mut b, "position epoch")?,
                index: take_u64(&mut b, "position index")?,
            };
            if kind == SNAPSHOT {
                Frame::Snapshot { pos, tables: b }
            } else {
                Frame::Entry { pos, batches: b }
            }
        }
        COMMIT => Frame::Commit {
            commit: take_u64(&mut b, "commit")?,
        },
        ACK => Frame::Ack {
            index: take_u64(&mut b, "ack")?,
        },
        HISTORY => Frame::History {
            id: take_u64(&mut b, "history")?,
        },
        k => return Err(WireError::Kind(k)),
    };
    Ok(frame)
}

/// Where a file's frames stop being whole, and why.
pub type Torn = (usize, WireError);

/// Splits whole frames off the front of `buf` (a file's bytes): each frame
/// and the offset just past it, until the end or the first frame that is
/// torn or damaged (its offset and why: a crash mid-write leaves a torn
/// tail, which recovery cuts off).
pub fn split_frames(buf: &Bytes) -> (Vec<(Frame, usize)>, Option<Torn>) {
    let mut at = 0;
    let mut out = Vec::new();
    while at < buf.len() {
        if buf.len() - at < 4 {
            return (out, Some((at, WireError::Truncated("length"))));
        }
        let head: [u8; 4] = buf[at..at + 4].try_into().expect("4 bytes");
        let total = match frame_len(head) {
            Ok(n) => n,
            Err(e) => return (out, Some((at, e))),
        };
        if buf.len() - at < total {
            return (out, Some((at, WireError::Truncated("frame"))));
        }
        match decode(buf.slice(at + 4..at + total)) {
            Ok(f) => out.push((f, at + total)),
            Err(e) => return (out, Some((at, e))),
        }
        at += total;
    }
    (out, None)
}

/// Reads one frame from a stream, refusing one over `max` bytes before
/// allocating (a peer not yet known is allowed a small one only): the
/// frame and its bytes as read (an entry goes to the local copy as it
/// came). Deadlines: `wait` for a frame to start, then as long again plus
/// a second per 16 MiB for the rest (a snapshot of a large backlog is one
/// frame, and must not look like a silent peer).
pub async fn read_frame_timed<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    wait: std::time::Duration,
    max: usize,
) -> std::io::Result<(Frame, Bytes)> {
    use tokio::io::AsyncReadExt;
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "silent");
    let mut head = [0u8; 4];
    tokio::time::timeout(wait, r.read_exact(&mut head))
        .await
        .map_err(|_| timed_out())??;
    let total = frame_len(head).map_err(invalid)?;
    if total > max {
        return Err(invalid(WireError::TooLarge(total)));
    }
    let mut raw = BytesMut::zeroed(total);
    raw[..4].copy_from_slice(&head);
    let rest = wait + std::time::Duration::from_secs_f64(total as f64 / (16u64 << 20) as f64);
    tokio::time::timeout(rest, r.read_exact(&mut raw[4..]))
        .await
        .map_err(|_| timed_out())??;
    let raw = raw.freeze();
    let frame = decode(raw.slice(4..)).map_err(invalid)?;
    Ok((frame, raw))
}

fn invalid(e: WireError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(frame: Bytes) -> Frame {
        let (mut v, err) = split_frames(&frame);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(v.len(), 1);
        v.remove(0).0
    }

    #[test]
    fn frames_round_trip() {
        assert_eq!(
            one(hello(7, "c", "n-1")),
            Frame::Hello {
                epoch: 7,
                cluster: "c".into(),
                node: "n-1".into()
            }
        );
        assert_eq!(one(commit(9)), Frame::Commit { commit: 9 });
        assert_eq!(one(ack(3)), Frame::Ack { index: 3 });
        let pos = Pos { epoch: 2, index: 5 };
        let b = Batch {
            deletes: vec![1, 2],
            ..Batch::default()
        };
        match one(entry(pos, &[&b, &b])) {
            Frame::Entry { pos: p, batches } => {
                assert_eq!(p, pos);
                assert_eq!(entry_batches(&batches).unwrap(), vec![b.clone(), b]);
            }
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn a_torn_or_damaged_tail_is_found_and_what_precedes_it_kept() {
        let mut file = BytesMut::new();
        file.extend_from_slice(&commit(1));
        file.extend_from_slice(&commit(2));
        let good = file.len();
        let third = commit(3);
        for cut in 1..third.len() {
            let mut f = file.clone();
            f.extend_from_slice(&third[..cut]);
            let (frames, err) = split_frames(&f.freeze());
            assert_eq!(frames.len(), 2);
            assert_eq!(err.map(|e| e.0), Some(good));
        }
        let mut f = file.clone();
        let mut bad = third.to_vec();
        bad[6] ^= 1;
        f.extend_from_slice(&bad);
        let (frames, err) = split_frames(&f.freeze());
        assert_eq!(frames.len(), 2);
        assert!(matches!(err, Some((at, WireError::Crc)) if at == good));
    }

    #[test]
    fn positions_order_by_epoch_first() {
        let a = Pos {
            epoch: 1,
            index: 100,
        };
        let b = Pos { epoch: 2, index: 3 };
        assert!(b > a);
    }
}
