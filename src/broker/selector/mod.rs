//! JMS message selectors: the SQL-92 subset of JMS 1.1 §3.8 as ActiveMQ
//! implements it. A consumer names a condition on message headers and
//! properties (`JMSPriority > 4 AND region IN ('eu', 'us')`); it receives
//! only the messages for which the condition is TRUE.
//!
//! - Three-valued logic: a missing property is NULL, any comparison or
//!   arithmetic with NULL is UNKNOWN, and UNKNOWN does not match (nor does
//!   `NOT` of it).
//! - Numbers are longs or doubles; a long meets a double as a double.
//!   Comparing values of unlike types (a string with a number) is false,
//!   and `<>` is `NOT =`, so it is true there, as in ActiveMQ. Strings
//!   and booleans compare only with `=` and `<>`; the parser refuses
//!   what can never work (`name > 'a'`, `x = NULL`, `1 + TRUE`).
//! - Keywords in any case; identifiers are case-sensitive. `JMSPriority`,
//!   `JMSTimestamp`, `JMSExpiration`, `JMSDeliveryMode` (`'PERSISTENT'` or
//!   `'NON_PERSISTENT'`), `JMSMessageID`, `JMSCorrelationID`, `JMSType`,
//!   `JMSReplyTo`, `JMSDestination`, `JMSRedelivered` and
//!   `JMSXDeliveryCount` are the message's headers; any other identifier
//!   is a property.
//! - ActiveMQ's extras: `%` (remainder), `--` and `/* */` comments,
//!   hexadecimal (`0x1F`) and octal (`017`) literals, and the
//!   `convert_string_expressions:` prefix (string properties compare as
//!   numbers, see below). XPATH selectors are not supported.
//! - `NOT` binds below comparisons, as in SQL and the JMS specification
//!   (ActiveMQ's grammar binds it tighter; see `parser`).
//!
//! ## STOMP headers and numbers
//!
//! STOMP headers carry no type, and ActiveMQ maps them to string
//! properties, so there `price > 5` never matches a message sent with
//! `price:10` unless the selector starts with
//! `convert_string_expressions:`. Brokk instead takes a STOMP header's
//! text as a number when the other operand is a number (`price > 5`,
//! `price = 10`, `price * 2 > qty`), and as a boolean when it is TRUE or
//! FALSE: that is what STOMP users mean and it costs nothing when the
//! text is not numeric (the comparison is false, as for unlike types).
//! Compared with a string (`price = '10'`) a header stays a string. Typed
//! properties (an OpenWire client's) keep JMS's rules unless the selector
//! has ActiveMQ's prefix. [`Value::Text`] is how a protocol says "untyped".
//!
//! ## Bounds
//!
//! A selector is at most [`MAX_SELECTOR_BYTES`] long and nests at most
//! [`parser::MAX_NESTING`] parentheses or prefix operators deep, so that
//! neither parsing nor evaluating can run out of stack; no input makes the
//! parser or the evaluator panic (`fuzz/fuzz_targets/selector.rs`).

mod ast;
mod eval;
mod lexer;
mod like;
mod parser;
mod subject;
mod value;

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

pub use subject::{Candidate, JmsHeader, SelectorSubject};
pub use value::Value;

/// The longest selector accepted: ActiveMQ sets no limit, but a selector
/// longer than a few lines is a mistake, and the bound keeps parsing cheap.
pub const MAX_SELECTOR_BYTES: usize = 4096;

/// The longest selector a durable subscription can keep:
/// `ACTIVEMQ_ACKS.SELECTOR` is a `varchar(250)`, and every store mode
/// keeps the same bound so that a broker can move between them.
pub const MAX_DURABLE_SELECTOR_BYTES: usize = 250;

/// ActiveMQ's opt-in to comparing string properties as numbers.
const CONVERT_PREFIX: &str = "convert_string_expressions:";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SelectorError {
    #[error("the selector is {len} bytes long; at most {MAX_SELECTOR_BYTES} are accepted")]
    TooLong { len: usize },
    /// `position` counts characters from 1.
    #[error("invalid selector at position {position}: {message}")]
    Syntax { position: usize, message: String },
}

/// A parsed selector, cheap to clone and share between the consumers and
/// subscriptions that use it.
#[derive(Clone)]
pub struct Selector(Arc<Compiled>);

struct Compiled {
    text: Box<str>,
    expr: ast::Expr,
    convert_strings: bool,
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        if text.len() > MAX_SELECTOR_BYTES {
            return Err(SelectorError::TooLong { len: text.len() });
        }
        // A durable subscription's selector is stored as text, and
        // PostgreSQL refuses a NUL in text for good; no selector needs one.
        if let Some(at) = text.find('\0') {
            return Err(SelectorError::Syntax {
                position: text[..at].chars().count() + 1,
                message: "a NUL character is not allowed".to_string(),
            });
        }
        let (body, convert_strings, offset) = match text.strip_prefix(CONVERT_PREFIX) {
            Some(rest) => (rest, true, CONVERT_PREFIX.len()),
            None => (text, false, 0),
        };
        let expr = parser::parse(body).map_err(|f| {
            let at = (offset + f.at).min(text.len());
            SelectorError::Syntax {
                position: text.get(..at).map_or(at, |s| s.chars().count()) + 1,
                message: f.message,
            }
        })?;
        Ok(Selector(Arc::new(Compiled {
            text: text.into(),
            expr,
            convert_strings,
        })))
    }

    /// The selector as the client wrote it.
    pub fn text(&self) -> &str {
        &self.0.text
    }

    /// True only if the condition is TRUE for `subject` (not FALSE, not
    /// UNKNOWN).
    pub fn matches(&self, subject: &dyn SelectorSubject) -> bool {
        if self.0.convert_strings {
            eval::truth(&self.0.expr, &Untyped(subject)) == Some(true)
        } else {
            eval::truth(&self.0.expr, subject) == Some(true)
        }
    }
}

/// Whether `selector` lets `subject` through; no selector lets everything
/// through.
pub fn admits(selector: Option<&Selector>, subject: &dyn SelectorSubject) -> bool {
    selector.is_none_or(|s| s.matches(subject))
}

impl PartialEq for Selector {
    fn eq(&self, other: &Selector) -> bool {
        self.text() == other.text()
    }
}

impl Eq for Selector {}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({:?})", self.text())
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// `convert_string_expressions:`: every string the subject gives is
/// treated as untyped text.
struct Untyped<'a>(&'a dyn SelectorSubject);

fn untyped(v: Value<'_>) -> Value<'_> {
    match v {
        Value::Str(s) => Value::Text(s),
        v => v,
    }
}

impl SelectorSubject for Untyped<'_> {
    fn property(&self, name: &str) -> Option<Value<'_>> {
        self.0.property(name).map(untyped)
    }

    fn header(&self, header: JmsHeader) -> Option<Value<'_>> {
        self.0.header(header).map(untyped)
    }
}

#[cfg(test)]
mod tests;
