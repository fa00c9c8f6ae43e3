// SPDX-License-Identifier: GPL-2.0

//! The shadow IDT: a copy of the kernel's IDT whose gates enter kdbt's
//! per-CPU vector stubs, and the `sidt`/`lidt` that install and remove it.

use alloc::vec::Vec;
use core::arch::asm;

pub(crate) use crate::thunk_page::VECTORS;

/// One 16-byte interrupt gate.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct Gate {
    offset_low: u16,
    selector: u16,
    /// IST index (bits 0-2), type (8-11), DPL (13-14), present (15).
    bits: u16,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    pub(crate) fn present(&self) -> bool {
        self.bits & (1 << 15) != 0
    }

    /// The gate's IST index; non-zero gates run on their own stacks.
    pub(crate) fn ist(&self) -> u16 {
        self.bits & 7
    }

    pub(crate) fn handler(&self) -> u64 {
        u64::from(self.offset_low) | u64::from(self.offset_mid) << 16 | u64::from(self.offset_high) << 32
    }

    /// The same gate (selector, type, DPL, IST) entering `handler` instead.
    pub(crate) fn redirected(&self, handler: u64) -> Gate {
        Gate {
            offset_low: handler as u16,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            ..*self
        }
    }
}

/// The operand of `sidt`/`lidt`.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
pub(crate) struct Descriptor {
    pub(crate) limit: u16,
    pub(crate) base: u64,
}

/// This CPU's IDT register.
pub(crate) fn sidt() -> Descriptor {
    let mut d = Descriptor::default();
    // SAFETY: `sidt` stores 10 bytes into `d`, which is 10 bytes long.
    unsafe { asm!("sidt [{}]", in(reg) &mut d, options(nostack, preserves_flags)) };
    d
}

/// Loads `d` into this CPU's IDT register.
///
/// # Safety
/// `d` must describe a table of valid gates that stays mapped while loaded.
pub(crate) unsafe fn lidt(d: &Descriptor) {
    // SAFETY: the caller guarantees the table is valid.
    unsafe { asm!("lidt [{}]", in(reg) d, options(nostack, preserves_flags)) };
}

/// Reads the kernel's IDT (the read-only alias `sidt` reports), `VECTORS`
/// gates (absent ones zero).
///
/// # Safety
/// `d` must be what `sidt` returned on this CPU.
pub(crate) unsafe fn read_table(d: &Descriptor) -> Option<Vec<Gate>> {
    let mut gates = Vec::new();
    gates.try_reserve_exact(VECTORS).ok()?;
    gates.resize(VECTORS, Gate::default());
    let n = ((usize::from(d.limit) + 1) / core::mem::size_of::<Gate>()).min(VECTORS);
    // SAFETY: the IDT register names `n` readable gates at `base`.
    unsafe { core::ptr::copy_nonoverlapping(d.base as *const Gate, gates.as_mut_ptr(), n) };
    Some(gates)
}

/// Vectors whose exception pushes an error code.
pub(crate) fn has_error_code(vector: usize) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// Reads an MSR.
pub(crate) fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: kdbt only reads architectural MSRs that exist on x86-64.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    u64::from(hi) << 32 | u64::from(lo)
}

/// Writes an MSR.
///
/// # Safety
/// The value must be valid for the MSR, and the kernel must keep working with it.
pub(crate) unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nomem, nostack, preserves_flags))
    };
}
