//! `[[authorization]]`: per-destination rights by group, as in ActiveMQ's
//! authorizationPlugin, with its wildcards: `.` separates the segments of a
//! name, `*` matches one segment, `>` (last) matches the rest, none or more.
//!
//! Rules (README: Security):
//! - `read` = SUBSCRIBE, `write` = SEND, `admin` = create a destination the
//!   broker does not know yet (the first SEND or SUBSCRIBE to it), as in
//!   ActiveMQ, which checks admin when a destination is added.
//! - Of the entries whose pattern matches a destination, the most specific
//!   decides alone: the one matching literally further to the left; on a
//!   tie, `*` beats `>` at the first difference, and an exact name beats
//!   `name.>`. Equal patterns twice are a config error.
//! - A destination no entry matches: denied (add `/queue/>` and `/topic/>`
//!   entries for defaults). The group `*` means every authenticated user.

use std::collections::HashSet;
use std::sync::RwLock;

use thiserror::Error;

use super::users::UserInfo;
use crate::broker::Destination;
use crate::config::AuthorizationEntry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// SUBSCRIBE (and browse).
    Read,
    /// SEND.
    Write,
    /// Create a destination that does not exist yet.
    Admin,
}

impl Right {
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Admin => "admin",
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthzError {
    #[error("'{0}' must start with /queue/ or /topic/")]
    Kind(String),
    #[error("'{0}' has an empty segment")]
    EmptySegment(String),
    #[error("'{0}': '>' may only be the last segment")]
    RestNotLast(String),
    #[error("'{0}' appears in two entries")]
    Duplicate(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`
    One,
    /// `>`
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    topic: bool,
    segments: Vec<Segment>,
}

impl Pattern {
    fn parse(s: &str) -> Result<Pattern, AuthzError> {
        let (topic, name) = if let Some(n) = s.strip_prefix("/queue/") {
            (false, n)
        } else if let Some(n) = s.strip_prefix("/topic/") {
            (true, n)
        } else {
            return Err(AuthzError::Kind(s.into()));
        };
        let parts: Vec<&str> = name.split('.').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            segments.push(match *p {
                "" => return Err(AuthzError::EmptySegment(s.into())),
                "*" => Segment::One,
                ">" if i + 1 == parts.len() => Segment::Rest,
                ">" => return Err(AuthzError::RestNotLast(s.into())),
                lit => Segment::Literal(lit.into()),
            });
        }
        Ok(Pattern { topic, segments })
    }

    fn matches(&self, dest: &Destination) -> bool {
        if self.topic != dest.is_topic() {
            return false;
        }
        let mut names = dest.name().split('.');
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::One => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if names.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }

    /// Orders matching patterns: greater is more specific (see the module doc).
    /// Compared left to right: literal 3, `*` 2, `>` 1; a pattern that
    /// ends without `>` gets a final 2, so an exact `a` beats `a.>` on `a`.
    fn specificity(&self) -> Vec<u8> {
        let mut ranks: Vec<u8> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 3,
                Segment::One => 2,
                Segment::Rest => 1,
            })
            .collect();
        if self.segments.last() != Some(&Segment::Rest) {
            ranks.push(2);
        }
        ranks
    }
}

#[derive(Debug)]
struct Entry {
    pattern: Pattern,
    read: Vec<String>,
    write: Vec<String>,
    admin: Vec<String>,
}

impl Entry {
    fn groups(&self, right: Right) -> &[String] {
        match right {
            Right::Read => &self.read,
            Right::Write => &self.write,
            Right::Admin => &self.admin,
        }
    }
}

/// What one user may do on one destination: decided once per connection
/// and destination, then looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights {
    pub read: bool,
    pub write: bool,
    pub admin: bool,
}

impl Rights {
    pub fn has(self, right: Right) -> bool {
        match right {
            Right::Read => self.read,
            Right::Write => self.write,
            Right::Admin => self.admin,
        }
    }
}

/// The `[[authorization]]` entries. Shared (read-only) by every shard and
/// the admin server.
#[derive(Debug)]
pub struct Authorizer {
    entries: Vec<Entry>,
}

impl Authorizer {
    /// None when no entries are configured: everyone authenticated may do
    /// everything.
    pub fn from_config(entries: &[AuthorizationEntry]) -> Result<Option<Authorizer>, AuthzError> {
        if entries.is_empty() {
            return Ok(None);
        }
        let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
        for e in entries {
            let pattern = Pattern::parse(&e.destination)?;
            if out.iter().any(|o| o.pattern == pattern) {
                return Err(AuthzError::Duplicate(e.destination.clone()));
            }
            out.push(Entry {
                pattern,
                read: e.read.clone(),
                write: e.write.clone(),
                admin: e.admin.clone(),
            });
        }
        Ok(Some(Authorizer { entries: out }))
    }

    /// Whether `user` has `right` on `dest` (`/queue/x` or `/topic/x`). An
    /// unparsable destination is denied.
    pub fn allows(&self, user: &UserInfo, dest: &str, right: Right) -> bool {
        Destination::parse(dest).is_ok_and(|d| self.rights(user, &d).has(right))
    }

    /// Every right of `user` on `dest`, from the most specific matching entry.
    pub fn rights(&self, user: &UserInfo, dest: &Destination) -> Rights {
        let Some(entry) = self
            .entries
            .iter()
            .filter(|e| e.pattern.matches(dest))
            .max_by(|a, b| a.pattern.specificity().cmp(&b.pattern.specificity()))
        else {
            return Rights::default();
        };
        let member = |right| {
            entry
                .groups(right)
                .iter()
                .any(|g| g == "*" || user.groups.iter().any(|ug| ug == g))
        };
        Rights {
            read: member(Right::Read),
            write: member(Right::Write),
            admin: member(Right::Admin),
        }
    }
}

/// The destinations the broker knows, for the admin right: a first use of
/// anything else creates it. Filled with what recovery restored and the
/// dead-letter queue at start, then by every use an admin was allowed.
/// Kept only with `[[authorization]]` entries; read once per connection and
/// destination, written once per new destination.
#[derive(Debug, Default)]
pub struct KnownDestinations {
    names: RwLock<HashSet<Destination>>,
}

impl KnownDestinations {
    pub fn contains(&self, dest: &Destination) -> bool {
        self.names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(dest)
    }

    pub fn insert(&self, dest: Destination) {
        self.names
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dest);
    }

    /// For the admin server when it deletes a destination.
    pub fn remove(&self, dest: &Destination) {
        self.names
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(dest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dest: &str, read: &[&str], write: &[&str], admin: &[&str]) -> AuthorizationEntry {
        let v = |g: &[&str]| g.iter().map(|s| s.to_string()).collect();
        AuthorizationEntry {
            destination: dest.into(),
            read: v(read),
            write: v(write),
            admin: v(admin),
        }
    }

    fn user(groups: &[&str]) -> UserInfo {
        UserInfo {
            login: "u".into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn wildcards_match_as_in_activemq() {
        let p = |s| Pattern::parse(s).unwrap();
        let d = |s| Destination::parse(s).unwrap();
        assert!(p("/queue/orders.>").matches(&d("/queue/orders.eu.new")));
        assert!(p("/queue/orders.>").matches(&d("/queue/orders")));
        assert!(!p("/queue/orders.>").matches(&d("/queue/ordersx")));
        assert!(!p("/queue/orders.>").matches(&d("/topic/orders.a")));
        assert!(p("/queue/orders.*").matches(&d("/queue/orders.eu")));
        assert!(!p("/queue/orders.*").matches(&d("/queue/orders.eu.new")));
        assert!(!p("/queue/orders.*").matches(&d("/queue/orders")));
        assert!(p("/topic/*.prices").matches(&d("/topic/fx.prices")));
        assert!(p("/queue/>").matches(&d("/queue/anything.at.all")));
        assert_eq!(
            Pattern::parse("/queue/a.>.b"),
            Err(AuthzError::RestNotLast("/queue/a.>.b".into()))
        );
        assert!(Pattern::parse("/queue/a..b").is_err());
        assert!(Pattern::parse("queue/a").is_err());
    }

    #[test]
    fn the_most_specific_entry_decides() {
        let a = Authorizer::from_config(&[
            entry("/queue/>", &["all"], &["all"], &["all"]),
            entry("/queue/orders.>", &["ops"], &["shop"], &[]),
            entry("/queue/orders.*.audit", &["audit"], &[], &[]),
            entry("/queue/orders.eu.audit", &["eu"], &[], &[]),
        ])
        .unwrap()
        .unwrap();
        let all = user(&["all"]);
        assert!(a.allows(&all, "/queue/misc", Right::Admin));
        // The orders entry replaces the catch-all for orders: no union.
        assert!(!a.allows(&all, "/queue/orders.new", Right::Read));
        assert!(a.allows(&user(&["ops"]), "/queue/orders.new", Right::Read));
        assert!(a.allows(&user(&["shop"]), "/queue/orders.new", Right::Write));
        assert!(!a.allows(&user(&["shop"]), "/queue/orders.new", Right::Read));
        assert!(a.allows(&user(&["audit"]), "/queue/orders.us.audit", Right::Read));
        assert!(!a.allows(&user(&["audit"]), "/queue/orders.eu.audit", Right::Read));
        assert!(a.allows(&user(&["eu"]), "/queue/orders.eu.audit", Right::Read));
        let exact = Authorizer::from_config(&[
            entry("/queue/a", &["x"], &[], &[]),
            entry("/queue/a.>", &["y"], &[], &[]),
        ])
        .unwrap()
        .unwrap();
        assert!(exact.allows(&user(&["x"]), "/queue/a", Right::Read));
        assert!(exact.allows(&user(&["y"]), "/queue/a.b", Right::Read));
        // No entry for topics: denied.
        assert!(!a.allows(&all, "/topic/x", Right::Read));
        assert!(!a.allows(&all, "not a destination", Right::Read));
    }

    #[test]
    fn star_group_is_everyone_and_duplicates_are_refused() {
        let a = Authorizer::from_config(&[entry("/topic/>", &["*"], &[], &[])])
            .unwrap()
            .unwrap();
        assert!(a.allows(&user(&[]), "/topic/news", Right::Read));
        assert!(!a.allows(&user(&[]), "/topic/news", Right::Write));
        let e = Authorizer::from_config(&[
            entry("/topic/>", &[], &[], &[]),
            entry("/topic/>", &[], &[], &[]),
        ])
        .unwrap_err();
        assert_eq!(e, AuthzError::Duplicate("/topic/>".into()));
        assert!(Authorizer::from_config(&[]).unwrap().is_none());
    }
}
