//! Tokens to an [`Expr`], by recursive descent over ActiveMQ's grammar
//! with SQL's precedence, lowest first: OR, AND, NOT, `= <> IS`,
//! `< <= > >= LIKE BETWEEN IN`, `+ -`, `* / %`, unary `+ -`.
//!
//! ActiveMQ's grammar binds NOT tighter than comparisons, so that there
//! `NOT a = 1` means `(NOT a) = 1`; JMS 1.1 (§3.8.1.2) puts NOT below the
//! comparisons, as SQL does, and that is what users mean: here it is
//! `NOT (a = 1)`.
//!
//! Two bounds keep the stack small whatever the input: parentheses and
//! prefix operators nest at most [`MAX_NESTING`] deep while parsing, and
//! the tree is at most [`MAX_DEPTH`] deep (evaluation and drop recurse
//! over it).

use super::ast::{CmpOp, Expr, Kind};
use super::lexer::{tokens, Fault, Keyword, Tok, Token};
use super::like::LikePattern;
use super::subject::JmsHeader;
use super::value::{ArithOp, Value};

pub const MAX_NESTING: u32 = 32;
pub const MAX_DEPTH: u32 = 64;

type R<T> = Result<T, Fault>;

/// An expression being built, with what the checks and bounds need.
struct Node {
    expr: Expr,
    depth: u32,
    at: usize,
}

struct Parser<'a> {
    toks: Vec<Token<'a>>,
    i: usize,
    nesting: u32,
}

pub fn parse(src: &str) -> R<Expr> {
    let mut p = Parser {
        toks: tokens(src)?,
        i: 0,
        nesting: 0,
    };
    if p.peek() == &Tok::End {
        return Err(Fault::new(0, "the selector is empty"));
    }
    let n = p.or()?;
    if p.peek() != &Tok::End {
        return Err(p.unexpected("an operator or the end of the selector"));
    }
    condition(&n)?;
    Ok(n.expr)
}

/// An operand that must be of kind `wanted`, as far as the text tells (a
/// property or NULL may be anything). Where a condition is expected, a
/// property is true only if it holds a boolean true.
fn operand(n: &Node, wanted: Kind, what: &str) -> R<()> {
    match n.expr.kind() {
        k if k == wanted || k == Kind::Any || k == Kind::Null => Ok(()),
        k => Err(Fault::new(n.at, format!("{what}, found {}", k.describe()))),
    }
}

fn condition(n: &Node) -> R<()> {
    operand(n, Kind::Bool, "expected a condition")
}

/// Only numbers are ordered (JMS 1.1: strings and booleans compare only
/// with = and <>).
fn ordered(n: &Node) -> R<()> {
    match n.expr.kind() {
        Kind::Number | Kind::Any => Ok(()),
        Kind::Null => Err(Fault::new(
            n.at,
            "NULL cannot be compared: use IS NULL or IS NOT NULL",
        )),
        k => Err(Fault::new(
            n.at,
            format!(
                "{} cannot be compared with < <= > >= or BETWEEN, only with = and <>",
                k.describe()
            ),
        )),
    }
}

fn comparable(a: &Node, b: &Node) -> R<()> {
    for n in [a, b] {
        if n.expr.kind() == Kind::Null {
            return Err(Fault::new(
                n.at,
                "NULL cannot be compared: use IS NULL or IS NOT NULL",
            ));
        }
    }
    match (a.expr.kind(), b.expr.kind()) {
        (Kind::Any, _) | (_, Kind::Any) => Ok(()),
        (x, y) if x == y => Ok(()),
        (x, y) => Err(Fault::new(
            a.at,
            format!("{} cannot be compared with {}", x.describe(), y.describe()),
        )),
    }
}

