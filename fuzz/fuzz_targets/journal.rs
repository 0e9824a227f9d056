//! Builds a journal segment from arbitrary input — rounds of records with
//! valid envelopes (so the payload decoder and the round walk are reached),
//! then arbitrary damage — and recovers it. Recovery may refuse (damage to
//! durable data) but must never panic or hang.
#![no_main]

use brokk::store::journal::round::{RoundHeader, RoundKind, ROUND_HEADER_BYTES};
use brokk::store::journal::{header_block, recovery, BLOCK};
use libfuzzer_sys::fuzz_target;

const SEGMENT: u64 = 256 * 1024;
const GEN: u64 = 1;
const SALT: u64 = 0x5eed;

/// One record envelope around `kind` + `payload` (see store::record).
fn record(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    let len = (1 + payload.len()) as u32;
    let gen = GEN as u32;
    let mut body = vec![kind];
    body.extend_from_slice(payload);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&gen.to_le_bytes()), &body);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&gen.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
}

fuzz_target!(|data: &[u8]| {
    let mut seg = header_block(GEN, SALT);
    seg.resize(SEGMENT as usize, 0);
    let mut input = data;
    let mut pos = BLOCK;
    let mut durable = (GEN, BLOCK);
    // Rounds: [kind][records n][n x (type, len, payload)]
    while input.len() >= 2 && pos + 2 * BLOCK < SEGMENT {
        let kind = match input[0] % 4 {
            0 | 3 => RoundKind::Data,
            1 => RoundKind::Seal,
            _ => RoundKind::End,
        };
        let n = (input[1] % 8) as usize;
        input = &input[2..];
        let mut records = Vec::new();
        for _ in 0..n {
            let Some((&[t, l], rest)) = input.split_first_chunk::<2>() else { break };
            let take = (l as usize).min(rest.len());
            record(t % 10, &rest[..take], &mut records);
            input = &rest[take..];
        }
        let len = if kind == RoundKind::Data { records.len() as u64 } else { 0 };
        let h = RoundHeader { kind, len, durable, first_gen: GEN, epoch: 1 };
        let next = h.next(pos);
        if next + BLOCK > SEGMENT {
            break;
        }
        h.put(GEN, SALT, &mut seg[pos as usize..]);
        let r = (pos + ROUND_HEADER_BYTES) as usize;
        seg[r..r + len as usize].copy_from_slice(&records[..len as usize]);
        durable = (GEN, next);
        pos = next;
        if kind == RoundKind::End {
            break;
        }
    }
    // Damage: what is left, as (offset, byte) pairs.
    for pair in input.chunks_exact(3) {
        let at = u16::from_le_bytes([pair[0], pair[1]]) as usize * 4 % SEGMENT as usize;
        seg[at] = pair[2];
    }
    let dir = std::env::temp_dir().join(format!("brokk-fuzz-{}", std::process::id()));
    let shard = dir.join("shard-0");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&shard).unwrap();
    std::fs::write(shard.join("seg-000000.log"), &seg).unwrap();
    let skip = data.first().is_some_and(|b| b & 0x80 != 0);
    let _ = recovery::recover(&shard, SEGMENT, skip, |_| {});
    let _ = std::fs::remove_dir_all(&dir);
});
