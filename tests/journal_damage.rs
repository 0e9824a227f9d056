//! Recovery tells a torn write from damage to durable data: a power loss
//! during the journal's last write (any blocks of it missing) never stops
//! the start and never loses a receipted message; a zeroed block, a flipped
//! bit or a bad length in records that were durable always stops it (or is
//! skipped with `store.skip_corrupt`), never silently cut off.
//!
//! The tests read and edit the segment files the real broker wrote, so
//! they know the layout: a 4 KiB segment header ("BRKJNL02"), then rounds,
//! each on a block boundary: "BRND", generation (u32), kind (u8 at 8:
//! 0 data, 1 seal, 2 end), record bytes (u32 at 12), 64-byte header.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Broker;

const BLOCK: usize = 4096;
const SEGMENT: u64 = 1024 * 1024;
const CONFIG: &str = "[store]\nsegment_size_bytes = 1048576\n";

fn args(data: &Path) -> Vec<String> {
    vec![
        "--data".into(),
        data.display().to_string(),
        "--shards".into(),
        "1".into(),
    ]
}

fn start(dir: &Path, config: &str) -> Broker {
    Broker::spawn(Some(config), &args(&dir.join("data")), Some(dir))
}

fn pending(b: &Broker, dest: &str) -> u64 {
    b.destination(dest)
        .and_then(|d| d["pending"].as_u64())
        .unwrap_or(0)
}

