//! A killed broker lets go of its lock and its connections before the
//! kernel frees its memory.
//!
//! When a process dies, the kernel tears its address space down
//! (`exit_mm`) before it closes its descriptors (`exit_files`), in the
//! last thread to exit. Everything a standby waits for is a descriptor:
//! the file mode's lock, the database's session lock (its connection),
//! the replicated log's sockets, the clients' connections. Freeing memory
//! costs about 0.1 ms per MiB here (measured: a SIGKILLed process holding
//! 48 MiB closed its socket 6.3 ms after the signal, 200 MiB 22 ms), so
//! a master holding a gigabyte of messages would keep its lock for about
//! 100 ms after it is dead, on top of the takeover.
//!
//! The kernel frees an address space when its last user goes. So at start
//! the broker clones a keeper: a process that shares the broker's memory
//! (`CLONE_VM`) but nothing else: it closes every descriptor it was
//! given, blocks every signal it can and waits for the broker to be gone.
//! When the broker dies, its own exit only drops its reference to the
//! memory and goes straight on to close its descriptors; then the keeper
//! exits, and its exit frees the memory, off the failover's path.
//!
//! The keeper runs no Rust code that touches memory beyond its own stack:
//! it shares the broker's heap and even its thread-local storage (no
//! `CLONE_SETTLS`), so it makes raw system calls only, none of which can
//! fail in a way it would have to report. It shows in `ps` as
//! `brokk-keeper`, a child of the broker with the broker's command line
//! and the same resident memory (the same pages, counted twice by tools
//! that add processes up). If it cannot be started the broker runs
//! without it and only dies more slowly.

use std::ffi::c_void;

/// The keeper's stack: it makes a handful of system calls.
const STACK_BYTES: usize = 64 * 1024;

/// Its name in `ps` (at most 15 bytes, NUL-terminated).
const NAME: &[u8; 13] = b"brokk-keeper\0";

/// Starts the keeper; its pid, or why it could not start.
///
/// Call it before the broker opens a file or a socket: the keeper closes
/// the copies of its descriptors at once, but a lock file open at the
/// moment of the clone would have two holders for that moment.
pub fn start() -> std::io::Result<libc::pid_t> {
    let stack: &'static mut [u8] = Box::leak(vec![0u8; STACK_BYTES].into_boxed_slice());
    // The stack grows down from its end, which the ABI wants 16-aligned.
    let top = (stack.as_mut_ptr() as usize + STACK_BYTES) & !15;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // Every signal blocked in the keeper from its first instruction: it
    // shares the broker's memory, so a handler (copied at the clone) run
    // there would act on the broker's state from a second process.
    // SAFETY: plain signal-mask calls on this thread, with valid sets.
    let rc = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut before: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut before);
        // SAFETY: `keeper` runs on its own stack (`top`, leaked, never
        // freed), touches nothing else of this process's memory but its
        // argument, which is a plain integer.
        let rc = libc::clone(
            keeper,
            top as *mut c_void,
            libc::CLONE_VM | libc::SIGCHLD,
            parent as usize as *mut c_void,
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
        rc
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// The keeper's whole life. Raw `syscall`s only (see the module's
/// comment); glibc's wrapper writes `errno` only on failure, and a call
/// that fails here ends the keeper.
///
/// It waits on a pidfd of the broker, which turns readable once the
/// broker's last thread has exited, that is after its descriptors were
/// closed. Not `PR_SET_PDEATHSIG`: the kernel sends that signal when the
/// thread that cloned the keeper exits, and a SIGKILL makes the main
/// thread exit first, so the keeper would drop its share of the memory
/// before the broker's last thread tears it down (measured: the file
/// lock then went 33 ms after the SIGKILL, as without a keeper).
extern "C" fn keeper(parent: *mut c_void) -> libc::c_int {
    let parent = parent as usize as libc::c_long;
    // SAFETY: each call passes integers, a pointer to a static string or
    // to this stack; none touches memory the broker uses.
    unsafe {
        // No lock, socket or file of the broker stays open here.
        if libc::syscall(
            libc::SYS_close_range,
            0 as libc::c_long,
            libc::c_long::from(u32::MAX),
            0 as libc::c_long,
        ) != 0
        {
            libc::syscall(libc::SYS_exit, 0 as libc::c_long);
        }
        let pidfd = libc::syscall(libc::SYS_pidfd_open, parent, 0 as libc::c_long);
        // Still the broker's child after the pidfd was taken: the pidfd is
        // the broker's, not a process that reused its pid.
        if pidfd < 0 || libc::syscall(libc::SYS_getppid) != parent {
            libc::syscall(libc::SYS_exit, 0 as libc::c_long);
        }
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_NAME as libc::c_long,
            NAME.as_ptr(),
        );
        let mut gone = libc::pollfd {
            fd: pidfd as libc::c_int,
            events: libc::POLLIN,
            revents: 0,
        };
        // Every signal but SIGKILL and SIGSTOP is blocked: nothing else
        // interrupts the wait.
        while libc::syscall(
            libc::SYS_ppoll,
            &mut gone as *mut libc::pollfd,
            1 as libc::c_long,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<libc::sigset_t>(),
            0 as libc::c_long,
        ) < 1
        {}
        libc::syscall(libc::SYS_exit, 0 as libc::c_long);
    }
    0
}
