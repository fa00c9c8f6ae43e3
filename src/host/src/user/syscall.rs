//! The guest's system calls, executed by the runner on the guest's behalf. The guest lives
//! in the runner's own process, so most calls pass straight through; the few that would
//! clash with the runner itself (program break, TLS base, signals, process creation, exit)
//! are emulated or refused.

use super::image::{page_up, Image};
use std::arch::asm;

const ENOSYS: i64 = 38;
const EFAULT: i64 = 14;
const EINVAL: i64 = 22;
const ARCH_SET_FS: u64 = 0x1002;
const ARCH_GET_FS: u64 = 0x1003;
/// `struct sigaction` as the kernel reads it: handler, flags, restorer, 64-bit mask.
const KERNEL_SIGACTION_SIZE: usize = 32;

/// Executes system call `nr` with `args` and returns the kernel's raw result (`-errno` on
/// failure). It never touches `errno`, so it is usable while the guest's TLS base is live.
///
/// # Safety
/// The call may do anything a system call can (unmap memory, write through pointers):
/// the caller vouches for its arguments.
pub unsafe fn raw_syscall(nr: u64, args: [u64; 6]) -> u64 {
    let ret: u64;
    // SAFETY: forwarded to the caller; `syscall` clobbers only rcx and r11 besides rax.
    unsafe {
        asm!("syscall",
            inlateout("rax") nr => ret,
            in("rdi") args[0], in("rsi") args[1], in("rdx") args[2],
            in("r10") args[3], in("r8") args[4], in("r9") args[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack));
    }
    ret
}

fn neg(errno: i64) -> u64 {
    (-errno) as u64
}

/// What the runner does after a guest system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Put this value in the guest's rax and resume after the `syscall` instruction.
    Resume(u64),
    /// The guest called `exit` or `exit_group` with this status.
    Exit(i32),
}

/// Copies `bytes` to guest address `addr` through the kernel, so a bad guest pointer yields
/// `EFAULT` as it would for a real system call instead of crashing the runner.
fn write_guest(addr: u64, bytes: &[u8]) -> Result<(), u64> {
    let local = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: process_vm_writev on our own pid checks the destination and only reads `bytes`.
    let n = unsafe {
        raw_syscall(
            libc::SYS_process_vm_writev as u64,
            [
                libc::getpid() as u64,
                &local as *const _ as u64,
                1,
                &remote as *const _ as u64,
                1,
                0,
            ],
        )
    };
    if n == bytes.len() as u64 {
        Ok(())
    } else {
        Err(neg(EFAULT))
    }
}

/// The guest's view of the process state that the runner must not share with it.
/// Guarantees: the guest's break stays inside the region reserved by the loader (memory
/// above the break reads as zero when the break grows again, as with the kernel's brk),
/// and the guest's FS base is only recorded here, never installed in the runner.
#[derive(Debug)]
pub struct GuestOs {
    brk_start: u64,
    brk_limit: u64,
    brk: u64,
    /// The guest's TLS base, to install whenever guest code runs.
    pub fs_base: u64,
    /// How many system calls the guest made (each one a guest instruction the runner did).
    pub syscalls: u64,
}

impl GuestOs {
    pub fn new(image: &Image) -> GuestOs {
        GuestOs {
            brk_start: image.brk_start,
            brk_limit: image.brk_limit,
            brk: image.brk_start,
            fs_base: 0,
            syscalls: 0,
        }
    }

