//! Selector text to tokens, following ActiveMQ's grammar
//! (`SelectorParser.jj`): keywords in any case, identifiers as written,
//! `--` and `/* */` comments, strings in single quotes with `''` for a
//! quote, and ActiveMQ's numeric literals (decimal with an optional `L`,
//! `0x` hexadecimal, `0` octal, and decimals with a fraction or exponent).

use std::fmt;

use super::ast::CmpOp;

/// A syntax error at a byte offset of the selector; the caller turns the
/// offset into a character position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub at: usize,
    pub message: String,
}

impl Fault {
    pub fn new(at: usize, message: impl Into<String>) -> Fault {
        Fault {
            at,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    Not,
    And,
    Or,
    Between,
    Like,
    Escape,
    In,
    Is,
    True,
    False,
    Null,
}

const KEYWORDS: [(&str, Keyword); 11] = [
    ("NOT", Keyword::Not),
    ("AND", Keyword::And),
    ("OR", Keyword::Or),
    ("BETWEEN", Keyword::Between),
    ("LIKE", Keyword::Like),
    ("ESCAPE", Keyword::Escape),
    ("IN", Keyword::In),
    ("IS", Keyword::Is),
    ("TRUE", Keyword::True),
    ("FALSE", Keyword::False),
    ("NULL", Keyword::Null),
];

#[derive(Debug, Clone, PartialEq)]
pub enum Tok<'a> {
    Ident(&'a str),
    Keyword(Keyword),
    Str(String),
    /// An integer literal's magnitude: the parser decides whether it fits a
    /// long (it may be negated: `-9223372036854775808` does).
    Int(u64),
    Double(f64),
    Cmp(CmpOp),
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    LParen,
    RParen,
    Comma,
    End,
}

impl fmt::Display for Tok<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "identifier '{s}'"),
            Tok::Keyword(k) => {
                let name = KEYWORDS
                    .iter()
                    .find(|(_, kw)| kw == k)
                    .map_or("?", |(n, _)| n);
                write!(f, "{name}")
            }
            Tok::Str(s) => write!(f, "string '{}'", s.chars().take(40).collect::<String>()),
            Tok::Int(n) => write!(f, "number {n}"),
            Tok::Double(d) => write!(f, "number {d}"),
            Tok::Cmp(op) => write!(f, "'{}'", op.symbol()),
            Tok::Plus => f.write_str("'+'"),
            Tok::Minus => f.write_str("'-'"),
            Tok::Star => f.write_str("'*'"),
            Tok::Slash => f.write_str("'/'"),
            Tok::Percent => f.write_str("'%'"),
            Tok::LParen => f.write_str("'('"),
            Tok::RParen => f.write_str("')'"),
            Tok::Comma => f.write_str("','"),
            Tok::End => f.write_str("the end of the selector"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token<'a> {
    pub tok: Tok<'a>,
    /// Byte offset in the selector.
    pub at: usize,
}

fn ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$'
}

fn ident_part(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// Every token of `src`, ending with [`Tok::End`].
pub fn tokens(src: &str) -> Result<Vec<Token<'_>>, Fault> {
    let mut out = Vec::new();
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let at = i;
        let Some(c) = src[i..].chars().next() else {
            break;
        };
        let two = b.get(i + 1).copied();
        let tok = match c {
            c if c.is_whitespace() => {
                i += c.len_utf8();
                continue;
            }
            '-' if two == Some(b'-') => {
                i = src[i..].find(['\n', '\r']).map_or(b.len(), |n| i + n);
                continue;
            }
            '/' if two == Some(b'*') => {
                i = match src[i + 2..].find("*/") {
                    Some(n) => i + 2 + n + 2,
                    None => return Err(Fault::new(at, "unterminated comment: expected '*/'")),
                };
                continue;
            }
            '\'' => {
                let (s, end) = string(src, i)?;
                i = end;
                out.push(Token {
                    tok: Tok::Str(s),
                    at,
                });
                continue;
            }
            '0'..='9' | '.' => {
                let (tok, end) = number(src, i)?;
                i = end;
                out.push(Token { tok, at });
                continue;
            }
            c if ident_start(c) => {
                let end = src[i..]
                    .char_indices()
                    .find(|&(_, c)| !ident_part(c))
                    .map_or(b.len(), |(n, _)| i + n);
                let word = &src[i..end];
                i = end;
                let tok = match KEYWORDS.iter().find(|(k, _)| k.eq_ignore_ascii_case(word)) {
                    Some((_, kw)) => Tok::Keyword(*kw),
                    None => Tok::Ident(word),
                };
                out.push(Token { tok, at });
                continue;
            }
            '<' if two == Some(b'>') => (Tok::Cmp(CmpOp::Ne), 2),
            '<' if two == Some(b'=') => (Tok::Cmp(CmpOp::Le), 2),
            '>' if two == Some(b'=') => (Tok::Cmp(CmpOp::Ge), 2),
            '<' => (Tok::Cmp(CmpOp::Lt), 1),
            '>' => (Tok::Cmp(CmpOp::Gt), 1),
            '=' => (Tok::Cmp(CmpOp::Eq), 1),
            '+' => (Tok::Plus, 1),
            '-' => (Tok::Minus, 1),
            '*' => (Tok::Star, 1),
            '/' => (Tok::Slash, 1),
            '%' => (Tok::Percent, 1),
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            ',' => (Tok::Comma, 1),
            '!' if two == Some(b'=') => {
                return Err(Fault::new(at, "'!=' is not an operator: use '<>'"))
            }
            '"' => {
                return Err(Fault::new(
                    at,
                    "strings are in single quotes ('...'), not double quotes",
                ))
            }
            c => return Err(Fault::new(at, format!("unexpected character '{c}'"))),
        };
        out.push(Token { tok: tok.0, at });
        i += tok.1;
    }
    out.push(Token {
        tok: Tok::End,
        at: src.len(),
    });
    Ok(out)
}