impl<'a> Parser<'a> {
    fn peek(&self) -> &Tok<'a> {
        // The token list always ends with End, and End is never consumed.
        self.toks.get(self.i).map_or(&Tok::End, |t| &t.tok)
    }

    fn at(&self) -> usize {
        self.toks.get(self.i).map_or(0, |t| t.at)
    }

    fn bump(&mut self) -> Tok<'a> {
        match self.toks.get_mut(self.i) {
            Some(t) if t.tok != Tok::End => {
                self.i += 1;
                std::mem::replace(&mut t.tok, Tok::End)
            }
            _ => Tok::End,
        }
    }

    fn is(&self, k: Keyword) -> bool {
        self.peek() == &Tok::Keyword(k)
    }

    fn eat(&mut self, k: Keyword) -> bool {
        let yes = self.is(k);
        if yes {
            self.bump();
        }
        yes
    }

    fn unexpected(&self, expected: &str) -> Fault {
        Fault::new(
            self.at(),
            format!("expected {expected}, found {}", self.peek()),
        )
    }

    fn expect(&mut self, tok: Tok<'static>, expected: &str) -> R<()> {
        if *self.peek() == tok {
            self.bump();
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn enter(&mut self) -> R<()> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(Fault::new(
                self.at(),
                format!("the selector nests deeper than {MAX_NESTING} levels"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nesting -= 1;
    }

    /// A node over children at most `depth` deep.
    fn node(&self, expr: Expr, depth: u32, at: usize) -> R<Node> {
        let depth = depth + 1;
        if depth > MAX_DEPTH {
            return Err(Fault::new(
                at,
                format!("the selector's expression is deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(Node { expr, depth, at })
    }

    fn or(&mut self) -> R<Node> {
        self.chain(Keyword::Or, Parser::and, Expr::Or)
    }

    fn and(&mut self) -> R<Node> {
        self.chain(Keyword::And, Parser::not, Expr::And)
    }

    /// `operand (kw operand)*` as one n-ary node.
    fn chain(
        &mut self,
        kw: Keyword,
        operand: fn(&mut Self) -> R<Node>,
        make: fn(Vec<Expr>) -> Expr,
    ) -> R<Node> {
        let first = operand(self)?;
        if !self.is(kw) {
            return Ok(first);
        }
        condition(&first)?;
        let (at, mut depth) = (first.at, first.depth);
        let mut all = vec![first.expr];
        while self.eat(kw) {
            let n = operand(self)?;
            condition(&n)?;
            depth = depth.max(n.depth);
            all.push(n.expr);
        }
        self.node(make(all), depth, at)
    }

    fn not(&mut self) -> R<Node> {
        if !self.is(Keyword::Not) {
            return self.equality();
        }
        let at = self.at();
        self.bump();
        self.enter()?;
        let n = self.not()?;
        self.leave();
        condition(&n)?;
        self.node(Expr::Not(Box::new(n.expr)), n.depth, at)
    }

    fn equality(&mut self) -> R<Node> {
        let mut left = self.relational()?;
        loop {
            let op = match self.peek() {
                Tok::Cmp(op @ (CmpOp::Eq | CmpOp::Ne)) => *op,
                Tok::Keyword(Keyword::Is) => {
                    self.bump();
                    let negated = self.eat(Keyword::Not);
                    self.expect(Tok::Keyword(Keyword::Null), "NULL after IS")?;
                    let expr = Expr::IsNull {
                        expr: Box::new(left.expr),
                        negated,
                    };
                    left = self.node(expr, left.depth, left.at)?;
                    continue;
                }
                _ => return Ok(left),
            };
            self.bump();
            let right = self.relational()?;
            comparable(&left, &right)?;
            left = self.binary(left, right, |a, b| Expr::Compare(op, a, b))?;
        }
    }

    fn binary(&self, a: Node, b: Node, make: impl FnOnce(Box<Expr>, Box<Expr>) -> Expr) -> R<Node> {
        let depth = a.depth.max(b.depth);
        self.node(make(Box::new(a.expr), Box::new(b.expr)), depth, a.at)
    }

    fn relational(&mut self) -> R<Node> {
        let mut left = self.additive()?;
        loop {
            let op = match self.peek() {
                Tok::Cmp(op) if !matches!(op, CmpOp::Eq | CmpOp::Ne) => *op,
                Tok::Keyword(Keyword::Not) => {
                    self.bump();
                    left = match self.peek() {
                        Tok::Keyword(Keyword::Like) => self.like(left, true)?,
                        Tok::Keyword(Keyword::Between) => self.between(left, true)?,
                        Tok::Keyword(Keyword::In) => self.in_list(left, true)?,
                        _ => return Err(self.unexpected("LIKE, BETWEEN or IN after NOT")),
                    };
                    continue;
                }
                Tok::Keyword(Keyword::Like) => {
                    left = self.like(left, false)?;
                    continue;
                }
                Tok::Keyword(Keyword::Between) => {
                    left = self.between(left, false)?;
                    continue;
                }
                Tok::Keyword(Keyword::In) => {
                    left = self.in_list(left, false)?;
                    continue;
                }
                _ => return Ok(left),
            };
            self.bump();
            let right = self.additive()?;
            ordered(&left)?;
            ordered(&right)?;
            left = self.binary(left, right, |a, b| Expr::Compare(op, a, b))?;
        }
    }

    fn string_literal(&mut self, expected: &str) -> R<(String, usize)> {
        let at = self.at();
        match self.peek() {
            Tok::Str(_) => match self.bump() {
                Tok::Str(s) => Ok((s, at)),
                _ => Err(self.unexpected(expected)),
            },
            _ => Err(self.unexpected(expected)),
        }
    }

    fn like(&mut self, left: Node, negated: bool) -> R<Node> {
        self.bump();
        operand(&left, Kind::String, "LIKE applies to strings")?;
        let (pattern, _) = self.string_literal("a string pattern after LIKE")?;
        let escape = if self.eat(Keyword::Escape) {
            let (e, at) = self.string_literal("a one-character string after ESCAPE")?;
            let mut chars = e.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Some(c),
                _ => {
                    return Err(Fault::new(
                        at,
                        format!("the ESCAPE string must be one character, found '{e}'"),
                    ))
                }
            }
        } else {
            None
        };
        let expr = Expr::Like {
            expr: Box::new(left.expr),
            pattern: LikePattern::new(&pattern, escape),
            negated,
        };
        self.node(expr, left.depth, left.at)
    }

    fn between(&mut self, left: Node, negated: bool) -> R<Node> {
        self.bump();
        let low = self.additive()?;
        self.expect(Tok::Keyword(Keyword::And), "AND in BETWEEN ... AND ...")?;
        let high = self.additive()?;
        for n in [&left, &low, &high] {
            ordered(n)?;
        }
        let depth = left.depth.max(low.depth).max(high.depth);
        let expr = Expr::Between {
            expr: Box::new(left.expr),
            low: Box::new(low.expr),
            high: Box::new(high.expr),
            negated,
        };
        self.node(expr, depth, left.at)
    }

    fn in_list(&mut self, left: Node, negated: bool) -> R<Node> {
        self.bump();
        operand(&left, Kind::String, "IN applies to strings")?;
        self.expect(Tok::LParen, "'(' after IN")?;
        let mut list = Vec::new();
        loop {
            let (s, _) = self.string_literal("a string literal in the IN list")?;
            list.push(s.into_boxed_str());
            if self.peek() == &Tok::RParen {
                self.bump();
                break;
            }
            self.expect(Tok::Comma, "',' or ')' in the IN list")?;
        }
        let expr = Expr::In {
            expr: Box::new(left.expr),
            list,
            negated,
        };
        self.node(expr, left.depth, left.at)
    }

    fn additive(&mut self) -> R<Node> {
        self.arith(Parser::multiplicative, |t| match t {
            Tok::Plus => Some(ArithOp::Add),
            Tok::Minus => Some(ArithOp::Sub),
            _ => None,
        })
    }

    fn multiplicative(&mut self) -> R<Node> {
        self.arith(Parser::unary, |t| match t {
            Tok::Star => Some(ArithOp::Mul),
            Tok::Slash => Some(ArithOp::Div),
            Tok::Percent => Some(ArithOp::Rem),
            _ => None,
        })
    }

    /// `operand (op operand)*`, left-associative.
    fn arith(
        &mut self,
        next: fn(&mut Self) -> R<Node>,
        op_of: fn(&Tok<'_>) -> Option<ArithOp>,
    ) -> R<Node> {
        let mut left = next(self)?;
        while let Some(op) = op_of(self.peek()) {
            self.bump();
            let right = next(self)?;
            operand(&left, Kind::Number, "arithmetic needs numbers")?;
            operand(&right, Kind::Number, "arithmetic needs numbers")?;
            left = self.binary(left, right, |a, b| Expr::Arith(op, a, b))?;
        }
        Ok(left)
    }

    fn unary(&mut self) -> R<Node> {
        let at = self.at();
        let negate = match self.peek() {
            Tok::Plus => false,
            Tok::Minus => true,
            _ => return self.primary(),
        };
        self.bump();
        // A negative literal is one value, which is how
        // -9223372036854775808 fits a long.
        if negate {
            if let Tok::Int(n) = *self.peek() {
                self.bump();
                let v = match i64::try_from(n) {
                    Ok(l) => Value::Long(-l),
                    Err(_) if n == 1 << 63 => Value::Long(i64::MIN),
                    Err(_) => Value::Double(-(n as f64)),
                };
                return Ok(Node {
                    expr: Expr::Literal(v),
                    depth: 1,
                    at,
                });
            }
        }
        self.enter()?;
        let n = self.unary()?;
        self.leave();
        let what = if negate {
            "'-' needs a number"
        } else {
            "'+' needs a number"
        };
        operand(&n, Kind::Number, what)?;
        if negate {
            self.node(Expr::Neg(Box::new(n.expr)), n.depth, at)
        } else {
            Ok(n)
        }
    }

    fn primary(&mut self) -> R<Node> {
        let at = self.at();
        let value = matches!(
            self.peek(),
            Tok::LParen
                | Tok::Str(_)
                | Tok::Int(_)
                | Tok::Double(_)
                | Tok::Ident(_)
                | Tok::Keyword(Keyword::True | Keyword::False | Keyword::Null)
        );
        if !value {
            return Err(self.unexpected("a value"));
        }
        let expr = match self.bump() {
            Tok::LParen => {
                self.enter()?;
                let n = self.or()?;
                self.expect(Tok::RParen, "')'")?;
                self.leave();
                return Ok(n);
            }
            Tok::Str(s) => Expr::Literal(Value::Str(s.into())),
            Tok::Int(n) => Expr::Literal(match i64::try_from(n) {
                Ok(l) => Value::Long(l),
                Err(_) => Value::Double(n as f64),
            }),
            Tok::Double(d) => Expr::Literal(Value::Double(d)),
            Tok::Keyword(Keyword::True) => Expr::Literal(Value::Bool(true)),
            Tok::Keyword(Keyword::False) => Expr::Literal(Value::Bool(false)),
            Tok::Keyword(Keyword::Null) => Expr::Null,
            Tok::Ident(name) => {
                let xml = name.eq_ignore_ascii_case("XPATH") || name.eq_ignore_ascii_case("XQUERY");
                if xml && matches!(self.peek(), Tok::Str(_)) {
                    return Err(Fault::new(
                        at,
                        "XPATH and XQUERY selectors are not supported",
                    ));
                }
                match JmsHeader::from_identifier(name) {
                    Some(h) => Expr::Header(h),
                    None => Expr::Property(name.into()),
                }
            }
            // Ruled out above.
            other => return Err(Fault::new(at, format!("expected a value, found {other}"))),
        };
        Ok(Node { expr, depth: 1, at })
    }
}
