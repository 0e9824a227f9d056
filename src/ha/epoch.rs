//! `<dir>/epoch`: which broker is master, as the store itself records it.
//!
//! A lock alone cannot fence: an NFS lock is lost silently when its lease
//! expires, and a paused master resumes believing it still holds it. So a
//! broker that gets the lock raises the epoch (reads it, writes +1 with its
//! own identity) before it reads the journal, and every master re-reads the
//! file often: the first time it finds another broker's record there, it
//! knows it has been replaced and stops (see [`super::fence`]).
//!
//! The file is replaced atomically (temp file, fsync, rename, directory
//! fsync), so a reader sees the old record or the new one, never a mix. It
//! is opened anew at every read: on NFS, close-to-open consistency is what
//! makes a fresh open see another client's rename.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

const HEADER: &str = "brokk-epoch 1";
const FILE: &str = "epoch";
/// The temp file a raise writes before renaming it over `epoch`. Two
/// brokers raising at once (only possible when both think they hold the
/// lock) are not stopped here: the later rename wins, and the other's
/// first mastership check finds an epoch that is not its own and exits.
const TEMP: &str = "epoch.tmp";

/// One broker's claim to be master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRecord {
    pub epoch: u64,
    /// Who raised it: host, pid and a random nonce (a restarted broker with
    /// the same pid is still someone else).
    pub owner: String,
    /// How long a successor must wait after raising the epoch over this
    /// one before reading the journal: this broker's own takeover wait,
    /// which covers its fencing interval (see `ha.takeover_wait_ms`).
    /// Recorded so that brokers with different settings still wait long
    /// enough for each other.
    pub takeover_wait_ms: u64,
}

impl EpochRecord {
    fn encode(&self) -> String {
        format!(
            "{HEADER}\nepoch {}\nowner {}\ntakeover_wait_ms {}\n",
            self.epoch, self.owner, self.takeover_wait_ms
        )
    }

    fn parse(text: &str) -> Result<EpochRecord> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            bail!("unknown format (expected '{HEADER}')");
        }
        let (mut epoch, mut owner, mut wait) = (None, None, None);
        for line in lines {
            if let Some(v) = line.strip_prefix("epoch ") {
                epoch = Some(v.trim().parse::<u64>().context("bad epoch")?);
            } else if let Some(v) = line.strip_prefix("owner ") {
                owner = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("takeover_wait_ms ") {
                wait = Some(v.trim().parse::<u64>().context("bad takeover_wait_ms")?);
            }
        }
        Ok(EpochRecord {
            epoch: epoch.context("no epoch")?,
            owner: owner.context("no owner")?,
            takeover_wait_ms: wait.context("no takeover_wait_ms")?,
        })
    }
}

/// The record in `dir`, or None if no broker ever raised an epoch there.
pub fn read(dir: &Path) -> Result<Option<EpochRecord>> {
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => EpochRecord::parse(&text)
            .map(Some)
            .with_context(|| format!("{} is not a Brokk epoch file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// What [`raise`] found and wrote.
#[derive(Debug)]
pub struct Raised {
    pub previous: Option<EpochRecord>,
    pub ours: EpochRecord,
}

/// Makes `owner` the holder of the next epoch. Call only while holding the
/// master lock. Returns once the new record is durable (file and name).
pub fn raise(dir: &Path, owner: &str, takeover_wait_ms: u64) -> Result<Raised> {
    let previous = read(dir)?;
    let ours = EpochRecord {
        epoch: previous.as_ref().map_or(0, |p| p.epoch) + 1,
        owner: owner.to_string(),
        takeover_wait_ms,
    };
    let tmp = dir.join(TEMP);
    let path = dir.join(FILE);
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(ours.encode().as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync directory {}", dir.display()))?;
    Ok(Raised { previous, ours })
}

/// A name no other broker process (here or on another host, now or
/// later) has: host, pid and 64 random bits.
pub fn owner_id() -> String {
    let mut nonce = [0u8; 8];
    // SAFETY: the buffer is valid for its length; flags 0 = urandom pool.
    let n = unsafe { libc::getrandom(nonce.as_mut_ptr().cast(), nonce.len(), 0) };
    let nonce = if n == nonce.len() as isize {
        u64::from_le_bytes(nonce)
    } else {
        // No entropy source: the clock still tells restarts apart.
        super::fence::now_ns()
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{host}/{}/{nonce:016x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_raise_takes_the_next_epoch_and_replaces_the_owner() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()).unwrap(), None);
        let a = raise(d.path(), "a", 200).unwrap();
        assert_eq!(a.previous, None);
        assert_eq!(a.ours.epoch, 1);
        assert_eq!(read(d.path()).unwrap().as_ref(), Some(&a.ours));
        let b = raise(d.path(), "b", 500).unwrap();
        assert_eq!(b.previous.as_ref(), Some(&a.ours));
        assert_eq!(b.ours.epoch, 2);
        assert_eq!(b.ours.owner, "b");
        assert_eq!(read(d.path()).unwrap().unwrap().takeover_wait_ms, 500);
        assert!(!d.path().join(TEMP).exists(), "the temp file was renamed");
    }

    #[test]
    fn a_damaged_file_is_an_error_not_epoch_zero() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE), "brokk-epoch 1\nepoch x\n").unwrap();
        let e = format!("{:#}", read(d.path()).unwrap_err());
        assert!(e.contains("not a Brokk epoch file"), "{e}");
        assert!(raise(d.path(), "a", 200).is_err());
    }

    #[test]
    fn owner_ids_differ_between_calls() {
        assert_ne!(owner_id(), owner_id());
    }
}
