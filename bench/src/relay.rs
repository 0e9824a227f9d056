//! A TCP relay that holds every byte back a fixed time in each direction:
//! `--db-rtt-us` puts it between the brokers and the database, as if the
//! database ran on another host (the kernel here has no `netem`). Each
//! direction of each connection is a reader thread and a writer thread;
//! the writer sleeps until a chunk's time has come, so chunks keep their
//! order and spacing. A close travels the same way, after the bytes before
//! it: a SIGKILLed broker's session ends at the database one delay later,
//! as it would across a network.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Listens on a loopback port (returned) and relays each connection to
/// `upstream`, `one_way` late in each direction.
pub fn start(upstream: SocketAddr, one_way: Duration) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen for the relay")?;
    let port = listener.local_addr()?.port();
    thread::Builder::new()
        .name("db-relay".into())
        .spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { continue };
                let Ok(up) = TcpStream::connect(upstream) else {
                    // Refused upstream: the client sees its connection close.
                    continue;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                if let (Ok(d2), Ok(u2)) = (down.try_clone(), up.try_clone()) {
                    pipe(down, u2, one_way);
                    pipe(up, d2, one_way);
                }
            }
        })
        .context("cannot start the relay")?;
    Ok(port)
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` ends the writer once it sent what came before.
    });
    thread::spawn(move || {
        for (at, data) in rx {
            let now = Instant::now();
            if at > now {
                thread::sleep(at - now);
            }
            if to.write_all(&data).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order_and_late_and_a_close_passes_through() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = echo.local_addr().unwrap();
        thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => s.write_all(&buf[..n]).unwrap(),
                }
            }
        });
        let port = start(addr, Duration::from_millis(20)).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let sent = Instant::now();
        c.write_all(b"hello").unwrap();
        c.write_all(b" world").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < 11 {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got, b"hello world");
        // Two delays: there and back (a lower bound, never an upper one).
        assert!(sent.elapsed() >= Duration::from_millis(40));
        c.shutdown(Shutdown::Write).unwrap();
        let n = c.read(&mut buf).unwrap();
        assert_eq!(n, 0, "the echo server's close comes back");
    }
}
