//! The client ports, opened as a takeover begins rather than once it ends.
//!
//! The clients of a master that died reconnect to the new one at once and
//! then, while its ports refuse them, with back-off (ActiveMQ's failover
//! transport: 10 ms, doubling). Listening from the moment the lock, lease
//! or election is won, while the store is read, their connections wait in
//! the kernel's accept queues instead; each shard takes its queue over
//! once it serves (so a client is served the moment the broker is), and
//! no client sleeps out a back-off step it did not need. A standby never
//! listens: a client that picked it would wait for nothing.

use std::net::{SocketAddr, TcpListener};

use anyhow::{Context, Result};

/// The client ports every shard accepts on.
#[derive(Debug, Clone, Copy)]
pub struct ListenAddrs {
    pub stomp: SocketAddr,
    pub stomp_tls: Option<SocketAddr>,
    pub openwire: SocketAddr,
}

/// One shard's listening sockets: one per port, each with an accept queue
/// of its own (SO_REUSEPORT spreads new connections over the shards').
#[derive(Debug)]
pub struct ShardListeners {
    pub stomp: TcpListener,
    pub openwire: TcpListener,
    pub stomp_tls: Option<TcpListener>,
}

/// What the kernel may hold for a listener not yet accepting (as glommio's
/// own listeners; the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 1024;

/// Opens every shard's listeners on `addrs`.
pub fn open(addrs: ListenAddrs, shards: usize) -> Result<Vec<ShardListeners>> {
    (0..shards)
        .map(|_| {
            Ok(ShardListeners {
                stomp: listen(addrs.stomp)
                    .with_context(|| format!("cannot listen for STOMP on {}", addrs.stomp))?,
                openwire: listen(addrs.openwire)
                    .with_context(|| format!("cannot listen for OpenWire on {}", addrs.openwire))?,
                stomp_tls: addrs
                    .stomp_tls
                    .map(|a| {
                        listen(a)
                            .with_context(|| format!("cannot listen for STOMP over TLS on {a}"))
                    })
                    .transpose()?,
            })
        })
        .collect()
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    #[test]
    fn a_client_that_connects_before_the_shard_accepts_is_served_once_it_does() {
        // A port of our own (bound, not listening, as `serve` holds a
        // port-0 address) that the shards' sockets share.
        let hold =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        hold.set_reuse_port(true).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        hold.bind(&any.into()).unwrap();
        let addr = hold.local_addr().unwrap().as_socket().unwrap();
        let addrs = ListenAddrs {
            stomp: addr,
            stomp_tls: None,
            openwire: "127.0.0.1:0".parse().unwrap(),
        };
        let mut shards = open(addrs, 2).unwrap();
        // Connected and written to while nobody accepts (the takeover).
        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(b"CONNECT\n\n\0").unwrap();
        // The shards serve: whichever queue the kernel chose holds it.
        for s in &mut shards {
            s.stomp.set_nonblocking(true).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (mut conn, _) = loop {
            if let Some(c) = shards.iter().find_map(|s| s.stomp.accept().ok()) {
                break c;
            }
            assert!(std::time::Instant::now() < deadline, "never accepted");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        conn.set_nonblocking(false).unwrap();
        let mut got = [0u8; 10];
        conn.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"CONNECT\n\n\0");
    }
}
