//! `--protocol openwire`: producers and consumers over OpenWire, with the
//! same accounting as the STOMP ones (see `main.rs`): sequenced, timestamped
//! messages, a window of outstanding answers per producer, a resend of what
//! was not answered after a failover, batched cumulative acks.
//!
//! The STOMP producer asks a RECEIPT for every SEND. Here a persistent send
//! asks a Response (`response_required`, as ActiveMQ's client does for every
//! persistent send), answered once durable; a non-persistent one is fire and
//! forget as in JMS, with a producer window (`ProducerInfo.window_size`): the
//! broker answers each with a ProducerAck once it has handled it, which is
//! what bench counts as its receipt and what bounds the window.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use brokk::protocol::openwire::commands::{
    AckType, ConsumerId, ConsumerInfo, Destination, KeepAliveInfo, MessageAck, MessageId,
    ProducerId, ProducerInfo,
};
use brokk::protocol::openwire::properties::{unmarshal_value, MapLimits};
use brokk::protocol::openwire::{Command, Message, MessageKind};
use bytes::{BufMut, Bytes, BytesMut};

use crate::accounting;
use crate::openwire::{destination, throwable, Conn};
use crate::producer::{Failure, Link, Sent};
use crate::{destination_name, histogram, is_timeout, Reconnect, Shared};

/// Property names; the broker turns them into string properties, which is
/// what a STOMP consumer sees as the `bench-*` headers.
const P: &[u8] = b"bench-p";
const SEQ: &[u8] = b"bench-seq";
const TS: &[u8] = b"bench-ts";

/// The marshalled property map (ActiveMQ's MarshallingSupport) of one
/// message: three longs. Written into a shared buffer and split off, so a
/// batch of messages shares one allocation.
fn put_props(buf: &mut BytesMut, p: u64, seq: u64, ts: u64) -> Bytes {
    const LONG: u8 = 6;
    if buf.capacity() < 128 {
        buf.reserve(64 * 1024);
    }
    buf.put_i32(3);
    for (name, v) in [(P, p), (SEQ, seq), (TS, ts)] {
        buf.put_u16(name.len() as u16);
        buf.put_slice(name);
        buf.put_u8(LONG);
        buf.put_i64(v as i64);
    }
    buf.split().freeze()
}

/// bench-p, bench-seq and bench-ts from a dispatched message's marshalled
/// properties, read in place (strings as the broker sends them back, longs
/// as bench sent them); other properties are stepped over.
fn bench_props(props: &Bytes) -> Option<(u64, u64, u64)> {
    const LONG: u8 = 6;
    const STRING: u8 = 9;
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = props.get(*at..*at + n)?;
        *at += n;
        Some(s)
    };
    let count = i32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?);
    let (mut p, mut seq, mut ts) = (None, None, None);
    for _ in 0..count.max(0) {
        let len = u16::from_be_bytes(take(&mut at, 2)?.try_into().ok()?) as usize;
        let name = take(&mut at, len)?;
        let slot = match name {
            P => Some(&mut p),
            SEQ => Some(&mut seq),
            TS => Some(&mut ts),
            _ => None,
        };
        let value = match *props.get(at)? {
            STRING => {
                at += 1;
                let len = u16::from_be_bytes(take(&mut at, 2)?.try_into().ok()?) as usize;
                std::str::from_utf8(take(&mut at, len)?).ok()?.parse().ok()
            }
            LONG => {
                at += 1;
                Some(i64::from_be_bytes(take(&mut at, 8)?.try_into().ok()?) as u64)
            }
            _ => {
                let (_, used) = unmarshal_value(&props.slice(at..), MapLimits::MESSAGE).ok()?;
                at += used;
                None
            }
        };
        if let (Some(slot), Some(v)) = (slot, value) {
            *slot = Some(v);
        }
    }
    Some((p?, seq?, ts?))
}

