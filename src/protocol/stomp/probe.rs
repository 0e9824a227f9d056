//! Whether a broker serves STOMP at an address: for the tools and tests
//! that wait for a master (bench, the HA tests).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Whether a broker answers a STOMP CONNECT at `addr` (blocking, about
/// 1.5 s at most). A connect alone is not enough: a killed broker's
/// listening sockets outlive it for a moment (io_uring tears its files
/// down after the process is gone) and accept connections nobody answers.
pub fn answers_connect(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
    if s.write_all(b"CONNECT\naccept-version:1.2\nhost:/\n\n\0")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 9];
    let ok = s.read_exact(&mut buf).is_ok() && &buf == b"CONNECTED";
    let _ = s.write_all(b"DISCONNECT\n\n\0");
    ok
}
