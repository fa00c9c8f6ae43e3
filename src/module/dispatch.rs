// SPDX-License-Identifier: GPL-2.0

//! The dispatcher: runs on every kernel entry (shadow IDT) and every exit from
//! the code cache, with interrupts off, on this CPU's dispatcher stack.
//!
//! On an IDT entry it turns a code-cache PC in the hardware frame into the
//! native guest PC, applying the engine's rollback so the handler sees the
//! precise state before the interrupted guest instruction, then runs the
//! handler's translation. On a cache exit it translates and links the next
//! block, or emulates a hooked `iretq`. Nothing here sleeps or calls into the
//! kernel's allocators (see `heap`).

use core::arch::asm;
use core::sync::atomic::{AtomicU32, Ordering::Relaxed};
use kdbt_engine::{
    CodeCache, Dispatch, Embedder, Error, ExitReason, Frame, GuestMemory, Gpr, HookClass, IndirectKind, MemoryFault, RipSource,
    Step,
};
use iced_x86::{Code, Decoder, DecoderOptions, Register};
use kernel::prelude::*;

use crate::consistency;
use crate::cpu::{self, CpuState, NativeRange};
use crate::entry::{thunks, EntryFrame, ExitFrame, HwFrame, DESC_ERROR_CODE, DESC_PRIVATE_STACK, GATE_EXIT};
use crate::thunk_page::{exit_undo, stub_undo, StubUndo};
use crate::debugreg;
use crate::ffi;
use crate::stats::{bump, CpuStats};

const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_NT: u64 = 1 << 14;
const RFLAGS_RF: u64 = 1 << 16;
const RFLAGS_AC: u64 = 1 << 18;

/// Kernel text and module text, read without faulting.
pub(crate) struct KernelText;

impl GuestMemory for KernelText {
    fn read(&self, pc: u64, buf: &mut [u8]) -> Result<usize, MemoryFault> {
        let mut done = 0usize;
        while done < buf.len() {
            let addr = pc.wrapping_add(done as u64);
            let in_page = (4096 - (addr & 4095)) as usize;
            let n = in_page.min(buf.len() - done);
            // SAFETY: `copy_from_kernel_nofault` checks the source and never
            // faults; the destination is `n` bytes of `buf`.
            let r = unsafe {
                ffi::copy_from_kernel_nofault(buf[done..].as_mut_ptr().cast(), addr as *const _, n)
            };
            if r != 0 {
                break;
            }
            done += n;
        }
        if done == 0 {
            return Err(MemoryFault { addr: pc });
        }
        Ok(done)
    }
}

static NATIVE_WARNINGS: AtomicU32 = AtomicU32::new(0);

/// What the engine's dispatch step needs from one CPU's kernel side.
struct Env<'a> {
    exec: u64,
    native: NativeRange,
    exec_breakpoints: [Option<u64>; 4],
    ldt_return: u64,
    syscall_entry: u64,
    thunks: &'a mut [u8],
    stats: &'static CpuStats,
}

impl Embedder<&'static mut [u8]> for Env<'_> {
    fn memory(&self) -> &dyn GuestMemory {
        &KernelText
    }

    /// kdbt's own text, so that it never translates the code that manages the
    /// caches, armed hardware execute breakpoints, so that they fire, and the
    /// kernel's return on an LDT stack segment (`Setup::ldt_return`).
    fn runs_natively(&self, pc: u64) -> bool {
        (pc >= self.native.start && pc < self.native.end)
            || self.exec_breakpoints.contains(&Some(pc))
            || (pc == self.ldt_return && pc != 0)
    }

    /// The `sched_switch` probe (`switch_hook`): it acts only on switches made
    /// natively, and translated code need not pay a dispatcher round trip on
    /// every context switch to call it.
    fn elided_call(&self, target: u64) -> bool {
        target != 0 && target == crate::switch_hook::probe()
    }