/// Wall-clock milliseconds, JMSTimestamp's unit.
fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// An OpenWire producer: one message command reused for every send (only
/// its command id, sequence, timestamp, properties and, over several
/// queues, destination change), encoded behind the others in one buffer.
pub struct Producer {
    conn: Conn,
    send: Command,
    /// The property maps of a batch of messages share this allocation.
    props: BytesMut,
    destinations: Vec<Destination>,
}

impl Link for Producer {
    fn open(s: &Shared, start: usize) -> Result<(Self, usize)> {
        let a = &s.args;
        let login = a.login.as_deref().map(|l| (l, a.passcode.as_str()));
        let destinations: Vec<Destination> = (0..a.destinations as u64)
            .map(|k| destination(&destination_name(&a.destination, a.destinations, k)))
            .collect();
        let (mut conn, idx) = Conn::connect(&s.brokers, start, login)?;
        let body = Bytes::from(vec![b'x'; a.size]);
        let send = open_producer(&mut conn, &destinations, &body, a.persistent, a.window)?;
        let props = BytesMut::new();
        Ok((
            Producer {
                conn,
                send,
                props,
                destinations,
            },
            idx,
        ))
    }

    fn push(&mut self, _: &Shared, p: usize, seq: u64, ts: u64) -> Result<i32> {
        let id = self.conn.next_id();
        let Command::Message(m) = &mut self.send else {
            unreachable!("the template is a message")
        };
        m.command_id = id;
        m.timestamp = epoch_ms();
        if let Some(mid) = &mut m.message_id {
            // JMS sequences start at 1; a resend keeps its number.
            mid.producer_sequence_id = seq as i64 + 1;
        }
        if self.destinations.len() > 1 {
            let k = (seq % self.destinations.len() as u64) as usize;
            m.destination = Some(self.destinations[k].clone());
        }
        m.marshalled_properties = Some(put_props(&mut self.props, p as u64, seq, ts));
        self.conn.send(&self.send)?;
        Ok(id)
    }

