//! A parsed selector. AND and OR hold all their operands in one node, so
//! that a long `a = 1 OR a = 2 OR ...` stays shallow.

use super::like::LikePattern;
use super::subject::{HeaderType, JmsHeader};
use super::value::{ArithOp, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(Value<'static>),
    Null,
    Property(Box<str>),
    Header(JmsHeader),
    Neg(Box<Expr>),
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Compare(CmpOp, Box<Expr>, Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    Like {
        expr: Box<Expr>,
        pattern: LikePattern,
        negated: bool,
    },
    In {
        expr: Box<Expr>,
        list: Vec<Box<str>>,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
}

/// What an expression yields, as far as the text tells: the parser
/// refuses what can never work (`'a' > 1`, `x + TRUE`, `x = NULL`) instead
/// of letting it never match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Number,
    String,
    /// The NULL literal.
    Null,
    /// A property: any type, known only per message.
    Any,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Bool => "a boolean",
            Kind::Number => "a number",
            Kind::String => "a string",
            Kind::Null => "NULL",
            Kind::Any => "a property",
        }
    }
}

impl Expr {
    pub fn kind(&self) -> Kind {
        match self {
            Expr::Literal(Value::Bool(_)) => Kind::Bool,
            Expr::Literal(Value::Long(_) | Value::Double(_)) => Kind::Number,
            Expr::Literal(Value::Str(_) | Value::Text(_)) => Kind::String,
            Expr::Null => Kind::Null,
            Expr::Property(_) => Kind::Any,
            Expr::Header(h) => match h.value_type() {
                HeaderType::Bool => Kind::Bool,
                HeaderType::Number => Kind::Number,
                HeaderType::String => Kind::String,
            },
            Expr::Neg(_) | Expr::Arith(..) => Kind::Number,
            Expr::Not(_)
            | Expr::And(_)
            | Expr::Or(_)
            | Expr::Compare(..)
            | Expr::IsNull { .. }
            | Expr::Like { .. }
            | Expr::In { .. }
            | Expr::Between { .. } => Kind::Bool,
        }
    }
}
