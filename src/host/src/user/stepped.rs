//! A reference count of guest instructions, independent of the translator: the guest runs
//! natively (through the loader) in a traced child that the runner single-steps from the
//! entry point to its exit. It is slow (two context switches per instruction), so it suits
//! small programs; it checks the counted translated run (`Transitions::Counted`).
//!
//! The CPU traps after every iteration of a `rep` string instruction, leaving `rip` on it
//! until the last one; a step that leaves `rip` in place is therefore not counted, so a
//! `rep` instruction counts once, as it does in the counted run.

use super::child::Ended;
use super::elf;
use super::guest::Guest;
use std::io;

/// One single step of stopped tracee `pid`; `Err` carries how it ended if it did.
fn step(pid: libc::pid_t) -> io::Result<Result<(), Ended>> {
    // SAFETY: `pid` is our stopped tracee.
    if unsafe { libc::ptrace(libc::PTRACE_SINGLESTEP, pid, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    wait(pid)
}

fn wait(pid: libc::pid_t) -> io::Result<Result<(), Ended>> {
    let mut status = 0;
    // SAFETY: waits for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(io::Error::last_os_error());
    }
    Ok(if libc::WIFEXITED(status) {
        Err(Ended::Exited(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Err(Ended::Signaled(libc::WTERMSIG(status)))
    } else {
        Ok(())
    })
}

fn rip(pid: libc::pid_t) -> io::Result<u64> {
    // SAFETY: all-zero bytes are a valid register set; GETREGS fills it for our tracee.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our stopped tracee and `regs` is writable.
    if unsafe { libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(regs.rip)
}

/// Loads `argv` with `env` in a forked, traced child and single-steps it natively; returns
/// how it ended and the number of instructions it executed from its entry point on (the
/// final `exit_group` included). Call only from a single-threaded runner.
pub fn count_native(argv: &[Vec<u8>], env: &[Vec<u8>]) -> io::Result<(Ended, u64)> {
    let path = String::from_utf8_lossy(&argv[0]).into_owned();
    let entry = elf::parse(&std::fs::read(&path)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}")))?
        .entry;
    // SAFETY: the runner is single-threaded, so the child's copy of the heap is consistent.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let status = match Guest::load(&path, argv, env) {
            // SAFETY: asks to be traced by the parent and stops until it is ready; then the
            // guest takes over this disposable child.
            Ok(guest) => unsafe {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                libc::raise(libc::SIGSTOP);
                guest.enter_natively()
            },
            Err(e) => {
                eprintln!("kdbt-user: {path}: {e}");
                120
            }
        };
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(status) };
    }
    if let Err(ended) = wait(pid)? {
        return Ok((ended, 0));
    }
    // The runner's own instructions between the stop and the guest entry are not counted.
    while rip(pid)? != entry {
        if let Err(ended) = step(pid)? {
            return Ok((ended, 0));
        }
    }
    let (mut insns, mut at) = (0u64, entry);
    loop {
        if let Err(ended) = step(pid)? {
            return Ok((ended, insns + 1));
        }
        let next = rip(pid)?;
        if next != at {
            insns += 1;
            at = next;
        }
    }
}
