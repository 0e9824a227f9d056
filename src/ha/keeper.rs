//! A killed broker lets go of its lock and its database and ZooKeeper
//! connections before the kernel frees its memory.
//!
//! When a process dies, the kernel tears its address space down
//! (`exit_mm`) before it closes its descriptors (`exit_files`), in the
//! last thread to exit. What a standby waits for is a descriptor: the file
//! mode's lock, the database session that holds the session lock, the
//! ZooKeeper and replication connections. Freeing memory costs about 0.1
//! ms per MiB here (measured: a SIGKILLed process holding 48 MiB closed
//! its socket 6.3 ms after the signal, 200 MiB 22 ms; a broker holding 350
//! MiB of messages released its file lock 40-65 ms after it), so the
//! bigger the master, the later its standby could start.
//!
//! The kernel frees an address space when its last user goes. So at start
//! the broker clones a keeper: a process that shares the broker's memory
//! (`CLONE_VM`) but not its descriptors (it gets a copy of the table,
//! taken before the broker opened its lock or a socket, and closes all of
//! it but one pidfd of the broker), blocks every signal but SIGKILL and
//! SIGSTOP and waits for the broker to be gone. When the broker dies, its
//! own exit only drops its reference to the memory and goes straight on to
//! close its descriptors (the same broker's file lock: 0.4-0.7 ms after
//! the SIGKILL); then the keeper exits, and its exit frees the memory, off
//! the failover's path.
//!
//! Not every descriptor closes at once: the client connections have
//! io_uring requests in flight, which hold them open until the kernel
//! tears glommio's rings down, and the rings' mappings are part of the
//! memory. Clients saw their connection end 15-40 ms after the SIGKILL
//! with and without a keeper (bench/RESULTS.md, session 21).
//!
//! The keeper waits on a pidfd, not for `PR_SET_PDEATHSIG`: the kernel
//! sends that signal when the *thread* that cloned the keeper exits, and
//! a SIGKILL makes the main thread exit first, so the keeper would drop its
//! share of the memory before the broker's last thread tore it down
//! (measured: the file lock went 33 ms after the SIGKILL, as without a
//! keeper). A pidfd turns readable once the broker's last thread has
//! exited, after its descriptors were closed.
//!
//! The keeper runs on a stack of its own (mapped, with a guard page) and
//! makes raw system calls only: it shares the broker's heap and even its
//! thread-local storage (no `CLONE_SETTLS`), so it must not run code that
//! touches either. glibc's `syscall()` writes `errno` (the broker main
//! thread's) only when a call fails; what could fail is tried first by
//! the broker, and a failure in the keeper ends it. It dumps no core (a
//! core of the shared memory would be the broker's whole heap). It shows
//! in `ps` as `brokk-keeper`, a child of the broker with the broker's
//! command line and the same resident memory (the same pages, counted
//! twice by tools that add processes up; `pgrep -x brokk` finds the broker
//! alone). A keeper stopped by SIGSTOP holds the memory, and nothing else,
//! until it is continued. If it cannot be started the broker runs without
//! it and only lets go more slowly.

use std::ffi::c_void;
use std::io;

/// The keeper's stack: it makes a handful of system calls.
const STACK_BYTES: usize = 64 * 1024;
/// Below the stack, never mapped readable: an overflow faults.
const GUARD_BYTES: usize = 4096;

/// Its name in `ps` (at most 15 bytes, NUL-terminated).
const NAME: &[u8; 13] = b"brokk-keeper\0";

/// Starts the keeper; its pid, or why it could not start.
///
/// Call it before the broker opens a file or a socket, while it has one
/// thread: the keeper closes its copies of the descriptors at once, but a
/// lock file open at the moment of the clone would have two holders for
/// that moment.
pub fn start() -> io::Result<libc::pid_t> {
    // What the keeper needs, tried here where a failure can be reported:
    // a pidfd of the broker (Linux 5.3; the keeper inherits it) and
    // close_range (5.9; a range with nothing open in it closes nothing).
    // SAFETY: plain integer system calls.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    let pidfd = pidfd as libc::c_int;
    // SAFETY: as above; closes no descriptor (none is that high).
    if unsafe { libc::syscall(libc::SYS_close_range, u32::MAX - 1, u32::MAX, 0) } != 0 {
        let e = io::Error::last_os_error();
        // SAFETY: our pidfd, closed once.
        unsafe { libc::close(pidfd) };
        return Err(e);
    }
    let result = clone_keeper(pidfd);
    // SAFETY: our pidfd, closed once; the keeper has its own copy.
    unsafe { libc::close(pidfd) };
    result
}

