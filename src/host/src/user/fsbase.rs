//! This thread's FS base, the TLS pointer of whoever runs: the runner (its glibc and Rust
//! thread-locals) or the guest. They must never share one; `switch` swaps them in assembly
//! with the method detected here.

use std::arch::asm;

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
    /// The fast method when available, unless the environment variable
    /// `KDBT_USER_FS_SWITCH=arch_prctl` asks for the fallback (to exercise, on a CPU with
    /// FSGSBASE, the path that CPUs without it take).
    pub fn detect() -> FsSwitch {
        if std::env::var_os("KDBT_USER_FS_SWITCH").is_some_and(|v| v == "arch_prctl") {
            return FsSwitch::ArchPrctl;
        }
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
            FsSwitch::Instructions => unsafe {
                asm!("rdfsbase {}", out(reg) base, options(nomem, nostack))
            },
            FsSwitch::ArchPrctl => {
                let mut out = 0u64;
                // SAFETY: ARCH_GET_FS writes one u64 to `out`, which lives across the call.
                let rc = unsafe {
                    super::syscall::raw_syscall(
                        libc::SYS_arch_prctl as u64,
                        [ARCH_GET_FS, &mut out as *mut u64 as u64, 0, 0, 0, 0],
                    )
                };
                assert_eq!(rc, 0, "arch_prctl(ARCH_GET_FS) failed");
                base = out;
            }
        }
        base
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
}
