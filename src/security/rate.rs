//! `limits.connections_per_ip_per_sec`: a cap on new connections from one
//! source address, so one host cannot churn connections (and argon2
//! verifications, TLS handshakes) at the cost of everyone else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Addresses tracked before old windows are swept out.
const TRACKED_MAX: usize = 16 * 1024;

/// Fixed one-second windows per source address, shared by every shard:
/// SO_REUSEPORT spreads one host's connections over all of them, so a
/// per-shard count would allow `shards` times the limit. One short lock per
/// accepted connection, never on the message path.
pub struct ConnectionRate {
    per_sec: u32,
    started: Instant,
    windows: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl ConnectionRate {
    /// `per_sec` 0: unlimited.
    pub fn new(per_sec: u32) -> ConnectionRate {
        ConnectionRate {
            per_sec,
            started: Instant::now(),
            windows: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_limited(&self) -> bool {
        self.per_sec > 0
    }

    /// Counts a new connection from `ip`; false when it is over the limit.
    pub fn admit(&self, ip: IpAddr) -> bool {
        if self.per_sec == 0 {
            return true;
        }
        self.admit_in(ip, self.started.elapsed().as_secs())
    }

    fn admit_in(&self, ip: IpAddr, second: u64) -> bool {
        let ip = source_of(ip);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= TRACKED_MAX {
            windows.retain(|_, (s, _)| *s == second);
            // Still full: that many sources within one second. Forget them
            // rather than scan a full map on every later accept (the cap
            // is then loose for this second, never costly).
            if windows.len() >= TRACKED_MAX {
                windows.clear();
            }
        }
        let w = windows.entry(ip).or_insert((second, 0));
        if w.0 != second {
            *w = (second, 0);
        }
        w.1 += 1;
        w.1 <= self.per_sec
    }
}

/// The source a limit counts: an IPv4 address, or an IPv6 /64 (one host
/// usually holds a whole /64 and could pick a new address per connection).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_limit_within_a_second_is_refused_per_address() {
        let r = ConnectionRate::new(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert!(r.admit_in(a, 7) && r.admit_in(a, 7));
        assert!(!r.admit_in(a, 7));
        assert!(r.admit_in(b, 7));
        assert!(r.admit_in(a, 8));
        assert!(ConnectionRate::new(0).admit(a));
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64_and_a_flood_of_sources_stays_cheap() {
        let r = ConnectionRate::new(1);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other_in_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(r.admit_in(one, 3));
        assert!(!r.admit_in(other_in_64, 3), "same /64");
        assert!(r.admit_in("2001:db8:1:3::1".parse().unwrap(), 3));
        for i in 0..(2 * TRACKED_MAX as u32) {
            r.admit_in(IpAddr::from(i.to_be_bytes()), 4);
        }
        assert!(r.windows.lock().unwrap().len() <= TRACKED_MAX);
    }
}
