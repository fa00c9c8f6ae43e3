// SPDX-License-Identifier: GPL-2.0

//! Leaving translation: before the code caches are freed, every word on a
//! sleeping task's kernel stack that points into kdbt's code is rewritten.
//!
//! In precise mode no live word can hold such an address (calls push native
//! return addresses, interrupted frames are rewritten on entry), but dead
//! ones do: an inline lookup's hit stores the target's code-cache address
//! just below the stack pointer for its `ret imm16`, and a later frame's
//! unwritten local slot or an interrupt's frame gap keeps it inside the live
//! part of the stack. A return site becomes its guest return address, any
//! other address in translated code its guest instruction, and the rest
//! (thunks, lookup table, literals) zero, so that no stack names freed code.
//! The same rewrite is what a mode whose stacks do hold cache return
//! addresses needs.

use core::ffi::c_void;
use core::sync::atomic::Ordering::Relaxed;

use kdbt_engine::CacheWord;

use crate::cpu::{self, CpuState};
use crate::ffi;
use crate::stats::{bump, CpuStats};

/// What `kdbt_scan_stacks` looked at (`struct kdbt_stack_scan`).
#[repr(C)]
#[derive(Default)]
pub(crate) struct StackScan {
    pub(crate) stacks: u64,
    pub(crate) skipped: u64,
    pub(crate) words: u64,
}

// Three `unsigned long`s on x86-64.
const _: () = assert!(core::mem::size_of::<StackScan>() == 24);

/// The states of every CPU id that has one.
///
/// # Safety
/// As [`rewrite_stacks`].
unsafe fn states() -> impl Iterator<Item = &'static CpuState> {
    // SAFETY: the caller's contract is `cpu::stopped`'s.
    (0..cpu::ids()).filter_map(|id| unsafe { cpu::stopped(id) })
}

/// The native value of `word`, an address in kdbt's code or not.
///
/// # Safety
/// As [`rewrite_stacks`].
unsafe fn native(word: u64) -> u64 {
    // SAFETY: the caller's contract.
    let Some(cpu) = (unsafe { states() }).find(|c| c.code_range().contains(&word)) else { return word };
    match cpu.cache.classify(word) {
        Some(CacheWord::ReturnSite(guest)) => guest,
        Some(CacheWord::Code(m)) => m.insn_pc,
        // The thunk page, the lookup table, literals, metadata, free space.
        Some(CacheWord::Data) | None => 0,
    }
}

unsafe extern "C" fn rewrite_slot(ctx: *mut c_void, slot: *mut u64) {
    // SAFETY: `ctx` is the counter that `rewrite_stacks` passes, live for the
    // whole scan and not otherwise used meanwhile.
    let rewritten = unsafe { &mut *ctx.cast::<u64>() };
    // SAFETY: `slot` is an aligned word of a sleeping task's kernel stack,
    // and no task runs while every CPU is stopped; the scan runs under
    // `rewrite_stacks`' contract.
    unsafe {
        let word = slot.read_volatile();
        let n = native(word);
        if n != word {
            slot.write_volatile(n);
            *rewritten += 1;
        }
    }
}

/// Rewrites every sleeping task's stack word that points into the code of a
/// CPU with translation state; counts them in `stats`, and returns what was
/// scanned and how many words were rewritten.
///
/// # Safety
/// Only inside `stop_machine`, on one CPU, with every other online CPU
/// stopped (no task runs, exits or is created) and done with its own state,
/// and no CPU executing in or changing any cache.
pub(crate) unsafe fn rewrite_stacks(stats: &CpuStats) -> (StackScan, u64) {
    // SAFETY: the caller's contract.
    let ranges = || unsafe { states() }.map(CpuState::code_range);
    let (Some(lo), Some(hi)) = (ranges().map(|r| r.start).min(), ranges().map(|r| r.end).max()) else {
        return (StackScan::default(), 0);
    };
    let mut rewritten = 0u64;
    let mut scan = StackScan::default();
    // SAFETY: the caller's contract is the helper's; `rewritten` and `scan`
    // outlive the call, and `rewrite_slot` only uses `rewritten`.
    unsafe { ffi::kdbt_scan_stacks(lo, hi, rewrite_slot, (&mut rewritten as *mut u64).cast(), &mut scan) };
    bump(&stats.stack_scans);
    stats.stack_words_rewritten.fetch_add(rewritten, Relaxed);
    (scan, rewritten)
}
