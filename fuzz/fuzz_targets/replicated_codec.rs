//! Decodes arbitrary bytes as a replicated-log batch and as a tables
//! snapshot: decoding may refuse but must never panic or allocate for
//! counts the input cannot hold. A batch that decodes re-encodes to the
//! same bytes (its layout is canonical); a snapshot that decodes
//! re-encodes (rows in another order) to the same tables.
#![no_main]

use brokk::store::replicated::codec::{decode_batch, decode_tables, encode_batch, encode_tables};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    if let Ok(b) = decode_batch(&buf) {
        let mut out = Vec::new();
        encode_batch(&b, &mut out);
        assert_eq!(out, data);
        assert_eq!(decode_batch(&Bytes::from(out)).ok(), Some(b));
    }
    if let Ok(t) = decode_tables(&buf) {
        let mut out = Vec::new();
        encode_tables(&t, &mut out);
        assert_eq!(decode_tables(&Bytes::from(out)).ok(), Some(t));
    }
});