    fn flush(&mut self) -> Result<()> {
        self.conn.flush()
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> Result<()> {
        self.conn.set_read_timeout(t)
    }

    fn answer(
        &mut self,
        in_flight: &VecDeque<Sent>,
        block: bool,
    ) -> Result<Option<usize>, Failure> {
        let c = if block {
            self.conn.read_command().map_err(Failure::Broken)?
        } else {
            match self.conn.try_command() {
                Ok(Some(c)) => c,
                Ok(None) => return Ok(None),
                Err(e) => return Err(Failure::Broken(e)),
            }
        };
        answered(&mut self.conn, c, in_flight)
            .map(Some)
            .map_err(Failure::Fatal)
    }
}

/// ProducerInfo (answered before any send), and the message every send
/// reuses: only its command id, sequence, timestamp and properties change.
fn open_producer(
    conn: &mut Conn,
    destinations: &[Destination],
    body: &Bytes,
    persistent: bool,
    window: usize,
) -> Result<Command> {
    let producer_id = ProducerId {
        connection_id: Some(conn.connection_id.clone()),
        value: 1,
        session_id: 1,
    };
    // One destination: a producer bound to it, as `session.createProducer(q)`;
    // several: an anonymous producer naming each message's.
    let bound = (destinations.len() == 1).then(|| destinations[0].clone());
    let id = conn.next_id();
    conn.send(
        &ProducerInfo {
            command_id: id,
            response_required: true,
            producer_id: Some(producer_id.clone()),
            destination: bound,
            broker_path: None,
            dispatch_async: true,
            // Non-persistent sends are answered by ProducerAcks only when the
            // producer has a window; bench enforces its own (in messages).
            window_size: if persistent {
                0
            } else {
                (window * (body.len() + 2048)).min(i32::MAX as usize) as i32
            },
        }
        .into(),
    )?;
    conn.flush()?;
    conn.await_response(id, Duration::from_secs(10))
        .context("ProducerInfo refused")?;
    let mut m = Message::new(MessageKind::Bytes);
    m.producer_id = Some(producer_id.clone());
    m.destination = Some(destinations[0].clone());
    m.message_id = Some(MessageId {
        text_view: None,
        producer_id: Some(producer_id),
        producer_sequence_id: 0,
        broker_sequence_id: 0,
    });
    m.persistent = persistent;
    m.response_required = persistent;
    m.priority = 4;
    m.content = Some(body.clone());
    Ok(m.into())
}

/// How many of the oldest in-flight messages `c` answers: a Response covers
/// every send up to its correlation id (the broker answers in order), a
/// ProducerAck one non-persistent send (the broker acks each as handled).
fn answered(conn: &mut Conn, c: Command, in_flight: &VecDeque<Sent>) -> Result<usize> {
    Ok(match c {
        Command::Response(r) => in_flight
            .iter()
            .take_while(|m| m.tag <= r.correlation_id)
            .count(),
        Command::ProducerAck(_) => 1.min(in_flight.len()),
        Command::ExceptionResponse(e) => {
            bail!("broker refused a send: {}", throwable(e.exception.as_ref()))
        }
        Command::ConnectionError(e) => {
            bail!("broker error: {}", throwable(e.exception.as_ref()))
        }
        Command::KeepAliveInfo(k) if k.response_required => {
            conn.send(
                &KeepAliveInfo {
                    command_id: 0,
                    response_required: false,
                }
                .into(),
            )?;
            0
        }
        _ => 0,
    })
}

/// One consumer per destination, and what it holds unacknowledged.
struct Sub {
    id: ConsumerId,
    destination: Destination,
    first: Option<MessageId>,
    last: Option<MessageId>,
    count: i32,
}

/// Cumulative Standard acks (first..last) for every consumer holding
/// unacknowledged messages.
fn write_acks(conn: &mut Conn, subs: &mut [Sub]) -> Result<()> {
    for sub in subs.iter_mut().filter(|s| s.count > 0) {
        let ack = MessageAck {
            command_id: conn.next_id(),
            destination: Some(sub.destination.clone()),
            consumer_id: Some(sub.id.clone()),
            ack_type: AckType::Standard as i8,
            first_message_id: sub.first.take(),
            last_message_id: sub.last.take(),
            message_count: std::mem::take(&mut sub.count),
            ..MessageAck::default()
        };
        conn.send(&ack.into())?;
    }
    Ok(())
}

pub fn consumer(i: usize, s: Arc<Shared>, ready: Arc<std::sync::Barrier>) -> Result<()> {
    let a = &s.args;
    let login = a.login.as_deref().map(|l| (l, a.passcode.as_str()));
    let mut hist = histogram();
    let mut broker = i;
    let mut signalled = false;
    let mut last_progress = Instant::now();
    let mut pace = Reconnect::new(a.reconnect_backoff);
    'reconnect: loop {
        let (mut conn, idx) = match Conn::connect(&s.brokers, broker, login) {
            Ok(c) => c,
            Err(e) => {
                if !signalled {
                    ready.wait();
                    return Err(e);
                }
                if last_progress.elapsed() > Duration::from_secs(a.idle_timeout) {
                    break;
                }
                pace.pause();
                continue;
            }
        };
        pace.connected();
        broker = idx;
        let mut subs: Vec<Sub> = Vec::with_capacity(a.destinations);
        let mut ready_id = 0;
        for k in 0..a.destinations {
            let sub = Sub {
                id: ConsumerId {
                    connection_id: Some(conn.connection_id.clone()),
                    session_id: 1,
                    value: k as i64 + 1,
                },
                destination: destination(&destination_name(
                    &a.destination,
                    a.destinations,
                    k as u64,
                )),
                first: None,
                last: None,
                count: 0,
            };
            // Every ConsumerInfo is answered once its subscription is in
            // place; the last one's answer means all are.
            ready_id = conn.next_id();
            conn.send(
                &ConsumerInfo {
                    command_id: ready_id,
                    response_required: true,
                    consumer_id: Some(sub.id.clone()),
                    destination: Some(sub.destination.clone()),
                    prefetch_size: a.prefetch.min(i32::MAX as u32) as i32,
                    maximum_pending_message_limit: 0,
                    dispatch_async: true,
                    ..ConsumerInfo::default()
                }
                .into(),
            )?;
            subs.push(sub);
        }
        if conn.flush().is_err() {
            broker += 1;
            continue;
        }
        conn.set_read_timeout(Some(Duration::from_millis(200)))?;
        let ack_every = (a.prefetch / 2).max(1) as u64;
        let mut unacked = 0u64;
        loop {
            let cmd = match conn.read_command() {
                Ok(c) => c,
                Err(e) => {
                    if !is_timeout(&e) {
                        broker += 1;
                        continue 'reconnect;
                    }
                    if accounting::consumers_may_stop(&s, last_progress) {
                        // Acknowledge what we hold so that leaving does not
                        // hand it to the other consumers as redeliveries.
                        if write_acks(&mut conn, &mut subs).is_ok() && conn.flush().is_ok() {
                            conn.close();
                        }
                        break 'reconnect;
                    }
                    continue;
                }
            };
            match cmd {
                Command::Response(r) if !signalled && r.correlation_id == ready_id => {
                    signalled = true;
                    ready.wait();
                }
                Command::MessageDispatch(d) => {
                    let Some(mut m) = d.message else { continue };
                    let fields = m.marshalled_properties.as_ref().and_then(bench_props);
                    if let Some((p, seq, ts)) = fields {
                        if accounting::delivered(&s, &mut hist, p, seq, ts) {
                            last_progress = Instant::now();
                        }
                    }
                    let k = d.consumer_id.as_ref().map_or(0, |c| c.value - 1);
                    let Some(sub) = subs.get_mut(k.max(0) as usize) else {
                        continue;
                    };
                    if sub.first.is_none() {
                        sub.first = m.message_id.clone();
                    }
                    sub.last = m.message_id.take();
                    sub.count += 1;
                    unacked += 1;
                    if unacked >= ack_every {
                        if write_acks(&mut conn, &mut subs).is_err() || conn.flush().is_err() {
                            continue 'reconnect;
                        }
                        unacked = 0;
                    }
                }
                Command::ExceptionResponse(e) => {
                    bail!("broker refused: {}", throwable(e.exception.as_ref()))
                }
                Command::ConnectionError(e) => {
                    bail!("broker error: {}", throwable(e.exception.as_ref()))
                }
                Command::KeepAliveInfo(k) if k.response_required => {
                    let _ = conn.send(&KeepAliveInfo::default().into());
                }
                _ => {}
            }
        }
    }
    if !signalled {
        ready.wait();
    }
    accounting::finish_consumer(&s, &hist)
}

