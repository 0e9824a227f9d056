use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::broker::destination::Destination;
use crate::broker::message::{MemoryUsage, Message};

/// Typed properties and headers, as an OpenWire message would give them.
#[derive(Default)]
struct Typed {
    props: Vec<(&'static str, Value<'static>)>,
    priority: i64,
}

impl SelectorSubject for Typed {
    fn property(&self, name: &str) -> Option<Value<'_>> {
        self.props
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.reborrow())
    }

    fn header(&self, header: JmsHeader) -> Option<Value<'_>> {
        match header {
            JmsHeader::Priority => Some(Value::Long(self.priority)),
            JmsHeader::Type => self.property("type"),
            _ => None,
        }
    }
}

fn s(v: &'static str) -> Value<'static> {
    Value::Str(Cow::Borrowed(v))
}

fn typed(props: &[(&'static str, Value<'static>)]) -> Typed {
    Typed {
        props: props.to_vec(),
        priority: 4,
    }
}

fn sel(text: &str) -> Selector {
    Selector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn check(subject: &dyn SelectorSubject, text: &str) -> bool {
    sel(text).matches(subject)
}

/// The error's position and message.
fn error(text: &str) -> (usize, String) {
    match Selector::parse(text) {
        Err(SelectorError::Syntax { position, message }) => (position, message),
        other => panic!("{text}: expected a syntax error, got {other:?}"),
    }
}

#[test]
fn jms_specification_examples() {
    let car = typed(&[
        ("type", s("car")),
        ("color", s("blue")),
        ("weight", Value::Long(3000)),
        ("phone", s("12993")),
        ("age", Value::Long(17)),
        ("Country", s("France")),
        ("word", s("lose")),
        ("underscored", s("_x")),
    ]);
    assert!(check(
        &car,
        "JMSType = 'car' AND color = 'blue' AND weight > 2500"
    ));
    assert!(check(&car, "phone LIKE '12%3'"));
    assert!(!check(&car, "phone NOT LIKE '12%3'"));
    assert!(check(&car, "word LIKE 'l_se'"));
    assert!(check(&car, "underscored LIKE '\\_%' ESCAPE '\\'"));
    assert!(!check(&car, "word LIKE '\\_%' ESCAPE '\\'"));
    assert!(check(&car, "age BETWEEN 15 AND 19"));
    assert!(check(&car, "age >= 15 AND age <= 19"));
    assert!(!check(&car, "age NOT BETWEEN 15 AND 19"));
    assert!(check(&car, "age NOT BETWEEN 18 AND 19"));
    assert!(check(&car, "Country IN (' UK', 'US', 'France')"));
    assert!(!check(&car, "Country NOT IN (' UK', 'US', 'France')"));
    assert!(check(&car, "Country NOT IN ('UK')"));
    assert!(check(&car, "prop_name IS NULL"));
    assert!(check(&car, "color IS NOT NULL"));
    assert!(!check(&car, "color IS NULL"));
}

/// UNKNOWN is a comparison with a missing property.
const T: &str = "TRUE";
const F: &str = "FALSE";
const U: &str = "missing = 1";

#[test]
fn three_valued_logic_truth_tables() {
    let m = typed(&[]);
    // (a, b, a AND b, a OR b), with None for UNKNOWN.
    let table = [
        (T, T, Some(true), Some(true)),
        (T, F, Some(false), Some(true)),
        (T, U, None, Some(true)),
        (F, T, Some(false), Some(true)),
        (F, F, Some(false), Some(false)),
        (F, U, Some(false), None),
        (U, T, None, Some(true)),
        (U, F, Some(false), None),
        (U, U, None, None),
    ];
    // A result r is told apart by whether `r`, `NOT r` and `r IS NULL`
    // style probes match: TRUE matches, NOT matches FALSE, neither is
    // UNKNOWN.
    let outcome = |e: &str| -> Option<bool> {
        match (check(&m, e), check(&m, &format!("NOT ({e})"))) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            (false, false) => None,
            (true, true) => panic!("{e} is both true and false"),
        }
    };
    for (a, b, and, or) in table {
        assert_eq!(outcome(&format!("({a}) AND ({b})")), and, "{a} AND {b}");
        assert_eq!(outcome(&format!("({a}) OR ({b})")), or, "{a} OR {b}");
    }
    assert_eq!(outcome(T), Some(true));
    assert_eq!(outcome(F), Some(false));
    assert_eq!(outcome(U), None);
    assert_eq!(outcome("NOT NOT missing = 1"), None);
}

#[test]
fn null_in_comparisons_and_arithmetic_is_unknown() {
    let m = typed(&[("x", Value::Long(1))]);
    for e in [
        "missing = 1",
        "missing <> 1",
        "missing > 1",
        "missing + 1 > 0",
        "-missing < 0",
        "missing BETWEEN 1 AND 2",
        "missing NOT BETWEEN 1 AND 2",
        "missing LIKE 'a'",
        "missing NOT LIKE 'a'",
        "missing IN ('a')",
        "missing NOT IN ('a')",
        "x BETWEEN missing AND 2",
        "missing",
        "NOT missing",
    ] {
        assert!(!check(&m, e), "{e}");
        assert!(!check(&m, &format!("NOT ({e})")), "NOT ({e})");
    }
    // BETWEEN's halves: x >= low is false, so the AND is false whatever
    // the other half.
    assert!(check(&m, "NOT (x BETWEEN 5 AND missing)"));
}

#[test]
fn arithmetic_precedence_and_promotion() {
    let m = typed(&[("x", Value::Long(2)), ("d", Value::Double(2.5))]);
    for e in [
        "2 + 3 * 4 = 14",
        "(2 + 3) * 4 = 20",
        "10 - 2 - 3 = 5",
        "2 * 3 / 4 = 1",
        "-2 * -3 = 6",
        "- (2 + 3) = -5",
        "+x = 2",
        "7 / 2 = 3",
        "7.0 / 2 = 3.5",
        "7 % 3 = 1",
        "x = 2.0",
        "x * d = 5",
        "d > x",
        "x + 1 BETWEEN 3 AND 3",
        "x > 1 AND x < 3 OR x = 100",
        "1 = 1 OR 1 = 2 AND 1 = 2",
        "NOT x = 3",
        "NOT x > 5 AND x < 3",
        "0x10 = 16",
        "010 = 8",
        "5E2 = 500",
        "10L = 10",
        "-9223372036854775808 < 0",
        "9223372036854775807 + 1 < 0",
        "JMSPriority = 4",
    ] {
        assert!(check(&m, e), "{e}");
    }
    assert!(!check(&m, "x / 0 = 0"));
    assert!(!check(&m, "NOT (x / 0 = 0)"));
}

#[test]
fn strings_booleans_and_unlike_types() {
    let m = typed(&[
        ("name", s("Fred")),
        ("flag", Value::Bool(true)),
        ("n", Value::Long(10)),
        ("digits", s("10")),
    ]);
    assert!(check(&m, "name = 'Fred'"));
    assert!(check(&m, "name <> 'fred'"));
    assert!(check(&m, "flag"));
    assert!(check(&m, "flag = TRUE"));
    assert!(!check(&m, "NOT flag"));
    // A non-boolean as a condition is false.
    assert!(!check(&m, "name"));
    assert!(check(&m, "NOT name"));
    // Unlike types: = is false, <> is true (NOT =).
    assert!(!check(&m, "name = 10"));
    assert!(check(&m, "name <> 10"));
    assert!(!check(&m, "n = '10'"));
    assert!(!check(&m, "n LIKE '1%'"));
    assert!(check(&m, "n NOT LIKE '1%'"));
    assert!(!check(&m, "n IN ('10')"));
    assert!(!check(&m, "n NOT IN ('10')"));
    // A typed string property is not a number...
    assert!(!check(&m, "digits > 5"));
    assert!(!check(&m, "digits = 10"));
    // ...unless the selector asks for ActiveMQ's conversion.
    assert!(check(&m, "convert_string_expressions:digits > 5"));
    assert!(check(&m, "convert_string_expressions:digits = 10"));
    assert!(!check(&m, "convert_string_expressions:name > 5"));
}

#[test]
fn identifiers_are_case_sensitive_keywords_are_not() {
    let m = typed(&[("Color", s("red")), ("priority", Value::Long(9))]);
    assert!(check(&m, "Color = 'red'"));
    assert!(!check(&m, "color = 'red'"));
    assert!(check(&m, "color IS null"));
    assert!(check(&m, "Color = 'red' aNd NoT Color = 'blue' Or fAlSe"));
    assert!(check(&m, "Color lIkE 'r%' EsCaPe '!'"));
    assert!(check(
        &m,
        "Color iN ('red') AND priority bEtWeEn 1 aNd 9 AND Color iS nOt NuLl"
    ));
    // JMS header names are identifiers too: only the exact spelling is
    // the header.
    assert!(check(&m, "JMSPriority = 4 AND jmspriority IS NULL"));
}

#[test]
fn comments_are_skipped() {
    let m = typed(&[("a", Value::Long(1))]);
    assert!(check(&m, "a = 1 -- the end"));
    assert!(check(&m, "/* first */ a /* then */ = 1"));
}

#[test]
fn bad_selectors_name_position_and_expectation() {
    let end = "found the end of the selector";
    let cases: [(&str, usize, String); 23] = [
        ("a =", 4, format!("expected a value, {end}")),
        ("a = 1 AND", 10, format!("expected a value, {end}")),
        ("(a = 1", 7, format!("expected ')', {end}")),
        (
            "a = 1 b = 2",
            7,
            "expected an operator or the end of the selector, found identifier 'b'".into(),
        ),
        (
            "a LIKE 5",
            8,
            "expected a string pattern after LIKE, found number 5".into(),
        ),
        (
            "a = NULL",
            5,
            "NULL cannot be compared: use IS NULL or IS NOT NULL".into(),
        ),
        (
            "a > 'x'",
            5,
            "a string cannot be compared with < <= > >= or BETWEEN, only with = and <>".into(),
        ),
        (
            "1 + 'a' = 2",
            5,
            "arithmetic needs numbers, found a string".into(),
        ),
        ("-'a' = 2", 2, "'-' needs a number, found a string".into()),
        (
            "TRUE = 1",
            1,
            "a boolean cannot be compared with a number".into(),
        ),
        ("a + 1", 1, "expected a condition, found a number".into()),
        ("'x'", 1, "expected a condition, found a string".into()),
        (
            "a = 1 AND 2",
            11,
            "expected a condition, found a number".into(),
        ),
        (
            "a NOT 1",
            7,
            "expected LIKE, BETWEEN or IN after NOT, found number 1".into(),
        ),
        (
            "a IN (1, 2)",
            7,
            "expected a string literal in the IN list, found number 1".into(),
        ),
        (
            "a IN ('x' 'y')",
            11,
            "expected ',' or ')' in the IN list, found string 'y'".into(),
        ),
        (
            "a LIKE 'x' ESCAPE '!!'",
            19,
            "the ESCAPE string must be one character, found '!!'".into(),
        ),
        (
            "a BETWEEN 1 OR 2",
            13,
            "expected AND in BETWEEN ... AND ..., found OR".into(),
        ),
        ("a IS 1", 6, "expected NULL after IS, found number 1".into()),
        (
            "JMSPriority LIKE 'x'",
            1,
            "LIKE applies to strings, found a number".into(),
        ),
        ("", 1, "the selector is empty".into()),
        ("  -- nothing", 1, "the selector is empty".into()),
        (
            "XPATH '//a'",
            1,
            "XPATH and XQUERY selectors are not supported".into(),
        ),
    ];
    for (text, position, message) in cases {
        assert_eq!(error(text), (position, message), "{text}");
    }
    // Positions count characters, not bytes.
    assert_eq!(error("é = 'ü' AND ?").0, 13);
    // After ActiveMQ's prefix, positions still count from the start.
    assert_eq!(error("convert_string_expressions:a =").0, 31);
    let e = Selector::parse("a = 1 OR").unwrap_err().to_string();
    assert_eq!(
        e,
        "invalid selector at position 9: expected a value, found the end of the selector"
    );
}

#[test]
fn a_nul_is_refused_where_it_stands() {
    let (position, message) = error("a = 'x\u{0}y'");
    assert_eq!(position, 7);
    assert!(message.contains("NUL"), "{message}");
    // Other control characters (a selector over several lines) are fine.
    assert!(Selector::parse("a = 1\n\tAND b = 2").is_ok());
}

#[test]
fn size_and_depth_are_bounded() {
    let long = format!("a = '{}'", "x".repeat(MAX_SELECTOR_BYTES));
    assert_eq!(
        Selector::parse(&long).unwrap_err(),
        SelectorError::TooLong { len: long.len() }
    );
    let nested = |n: usize| format!("{}a = 1{}", "(".repeat(n), ")".repeat(n));
    assert!(Selector::parse(&nested(parser::MAX_NESTING as usize - 1)).is_ok());
    assert!(error(&nested(1000)).1.contains("nests deeper"));
    assert!(error(&format!("{}a", "NOT ".repeat(1000)))
        .1
        .contains("nests deeper"));
    assert!(error(&format!("{}1 = 1", "- ".repeat(1000)))
        .1
        .contains("nests deeper"));
    // Left-deep chains are bounded by the tree's depth.
    let sum = format!("a{} = 1", " + a".repeat(500));
    assert!(error(&sum).1.contains("deeper than"));
    // OR and AND stay flat however long.
    let ors: Vec<String> = (0..300).map(|i| format!("a = {i}")).collect();
    let m = typed(&[("a", Value::Long(299))]);
    assert!(check(&m, &ors.join(" OR ")));
}

fn stomp(headers: &[(&str, &str)], persistent: bool) -> Message {
    let usage = Arc::new(MemoryUsage::default());
    Message {
        id: 42,
        destination: Destination::queue("orders"),
        properties: headers
            .iter()
            .map(|(k, v)| (Bytes::from(k.to_string()), Bytes::from(v.to_string())))
            .collect(),
        body: Bytes::new(),
        priority: 7,
        expires_ms: 0,
        persistent,
        timestamp_ms: 1000,
        charge: usage.charge(1),
    }
}

#[test]
fn stomp_headers_compare_as_numbers_with_numbers() {
    let msg = stomp(
        &[
            ("price", "10"),
            ("ratio", "0.5"),
            ("label", "ten"),
            ("flag", "true"),
            ("price", "99"),
        ],
        true,
    );
    let c = Candidate {
        msg: &msg,
        redeliveries: 0,
    };
    for e in [
        "price > 5",
        "price = 10",
        "price = 10.0",
        "price * 2 = 20",
        "price BETWEEN 1 AND 10",
        "ratio < 1",
        "price = '10'",
        "price IN ('10', '11')",
        "price LIKE '1%'",
        "flag",
        "flag = TRUE",
        "label = 'ten'",
        "label <> 10",
    ] {
        assert!(check(&c, e), "{e}");
    }
    for e in [
        // The first of repeated headers counts.
        "price = 99",
        "label > 5",
        "label = 10",
        "price = '10.0'",
        "price > 'a' OR FALSE",
    ]
    .into_iter()
    .filter(|e| Selector::parse(e).is_ok())
    {
        assert!(!check(&c, e), "{e}");
    }
}

#[test]
fn jms_headers_of_a_broker_message() {
    let msg = stomp(
        &[
            ("correlation-id", "c-1"),
            ("type", "order"),
            ("reply-to", "/queue/answers"),
        ],
        true,
    );
    let first = Candidate {
        msg: &msg,
        redeliveries: 0,
    };
    for e in [
        "JMSDeliveryMode = 'PERSISTENT'",
        "JMSPriority = 7",
        "JMSMessageID = 'ID:brokk-42'",
        "JMSTimestamp = 1000",
        "JMSExpiration = 0",
        "JMSCorrelationID = 'c-1'",
        "JMSType = 'order'",
        "JMSReplyTo = '/queue/answers'",
        "JMSDestination = 'queue://orders'",
        "NOT JMSRedelivered",
        "JMSXDeliveryCount = 1",
    ] {
        assert!(check(&first, e), "{e}");
    }
    let again = Candidate {
        msg: &msg,
        redeliveries: 2,
    };
    assert!(check(&again, "JMSRedelivered AND JMSXDeliveryCount = 3"));
    let plain = stomp(&[], false);
    let c = Candidate {
        msg: &plain,
        redeliveries: 0,
    };
    assert!(check(
        &c,
        "JMSDeliveryMode = 'NON_PERSISTENT' AND JMSCorrelationID IS NULL"
    ));
}

#[test]
fn selectors_compare_by_text() {
    assert_eq!(sel("a = 1"), sel("a = 1"));
    assert_ne!(sel("a = 1"), sel("a=1"));
    assert_eq!(sel("a = 1").to_string(), "a = 1");
}