/// A start that must fail: its exit status and standard error.
fn failed_start(dir: &Path, config: &str) -> String {
    let cfg = dir.join("failing.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_brokk"))
        .args([
            "serve",
            "--stomp",
            "127.0.0.1:0",
            "--openwire",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(&cfg)
        .args(args(&dir.join("data")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_child(&mut child, 20, "brokk on a damaged journal");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !status.success() && !stdout.contains("brokk listening"),
        "brokk served on a damaged journal: {stdout}"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every segment file of shard 0, by name.
fn segments(data: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let dir = data.join("shard-0");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn write_segments(files: &BTreeMap<PathBuf, Vec<u8>>) {
    for (p, bytes) in files {
        std::fs::write(p, bytes).unwrap();
    }
}

fn generation(seg: &[u8]) -> Option<u64> {
    (seg.len() >= BLOCK && &seg[..8] == b"BRKJNL02")
        .then(|| u64::from_le_bytes(seg[8..16].try_into().unwrap()))
}

/// A round header at `pos` of a segment of generation `gen`: (kind, len).
/// Checks magic and generation only (enough to find rounds the broker wrote).
fn round_at(seg: &[u8], pos: usize, gen: u64) -> Option<(u8, usize)> {
    let h = seg.get(pos..pos + 64)?;
    (&h[..4] == b"BRND" && h[4..8] == (gen as u32).to_le_bytes()).then(|| {
        (
            h[8],
            u32::from_le_bytes(h[12..16].try_into().unwrap()) as usize,
        )
    })
}

/// The rounds of a segment, walked by their lengths: (offset, kind, len).
fn rounds(seg: &[u8]) -> Vec<(usize, u8, usize)> {
    let Some(gen) = generation(seg) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut pos = BLOCK;
    while let Some((kind, len)) = round_at(seg, pos, gen) {
        out.push((pos, kind, len));
        if kind == 2 {
            break;
        }
        pos = (pos + 64 + len).div_ceil(BLOCK) * BLOCK;
    }
    out
}

/// The newest segment holding data.
fn newest(files: &BTreeMap<PathBuf, Vec<u8>>) -> (PathBuf, Vec<u8>) {
    files
        .iter()
        .filter_map(|(p, b)| generation(b).map(|g| (g, p, b)))
        .max_by_key(|(g, _, _)| *g)
        .map(|(_, p, b)| (p.clone(), b.clone()))
        .expect("a segment with data")
}

/// A journal of `n` 1 KiB persistent messages, one round each (every SEND
/// waits for its receipt), then a clean stop (its last seal is durable).
fn journal_of(dir: &Path, n: usize) {
    let mut b = start(dir, CONFIG);
    let mut p = b.client();
    let body = "x".repeat(1024);
    for i in 0..n {
        p.send_sync(
            "/queue/d",
            &format!("{i:04}{body}"),
            &[("persistent", "true")],
        );
    }
    p.disconnect();
    assert!(b.terminate().success());
}

#[test]
fn a_torn_final_write_across_a_segment_roll_never_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Fill the first segment until the next 16 KiB message cannot fit.
    let body = "y".repeat(16 * 1024);
    let mut b = start(dir.path(), CONFIG);
    let mut p = b.client();
    let mut sent = 0u64;
    loop {
        let files = segments(&data);
        let (_, seg) = newest(&files);
        let last_end = rounds(&seg)
            .iter()
            .filter(|r| r.1 == 0)
            .map(|&(pos, _, len)| (pos + 64 + len).div_ceil(BLOCK) * BLOCK)
            .max()
            .unwrap_or(BLOCK) as u64;
        if last_end + 2 * (16 * 1024 + 4096) > SEGMENT {
            break;
        }
        p.send_sync("/queue/fill", &body, &[("persistent", "true")]);
        sent += 1;
        assert!(sent < 100, "the segment never filled");
    }
    // The state the final write starts from: every segment file made
    // (the spare is zero-filled in the background), the journal idle.
    let end = Instant::now() + Duration::from_secs(20);
    while segments(&data).values().any(|b| b.len() as u64 != SEGMENT) {
        assert!(
            Instant::now() < end,
            "segment files never reached full size"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = segments(&data);
    let mut p = b.client();
    p.send_sync("/queue/fill", &body, &[("persistent", "true")]);
    b.kill9();
    let after = segments(&data);
    // The blocks the final write changed, in write order (the old segment's
    // End round, then the new segment). Seals are written only after a
    // sync succeeds, so a torn write never leaves a newer seal behind.
    let mut changed: Vec<(PathBuf, usize)> = Vec::new();
    for (path, new) in &after {
        // A file made since (a spare) was zeros before.
        let mut old = before.get(path).cloned().unwrap_or_default();
        old.resize(new.len(), 0);
        let gen = generation(new);
        for blk in 0..new.len() / BLOCK {
            let r = blk * BLOCK..(blk + 1) * BLOCK;
            if old[r.clone()] == new[r.clone()] {
                continue;
            }
            let is_seal = gen.is_some_and(|g| matches!(round_at(new, r.start, g), Some((1, _))));
            if !is_seal {
                changed.push((path.clone(), blk));
            }
        }
    }
    changed.sort_by_key(|(p, b)| (generation(&after[p]).unwrap_or(u64::MAX), *b));
    assert!(
        changed.len() >= 4,
        "expected an End round and a new segment: {changed:?}"
    );
    let apply = |blocks: &[&(PathBuf, usize)]| -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files: BTreeMap<PathBuf, Vec<u8>> = after
            .keys()
            .map(|p| {
                let mut base = before.get(p).cloned().unwrap_or_default();
                base.resize(after[p].len(), 0);
                (p.clone(), base)
            })
            .collect();
        for (p, blk) in blocks {
            let r = blk * BLOCK..(blk + 1) * BLOCK;
            files.get_mut(p).unwrap()[r.clone()].copy_from_slice(&after[p][r]);
        }
        files
    };
    let mut variants: Vec<(String, Vec<&(PathBuf, usize)>)> = Vec::new();
    for k in 0..=changed.len() {
        variants.push((format!("first {k} blocks"), changed[..k].iter().collect()));
        variants.push((format!("from block {k} on"), changed[k..].iter().collect()));
        if k < changed.len() {
            let hole: Vec<_> = changed
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != k)
                .map(|(_, c)| c)
                .collect();
            variants.push((format!("all but block {k}"), hole));
        }
    }
    for (name, blocks) in variants {
        // (With every block applied this is the final write without any
        // seal that followed it.) Files the previous variant's brokers made
        // are not part of this one.
        for p in segments(&data).keys() {
            if !after.contains_key(p) {
                std::fs::remove_file(p).unwrap();
            }
        }
        write_segments(&apply(&blocks));
        let mut b = Broker::spawn_any(Some(CONFIG), &args(&data), Some(dir.path()));
        assert!(
            b.role_line.starts_with("brokk listening"),
            "{name}: the start failed: {:?}",
            b.role_line
        );
        let n = pending(&b, "/queue/fill");
        if blocks.len() == changed.len() {
            assert_eq!(n, sent + 1, "{name}: the whole write is there");
        }
        assert!(
            (sent..=sent + 1).contains(&n),
            "{name}: {n} messages, {sent} were receipted before the torn write"
        );
        // The journal goes on from the cut and survives another crash.
        let mut p = b.client();
        p.send_sync("/queue/fill", "after", &[("persistent", "true")]);
        b.kill9();
        let b = start(dir.path(), CONFIG);
        assert_eq!(pending(&b, "/queue/fill"), n + 1, "{name}: after the cut");
        drop(b);
    }
}

#[test]
fn a_zeroed_block_in_durable_records_stops_the_start_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    journal_of(dir.path(), 30);
    let files = segments(&data);
    let (path, mut seg) = newest(&files);
    let data_rounds: Vec<_> = rounds(&seg).into_iter().filter(|r| r.1 == 0).collect();
    assert_eq!(data_rounds.len(), 30);
    let (pos, _, _) = data_rounds[10];
    seg[pos..pos + BLOCK].fill(0);
    std::fs::write(&path, &seg).unwrap();
    let err = failed_start(dir.path(), CONFIG);
    assert!(
        err.contains("corrupt") && err.contains(&format!("offset {pos}")),
        "{err}"
    );
    let b = start(dir.path(), &format!("{CONFIG}skip_corrupt = true\n"));
    assert_eq!(pending(&b, "/queue/d"), 29);
}

#[test]
fn a_flipped_bit_in_the_last_durable_round_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    journal_of(dir.path(), 10);
    let files = segments(&data);
    let (path, mut seg) = newest(&files);
    // The newest data round: only the seal after it says it was durable.
    let (pos, _, len) = *rounds(&seg).iter().rfind(|r| r.1 == 0).unwrap();
    seg[pos + 64 + len / 2] ^= 0x10;
    std::fs::write(&path, &seg).unwrap();
    let err = failed_start(dir.path(), CONFIG);
    assert!(err.contains("corrupt"), "{err}");
    let b = start(dir.path(), &format!("{CONFIG}skip_corrupt = true\n"));
    assert_eq!(pending(&b, "/queue/d"), 9);
}

#[test]
fn a_bad_length_in_the_last_segment_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    journal_of(dir.path(), 10);
    let files = segments(&data);
    let (path, mut seg) = newest(&files);
    let data_rounds: Vec<_> = rounds(&seg).into_iter().filter(|r| r.1 == 0).collect();
    // The length of the first record in the 8th round.
    let (pos, _, _) = data_rounds[7];
    seg[pos + 64] ^= 0x01;
    std::fs::write(&path, &seg).unwrap();
    let err = failed_start(dir.path(), CONFIG);
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn a_journal_of_the_first_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    journal_of(dir.path(), 1);
    let files = segments(&data);
    let (path, mut seg) = newest(&files);
    seg[..8].copy_from_slice(b"BRKJNL01");
    std::fs::write(&path, &seg).unwrap();
    let err = failed_start(dir.path(), CONFIG);
    assert!(err.contains("older Brokk"), "{err}");
}
