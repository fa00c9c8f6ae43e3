//! Runs one guest in a forked child so that a crash or a stray write cannot harm the
//! harness; its stdout goes to a file and a side pipe brings back a report.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled(i32),
}

/// How a child ended and what it cost: wall time from fork (or spawn) to reaping, and the
/// CPU time (user + system) it used, which machine load does not inflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub ended: Ended,
    pub wall: Duration,
    pub cpu: Duration,
}

/// What came back from a child: how it ended and the report its body wrote.
#[derive(Debug)]
pub struct ChildRun {
    pub reaped: Reaped,
    pub report: Vec<u8>,
}

/// Waits for child `pid`, started at `started`.
pub fn reap(pid: libc::pid_t, started: Instant) -> io::Result<Reaped> {
    let mut status = 0;
    // SAFETY: all-zero bytes are a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing its status and resource usage.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        return Err(io::Error::last_os_error());
    }
    let wall = started.elapsed();
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let ended = if libc::WIFEXITED(status) {
        Ended::Exited(libc::WEXITSTATUS(status))
    } else {
        Ended::Signaled(libc::WTERMSIG(status))
    };
    Ok(Reaped {
        ended,
        wall,
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
    })
}

/// Forks; the child gets `stdin` as fd 0 and `stdout` as fd 1, runs `body` with the
/// write end of the report pipe, and exits with the status `body` returns (a panic
/// exits 101). Only call from a single-threaded process: the child keeps no other thread.
pub fn run_in_child(
    stdin: &File,
    stdout: &File,
    body: impl FnOnce(&mut File) -> i32,
) -> io::Result<ChildRun> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by exactly these Files.
    let (mut report_rx, mut report_tx) =
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let started = Instant::now();
    // SAFETY: the harness is single-threaded, so the child's copy of the heap is consistent.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        drop(report_rx);
        // SAFETY: dup2 onto 0 and 1 only replaces the child's stdio.
        let redirected = unsafe {
            libc::dup2(stdin.as_raw_fd(), 0) == 0 && libc::dup2(stdout.as_raw_fd(), 1) == 1
        };
        let status = if redirected {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut report_tx)))
                .unwrap_or(101)
        } else {
            102
        };
        let _ = report_tx.flush();
        // SAFETY: _exit ends the child without running the parent's atexit handlers twice.
        unsafe { libc::_exit(status) };
    }
    drop(report_tx);
    let mut report = Vec::new();
    report_rx.read_to_end(&mut report)?;
    Ok(ChildRun {
        reaped: reap(pid, started)?,
        report,
    })
}
