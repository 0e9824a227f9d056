//! Evaluation with SQL's three-valued logic: `None` is UNKNOWN (a
//! condition) or NULL (a value). Nothing here allocates unless the
//! subject does (JMSMessageID, JMSDestination), and nothing fails: an
//! operation on values of the wrong type is false or UNKNOWN as JMS and
//! ActiveMQ say.

use std::cmp::Ordering;

use super::ast::{CmpOp, Expr};
use super::subject::SelectorSubject;
use super::value::{compare, Value};

pub fn value<'a>(e: &'a Expr, s: &'a dyn SelectorSubject) -> Option<Value<'a>> {
    match e {
        Expr::Literal(v) => Some(v.reborrow()),
        Expr::Null => None,
        Expr::Property(name) => s.property(name),
        Expr::Header(h) => s.header(*h),
        Expr::Neg(x) => Some(value(x, s)?.num()?.neg().into_value()),
        Expr::Arith(op, a, b) => {
            let a = value(a, s)?.num()?;
            let b = value(b, s)?.num()?;
            Some(a.arith(*op, b)?.into_value())
        }
        _ => truth(e, s).map(Value::Bool),
    }
}

pub fn truth(e: &Expr, s: &dyn SelectorSubject) -> Option<bool> {
    match e {
        Expr::Not(x) => truth(x, s).map(|b| !b),
        Expr::And(all) => junction(all, s, false),
        Expr::Or(all) => junction(all, s, true),
        Expr::Compare(op, a, b) => {
            let a = value(a, s)?;
            let b = value(b, s)?;
            Some(holds(*op, compare(&a, &b)))
        }
        Expr::IsNull { expr, negated } => Some(value(expr, s).is_none() != *negated),
        Expr::Like {
            expr,
            pattern,
            negated,
        } => {
            let v = value(expr, s)?;
            // A non-string is not LIKE anything, so it is NOT LIKE
            // everything (ActiveMQ: NOT applied to false).
            Some(v.text().is_some_and(|t| pattern.matches(t)) != *negated)
        }
        Expr::In {
            expr,
            list,
            negated,
        } => {
            let v = value(expr, s)?;
            // ActiveMQ: IN on a non-string is UNKNOWN, NOT IN too.
            let t = v.text()?;
            Some(list.iter().any(|x| **x == *t) != *negated)
        }
        Expr::Between {
            expr,
            low,
            high,
            negated,
        } => {
            // ActiveMQ's definitions: x >= low AND x <= high, and
            // NOT BETWEEN as x < low OR x > high.
            let x = value(expr, s);
            let lo = value(low, s);
            let hi = value(high, s);
            let cmp = |op, bound: &Option<Value<'_>>| -> Option<bool> {
                Some(holds(op, compare(x.as_ref()?, bound.as_ref()?)))
            };
            if *negated {
                or(cmp(CmpOp::Lt, &lo), cmp(CmpOp::Gt, &hi))
            } else {
                and(cmp(CmpOp::Ge, &lo), cmp(CmpOp::Le, &hi))
            }
        }
        // A value where a condition is expected: only a boolean true is
        // true (ActiveMQ's boolean cast).
        _ => value(e, s).map(|v| v.truth()),
    }
}

/// AND (`decisive` false) or OR (`decisive` true) of `all`: the decisive
/// value as soon as an operand has it, else UNKNOWN if any operand is,
/// else the other value.
fn junction(all: &[Expr], s: &dyn SelectorSubject, decisive: bool) -> Option<bool> {
    let mut unknown = false;
    for x in all {
        match truth(x, s) {
            Some(b) if b == decisive => return Some(decisive),
            None => unknown = true,
            Some(_) => {}
        }
    }
    (!unknown).then_some(!decisive)
}

/// Unlike values (`None` ordering) make every comparison false but <>,
/// which ActiveMQ defines as NOT =.
fn holds(op: CmpOp, ord: Option<Ordering>) -> bool {
    match op {
        CmpOp::Eq => ord == Some(Ordering::Equal),
        CmpOp::Ne => ord != Some(Ordering::Equal),
        CmpOp::Lt => ord == Some(Ordering::Less),
        CmpOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
        CmpOp::Gt => ord == Some(Ordering::Greater),
        CmpOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
    }
}

fn and(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

fn or(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    }
}
