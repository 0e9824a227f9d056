//! Feeds arbitrary bytes to the OpenWire decoder under a format chosen by
//! the first byte (tight or loose, cache on or off, size prefix or not),
//! split at an arbitrary point. Decoding may refuse but must never panic,
//! hang or allocate for lengths the input cannot hold; whatever decodes
//! must re-encode and decode again to the same command, and its typed
//! properties and bodies must decode or refuse without panicking.
#![no_main]

use brokk::protocol::openwire::commands::MessageKind;
use brokk::protocol::openwire::{compress, Codec, Command, WireFormat};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: u64 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Some((&split, input)) = rest.split_first() else { return };
    let format = WireFormat {
        tight_encoding: flags & 1 != 0,
        cache_enabled: flags & 2 != 0,
        cache_size: 64,
        size_prefix_disabled: flags & 4 != 0,
        stack_trace_enabled: flags & 8 != 0,
        version: if flags & 16 != 0 { 9 } else { 12 },
        ..WireFormat::initial(MAX_FRAME)
    };
    let mut codec = Codec::new(format);
    let cut = (split as usize).min(input.len());
    let mut buf = BytesMut::from(&input[..cut]);
    let mut pending = &input[cut..];
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(cmd)) => check(format, &cmd),
            Ok(None) if !pending.is_empty() => {
                buf.extend_from_slice(pending);
                pending = &[];
            }
            Ok(None) | Err(_) => break,
        }
    }
});

fn check(format: WireFormat, cmd: &Command) {
    if let Command::Message(m) = cmd {
        let _ = m.properties();
        let limit = MAX_FRAME as usize;
        let _ = match m.kind {
            MessageKind::Text => compress::text(m, limit).map(drop),
            MessageKind::Map => compress::map(m, limit).map(drop),
            _ => compress::plain_content(m, limit).map(drop),
        };
    }
    // A fresh pair of codecs: the decoder's cache state is the sender's.
    let mut out = BytesMut::new();
    let unbounded = WireFormat {
        max_frame_size: 0,
        ..format
    };
    if Codec::new(unbounded).encode(cmd, &mut out).is_err() {
        // Only a string too long for the encoding may refuse (a loose
        // string can carry 65535 bytes, a tight one 32766).
        return;
    }
    match Codec::new(unbounded).decode(&mut out) {
        Ok(Some(again)) => assert_eq!(&again, cmd),
        other => panic!("re-encoded {cmd:?} did not decode: {other:?}"),
    }
}
