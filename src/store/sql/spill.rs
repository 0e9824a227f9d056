//! Taking over a table larger than memory: past a budget, the `MSG` of
//! each loaded row goes to a scratch file instead of staying in memory,
//! and is read back one row at a time while the shards rebuild their
//! queues (which page it out again past their own windows: see
//! `broker::paging`). The file is written once, per page of rows, never
//! synced (the table is the store), and removed when the load is dropped.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use bytes::Bytes;

use super::{MsgRow, SqlError};

const WHAT: &str = "spill loaded messages past memory";

#[derive(Debug)]
pub struct Spill {
    path: PathBuf,
    file: File,
    at: u64,
    /// `MSG` bytes kept in memory so far.
    held: usize,
    budget: usize,
    /// Row id -> where its `MSG` is in the file.
    spilled: HashMap<i64, (u64, u32)>,
}

fn io(e: std::io::Error) -> SqlError {
    SqlError::Query {
        what: WHAT,
        reason: e.to_string(),
    }
}

impl Spill {
    /// A spill file at `path` keeping at most `budget` bytes of `MSG` in
    /// memory.
    pub fn create(path: PathBuf, budget: usize) -> Result<Spill, SqlError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io)?;
        Ok(Spill {
            path,
            file,
            at: 0,
            held: 0,
            budget,
            spilled: HashMap::new(),
        })
    }

    /// Rows just loaded: those past the budget give their `MSG` to the
    /// file (one write for the page).
    pub fn page(&mut self, rows: &mut [MsgRow]) -> Result<(), SqlError> {
        let mut buf = Vec::new();
        let start = self.at;
        for r in rows {
            if self.held + r.msg.len() <= self.budget {
                self.held += r.msg.len();
                continue;
            }
            let at = start + buf.len() as u64;
            buf.extend_from_slice(&r.msg);
            self.spilled.insert(r.id, (at, r.msg.len() as u32));
            r.msg = Bytes::new();
        }
        if !buf.is_empty() {
            self.file.write_all_at(&buf, start).map_err(io)?;
            self.at += buf.len() as u64;
        }
        Ok(())
    }

    /// The `MSG` of a loaded row, from memory or from the file.
    pub fn msg(&self, row: &MsgRow) -> Result<Bytes, SqlError> {
        match self.spilled.get(&row.id) {
            None => Ok(row.msg.clone()),
            Some(&(at, len)) => {
                let mut v = vec![0u8; len as usize];
                self.file.read_exact_at(&mut v, at).map_err(io)?;
                Ok(Bytes::from(v))
            }
        }
    }

    pub fn spilled_rows(&self) -> usize {
        self.spilled.len()
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
