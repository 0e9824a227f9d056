//! Shared-file-system mastership: an exclusive POSIX record lock (fcntl,
//! which NFS honours) on `<dir>/lock`. The standby blocks in the kernel on
//! the lock - no polling - and gets it the moment the master's process dies.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct FileLock {
    path: PathBuf,
    /// Held open for as long as we are master: closing it releases the lock.
    file: File,
    inode: u64,
}

fn lock(file: &File, wait: bool) -> std::io::Result<bool> {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    loop {
        // SAFETY: a valid fd and a fully initialised flock struct.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) if !wait => return Ok(false),
            _ => return Err(e),
        }
    }
}

impl FileLock {
    /// Takes the lock if it is free.
    pub fn try_acquire(dir: &Path) -> Result<Option<FileLock>> {
        loop {
            let (path, file) = open(dir)?;
            if !lock(&file, false).with_context(|| format!("cannot lock {}", path.display()))? {
                return Ok(None);
            }
            if names(&path, &file)? {
                return Ok(Some(FileLock::held(path, file)?));
            }
        }
    }

    /// Blocks until the lock is ours.
    pub fn acquire(dir: &Path) -> Result<FileLock> {
        loop {
            let (path, file) = open(dir)?;
            lock(&file, true).with_context(|| format!("cannot lock {}", path.display()))?;
            if names(&path, &file)? {
                return FileLock::held(path, file);
            }
            // The file we waited on was removed or replaced while we
            // waited (another broker may hold the new one): its lock is
            // worth nothing, and taking over with it would raise the epoch
            // over a live master. Wait on the file the path names now.
            tracing::info!(role = "standby", lock = %path.display(), "the lock file was replaced while waiting; waiting on the new one");
        }
    }

    fn held(path: PathBuf, mut file: File) -> Result<FileLock> {
        let inode = file.metadata()?.ino();
        // For operators: who holds it (the lock itself is what counts).
        let _ = file.set_len(0);
        let _ = writeln!(file, "pid {} host {}", std::process::id(), hostname());
        Ok(FileLock { path, file, inode })
    }

    /// Still ours: Ok(true) while the lock file at the path is the one we
    /// locked, Ok(false) once it was deleted or replaced (as happens when a
    /// shared mount is re-made, or an operator removes it), Err when that
    /// cannot be told.
    pub fn check(&self) -> std::io::Result<bool> {
        let _ = &self.file;
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok(m.ino() == self.inode),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open(dir: &Path) -> Result<(PathBuf, File)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok((path, file))
}

/// Whether `path` still names the file we opened as `file`.
fn names(path: &Path, file: &File) -> Result<bool> {
    let ours = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .ino();
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.ino() == ours),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot stat {}", path.display())),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
