//! The side runtime: one small tokio runtime on its own thread per process,
//! for the clients that only have tokio drivers (SQL today; ZooKeeper and
//! HTTP later). Shards never block on it: they hand it batches through
//! channels and await the answers (flume's async side works from glommio).
//! A wake-up across CPUs costs ~25-30 µs each way on these machines, so
//! what crosses is a batch, never one message.

use std::future::Future;
use std::sync::OnceLock;

use anyhow::{Context, Result};

static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();

/// The runtime, started on first use (a thread named `brokk-side`).
pub fn handle() -> Result<tokio::runtime::Handle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the side runtime")?;
    let h = rt.handle().clone();
    if HANDLE.set(h.clone()).is_err() {
        // Another thread won the race: use its runtime.
        return Ok(HANDLE.get().expect("set").clone());
    }
    std::thread::Builder::new()
        .name("brokk-side".into())
        .spawn(move || {
            // Runs until the process ends.
            rt.block_on(std::future::pending::<()>());
        })
        .context("cannot start the side runtime's thread")?;
    Ok(h)
}

/// Runs `f` on the side runtime and blocks this (non-shard) thread for its
/// result: for start-up work before the shards run.
pub fn block_on<F>(f: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let h = handle()?;
    let (tx, rx) = std::sync::mpsc::channel();
    h.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().context("the side runtime stopped")
}
