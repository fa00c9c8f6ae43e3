//! Reading and writing this thread's FS base, the TLS pointer of whoever runs: the runner
//! (its glibc and Rust thread-locals) or the guest. They must never share one.

use std::arch::asm;

const ARCH_SET_FS: u64 = 0x1002;
const ARCH_GET_FS: u64 = 0x1003;
const HWCAP2_FSGSBASE: u64 = 1 << 1;

/// How this CPU and kernel let user space switch the FS base. With `rdfsbase`/`wrfsbase`
/// (Linux 5.9+ sets CR4.FSGSBASE and reports `HWCAP2_FSGSBASE`) a switch costs a few
/// cycles; otherwise it is an `arch_prctl` system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsSwitch {
    Instructions,
    ArchPrctl,
}

impl FsSwitch {
    pub fn detect() -> FsSwitch {
        // SAFETY: getauxval only reads the process's auxiliary vector.
        let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) };
        if hwcap2 & HWCAP2_FSGSBASE != 0 {
            FsSwitch::Instructions
        } else {
            FsSwitch::ArchPrctl
        }
    }

    pub fn read(self) -> u64 {
        let base: u64;
        match self {
            // SAFETY: `detect` saw HWCAP2_FSGSBASE, so the instruction is enabled.
            FsSwitch::Instructions => unsafe { asm!("rdfsbase {}", out(reg) base, options(nomem, nostack)) },
            FsSwitch::ArchPrctl => {
                let mut out = 0u64;
                // SAFETY: ARCH_GET_FS writes one u64 to `out`, which lives across the call.
                let rc = unsafe { super::syscall::raw_syscall(libc::SYS_arch_prctl as u64, [ARCH_GET_FS, &mut out as *mut u64 as u64, 0, 0, 0, 0]) };
                assert_eq!(rc, 0, "arch_prctl(ARCH_GET_FS) failed");
                base = out;
            }
        }
        base
    }

    /// Makes `base` this thread's FS base.
    ///
    /// # Safety
    /// Until the runner's own base is written back, nothing may touch thread-local storage:
    /// no allocation, no `errno`, no panics. Callers switch only right around guest code.
    pub unsafe fn write(self, base: u64) {
        match self {
            // SAFETY: enabled per `detect`; the caller upholds the TLS contract.
            FsSwitch::Instructions => unsafe { asm!("wrfsbase {}", in(reg) base, options(nomem, nostack)) },
            FsSwitch::ArchPrctl => {
                // SAFETY: a raw syscall touches no TLS (no errno); caller upholds the rest.
                let rc = unsafe { super::syscall::raw_syscall(libc::SYS_arch_prctl as u64, [ARCH_SET_FS, base, 0, 0, 0, 0]) };
                debug_assert_eq!(rc, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_switch_methods_read_the_same_base() {
        let by_syscall = FsSwitch::ArchPrctl.read();
        assert_ne!(by_syscall, 0, "glibc sets up TLS before main");
        if FsSwitch::detect() == FsSwitch::Instructions {
            assert_eq!(FsSwitch::Instructions.read(), by_syscall);
        }
    }

    #[test]
    fn a_written_base_reads_back_and_the_runner_base_is_restored() {
        let sw = FsSwitch::detect();
        let runner = sw.read();
        // SAFETY: no TLS is touched between the two writes (only rdfsbase/raw syscalls).
        let seen = unsafe {
            sw.write(0x1234_5000);
            let seen = sw.read();
            sw.write(runner);
            seen
        };
        assert_eq!(seen, 0x1234_5000);
        assert_eq!(sw.read(), runner);
    }
}
