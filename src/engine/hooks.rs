//! Special (privileged or trapping) instructions and which of them are hooked.

use bitflags::bitflags;
use iced_x86::{Code, FlowControl, Instruction};

bitflags! {
    /// Classes of special instructions. A class in [`crate::Config::hooks`] is *hooked*: its
    /// instructions end the fragment with an exit that reports
    /// [`crate::ExitReason::Hook`] instead of being executed. A class not in the set is copied
    /// as is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct HookClass: u32 {
        /// `iretq` (and its 16/32-bit operand-size forms).
        const IRETQ = 1 << 0;
        /// `sysretq` (and `sysretd`).
        const SYSRETQ = 1 << 1;
        /// `swapgs`.
        const SWAPGS = 1 << 2;
        /// `cli`.
        const CLI = 1 << 3;
        /// `sti`.
        const STI = 1 << 4;
        /// `popfq` (and `popfw`).
        const POPF = 1 << 5;
        /// `pushfq` (and `pushfw`).
        const PUSHF = 1 << 6;
        /// `lidt`.
        const LIDT = 1 << 7;
        /// `lgdt`.
        const LGDT = 1 << 8;
        /// `wrmsr`.
        const WRMSR = 1 << 9;
        /// `hlt`.
        const HLT = 1 << 10;
        /// `int3`.
        const INT3 = 1 << 11;
        /// `int imm8`.
        const INT_N = 1 << 12;
        /// `ud2`.
        const UD2 = 1 << 13;
        /// `syscall`.
        const SYSCALL = 1 << 14;
        /// `iretq` whose frame returns to CPL 0 (selector RPL 0); one returning to user
        /// mode runs natively. Reported as [`HookClass::IRETQ`]. For a kernel, whose
        /// returns to user mode need no help: it halves the dispatcher entries per
        /// interrupt. Ignored when `IRETQ` itself is hooked.
        const IRETQ_TO_KERNEL = 1 << 15;
        /// `mov drN, reg`: a debug-register write. For a kernel, which must learn of
        /// hardware execute breakpoints (they never fire on translated code).
        const MOV_DR = 1 << 16;
    }
}

/// Where execution goes after an instruction copied as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum After {
    /// To the next instruction: the fragment goes on.
    Next,
    /// Possibly elsewhere, possibly back to the next instruction (traps, `syscall`, far
    /// calls): the fragment ends with a fall-through exit.
    MaybeNext,
    /// Never to the next instruction (`iretq`, `sysretq`, returns and far jumps copied as
    /// is): the fragment ends without an exit.
    Elsewhere,
}

/// How the translator treats one special instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Special {
    /// The class the instruction belongs to.
    pub class: HookClass,
    /// Where execution goes when the instruction is copied as is.
    pub after: After,
}

/// The special class of `insn`, if it has one.
pub(crate) fn special(insn: &Instruction) -> Option<Special> {
    let (class, after) = match insn.code() {
        Code::Iretq | Code::Iretd | Code::Iretw => (HookClass::IRETQ, After::Elsewhere),
        Code::Sysretq | Code::Sysretd => (HookClass::SYSRETQ, After::Elsewhere),
        Code::Swapgs => (HookClass::SWAPGS, After::Next),
        Code::Cli => (HookClass::CLI, After::Next),
        Code::Sti => (HookClass::STI, After::Next),
        Code::Popfq | Code::Popfw => (HookClass::POPF, After::Next),
        Code::Pushfq | Code::Pushfw => (HookClass::PUSHF, After::Next),
        Code::Lidt_m1664 => (HookClass::LIDT, After::Next),
        Code::Lgdt_m1664 => (HookClass::LGDT, After::Next),
        Code::Wrmsr => (HookClass::WRMSR, After::Next),
        Code::Hlt => (HookClass::HLT, After::Next),
        Code::Int3 => (HookClass::INT3, After::MaybeNext),
        Code::Int_imm8 => (HookClass::INT_N, After::MaybeNext),
        Code::Ud2 => (HookClass::UD2, After::MaybeNext),
        Code::Syscall => (HookClass::SYSCALL, After::MaybeNext),
        Code::Mov_dr_r64 | Code::Mov_dr_r32 => (HookClass::MOV_DR, After::Next),
        _ => return None,
    };
    Some(Special { class, after })
}

/// Where execution goes after a non-special instruction copied as is: other traps
/// (`int1`, `ud0`/`ud1`) and far calls may come back to the next instruction; returns
/// (the Fast policy's `ret`, far returns) and far jumps do not.
pub(crate) fn copied_flow(insn: &Instruction) -> After {
    match insn.flow_control() {
        FlowControl::Interrupt
        | FlowControl::Exception
        | FlowControl::IndirectCall
        | FlowControl::Call => After::MaybeNext,
        FlowControl::IndirectBranch | FlowControl::Return | FlowControl::UnconditionalBranch => {
            After::Elsewhere
        }
        _ => After::Next,
    }
}
