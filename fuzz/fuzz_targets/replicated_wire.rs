//! Splits arbitrary bytes into replication frames (what a peer sends, or a
//! local `snapshot`/`log` file after a crash) and decodes every entry's
//! batches: damaged input is refused or cut at the damage, never a panic
//! or an allocation the input cannot justify.
#![no_main]

use brokk::store::replicated::wire::{entry_batches, split_frames, Frame};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    let (frames, torn) = split_frames(&buf);
    let mut last = 0;
    for (f, end) in &frames {
        assert!(*end > last && *end <= buf.len());
        last = *end;
        if let Frame::Entry { batches, .. } = f {
            let _ = entry_batches(batches);
        }
    }
    if let Some((at, _)) = torn {
        assert_eq!(at, last);
    }
});