fn clone_keeper(pidfd: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: a fresh anonymous mapping, unmapped only if no keeper runs
    // on it (one may run on it until the broker is gone); its lowest page
    // made inaccessible.
    let stack = unsafe {
        let base = libc::mmap(
            std::ptr::null_mut(),
            GUARD_BYTES + STACK_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        );
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if libc::mprotect(base, GUARD_BYTES, libc::PROT_NONE) != 0 {
            let e = io::Error::last_os_error();
            libc::munmap(base, GUARD_BYTES + STACK_BYTES);
            return Err(e);
        }
        base
    };
    // The stack grows down from its end (page-aligned, so 16-aligned).
    let top = stack as usize + GUARD_BYTES + STACK_BYTES;
    // Every signal blocked in the keeper from its first instruction: it
    // shares the broker's memory, so a handler (copied at the clone) run
    // there would act on the broker's state from a second process. The raw
    // call, because glibc's own sigprocmask leaves its two internal
    // signals (SIGCANCEL, SIGSETXID) open; nothing sends them while the
    // broker has one thread, and the mask is given back right after.
    let all: u64 = !0;
    let mut before: u64 = 0;
    let kernel_set = std::mem::size_of::<u64>() as libc::c_long;
    // SAFETY: rt_sigprocmask with valid 8-byte kernel signal sets.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            &mut before as *mut u64,
            kernel_set,
        );
    }
    // SAFETY: `keeper` runs on its own stack (`top`), touches nothing else
    // of this process's memory, and its argument is a plain integer.
    let pid = unsafe {
        libc::clone(
            keeper,
            top as *mut c_void,
            libc::CLONE_VM | libc::SIGCHLD,
            pidfd as usize as *mut c_void,
        )
    };
    let cloned = if pid < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: our mapping, which no keeper runs on.
        unsafe { libc::munmap(stack, GUARD_BYTES + STACK_BYTES) };
        Err(e)
    } else {
        Ok(pid)
    };
    // SAFETY: as above, restoring the mask we had.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &before as *const u64,
            std::ptr::null_mut::<u64>(),
            kernel_set,
        );
    }
    cloned
}

/// The keeper's whole life (see the module's comment). `arg` is the
/// number of its copy of the broker's pidfd.
extern "C" fn keeper(arg: *mut c_void) -> libc::c_int {
    let pidfd = arg as usize as libc::c_long;
    let exit = || {
        // SAFETY: ends this process only.
        unsafe { libc::syscall(libc::SYS_exit, 0 as libc::c_long) };
    };
    // SAFETY: each call passes integers, a pointer to a static string or
    // to this stack; none touches memory the broker uses.
    unsafe {
        // No lock, socket or file of the broker stays open here: all but
        // the pidfd closes.
        let below = pidfd == 0
            || libc::syscall(
                libc::SYS_close_range,
                0 as libc::c_long,
                pidfd - 1,
                0 as libc::c_long,
            ) == 0;
        let above = libc::syscall(
            libc::SYS_close_range,
            pidfd + 1,
            libc::c_long::from(u32::MAX),
            0 as libc::c_long,
        ) == 0;
        if !(below && above) {
            exit();
        }
        // Its own limit (a process's, not shared): no core of the broker's
        // whole memory from here.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::syscall(
            libc::SYS_prlimit64,
            0 as libc::c_long,
            libc::RLIMIT_CORE as libc::c_long,
            &no_core as *const libc::rlimit,
            std::ptr::null_mut::<libc::rlimit>(),
        );
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
        // With every signal blocked nothing interrupts the wait (a stop
        // and continue restarts it).
        while libc::syscall(
            libc::SYS_ppoll,
            &mut gone as *mut libc::pollfd,
            1 as libc::c_long,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<libc::sigset_t>(),
            0 as libc::c_long,
        ) < 1
        {}
    }
    exit();
    0
}