    /// Carries out guest system call `nr` with `args`.
    ///
    /// # Safety
    /// Passed-through calls act on this process with guest-chosen arguments: the caller must
    /// be a disposable (forked) process whose memory the guest may legitimately change.
    pub unsafe fn syscall(&mut self, nr: u64, args: [u64; 6]) -> Outcome {
        self.syscalls += 1;
        let nr_i = nr as i64;
        let ret = match nr_i {
            libc::SYS_exit | libc::SYS_exit_group => return Outcome::Exit(args[0] as i32),
            libc::SYS_brk => self.brk(args[0]),
            libc::SYS_arch_prctl => self.arch_prctl(args),
            libc::SYS_rt_sigaction => zero_old(args[2], KERNEL_SIGACTION_SIZE),
            libc::SYS_rt_sigprocmask => zero_old(args[2], args[3] as usize),
            // The kernel would write into guest TLS behind the runner's back: refuse, and
            // glibc carries on without rseq, robust futexes and the tid pointer.
            libc::SYS_rseq | libc::SYS_set_robust_list => neg(ENOSYS),
            libc::SYS_set_tid_address => {
                // SAFETY: gettid has no arguments and no effects.
                unsafe { raw_syscall(libc::SYS_gettid as u64, [0; 6]) }
            }
            libc::SYS_clone
            | libc::SYS_clone3
            | libc::SYS_fork
            | libc::SYS_vfork
            | libc::SYS_execve
            | libc::SYS_execveat
            | libc::SYS_sigaltstack
            | libc::SYS_rt_sigreturn
            | libc::SYS_rt_sigsuspend
            | libc::SYS_signalfd
            | libc::SYS_signalfd4 => neg(ENOSYS),
            // SAFETY: forwarded to the caller's contract.
            _ => unsafe { raw_syscall(nr, args) },
        };
        Outcome::Resume(ret)
    }

    /// brk as the kernel does it: an out-of-range request leaves the break where it was,
    /// and the result is always the current break.
    fn brk(&mut self, want: u64) -> u64 {
        if want < self.brk_start || want > self.brk_limit {
            return self.brk;
        }
        let (keep, old_end) = (page_up(want), page_up(self.brk));
        if keep < old_end {
            // SAFETY: the range lies inside the break region, which only the guest uses;
            // MADV_DONTNEED makes its private anonymous pages read as zero again.
            unsafe {
                libc::madvise(
                    keep as *mut libc::c_void,
                    (old_end - keep) as usize,
                    libc::MADV_DONTNEED,
                )
            };
        }
        self.brk = want;
        want
    }

    fn arch_prctl(&mut self, args: [u64; 6]) -> u64 {
        match args[0] {
            ARCH_SET_FS => {
                self.fs_base = args[1];
                0
            }
            ARCH_GET_FS => match write_guest(args[1], &self.fs_base.to_le_bytes()) {
                Ok(()) => 0,
                Err(e) => e,
            },
            // ARCH_SET_GS & co would not clash with the runner, but no applet needs them.
            _ => neg(EINVAL),
        }
    }
}

