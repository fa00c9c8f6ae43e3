// SPDX-License-Identifier: GPL-2.0

//! The `syscall` entry. `syscall` arrives in kernel mode with the user's GS
//! base and stack, and the kernel's entry swaps GS and switches stacks before
//! anything can touch memory through the stack. Translated, its first block
//! may end at a branch before the stack switch (with PTI compiled in but off,
//! `SWITCH_TO_KERNEL_CR3` is a `jmp` over the CR3 switch), and the exit to
//! the dispatcher would then push onto the user's stack. So kdbt's syscall
//! stub runs the kernel's own prologue instructions natively (`swapgs`, the
//! save and load of rsp through per-CPU slots), copied, and enters the
//! translation at `entry_SYSCALL_64_safe_stack`. With PTI active the
//! prologue switches CR3 first; kdbt does not support that and says so.

use alloc::vec::Vec;
use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, Register};
use kdbt_engine::GuestMemory;
use kernel::prelude::*;

use crate::dispatch::KernelText;

/// The kernel's syscall prologue as kdbt's stub runs it.
pub(crate) struct Prologue {
    /// `swapgs`, `mov gs:[sp2], rsp`, `mov rsp, gs:[top_of_stack]`.
    pub(crate) insns: Vec<Instruction>,
    /// The kernel's entry point (MSR_LSTAR before kdbt).
    pub(crate) entry: u64,
    /// Where the stack is the kernel's: the translation starts here.
    pub(crate) safe_stack: u64,
}

/// `EOPNOTSUPP` (the 6.12 `kernel` crate does not name it).
pub(crate) fn eopnotsupp() -> Error {
    Error::from_errno(-(kernel::bindings::EOPNOTSUPP as i32))
}

/// A per-CPU slot: GS-relative, absolute or RIP-relative (6.12's percpu
/// accessors; copied, the encoder re-targets the displacement).
fn is_percpu_slot(i: &Instruction) -> bool {
    i.memory_segment() == Register::GS
        && matches!(i.memory_base(), Register::None | Register::RIP)
        && i.memory_index() == Register::None
}

fn decode_at(pc: u64, buf: &mut [u8; 32]) -> Option<Instruction> {
    let n = KernelText.read(pc, buf).ok()?;
    let i = Decoder::with_ip(64, &buf[..n], pc, DecoderOptions::NONE).decode();
    (!i.is_invalid()).then_some(i)
}

/// Reads and checks the kernel's prologue at `entry`. `EOPNOTSUPP` if it is
/// not the expected one (PTI active, or a kernel kdbt does not know).
pub(crate) fn prologue(entry: u64) -> Result<Prologue> {
    let mut buf = [0u8; 32];
    let mut insns = Vec::new();
    insns.try_reserve(3).map_err(|_| ENOMEM)?;
    let mut i = decode_at(entry, &mut buf).ok_or_else(eopnotsupp)?;
    if i.code() == Code::Endbr64 {
        i = decode_at(i.next_ip(), &mut buf).ok_or_else(eopnotsupp)?;
    }
    let save = decode_at(i.next_ip(), &mut buf).ok_or_else(eopnotsupp)?;
    let saves_rsp = save.code() == Code::Mov_rm64_r64 && save.op1_register() == Register::RSP && is_percpu_slot(&save);
    if i.code() != Code::Swapgs || !saves_rsp {
        pr_err!("syscall entry at {:#x}: not swapgs; mov gs:[..], rsp\n", entry);
        return Err(eopnotsupp());
    }
    insns.push(i);
    insns.push(save);
    let mut load = decode_at(save.next_ip(), &mut buf).ok_or_else(eopnotsupp)?;
    if load.flow_control() == FlowControl::UnconditionalBranch {
        // SWITCH_TO_KERNEL_CR3 with PTI compiled in and off: a jmp over it.
        load = decode_at(load.near_branch_target(), &mut buf).ok_or_else(eopnotsupp)?;
    }
    if load.code() != Code::Mov_r64_rm64 || load.op0_register() != Register::RSP || !is_percpu_slot(&load) {
        pr_err!("syscall entry at {:#x}: the stack switch is not next (PTI active?); not supported\n", entry);
        return Err(eopnotsupp());
    }
    insns.push(load);
    Ok(Prologue { insns, entry, safe_stack: load.next_ip() })
}