    /// The heap runs short and this CPU holds a fair share of it (a CPU with a
    /// near-empty cache flushing would free nothing).
    fn under_pressure(&self, cache: &CodeCache<&'static mut [u8]>) -> bool {
        cache.used() > cache.capacity() / 8 && crate::heap::low()
    }

    fn flushed(&mut self, cache: &mut CodeCache<&'static mut [u8]>) {
        bump(&self.stats.flushes);
        let target = cache.entry(self.syscall_entry, &KernelText).unwrap_or(self.syscall_entry);
        set_syscall_target(self.thunks, target);
        crate::thunk_page::reset_user_entries(self.thunks, self.exec);
    }
}

/// Points the `syscall` stub in `thunks` at `target`: the translation of the
/// kernel's syscall entry, which the stub must always reach.
pub(crate) fn set_syscall_target(thunks: &mut [u8], target: u64) {
    let at = thunks::SYSCALL_TARGET;
    if let Some(slot) = thunks.get_mut(at..at + 8) {
        slot.copy_from_slice(&target.to_le_bytes());
    }
}

/// Runs the engine's dispatch step for this CPU and publishes its statistics.
fn step(cpu: &mut CpuState, step: Step) -> Result<Dispatch, Error> {
    let CpuState { exec, cache, thunks, native, ldt_return, syscall_entry, stats, exec_breakpoints, .. } = cpu;
    let mut env = Env {
        exec: *exec,
        native: *native,
        exec_breakpoints: *exec_breakpoints,
        ldt_return: *ldt_return,
        syscall_entry: *syscall_entry,
        thunks,
        stats,
    };
    let r = cache.dispatch(step, &mut env);
    publish_stats(cpu);
    r
}

/// Where to run a dispatched guest PC: its translation, or the PC itself.
fn run_at(cpu: &CpuState, d: Dispatch) -> Option<u64> {
    match d {
        Dispatch::Run { cache_pc } => Some(cache_pc),
        Dispatch::Native { pc, error } => {
            if let Some(e) = error {
                // Bounded: a stream of these would flood the log from the dispatcher.
                if NATIVE_WARNINGS.fetch_add(1, Relaxed) < 32 {
                    pr_warn!("cpu {}: running {:#x} natively: {}\n", cpu.id, pc, e);
                }
            }
            Some(pc)
        }
        Dispatch::Hook(_) => None,
    }
}

pub(crate) fn publish_stats(cpu: &CpuState) {
    let s = cpu.cache.stats();
    let c = cpu.stats;
    c.blocks_translated.store(s.blocks, Relaxed);
    c.cache_bytes_used.store(u64::from(cpu.cache.used()), Relaxed);
    c.lookup_hits.store(s.hits, Relaxed);
    c.lookup_misses.store(s.misses, Relaxed);
    c.native_fallbacks.store(s.native_fallbacks, Relaxed);
    c.invalidations.store(s.invalidations, Relaxed);
    c.blocks_invalidated.store(s.blocks_invalidated, Relaxed);
    c.client_dropped.store(s.client_dropped, Relaxed);
}

/// The code-cache PC to run guest `pc` at on this CPU, translating it if
/// needed; `pc` itself (run natively) for kdbt's own text and for code the
/// engine cannot translate.
pub(crate) fn target_for(cpu: &mut CpuState, pc: u64) -> u64 {
    match step(cpu, Step::Enter { pc }) {
        Ok(d) => run_at(cpu, d).unwrap_or(pc),
        Err(_) => pc,
    }
}

fn current_segments() -> (u64, u64) {
    let (cs, ss): (u64, u64);
    // SAFETY: reading segment selectors has no side effects.
    unsafe { asm!("mov {0:x}, cs", "mov {1:x}, ss", out(reg) cs, out(reg) ss, options(nomem, nostack, preserves_flags)) };
    (cs & 0xffff, ss & 0xffff)
}

