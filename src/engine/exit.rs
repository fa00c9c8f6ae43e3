//! Exits from translated code to the dispatcher, and the frame contract at the dispatcher
//! entry.
//!
//! # Frame contract
//! When translated code jumps to [`crate::Config::dispatcher`]:
//! - `[rsp + EXIT_ID_OFFSET]` holds the exit id (u64),
//! - `[rsp + AUX_OFFSET]` holds the aux value: the guest target of an indirect exit,
//!   unspecified for other exits,
//! - every general-purpose register and `rflags` hold the guest's values, except
//!   `rsp = guest_rsp - red_zone - FRAME_SIZE`.
//!
//! The guest state is that *after* the guest instruction that exited (for a direct exit:
//! before the branch target; for an indirect exit: before the indirect target, with the
//! `call` push or `ret` pop done; for a hook: before the hooked instruction).

use crate::hooks::HookClass;

/// Offset of the exit id from `rsp` at the dispatcher entry.
pub const EXIT_ID_OFFSET: u64 = 0;
/// Offset of the aux value from `rsp` at the dispatcher entry.
pub const AUX_OFFSET: u64 = 8;
/// Bytes of the exit frame: `guest_rsp = rsp + red_zone + FRAME_SIZE` at the dispatcher
/// entry.
pub const FRAME_SIZE: u64 = 16;

/// Identifies one exit of one fragment; `generation` counts flushes, so an id taken before
/// a flush is recognised as stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExitId {
    /// The exit id found in the dispatcher frame.
    pub index: u32,
    /// The cache's flush count when the id was decoded.
    pub generation: u32,
}

/// The kind of an indirect branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndirectKind {
    /// `jmp r/m64`.
    Jmp,
    /// `call r/m64`.
    Call,
    /// `ret` / `ret imm16`: under the Transparent policy, and a Fast cache's Transparent
    /// sites' `ret` (whose target may then be a Fast caller's code-cache return address).
    Ret,
}

/// What an exit does, as recorded when its fragment was built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitKind {
    /// A direct `jmp`/`jcc`/`call` target or a fall-through; linkable.
    Direct {
        /// Guest target.
        target: u64,
    },
    /// The miss path of an inline lookup.
    Indirect {
        /// Guest PC of the indirect branch.
        insn_pc: u64,
        /// Which branch.
        kind: IndirectKind,
    },
    /// A hooked special instruction.
    Hook(HookSite),
}

/// A hooked special instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookSite {
    /// Its class.
    pub class: HookClass,
    /// Guest PC of the instruction (the guest state at the exit is before it).
    pub pc: u64,
    /// Guest PC of the next instruction.
    pub next_pc: u64,
}

/// What happened, decoded by [`crate::CodeCache::exit_reason`] from the dispatcher frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// A direct exit whose target has no linked fragment yet. Translate `target`, link
    /// `exit` to it and resume there.
    DirectMiss {
        /// The exit, to link.
        exit: ExitId,
        /// Guest target.
        target: u64,
    },
    /// An indirect branch whose target was not in the lookup table.
    IndirectMiss {
        /// Guest target (the aux value).
        target: u64,
        /// Guest PC of the indirect branch.
        insn_pc: u64,
        /// Which branch.
        kind: IndirectKind,
    },
    /// A hooked instruction; the guest state is before it.
    Hook(HookSite),
}
