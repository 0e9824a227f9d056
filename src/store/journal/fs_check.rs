//! A look at the file system under the journal, for advice at start.
//!
//! Every journal write changes the segment file's mtime. Without `lazytime`
//! ext4 and xfs write that change through their own journal, so a data
//! write can wait for the file system's periodic commit: on the CI VM that
//! showed as 10-50 ms write stalls every few seconds, the largest part of
//! the receipt-latency tail. With `lazytime` the timestamp stays in memory
//! (fdatasync does not need it), and the stalls go.

use std::path::{Path, PathBuf};

/// A mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
    /// Per-mount and per-superblock options together.
    pub options: Vec<String>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount holding `dir` (an absolute, canonical path): the longest mount
/// point it lies under.
pub fn mount_of(mountinfo: &str, dir: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(point), Some(mount_opts), Some(fstype)) =
            (left.get(4), left.get(5), right.first())
        else {
            continue;
        };
        let point = PathBuf::from(unescape(point));
        if !dir.starts_with(&point)
            || best
                .as_ref()
                .is_some_and(|b| b.point.as_os_str().len() > point.as_os_str().len())
        {
            continue;
        }
        let options = mount_opts
            .split(',')
            .chain(right.get(2).map_or("", |s| *s).split(','))
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect();
        best = Some(Mount {
            point,
            fstype: (*fstype).to_owned(),
            options,
        });
    }
    best
}

/// Advice when the journal's file system updates timestamps on disk, or
/// None (also when the mounts cannot be read: this is advice only).
pub fn lazytime_advice(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let m = mount_of(&mountinfo, &dir)?;
    let in_memory = matches!(m.fstype.as_str(), "tmpfs" | "ramfs");
    if in_memory || m.options.iter().any(|o| o == "lazytime") {
        return None;
    }
    Some(format!(
        "the journal in {} is on {} ({}) mounted without lazytime: every journal write \
         updates the segment's mtime through the file system's own journal, which stalls \
         writes (and receipts) for tens of ms at its commits; remount with -o lazytime \
         (see tuning/README.md)",
        dir.display(),
        m.point.display(),
        m.fstype
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
30 27 254:1 / /srv/brokk\\040data rw,noatime - xfs /dev/vdb rw,lazytime,attr2
31 27 0:40 / /srv rw - tmpfs tmpfs rw
";

    #[test]
    fn the_longest_mount_point_holds_the_directory() {
        let m = mount_of(MOUNTINFO, Path::new("/srv/brokk data/shard-0")).expect("found");
        assert_eq!(m.point, PathBuf::from("/srv/brokk data"));
        assert_eq!(m.fstype, "xfs");
        assert!(m.options.iter().any(|o| o == "lazytime"));
        let m = mount_of(MOUNTINFO, Path::new("/srv/other")).expect("found");
        assert_eq!(m.fstype, "tmpfs");
        let m = mount_of(MOUNTINFO, Path::new("/var/lib/brokk")).expect("found");
        assert_eq!(m.fstype, "ext4");
        assert!(!m.options.iter().any(|o| o == "lazytime"));
    }

    #[test]
    fn a_prefix_of_a_name_is_not_a_parent() {
        // "/srv/brokk data" must not hold "/srv/brokk datastore".
        let m = mount_of(MOUNTINFO, Path::new("/srv/brokk datastore")).expect("found");
        assert_eq!(m.point, PathBuf::from("/srv"));
    }
}