/// A string literal starting at the quote at `start`: its value and the
/// offset after its closing quote.
fn string(src: &str, start: usize) -> Result<(String, usize), Fault> {
    let mut s = String::new();
    let mut rest = src[start + 1..].char_indices().peekable();
    while let Some((n, c)) = rest.next() {
        if c == '\'' {
            if matches!(rest.peek(), Some((_, '\''))) {
                rest.next();
            } else {
                return Ok((s, start + 1 + n + 1));
            }
        }
        s.push(c);
    }
    Err(Fault::new(
        start,
        "unterminated string: expected a closing '",
    ))
}

fn digits_end(b: &[u8], from: usize, ok: impl Fn(u8) -> bool) -> usize {
    b[from..]
        .iter()
        .position(|&c| !ok(c))
        .map_or(b.len(), |n| from + n)
}

/// A numeric literal starting at `start`: its token and where it ends.
fn number(src: &str, start: usize) -> Result<(Tok<'static>, usize), Fault> {
    let b = src.as_bytes();
    let bad = |end: usize| {
        let end = src[end..]
            .char_indices()
            .find(|&(_, c)| !(ident_part(c) || c == '.'))
            .map_or(src.len(), |(n, _)| end + n);
        Fault::new(start, format!("invalid number '{}'", &src[start..end]))
    };
    let (tok, end) = if b[start] == b'0' && matches!(b.get(start + 1), Some(b'x' | b'X')) {
        let end = digits_end(b, start + 2, |c| c.is_ascii_hexdigit());
        let hex = &src[start + 2..end];
        if hex.is_empty() {
            return Err(bad(end));
        }
        match i64::from_str_radix(hex, 16) {
            Ok(n) => (Tok::Int(n as u64), end),
            Err(_) => return Err(Fault::new(start, "hexadecimal number out of range")),
        }
    } else {
        let int_end = digits_end(b, start, |c| c.is_ascii_digit());
        let mut end = int_end;
        let mut float = false;
        if b.get(end) == Some(&b'.') {
            float = true;
            end = digits_end(b, end + 1, |c| c.is_ascii_digit());
            if end == start + 1 {
                return Err(Fault::new(start, "unexpected '.'"));
            }
        }
        if matches!(b.get(end), Some(b'e' | b'E')) {
            let mut e = end + 1;
            if matches!(b.get(e), Some(b'+' | b'-')) {
                e += 1;
            }
            let exp_end = digits_end(b, e, |c| c.is_ascii_digit());
            if exp_end > e {
                float = true;
                end = exp_end;
            }
        }
        let text = &src[start..end];
        if float {
            match text.parse::<f64>() {
                Ok(d) => (Tok::Double(d), end),
                Err(_) => return Err(bad(end)),
            }
        } else if text.len() > 1 && text.starts_with('0') {
            match i64::from_str_radix(text, 8) {
                Ok(n) => (Tok::Int(n as u64), end),
                Err(_) if text.bytes().all(|c| (b'0'..=b'7').contains(&c)) => {
                    return Err(Fault::new(start, "octal number out of range"))
                }
                Err(_) => return Err(bad(end)),
            }
        } else {
            let end = if matches!(b.get(end), Some(b'l' | b'L')) {
                end + 1
            } else {
                end
            };
            // Too big for a long: ActiveMQ keeps it as a BigDecimal, which
            // only ever compares as a double.
            match text.parse::<u64>() {
                Ok(n) => (Tok::Int(n), end),
                Err(_) => match text.parse::<f64>() {
                    Ok(d) => (Tok::Double(d), end),
                    Err(_) => return Err(bad(end)),
                },
            }
        }
    };
    // `12abc` or `1.5f`: one malformed number, not a number and a name.
    match src[end..].chars().next() {
        Some(c) if ident_part(c) || c == '.' => Err(bad(end)),
        _ => Ok((tok, end)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok<'_>> {
        tokens(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    fn fault(s: &str) -> Fault {
        tokens(s).unwrap_err()
    }

    #[test]
    fn keywords_any_case_identifiers_as_written() {
        assert_eq!(
            toks("a AnD b oR NoT c"),
            vec![
                Tok::Ident("a"),
                Tok::Keyword(Keyword::And),
                Tok::Ident("b"),
                Tok::Keyword(Keyword::Or),
                Tok::Keyword(Keyword::Not),
                Tok::Ident("c"),
                Tok::End
            ]
        );
        assert_eq!(
            toks("$x _y z9 émoi")[..4],
            [
                Tok::Ident("$x"),
                Tok::Ident("_y"),
                Tok::Ident("z9"),
                Tok::Ident("émoi")
            ]
        );
    }

    #[test]
    fn numeric_literals() {
        assert_eq!(
            toks("10 10L 0 017 0x1F 0XfF")[..6],
            [
                Tok::Int(10),
                Tok::Int(10),
                Tok::Int(0),
                Tok::Int(15),
                Tok::Int(31),
                Tok::Int(255)
            ]
        );
        assert_eq!(
            toks("5.5 5. .5 5E2 5.5e-1 .5E+1")[..6],
            [
                Tok::Double(5.5),
                Tok::Double(5.0),
                Tok::Double(0.5),
                Tok::Double(500.0),
                Tok::Double(0.55),
                Tok::Double(5.0)
            ]
        );
        assert_eq!(
            toks("9223372036854775808"),
            vec![Tok::Int(1 << 63), Tok::End]
        );
        assert_eq!(toks("99999999999999999999")[0], Tok::Double(1e20));
    }

    #[test]
    fn malformed_numbers() {
        assert_eq!(fault("a = 12abc").message, "invalid number '12abc'");
        assert_eq!(fault("a = 019").message, "invalid number '019'");
        assert_eq!(fault("0x").at, 0);
        assert_eq!(fault("1.5f").message, "invalid number '1.5f'");
        assert_eq!(fault("1.2.3").message, "invalid number '1.2.3'");
        assert_eq!(
            fault("0x8000000000000000").message,
            "hexadecimal number out of range"
        );
        assert_eq!(fault(" . ").message, "unexpected '.'");
    }

    #[test]
    fn strings_with_doubled_quotes() {
        assert_eq!(toks("'it''s'")[0], Tok::Str("it's".into()));
        assert_eq!(toks("''")[0], Tok::Str(String::new()));
        assert_eq!(toks("''''")[0], Tok::Str("'".into()));
        let f = fault("a = 'open");
        assert_eq!(
            (f.at, f.message.as_str()),
            (4, "unterminated string: expected a closing '")
        );
    }

    #[test]
    fn operators_and_comments() {
        assert_eq!(
            toks("a<>b<=c>=d<e>f=g -- trailing\n/* block */ + - * / % ( ) ,"),
            vec![
                Tok::Ident("a"),
                Tok::Cmp(CmpOp::Ne),
                Tok::Ident("b"),
                Tok::Cmp(CmpOp::Le),
                Tok::Ident("c"),
                Tok::Cmp(CmpOp::Ge),
                Tok::Ident("d"),
                Tok::Cmp(CmpOp::Lt),
                Tok::Ident("e"),
                Tok::Cmp(CmpOp::Gt),
                Tok::Ident("f"),
                Tok::Cmp(CmpOp::Eq),
                Tok::Ident("g"),
                Tok::Plus,
                Tok::Minus,
                Tok::Star,
                Tok::Slash,
                Tok::Percent,
                Tok::LParen,
                Tok::RParen,
                Tok::Comma,
                Tok::End
            ]
        );
        assert_eq!(
            fault("a /* open").message,
            "unterminated comment: expected '*/'"
        );
        assert_eq!(fault("a != 1").message, "'!=' is not an operator: use '<>'");
        assert_eq!(fault("a = \"x\"").at, 4);
        assert_eq!(fault("a # 1").message, "unexpected character '#'");
    }
}
