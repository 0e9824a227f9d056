//! Parses arbitrary text as a JMS selector and, when it parses, evaluates
//! it against a message whose STOMP headers come from the rest of the
//! input (`selector NUL name:value LF name:value ...`). Neither may panic
//! or overflow the stack; an error's position lies within the text; a
//! parsed selector parses again from its own text.
#![no_main]

use std::sync::Arc;

use brokk::broker::destination::Destination;
use brokk::broker::message::{MemoryUsage, Message};
use brokk::broker::selector::{Candidate, Selector, SelectorError, MAX_SELECTOR_BYTES};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (text, headers) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let selector = match Selector::parse(text) {
        Ok(s) => s,
        Err(SelectorError::Syntax { position, .. }) => {
            assert!(position >= 1 && position <= text.chars().count() + 1);
            return;
        }
        Err(SelectorError::TooLong { len }) => {
            assert!(len > MAX_SELECTOR_BYTES);
            return;
        }
    };
    assert_eq!(Selector::parse(selector.text()).as_ref(), Ok(&selector));
    let properties = headers
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            Some((
                Bytes::copy_from_slice(&line[..colon]),
                Bytes::copy_from_slice(&line[colon + 1..]),
            ))
        })
        .collect();
    let usage = Arc::new(MemoryUsage::default());
    let msg = Message {
        id: 7,
        destination: Destination::queue("fuzz"),
        properties,
        body: Bytes::new(),
        priority: 4,
        expires_ms: 0,
        persistent: data.len() % 2 == 0,
        timestamp_ms: 1,
        charge: usage.charge(1),
    };
    for redeliveries in [0, 3] {
        let _ = selector.matches(&Candidate {
            msg: &msg,
            redeliveries,
        });
    }
});
