//! A loopback TCP relay that can go silent: once frozen it neither reads
//! nor writes nor closes anything, on either side, for connections open or
//! new. To the two ends this is a network that drops every packet (no RST,
//! no FIN): their writes sit unanswered, and a close on one side is never
//! seen on the other. A real firewall or cable cut looks the same, without
//! needing one on the test machine.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// How long a relay thread blocks in one read before it looks at the
/// switches again.
const POLL: Duration = Duration::from_millis(20);

pub struct Blackhole {
    pub addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Blackhole {
    /// Relays connections to `127.0.0.1:<port>` `upstream`.
    pub fn start(upstream: SocketAddr) -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (frozen.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let Ok(up) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        for (from, to) in [
                            (down.try_clone().unwrap(), up.try_clone().unwrap()),
                            (up, down),
                        ] {
                            let (f, s) = (f.clone(), s.clone());
                            thread::spawn(move || relay(from, to, &f, &s));
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
                    Err(_) => thread::sleep(POLL),
                }
            }
        });
        Blackhole { addr, frozen, stop }
    }

    /// From now on nothing passes, and nothing is closed.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        // The relays end and their sockets close.
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn relay(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool, stop: &AtomicBool) {
    from.set_read_timeout(Some(POLL)).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        if frozen.load(Ordering::SeqCst) {
            thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Read before the freeze: delivered, as a packet already
                // on the wire would be.
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    if !frozen.load(Ordering::SeqCst) || stop.load(Ordering::SeqCst) {
        let _ = to.shutdown(Shutdown::Write);
    }
}
