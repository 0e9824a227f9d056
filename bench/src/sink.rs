//! `bench sink`: a trivial STOMP endpoint that answers CONNECT and every
//! receipt and delivers nothing. Pointed at it, bench shows its own ceiling:
//! if bench against the sink is not well above bench against a broker, the
//! figures measure bench, not the broker.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use anyhow::{Context, Result};
use brokk::protocol::stomp::{parse, Limits, Parsed, Version};
use bytes::BytesMut;

pub fn run(listen: &str) -> Result<()> {
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    println!("bench sink listening on {}", listener.local_addr()?);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = serve(stream);
        });
    }
    Ok(())
}

fn serve(mut stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let limits = Limits::default();
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut out = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        // Answer everything this read completed with one write.
        while let Some(p) = parse(&mut buf, Version::V1_2, &limits)? {
            let Parsed::Frame(f) = p else { continue };
            match f.command.as_str() {
                "CONNECT" | "STOMP" => {
                    out.extend_from_slice(b"CONNECTED\nversion:1.2\nserver:bench-sink\n\n\0")
                }
                "DISCONNECT" => {
                    if let Some(r) = f.header("receipt") {
                        out.extend_from_slice(b"RECEIPT\nreceipt-id:");
                        out.extend_from_slice(r);
                        out.extend_from_slice(b"\n\n\0");
                    }
                    stream.write_all(&out)?;
                    return Ok(());
                }
                _ => {
                    if let Some(r) = f.header("receipt") {
                        out.extend_from_slice(b"RECEIPT\nreceipt-id:");
                        out.extend_from_slice(r);
                        out.extend_from_slice(b"\n\n\0");
                    }
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
    }
}
