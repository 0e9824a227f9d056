//! Destination names and their owner shard.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// The longest name ActiveMQ's JDBC schema can hold: `CONTAINER
/// varchar(250)` holds `queue://NAME` / `topic://NAME` (8 bytes before the
/// name). Every mode keeps it, so a broker can move between modes.
pub const MAX_NAME_BYTES: usize = 242;

/// Names under these prefixes are the broker's own: temporary destinations
/// (`$temp:` and the client's generated name, see `broker::temporary`) and
/// the announcements of them. No client names one directly, so none can
/// read another connection's temporary queue or forge an announcement.
pub const TEMPORARY_PREFIX: &str = "$temp:";
pub const ADVISORY_PREFIX: &str = "$advisory:";

/// The longest client id and durable subscription name (`ACTIVEMQ_ACKS`'s
/// `CLIENT_ID` and `SUB_NAME` are `varchar(250)`).
pub const MAX_SUB_NAME_BYTES: usize = 250;

/// Why a client id or durable subscription name cannot be used, if it
/// cannot: too long for its column, or with a control character. Both are
/// stored as text in the database modes, where PostgreSQL refuses a NUL
/// for good (a batch carrying it would never commit); the other control
/// characters are refused with it, as in destination names.
pub fn sub_name_problem(name: &str) -> Option<String> {
    if name.len() > MAX_SUB_NAME_BYTES {
        Some(format!("is longer than {MAX_SUB_NAME_BYTES} bytes"))
    } else if name.chars().any(char::is_control) {
        Some("contains a control character".to_string())
    } else {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    Queue(Arc<str>),
    Topic(Arc<str>),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DestinationError {
    #[error("destination '{0}' must start with /queue/ or /topic/")]
    UnknownKind(String),
    #[error("destination '{0}' has an empty name")]
    Empty(String),
    #[error("destination name is longer than {MAX_NAME_BYTES} bytes")]
    TooLong,
    #[error("destination '{0}' contains a control character or whitespace")]
    BadCharacter(String),
    #[error("destination '{0}': names starting with '$temp:' or '$advisory:' are reserved for the broker")]
    Reserved(String),
}

impl Destination {
    /// Parses the STOMP form used by ActiveMQ: `/queue/NAME` or `/topic/NAME`.
    pub fn parse(s: &str) -> Result<Destination, DestinationError> {
        let (queue, name) = if let Some(n) = s.strip_prefix("/queue/") {
            (true, n)
        } else if let Some(n) = s.strip_prefix("/topic/") {
            (false, n)
        } else {
            return Err(DestinationError::UnknownKind(short(s)));
        };
        if name.is_empty() {
            return Err(DestinationError::Empty(short(s)));
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(DestinationError::TooLong);
        }
        if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(DestinationError::BadCharacter(short(s)));
        }
        if name.starts_with(TEMPORARY_PREFIX) || name.starts_with(ADVISORY_PREFIX) {
            return Err(DestinationError::Reserved(short(s)));
        }
        Ok(if queue {
            Destination::Queue(name.into())
        } else {
            Destination::Topic(name.into())
        })
    }

    pub fn queue(name: &str) -> Destination {
        Destination::Queue(name.into())
    }

    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(n) | Destination::Topic(n) => n,
        }
    }

    pub fn is_topic(&self) -> bool {
        matches!(self, Destination::Topic(_))
    }

    /// A temporary queue or topic named by its client as `client_name`
    /// (see [`TEMPORARY_PREFIX`]).
    pub fn temporary(client_name: &str, topic: bool) -> Destination {
        let name: Arc<str> = format!("{TEMPORARY_PREFIX}{client_name}").into();
        if topic {
            Destination::Topic(name)
        } else {
            Destination::Queue(name)
        }
    }

    /// A temporary destination as STOMP (and ActiveMQ's mapping of
    /// JMSReplyTo) writes it: `/temp-queue/NAME` or `/temp-topic/NAME`,
    /// NAME the client's generated name. None for any other form.
    pub fn parse_temporary(s: &str) -> Option<Result<Destination, DestinationError>> {
        let (topic, name) = match (
            s.strip_prefix("/temp-queue/"),
            s.strip_prefix("/temp-topic/"),
        ) {
            (Some(n), _) => (false, n),
            (_, Some(n)) => (true, n),
            _ => return None,
        };
        Some(if name.is_empty() {
            Err(DestinationError::Empty(short(s)))
        } else if name.len() + TEMPORARY_PREFIX.len() > MAX_NAME_BYTES {
            Err(DestinationError::TooLong)
        } else if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            Err(DestinationError::BadCharacter(short(s)))
        } else {
            Ok(Destination::temporary(name, topic))
        })
    }

    pub fn is_temporary(&self) -> bool {
        self.name().starts_with(TEMPORARY_PREFIX)
    }

    /// A temporary destination's name as its client knows it.
    pub fn client_name(&self) -> &str {
        self.name()
            .strip_prefix(TEMPORARY_PREFIX)
            .unwrap_or(self.name())
    }

    /// The shard that owns this destination: a pure function of the name, so
    /// every shard computes the same routing without shared tables.
    pub fn owner(&self, shards: usize) -> usize {
        // FNV-1a: stable across builds and platforms, unlike std's SipHash keys.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let kind = if self.is_topic() { b't' } else { b'q' };
        for &b in std::iter::once(&kind).chain(self.name().as_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % shards as u64) as usize
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Queue(n) => write!(f, "/queue/{n}"),
            Destination::Topic(n) => write!(f, "/topic/{n}"),
        }
    }
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The broker's destination for a stored one (what recovery and the
/// database store's takeover read).
impl From<&crate::store::StoredDestination> for Destination {
    fn from(d: &crate::store::StoredDestination) -> Destination {
        match d.topic {
            true => Destination::Topic(d.name.clone()),
            false => Destination::Queue(d.name.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_names_are_bounded_and_printable() {
        use super::{sub_name_problem, MAX_SUB_NAME_BYTES};
        assert_eq!(sub_name_problem("client-1"), None);
        assert_eq!(sub_name_problem(&"é".repeat(MAX_SUB_NAME_BYTES / 2)), None);
        assert!(sub_name_problem(&"c".repeat(MAX_SUB_NAME_BYTES + 1))
            .unwrap()
            .contains("longer"));
        for bad in ["a\u{0}b", "a\nb", "\u{7f}"] {
            assert!(
                sub_name_problem(bad).unwrap().contains("control"),
                "{bad:?}"
            );
        }
    }

    use super::*;

    #[test]
    fn parses_queue_and_topic_and_round_trips() {
        let q = Destination::parse("/queue/orders").unwrap();
        assert_eq!(q, Destination::queue("orders"));
        assert_eq!(q.to_string(), "/queue/orders");
        assert!(Destination::parse("/topic/prices").unwrap().is_topic());
    }

    #[test]
    fn rejects_bad_names() {
        assert!(matches!(
            Destination::parse("orders"),
            Err(DestinationError::UnknownKind(_))
        ));
        assert!(matches!(
            Destination::parse("/queue/"),
            Err(DestinationError::Empty(_))
        ));
        assert!(matches!(
            Destination::parse("/queue/a b"),
            Err(DestinationError::BadCharacter(_))
        ));
        // `queue://` + the name must fit ActiveMQ's CONTAINER varchar(250).
        let longest = format!("/queue/{}", "x".repeat(242));
        assert!(Destination::parse(&longest).is_ok());
        let long = format!("/queue/{}", "x".repeat(243));
        assert_eq!(Destination::parse(&long), Err(DestinationError::TooLong));
    }

    #[test]
    fn owner_is_stable_and_in_range() {
        let d = Destination::queue("a");
        for n in 1..8 {
            assert!(d.owner(n) < n);
            assert_eq!(d.owner(n), d.owner(n));
        }
        assert_eq!(d.owner(1), 0);
    }

    #[test]
    fn temporary_names_are_the_brokers_own() {
        let t = Destination::parse_temporary("/temp-queue/ID:c-1:1")
            .unwrap()
            .unwrap();
        assert!(t.is_temporary() && !t.is_topic());
        assert_eq!(t.client_name(), "ID:c-1:1");
        assert!(Destination::parse_temporary("/temp-topic/x")
            .unwrap()
            .unwrap()
            .is_topic());
        assert!(Destination::parse_temporary("/queue/x").is_none());
        assert!(Destination::parse_temporary("/temp-queue/")
            .unwrap()
            .is_err());
        // Nobody names one, or the announcements, directly.
        assert!(matches!(
            Destination::parse("/queue/$temp:ID:c-1:1"),
            Err(DestinationError::Reserved(_))
        ));
        assert!(matches!(
            Destination::parse("/topic/$advisory:temporary-destinations"),
            Err(DestinationError::Reserved(_))
        ));
    }
}
