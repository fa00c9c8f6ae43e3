// SPDX-License-Identifier: GPL-2.0

//! Local interrupt masking without calling into kernel code.

use core::arch::asm;

/// Local interrupts are off from `new` until drop, which restores the
/// previous interrupt flag.
///
/// # Invariants
/// `flags` holds RFLAGS as it was when the guard was created, on this CPU.
pub(crate) struct IrqGuard {
    flags: u64,
}

impl IrqGuard {
    pub(crate) fn new() -> Self {
        let flags: u64;
        // SAFETY: saving RFLAGS and clearing IF only masks interrupts on this
        // CPU; the guard restores IF when dropped. No `nomem`: like the
        // kernel's `local_irq_save`, a compiler barrier, so that the locked
        // accesses the guard protects stay inside it.
        unsafe { asm!("pushfq", "pop {}", "cli", out(reg) flags, options(preserves_flags)) };
        Self { flags }
    }
}

impl Drop for IrqGuard {
    fn drop(&mut self) {
        if self.flags & (1 << 9) != 0 {
            // SAFETY: interrupts were on when the guard was created. A compiler
            // barrier, as in `new`.
            unsafe { asm!("sti", options(nostack)) };
        }
    }
}
