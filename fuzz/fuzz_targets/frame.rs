//! Feeds arbitrary bytes, split at an arbitrary point, to the STOMP frame
//! parser under every version. It must never panic, and every frame it
//! returns must survive a round trip through the encoder.
#![no_main]

use brokk::protocol::stomp::{parse, Limits, Parsed, Version};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let limits = Limits {
        max_frame_size: 4096,
        max_header_bytes: 1024,
        max_headers: 32,
    };
    for version in [Version::V1_0, Version::V1_1, Version::V1_2] {
        let cut = (split as usize).min(data.len());
        let mut buf = BytesMut::from(&data[..cut]);
        let mut rest = &data[cut..];
        loop {
            match parse(&mut buf, version, &limits) {
                Ok(Some(Parsed::Frame(f))) => {
                    let mut out = BytesMut::new();
                    f.encode(version, &mut out);
                    // The encoder always writes content-length, so the body survives.
                    let mut again = out.clone();
                    match parse(&mut again, version, &Limits::default()) {
                        Ok(Some(Parsed::Frame(g))) => {
                            assert_eq!(f.command, g.command);
                            assert_eq!(f.body, g.body);
                        }
                        other => panic!("re-encoded frame did not parse: {other:?}"),
                    }
                }
                Ok(Some(Parsed::Heartbeat)) => {}
                Ok(None) if !rest.is_empty() => {
                    buf.extend_from_slice(rest);
                    rest = &[];
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
});
