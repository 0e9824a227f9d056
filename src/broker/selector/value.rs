//! The values a selector computes with, and how two of them compare.
//!
//! JMS has more numeric types (byte, short, int, long, float, double);
//! every comparison and every arithmetic operation promotes them to long
//! or double anyway, so two are enough here.

use std::borrow::Cow;
use std::cmp::Ordering;

/// A message field as a selector sees it. `None` in its place is SQL's
/// NULL: the field is absent.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Bool(bool),
    Long(i64),
    Double(f64),
    /// A string the protocol typed as such (a JMS string property or
    /// header, a string literal).
    Str(Cow<'a, str>),
    /// A string from a protocol whose fields carry no type (STOMP headers):
    /// it compares as a number, or a boolean, when the other side is one
    /// (see the module documentation of `selector`).
    Text(Cow<'a, str>),
}

/// A number after promotion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Long(i64),
    Double(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::Long(l) => l as f64,
            Num::Double(d) => d,
        }
    }

    pub fn into_value<'a>(self) -> Value<'a> {
        match self {
            Num::Long(l) => Value::Long(l),
            Num::Double(d) => Value::Double(d),
        }
    }

    /// Long with long stays exact; anything with a double is a double.
    pub fn cmp(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Long(a), Num::Long(b)) => Some(a.cmp(&b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }

    pub fn neg(self) -> Num {
        match self {
            // Java's long arithmetic wraps; so does ActiveMQ's.
            Num::Long(l) => Num::Long(l.wrapping_neg()),
            Num::Double(d) => Num::Double(-d),
        }
    }

    /// None where Java would throw: integer division by zero.
    pub fn arith(self, op: ArithOp, other: Num) -> Option<Num> {
        match (self, other) {
            (Num::Long(_), Num::Long(0)) if matches!(op, ArithOp::Div | ArithOp::Rem) => None,
            (Num::Long(a), Num::Long(b)) => Some(Num::Long(match op {
                ArithOp::Add => a.wrapping_add(b),
                ArithOp::Sub => a.wrapping_sub(b),
                ArithOp::Mul => a.wrapping_mul(b),
                ArithOp::Div => a.wrapping_div(b),
                ArithOp::Rem => a.wrapping_rem(b),
            })),
            (a, b) => {
                let (a, b) = (a.as_f64(), b.as_f64());
                Some(Num::Double(match op {
                    ArithOp::Add => a + b,
                    ArithOp::Sub => a - b,
                    ArithOp::Mul => a * b,
                    ArithOp::Div => a / b,
                    ArithOp::Rem => a % b,
                }))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// Reads untyped text as a number: a long if it is one, else a double.
fn parse_num(s: &str) -> Option<Num> {
    if let Ok(l) = s.parse::<i64>() {
        return Some(Num::Long(l));
    }
    // Rust also reads "inf" and "NaN"; a header holding those is as good a
    // double as Java's "Infinity", and harmless.
    s.parse::<f64>().ok().map(Num::Double)
}

fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

impl<'a> Value<'a> {
    /// The value as a number for arithmetic; untyped text converts.
    pub fn num(&self) -> Option<Num> {
        match self {
            Value::Long(l) => Some(Num::Long(*l)),
            Value::Double(d) => Some(Num::Double(*d)),
            Value::Text(t) => parse_num(t),
            Value::Bool(_) | Value::Str(_) => None,
        }
    }

    /// The value where a boolean is expected (a bare identifier as a
    /// condition): a non-boolean is false, as in ActiveMQ.
    pub fn truth(&self) -> bool {
        match self {
            Value::Bool(b) => *b,
            Value::Text(t) => parse_bool(t).unwrap_or(false),
            _ => false,
        }
    }

    /// The string for LIKE and IN; None for numbers and booleans.
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// Borrows a value without copying its string.
    pub fn reborrow(&self) -> Value<'_> {
        match self {
            Value::Bool(b) => Value::Bool(*b),
            Value::Long(l) => Value::Long(*l),
            Value::Double(d) => Value::Double(*d),
            Value::Str(s) => Value::Str(Cow::Borrowed(s)),
            Value::Text(s) => Value::Text(Cow::Borrowed(s)),
        }
    }
}

/// How `a` relates to `b`, or None when they are not alike (a string and
/// a number, say): the comparison is then false, as JMS 1.1 §3.8.1.2
/// says and ActiveMQ does. Untyped text takes the type of the other side
/// when it reads as one.
pub fn compare(a: &Value<'_>, b: &Value<'_>) -> Option<Ordering> {
    use Value::*;
    match (a, b) {
        (Long(_) | Double(_), Long(_) | Double(_) | Text(_)) | (Text(_), Long(_) | Double(_)) => {
            a.num()?.cmp(b.num()?)
        }
        (Str(x) | Text(x), Str(y) | Text(y)) => Some(x.as_ref().cmp(y.as_ref())),
        (Bool(x), Bool(y)) => Some(x.cmp(y)),
        (Bool(x), Text(t)) => Some(x.cmp(&parse_bool(t)?)),
        (Text(t), Bool(y)) => Some(parse_bool(t)?.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value<'_> {
        Value::Text(Cow::Borrowed(s))
    }

    #[test]
    fn long_and_double_promote() {
        assert_eq!(
            compare(&Value::Long(2), &Value::Double(2.0)),
            Some(Ordering::Equal)
        );
        assert_eq!(
            compare(&Value::Long(2), &Value::Double(2.5)),
            Some(Ordering::Less)
        );
        // Exact for longs that a double cannot hold.
        assert_eq!(
            compare(&Value::Long(i64::MAX), &Value::Long(i64::MAX - 1)),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn unlike_types_do_not_compare() {
        assert_eq!(compare(&Value::Str("1".into()), &Value::Long(1)), None);
        assert_eq!(compare(&Value::Bool(true), &Value::Long(1)), None);
        assert_eq!(compare(&Value::Double(f64::NAN), &Value::Long(1)), None);
    }

    #[test]
    fn untyped_text_takes_the_other_sides_type() {
        assert_eq!(
            compare(&text("10"), &Value::Long(5)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare(&text("2.5"), &Value::Long(2)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare(&text("TRUE"), &Value::Bool(true)),
            Some(Ordering::Equal)
        );
        assert_eq!(compare(&text("ten"), &Value::Long(10)), None);
        assert_eq!(
            compare(&text("10"), &Value::Str("10".into())),
            Some(Ordering::Equal)
        );
        // Two strings compare as strings, digits or not.
        assert_eq!(compare(&text("10"), &text("9")), Some(Ordering::Less));
    }

    #[test]
    fn integer_arithmetic_wraps_and_division_by_zero_is_unknown() {
        let (a, b) = (Num::Long(i64::MAX), Num::Long(1));
        assert_eq!(a.arith(ArithOp::Add, b), Some(Num::Long(i64::MIN)));
        assert_eq!(
            Num::Long(7).arith(ArithOp::Div, Num::Long(2)),
            Some(Num::Long(3))
        );
        assert_eq!(Num::Long(7).arith(ArithOp::Rem, Num::Long(0)), None);
        assert_eq!(Num::Long(7).arith(ArithOp::Div, Num::Long(0)), None);
        assert_eq!(
            Num::Long(i64::MIN).arith(ArithOp::Div, Num::Long(-1)),
            Some(Num::Long(i64::MIN))
        );
        assert_eq!(
            Num::Long(i64::MIN).arith(ArithOp::Rem, Num::Long(-1)),
            Some(Num::Long(0))
        );
        assert_eq!(
            Num::Long(1).arith(ArithOp::Div, Num::Double(0.0)),
            Some(Num::Double(f64::INFINITY))
        );
    }
}