/// Makes the entry asm resume with `hw` (kernel mode), through this CPU's
/// iret frame and resume thunk.
fn resume(cpu: &mut CpuState, regs: &mut EntryFrame, hw: HwFrame) {
    let at = thunks::IRET_FRAME;
    if let Some(slot) = cpu.thunks.get_mut(at..at + 40) {
        for (i, word) in [hw.rip, hw.cs, hw.rflags, hw.rsp, hw.ss].iter().enumerate() {
            slot[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
    }
    regs.word = cpu.exec + thunks::RESUME as u64;
}

/// A kernel-mode frame resuming at `rip` on the current segments.
fn kernel_frame(rip: u64, rflags: u64, rsp: u64) -> HwFrame {
    let (cs, ss) = current_segments();
    HwFrame { rip, cs, rflags, rsp, ss }
}

fn engine_frame(regs: &EntryFrame, rip: u64, rsp: u64, rflags: u64) -> Frame {
    let mut gpr = [0u64; 16];
    gpr[Gpr::Rax as usize] = regs.rax;
    gpr[Gpr::Rcx as usize] = regs.rcx;
    gpr[Gpr::Rdx as usize] = regs.rdx;
    gpr[Gpr::Rbx as usize] = regs.rbx;
    gpr[Gpr::Rsp as usize] = rsp;
    gpr[Gpr::Rbp as usize] = regs.rbp;
    gpr[Gpr::Rsi as usize] = regs.rsi;
    gpr[Gpr::Rdi as usize] = regs.rdi;
    gpr[Gpr::R8 as usize] = regs.r8;
    gpr[Gpr::R9 as usize] = regs.r9;
    gpr[Gpr::R10 as usize] = regs.r10;
    gpr[Gpr::R11 as usize] = regs.r11;
    gpr[Gpr::R12 as usize] = regs.r12;
    gpr[Gpr::R13 as usize] = regs.r13;
    gpr[Gpr::R14 as usize] = regs.r14;
    gpr[Gpr::R15 as usize] = regs.r15;
    Frame { gpr, rip, rflags }
}

fn store_frame(regs: &mut EntryFrame, f: &Frame) {
    regs.rax = f.get(Gpr::Rax);
    regs.rcx = f.get(Gpr::Rcx);
    regs.rdx = f.get(Gpr::Rdx);
    regs.rbx = f.get(Gpr::Rbx);
    regs.rbp = f.get(Gpr::Rbp);
    regs.rsi = f.get(Gpr::Rsi);
    regs.rdi = f.get(Gpr::Rdi);
    regs.r8 = f.get(Gpr::R8);
    regs.r9 = f.get(Gpr::R9);
    regs.r10 = f.get(Gpr::R10);
    regs.r11 = f.get(Gpr::R11);
    regs.r12 = f.get(Gpr::R12);
    regs.r13 = f.get(Gpr::R13);
    regs.r14 = f.get(Gpr::R14);
    regs.r15 = f.get(Gpr::R15);
}

pub(crate) fn read_u64(addr: u64) -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: `copy_from_kernel_nofault` checks the source; `v` is 8 bytes.
    let r = unsafe { ffi::copy_from_kernel_nofault((&mut v as *mut u64).cast(), addr as *const _, 8) };
    (r == 0).then_some(v)
}

/// The guest PC where an exit reported by `exit_id`/`aux` leaves the guest.
fn exit_guest_pc(cpu: &CpuState, exit_id: u64, aux: u64) -> Option<u64> {
    if exit_id == GATE_EXIT {
        return Some(aux);
    }
    Some(match cpu.cache.exit_reason(exit_id, aux).ok()? {
        ExitReason::DirectMiss { target, .. } | ExitReason::IndirectMiss { target, .. } => target,
        ExitReason::Hook(site) => site.pc,
    })
}

/// The iret frame this CPU's resume thunk is about to load.
fn pending_resume(cpu: &CpuState) -> Option<HwFrame> {
    let at = thunks::IRET_FRAME;
    let b = cpu.thunks.get(at..at + 40)?;
    let w = |i: usize| b.get(i * 8..i * 8 + 8).and_then(|x| x.try_into().ok()).map(u64::from_le_bytes);
    Some(HwFrame { rip: w(0)?, cs: w(1)?, rflags: w(2)?, rsp: w(3)?, ss: w(4)? })
}

/// For thunk page offset `off` in a vector stub or the syscall stub: the
/// kernel's entry point it stands for, and what the stub pushed so far.
fn in_entry_stub(cpu: &CpuState, off: usize) -> Option<(u64, StubUndo)> {
    if off < thunks::SYSCALL {
        let undo = stub_undo(off % thunks::VECTOR_STUB)?;
        Some((*cpu.handlers.get(off / thunks::VECTOR_STUB)?, undo))
    } else {
        let nothing = StubUndo { pushed: 0, rflags: None, rax: None };
        cpu.syscall_map.iter().find(|&&(o, _)| o == off).map(|&(_, pc)| (pc, nothing))
    }
}

/// Takes back the guest's rflags and rax from where a stub or the exit thunk,
/// interrupted at the point `undo` describes, saved them on the stack.
fn restore_saved(undo: StubUndo, regs: &mut EntryFrame, hw: &mut HwFrame) -> Option<()> {
    let word = |i: u64| read_u64(hw.rsp + 8 * i);
    if let Some(i) = undo.rflags {
        hw.rflags = word(i)?;
    }
    if let Some(i) = undo.rax {
        regs.rax = word(i)?;
    }
    Some(())
}

/// Turns an interrupted code-cache state in `regs` + hardware frame `hw` into
/// the precise guest state. Returns whether anything was rewritten.
fn rewrite_interrupted(cpu: &mut CpuState, regs: &mut EntryFrame, hw: &mut HwFrame) -> bool {
    let rip = hw.rip;
    let exec = cpu.exec;
    if rip < exec || (rip >= exec + thunks::SIZE as u64 && !cpu.cache.contains(rip)) {
        return false;
    }
    let stats = cpu.stats;
    let off = rip - exec;
    let (pc, rsp_adjust) = if off >= thunks::SIZE as u64 {
        let Some(m) = cpu.cache.pc_map(rip) else { return false };
        let mut f = engine_frame(regs, rip, hw.rsp, hw.rflags);
        if m.rollback.apply(&mut f, read_u64).is_err() {
            return false;
        }
        let trivial = m.rollback.restore.iter().all(Option::is_none)
            && m.rollback.rsp_adjust == 0
            && matches!(m.rollback.rip, RipSource::Guest(_));
        if !trivial {
            bump(&stats.rollbacks);
        }
        store_frame(regs, &f);
        // The count client's execution of this block ends here.
        cpu.cache.interrupted(rip);
        (f.rip, f.get(Gpr::Rsp).wrapping_sub(hw.rsp))
    } else if let Some((pc, undo)) = in_entry_stub(cpu, off as usize) {
        // An IST event inside a vector stub or the syscall stub: the native
        // state is the kernel's entry point with the stub's pushes undone and
        // the rflags and rax it had saved.
        if restore_saved(undo, regs, hw).is_none() {
            return false;
        }
        (pc, undo.pushed * 8)
    } else if matches!(off as usize, thunks::RESUME | thunks::RESUME_IRETQ) {
        // About to resume: the precise state is the one the `iretq` loads.
        let Some(frame) = pending_resume(cpu) else { return false };
        let rip = match cpu.cache.pc_map(frame.rip) {
            Some(m) if cpu.cache.contains(frame.rip) => m.insn_pc,
            _ => frame.rip,
        };
        *hw = HwFrame { rip, ..frame };
        bump(&stats.pc_rewrites);
        return true;
    } else if let Some(undo) = exit_undo(off as usize) {
        // Inside the exit thunk: the exit frame is on the stack, below it the
        // words the thunk pushed (the guest's rflags and rax, the CPU id).
        let frame = hw.rsp + 8 * undo.pushed;
        let (Some(id), Some(aux)) = (read_u64(frame), read_u64(frame + 8)) else { return false };
        let Some(pc) = exit_guest_pc(cpu, id, aux) else { return false };
        if restore_saved(undo, regs, hw).is_none() {
            return false;
        }
        bump(&stats.rollbacks);
        (pc, undo.pushed * 8 + kdbt_engine::FRAME_SIZE)
    } else {
        return false;
    };
    hw.rip = pc;
    hw.rsp = hw.rsp.wrapping_add(rsp_adjust);
    bump(&stats.pc_rewrites);
    true
}

/// Makes the entry asm continue in the kernel's handler of the event `desc`,
/// with its hardware frame at `hw_at` in place.
fn continue_natively(regs: &mut EntryFrame, desc: u64, above: *mut u64, hw_at: *mut u64) {
    let handler = crate::entry::native_handler((desc & 0xff) as usize);
    if desc & DESC_PRIVATE_STACK == 0 {
        regs.word = handler;
        return;
    }
    let slot = hw_at.wrapping_sub(1);
    // SAFETY: the word below the NMI frame is the kernel's NMI entry's own
    // scratch slot (its first `push` writes it), free until that entry runs;
    // `above` is the frame-address word the NMI stub pushed.
    unsafe {
        slot.write(handler);
        above.write(slot as u64);
    }
    regs.word = crate::entry::private_return_address();
}

/// Whether this CPU runs an NMI-like handler (NMI, #MC, or #DB from kernel
/// mode: the kernel counts them all in `preempt_count`'s NMI bits).
fn in_nmi() -> bool {
    const NMI_MASK: u32 = 0x00f0_0000;
    const OFF: usize = core::mem::offset_of!(kernel::bindings::pcpu_hot__bindgen_ty_1__bindgen_ty_1, preempt_count);
    let count: u32;
    // SAFETY: `pcpu_hot` is a per-CPU variable reached through the kernel GS
    // base, which the entry asm made live.
    unsafe {
        asm!("mov {0:e}, gs:[{1} + {2}]", out(reg) count, sym kernel::bindings::pcpu_hot, const OFF,
             options(nostack, readonly, preserves_flags))
    };
    count & NMI_MASK != 0
}

/// The guest value of 64-bit register `r` in `regs`.
fn gpr(regs: &EntryFrame, r: Register) -> Option<u64> {
    Some(match r {
        Register::RAX => regs.rax,
        Register::RCX => regs.rcx,
        Register::RDX => regs.rdx,
        Register::RBX => regs.rbx,
        Register::RBP => regs.rbp,
        Register::RSI => regs.rsi,
        Register::RDI => regs.rdi,
        Register::R8 => regs.r8,
        Register::R9 => regs.r9,
        Register::R10 => regs.r10,
        Register::R11 => regs.r11,
        Register::R12 => regs.r12,
        Register::R13 => regs.r13,
        Register::R14 => regs.r14,
        Register::R15 => regs.r15,
        _ => return None,
    })
}

/// Performs the hooked `mov drN, reg` at guest `pc` for the kernel, and stops
/// translating code at any execute breakpoint it arms. `false` if the
/// instruction is not one kdbt can perform (the caller runs it natively).
fn emulate_mov_dr(cpu: &mut CpuState, regs: &EntryFrame, pc: u64) -> bool {
    let mut bytes = [0u8; 15];
    let Ok(n) = KernelText.read(pc, &mut bytes) else { return false };
    let insn = Decoder::with_ip(64, &bytes[..n], pc, DecoderOptions::NONE).decode();
    if insn.code() != Code::Mov_dr_r64 {
        return false;
    }
    let (Some(dr), Some(value)) = (debugreg::number(insn.op0_register()), gpr(regs, insn.op1_register())) else {
        return false;
    };
    // SAFETY: this is the write the translated kernel is executing.
    if !unsafe { debugreg::write(dr, value) } {
        return false;
    }
    let armed = debugreg::exec_breakpoints();
    let mut invalidated = false;
    for a in armed.iter().flatten() {
        if !cpu.exec_breakpoints.contains(&Some(*a)) {
            // Translations of that instruction would never fire it.
            invalidated |= cpu.cache.invalidate_range(*a, a.wrapping_add(1)).is_ok_and(|k| k > 0);
        }
    }
    cpu.exec_breakpoints = armed;
    if invalidated {
        // Neither the syscall stub nor a vector's user entry may go on into
        // a translation that no longer fires the breakpoint.
        cpu.retarget_syscall();
    }
    true
}

/// Handles an entry through the shadow IDT.
pub(crate) fn on_idt_entry(regs: &mut EntryFrame) {
    let desc = regs.word;
    let vector = (desc & 0xff) as usize;
    let above = (regs as *mut EntryFrame).wrapping_add(1).cast::<u64>();
    let hw_at = if desc & DESC_PRIVATE_STACK != 0 {
        // SAFETY: the NMI stub pushed the hardware frame's address there.
        unsafe { above.read() as *mut u64 }
    } else {
        above.wrapping_add(usize::from(desc & DESC_ERROR_CODE != 0))
    };
    continue_natively(regs, desc, above, hw_at);
    // SAFETY: this CPU owns its id (its IDT's stubs push it) and runs the
    // dispatcher with interrupts off, never nested (see `entry`).
    let Some(cpu) = (unsafe { cpu::get(regs.slot as usize) }) else { return };
    // SAFETY: the CPU pushed its frame there, above the error code if any.
    let hw = unsafe { &mut *hw_at.cast::<HwFrame>() };
    // An event inside an NMI-like handler (NMI, #MC, kernel #DB, kernel
    // int3) that interrupted native code is the kernel's own business: that
    // handler may have interrupted kdbt itself (the heap lock held, a resume
    // pending, a CPU's state changing), so native, nothing of kdbt touched.
    // From translated code (a translated int3 handler, say) nothing of kdbt
    // was under way on this CPU, and the event is dispatched as usual.
    if in_nmi() && !cpu.runs_kdbt_code(hw.rip) {
        return;
    }
    bump(&cpu.stats.dispatcher_entries);
    bump(&cpu.stats.entries_by_vector[vector]);
    if hw.cs & 3 == 0 {
        rewrite_interrupted(cpu, regs, hw);
    }
    if cpu.is_ist(vector) {
        // IST handlers (NMI, #DB, #DF, #MC) run natively on their own stacks,
        // with the frame in place (`word` already names the kernel's handler):
        // their nesting rules are keyed by native PCs.
        return;
    }
    // After the rewrite (which needs the interrupted translation's PC map)
    // and before the handler's translation is looked up.
    consistency::apply(cpu);
    let Some(&handler) = cpu.handlers.get(vector) else { return };
    let target = target_for(cpu, handler);
    if hw.cs & 3 != 0 && cpu.cache.contains(target) {
        // From user mode nothing needs rewriting: the stub goes straight to
        // the translation next time, while this CPU has applied every logged
        // code change (`consistency::apply` just ran).
        cpu.set_user_entry(vector, target);
    }
    let rflags = hw.rflags & !(RFLAGS_TF | RFLAGS_IF | RFLAGS_NT | RFLAGS_RF | RFLAGS_AC) | 2;
    resume(cpu, regs, kernel_frame(target, rflags, above as u64));
}

/// Handles an exit from this CPU's code cache.
pub(crate) fn on_cache_exit(regs: &mut EntryFrame) {
    // SAFETY: this CPU owns its id (its exit thunk pushes it) and runs the
    // dispatcher with interrupts off, never nested; its exit thunk exists
    // only while its state is published.
    let Some(cpu) = (unsafe { cpu::get(regs.slot as usize) }) else {
        // No guest PC can be known without the state: stop here, loudly.
        regs.word = crate::entry::ud2_address();
        return;
    };
    let rflags = regs.word;
    let above = (regs as *mut EntryFrame).wrapping_add(1).cast::<ExitFrame>();
    // SAFETY: the exit code pushed the engine's frame there.
    let ExitFrame { exit_id: id, aux } = unsafe { above.read() };
    let guest_rsp = above.wrapping_add(1) as u64;
    bump(&cpu.stats.dispatcher_entries);
    if id == GATE_EXIT {
        // A kdbt function returned through the gate: on to its return address.
        let hw = kernel_frame(target_for(cpu, aux), rflags, guest_rsp);
        let hw = settle(cpu, hw);
        resume(cpu, regs, hw);
        return;
    }
    let hw = match step(cpu, Step::Exit { exit_id: id, aux }) {
        Ok(Dispatch::Hook(site)) if site.class == HookClass::IRETQ => {
            // SAFETY: `iretq` is about to pop its 5-word frame at the guest rsp.
            let mut frame = unsafe { (guest_rsp as *const HwFrame).read() };
            if frame.cs & 3 == 0 {
                frame.rip = target_for(cpu, frame.rip);
            }
            frame
        }
        Ok(Dispatch::Hook(site)) if site.class == HookClass::MOV_DR => {
            let pc = if emulate_mov_dr(cpu, regs, site.pc) { target_for(cpu, site.next_pc) } else { site.pc };
            kernel_frame(pc, rflags, guest_rsp)
        }
        // No other class is hooked; anything else would run natively from its PC.
        Ok(Dispatch::Hook(site)) => kernel_frame(site.pc, rflags, guest_rsp),
        Ok(d) => {
            let pc = run_at(cpu, d).unwrap_or(cpu.exec + thunks::UD2 as u64);
            kernel_frame(pc, rflags, through_gate(cpu, d, id, aux, guest_rsp))
        }
        Err(e) => {
            pr_crit!("cpu {}: bad exit {:#x}: {}\n", cpu.id, id, e);
            // No guest PC is known; resume at a `ud2` so the kernel oopses here.
            kernel_frame(cpu.exec + thunks::UD2 as u64, rflags, guest_rsp)
        }
    };
    let hw = settle(cpu, hw);
    resume(cpu, regs, hw);
}

/// The stack pointer to run `d` with. A call or tail call into kdbt's own
/// text (which runs natively) gets the return gate as its return address,
/// below the real one, so that it returns into translated code; otherwise
/// `guest_rsp`.
fn through_gate(cpu: &CpuState, d: Dispatch, id: u64, aux: u64, guest_rsp: u64) -> u64 {
    let Dispatch::Native { pc, error: None } = d else { return guest_rsp };
    if pc < cpu.native.start || pc >= cpu.native.end {
        return guest_rsp;
    }
    // No flush since the exit: `runs_natively` came before any translation.
    match cpu.cache.exit_reason(id, aux) {
        // A direct call or tail call (kdbt's text is entered only at function
        // entries) has the caller's return address on top as well.
        Ok(ExitReason::IndirectMiss { kind: IndirectKind::Call | IndirectKind::Jmp, .. } | ExitReason::DirectMiss { .. }) => {
            let slot = guest_rsp - 8;
            // SAFETY: the word below the guest stack pointer is free (no red
            // zone in the kernel) and this CPU's dispatcher runs with
            // interrupts off; the callee finds it as its return address.
            unsafe { (slot as *mut u64).write(crate::entry::gate_return()) };
            slot
        }
        _ => guest_rsp,
    }
}

/// Applies this CPU's pending code changes before it resumes at `hw`
/// (after the exit was read: a flush ends the exit ids). A resume PC in a
/// translation that went stale is looked up again.
fn settle(cpu: &mut CpuState, mut hw: HwFrame) -> HwFrame {
    if !consistency::pending(cpu) {
        return hw;
    }
    let guest = if cpu.cache.contains(hw.rip) { cpu.cache.pc_map(hw.rip).map(|m| m.insn_pc) } else { None };
    if consistency::apply(cpu) {
        if let Some(pc) = guest {
            hw.rip = target_for(cpu, pc);
        }
    }
    hw
}
