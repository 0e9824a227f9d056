//! Decodes arbitrary bytes as an `ACTIVEMQ_MSGS.MSG` blob: decoding may
//! refuse but must never panic or allocate for lengths the input cannot
//! hold; whatever decodes re-encodes to exactly the same bytes (the layout
//! is canonical).
#![no_main]

use brokk::store::sql::encoding::{decode, encode};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let blob = Bytes::copy_from_slice(data);
    if let Ok(d) = decode(&blob) {
        let mut out = Vec::new();
        encode(d.timestamp_ms, &d.properties, &d.body, &mut out);
        assert_eq!(out, data);
    }
});