/// For signal calls the guest gets "nothing installed, nothing blocked": the old-value
/// buffer, if any, is zeroed (SIG_DFL, empty mask), and nothing changes in the runner.
fn zero_old(old: u64, len: usize) -> u64 {
    if old == 0 {
        return 0;
    }
    if len > 128 {
        return neg(EINVAL);
    }
    match write_guest(old, &vec![0u8; len]) {
        Ok(()) => 0,
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os_with_break_region(region: &mut [u8]) -> GuestOs {
        let start = region.as_mut_ptr() as u64;
        let image = Image {
            entry: 0,
            phdr: 0,
            phent: 0,
            phnum: 0,
            brk_start: start,
            brk_limit: start + region.len() as u64,
        };
        GuestOs::new(&image)
    }

    #[test]
    fn raw_syscall_returns_negative_errno() {
        // SAFETY: close(-1) has no effect besides failing.
        let r = unsafe { raw_syscall(libc::SYS_close as u64, [u64::MAX, 0, 0, 0, 0, 0]) };
        assert_eq!(r as i64, -libc::EBADF as i64);
    }

    #[test]
    fn brk_grows_within_the_region_and_refuses_beyond_it() {
        let mut region = vec![0u8; 8192];
        let mut os = os_with_break_region(&mut region);
        let start = os.brk_start;
        // SAFETY: brk is emulated and touches only `region`.
        unsafe {
            assert_eq!(
                os.syscall(libc::SYS_brk as u64, [0; 6]),
                Outcome::Resume(start)
            );
            assert_eq!(
                os.syscall(libc::SYS_brk as u64, [start + 100, 0, 0, 0, 0, 0]),
                Outcome::Resume(start + 100)
            );
            assert_eq!(
                os.syscall(libc::SYS_brk as u64, [start + (1 << 40), 0, 0, 0, 0, 0]),
                Outcome::Resume(start + 100)
            );
        }
    }

    #[test]
    fn arch_prctl_keeps_the_guest_fs_base_out_of_the_runner() {
        let mut region = vec![0u8; 16];
        let mut os = os_with_break_region(&mut region);
        let runner_fs = super::super::fsbase::FsSwitch::ArchPrctl.read();
        let mut got = 0u64;
        // SAFETY: arch_prctl is emulated; ARCH_GET_FS writes to `got`.
        unsafe {
            assert_eq!(
                os.syscall(
                    libc::SYS_arch_prctl as u64,
                    [ARCH_SET_FS, 0xdead_0000, 0, 0, 0, 0]
                ),
                Outcome::Resume(0)
            );
            let get = [ARCH_GET_FS, &mut got as *mut u64 as u64, 0, 0, 0, 0];
            assert_eq!(
                os.syscall(libc::SYS_arch_prctl as u64, get),
                Outcome::Resume(0)
            );
        }
        assert_eq!(got, 0xdead_0000);
        assert_eq!(super::super::fsbase::FsSwitch::ArchPrctl.read(), runner_fs);
    }

    #[test]
    fn a_bad_guest_pointer_gives_efault_not_a_crash() {
        let mut region = vec![0u8; 16];
        let mut os = os_with_break_region(&mut region);
        // SAFETY: the write goes through process_vm_writev, which checks the address.
        let r = unsafe { os.syscall(libc::SYS_arch_prctl as u64, [ARCH_GET_FS, 8, 0, 0, 0, 0]) };
        assert_eq!(r, Outcome::Resume(neg(EFAULT)));
    }

    #[test]
    fn sigaction_installs_nothing_and_reports_the_default_action() {
        let mut region = vec![0u8; 16];
        let mut os = os_with_break_region(&mut region);
        let mut old = [0xffu8; KERNEL_SIGACTION_SIZE];
        let new = [0x11u8; KERNEL_SIGACTION_SIZE];
        let args = [
            libc::SIGPIPE as u64,
            new.as_ptr() as u64,
            old.as_mut_ptr() as u64,
            8,
            0,
            0,
        ];
        // SAFETY: rt_sigaction is emulated: it only writes `old`.
        let r = unsafe { os.syscall(libc::SYS_rt_sigaction as u64, args) };
        assert_eq!(r, Outcome::Resume(0));
        assert_eq!(
            old, [0; KERNEL_SIGACTION_SIZE],
            "old action reads as SIG_DFL"
        );
        // SAFETY: all-zero bytes are a valid sigaction (SIG_DFL, empty mask, no flags).
        let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: queries this process's SIGPIPE action into `current`.
        unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut current) };
        assert_ne!(
            current.sa_sigaction, 0x1111_1111_1111_1111,
            "the runner's handler is untouched"
        );
    }

    #[test]
    fn exit_group_ends_the_run_with_its_status_and_clone_is_refused() {
        let mut region = vec![0u8; 16];
        let mut os = os_with_break_region(&mut region);
        // SAFETY: both calls are emulated and have no effect on this process.
        unsafe {
            assert_eq!(
                os.syscall(libc::SYS_exit_group as u64, [3, 0, 0, 0, 0, 0]),
                Outcome::Exit(3)
            );
            assert_eq!(
                os.syscall(libc::SYS_clone as u64, [0; 6]),
                Outcome::Resume(neg(ENOSYS))
            );
        }
        assert_eq!(os.syscalls, 2);
    }
}
