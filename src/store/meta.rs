//! `<dir>/meta`: facts about the data that outlive any one broker process.
//! The shard count is one: destinations are journaled by the shard that owns
//! them, so a broker taking over uses the recorded count whatever its cores.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

const HEADER: &str = "brokk-store 1";

/// Returns the shard count recorded in `dir`, recording `shards` first if
/// the directory is new.
pub fn load_or_init(dir: &Path, shards: usize) -> Result<usize> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let path = dir.join("meta");
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text)
            .with_context(|| format!("{} is not a Brokk store meta file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = dir.join("meta.tmp");
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            write!(f, "{HEADER}\nshards {shards}\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()?;
            // The data directory may be new as well: its own name, too.
            if let Some(parent) = dir.canonicalize()?.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(shards)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn parse(text: &str) -> Result<usize> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        bail!("unknown format (expected '{HEADER}')");
    }
    for line in lines {
        if let Some(n) = line.strip_prefix("shards ") {
            let n: usize = n.trim().parse().context("bad shard count")?;
            if n == 0 || n > crate::config::MAX_SHARDS {
                bail!("shard count {n} out of range");
            }
            return Ok(n);
        }
    }
    bail!("no shard count")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_records_and_later_starts_use_the_recorded_count() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load_or_init(d.path(), 3).unwrap(), 3);
        assert_eq!(load_or_init(d.path(), 8).unwrap(), 3);
        std::fs::write(d.path().join("meta"), "garbage").unwrap();
        assert!(load_or_init(d.path(), 2).is_err());
    }
}
