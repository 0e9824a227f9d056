//! Loopback ports for brokers that are started, killed and restarted on the
//! same address (the tests' and `bench`'s clusters).

use std::sync::atomic::{AtomicU32, Ordering};

/// First port handed out; the range ends below the kernel's ephemeral range
/// (32768-60999 on Debian) and clear of ZooKeeper's 2181x/2888x/3888x.
const LOW: u32 = 10_000;
const SPAN: u32 = 11_000;

static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A free loopback port that stays usable across a broker's restarts.
///
/// A port picked by binding port 0 and letting go lies in the ephemeral
/// range, where any outgoing connection (the clients of the very broker
/// that is down) may take it before the broker binds it again, and the
/// restart fails. Ports below that range are taken only by explicit binds.
/// A counter (seeded by the process id) keeps one process's picks apart;
/// the bind check skips ports that something else listens on.
pub fn stable_loopback_port() -> std::io::Result<u16> {
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(97) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port in {LOW}..{}", LOW + SPAN),
    ))
}
