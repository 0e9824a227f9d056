//! `bench --drain`: consumers only. Measures how fast a broker hands out a
//! backlog that is already there (in memory, or paged out to its spool):
//! every MESSAGE counts, acknowledged as the load consumers do (client
//! mode, one ACK per half prefetch), until `--idle-timeout` passes with
//! nothing new.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::stomp::Conn;
use crate::{destination_name, is_timeout, write_acks, Args};

pub fn run(args: &Args, brokers: Vec<String>) -> Result<()> {
    let consumers = args.consumers.max(1);
    let consumed = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let last_ns = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..consumers)
        .map(|i| {
            let (a, b) = (args.clone(), brokers.clone());
            let (c, by, last) = (consumed.clone(), bytes.clone(), last_ns.clone());
            std::thread::spawn(move || drain_one(i, &a, &b, &c, &by, &last, t0))
        })
        .collect();
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("consumer failed: {e:#}"),
            Err(_) => bail!("consumer panicked"),
        }
    }
    let n = consumed.load(Ordering::SeqCst);
    let secs = Duration::from_nanos(last_ns.load(Ordering::SeqCst)).as_secs_f64();
    let mib = bytes.load(Ordering::SeqCst) as f64 / (1024.0 * 1024.0);
    let rate = if secs > 0.0 { n as f64 / secs } else { 0.0 };
    println!(
        "bench: drained {n} messages ({mib:.0} MiB) from {} with {consumers} consumers in {secs:.2} s: {rate:.0} msg/s, {:.1} MiB/s",
        args.destination,
        if secs > 0.0 { mib / secs } else { 0.0 }
    );
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(
            out.join("summary.json"),
            serde_json::to_string_pretty(&serde_json::json!({
                "drain": true,
                "consumers": consumers,
                "destination": args.destination,
                "messages": n,
                "mib": mib,
                "seconds": secs,
                "drain_msgs_per_sec": rate,
            }))?,
        )?;
    }
    Ok(())
}

fn drain_one(
    i: usize,
    a: &Args,
    brokers: &[String],
    consumed: &AtomicU64,
    bytes: &AtomicU64,
    last_ns: &AtomicU64,
    t0: Instant,
) -> Result<()> {
    let login = a.login.as_deref().map(|l| (l, a.passcode.as_str()));
    let (mut conn, _) = Conn::connect(brokers, i, login, a.vhost.as_deref(), None)?;
    for k in 0..a.destinations {
        let _ = write!(
            conn.wbuf,
            "SUBSCRIBE\nid:drain-{i}-{k}\ndestination:{}\nack:client\nactivemq.prefetchSize:{}\n\n\0",
            destination_name(&a.destination, a.destinations, k as u64),
            a.prefetch
        );
    }
    conn.flush()?;
    conn.set_read_timeout(Some(Duration::from_millis(200)))?;
    let ack_every = (a.prefetch / 2).max(1) as u64;
    let mut unacked = 0;
    let mut last: std::collections::BTreeMap<String, String> = Default::default();
    let mut last_progress = Instant::now();
    loop {
        let f = match conn.read_frame() {
            Ok(f) => f,
            Err(e) => {
                if !is_timeout(&e) {
                    return Err(e);
                }
                if last_progress.elapsed() > Duration::from_secs(a.idle_timeout) {
                    write_acks(&mut conn.wbuf, &mut last);
                    conn.wbuf
                        .extend_from_slice(b"DISCONNECT\nreceipt:bye\n\n\0");
                    let _ = conn.flush();
                    return Ok(());
                }
                continue;
            }
        };
        match f.command.as_str() {
            "MESSAGE" => {
                consumed.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(f.body.len() as u64, Ordering::Relaxed);
                last_ns.fetch_max(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                last_progress = Instant::now();
                if let (Some(sub), Some(ack)) = (f.header_str("subscription"), f.header_str("ack"))
                {
                    last.insert(sub.to_string(), ack.to_string());
                }
                unacked += 1;
                if unacked >= ack_every {
                    write_acks(&mut conn.wbuf, &mut last);
                    conn.flush()?;
                    unacked = 0;
                }
            }
            "ERROR" => bail!("broker error: {:?}", f.header_str("message")),
            _ => {}
        }
    }
}