#[cfg(test)]
mod tests {
    use super::*;
    use brokk::protocol::openwire::properties::map_to_bytes;
    use brokk::protocol::openwire::{PropertyMap, Value};

    #[test]
    fn properties_written_are_read_back() {
        let mut buf = BytesMut::new();
        let b = put_props(&mut buf, 3, 41, 99);
        assert_eq!(bench_props(&b), Some((3, 41, 99)));
        // What the codec reads: the same three longs.
        let map = brokk::protocol::openwire::properties::unmarshal_map(&b, MapLimits::MESSAGE)
            .unwrap()
            .unwrap();
        assert_eq!(map.get("bench-seq"), Some(&Value::Long(41)));
    }

    #[test]
    fn string_properties_as_the_broker_sends_them_are_read() {
        let mut map = PropertyMap::new();
        map.insert("brokk-body".into(), Value::String("bytes".into()));
        map.insert("bench-p".into(), Value::String("7".into()));
        map.insert("bench-seq".into(), Value::String("12345".into()));
        map.insert("bench-ts".into(), Value::String("987654321".into()));
        map.insert("other".into(), Value::Int(5));
        let b = map_to_bytes(&map).unwrap();
        assert_eq!(bench_props(&b), Some((7, 12345, 987654321)));
        map.remove("bench-ts");
        assert_eq!(bench_props(&map_to_bytes(&map).unwrap()), None);
    }
}
