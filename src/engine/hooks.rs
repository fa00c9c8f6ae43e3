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
    }
}

/// How the translator treats one special instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Special {
    /// The class the instruction belongs to.
    pub class: HookClass,
    /// Whether, when copied as is, the instruction may transfer control (so the fragment
    /// ends after it, continuing through a fall-through exit).
    pub ends_block: bool,
}

/// The special class of `insn`, if it has one.
pub(crate) fn special(insn: &Instruction) -> Option<Special> {
    let (class, ends_block) = match insn.code() {
        Code::Iretq | Code::Iretd | Code::Iretw => (HookClass::IRETQ, true),
        Code::Sysretq | Code::Sysretd => (HookClass::SYSRETQ, true),
        Code::Swapgs => (HookClass::SWAPGS, false),
        Code::Cli => (HookClass::CLI, false),
        Code::Sti => (HookClass::STI, false),
        Code::Popfq | Code::Popfw => (HookClass::POPF, false),
        Code::Pushfq | Code::Pushfw => (HookClass::PUSHF, false),
        Code::Lidt_m1664 => (HookClass::LIDT, false),
        Code::Lgdt_m1664 => (HookClass::LGDT, false),
        Code::Wrmsr => (HookClass::WRMSR, false),
        Code::Hlt => (HookClass::HLT, false),
        Code::Int3 => (HookClass::INT3, true),
        Code::Int_imm8 => (HookClass::INT_N, true),
        Code::Ud2 => (HookClass::UD2, true),
        Code::Syscall => (HookClass::SYSCALL, true),
        _ => return None,
    };
    Some(Special { class, ends_block })
}

/// Whether a non-special instruction that is copied as is may still transfer control
/// (other traps such as `int1`/`ud0`, far transfers), so the fragment must end after it.
pub(crate) fn copied_transfers_control(insn: &Instruction) -> bool {
    matches!(
        insn.flow_control(),
        FlowControl::Interrupt
            | FlowControl::Exception
            | FlowControl::IndirectBranch
            | FlowControl::IndirectCall
            | FlowControl::Return
            | FlowControl::UnconditionalBranch
            | FlowControl::Call
    )
}
