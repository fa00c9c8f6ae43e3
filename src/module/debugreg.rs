// SPDX-License-Identifier: GPL-2.0

//! Debug registers. A hardware execute breakpoint matches the address the
//! CPU fetches from, so it never fires on translated code: kdbt runs the
//! instructions at armed execute breakpoints natively, and learns of every
//! change from the translated kernel's own `mov drN, reg` (hooked).

use core::arch::asm;
use iced_x86::Register;

/// Reads debug register `n` (0-3, 6, 7); `None` for any other number.
pub(crate) fn read(n: u8) -> Option<u64> {
    let v: u64;
    // SAFETY: reading a debug register in ring 0 has no side effects.
    unsafe {
        match n {
            0 => asm!("mov {}, dr0", out(reg) v, options(nomem, nostack, preserves_flags)),
            1 => asm!("mov {}, dr1", out(reg) v, options(nomem, nostack, preserves_flags)),
            2 => asm!("mov {}, dr2", out(reg) v, options(nomem, nostack, preserves_flags)),
            3 => asm!("mov {}, dr3", out(reg) v, options(nomem, nostack, preserves_flags)),
            6 => asm!("mov {}, dr6", out(reg) v, options(nomem, nostack, preserves_flags)),
            7 => asm!("mov {}, dr7", out(reg) v, options(nomem, nostack, preserves_flags)),
            _ => return None,
        }
    }
    Some(v)
}

/// Writes `v` to debug register `n` (0-3, 6, 7), as the translated kernel
/// asked to; `false` for any other number.
///
/// # Safety
/// The write must be one the kernel itself is executing (a hooked `mov drN, reg`).
pub(crate) unsafe fn write(n: u8, v: u64) -> bool {
    // SAFETY: the caller's contract: the kernel makes this very write.
    unsafe {
        match n {
            0 => asm!("mov dr0, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            1 => asm!("mov dr1, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            2 => asm!("mov dr2, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            3 => asm!("mov dr3, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            6 => asm!("mov dr6, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            7 => asm!("mov dr7, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            _ => return false,
        }
    }
    true
}

/// The number of debug register `r`.
pub(crate) fn number(r: Register) -> Option<u8> {
    Some(match r {
        Register::DR0 => 0,
        Register::DR1 => 1,
        Register::DR2 => 2,
        Register::DR3 => 3,
        Register::DR6 => 6,
        Register::DR7 => 7,
        _ => return None,
    })
}

/// The addresses of the enabled execute breakpoints (DR7 L/G bit set, R/W 00).
pub(crate) fn exec_breakpoints() -> [Option<u64>; 4] {
    let dr7 = read(7).unwrap_or(0);
    let mut out = [None; 4];
    for (i, slot) in out.iter_mut().enumerate() {
        let enabled = (dr7 >> (2 * i)) & 3 != 0;
        let execute = (dr7 >> (16 + 4 * i)) & 3 == 0;
        if enabled && execute {
            *slot = read(i as u8);
        }
    }
    out
}
