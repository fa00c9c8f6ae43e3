//! PC map and rollback: from an address inside translated code back to the precise guest
//! state.
//!
//! Every byte of code the engine emits (fragment bodies, exit stubs, indirect-branch lookup
//! sequences) belongs to one guest instruction. When code is interrupted at a host
//! instruction boundary, the interrupted register frame plus the [`Rollback`] recorded for
//! that boundary give the guest state exactly as it was *before* a guest instruction
//! (usually the one the code belongs to; the next one or the branch target where the guest
//! instruction is already architecturally complete).

/// A general-purpose register, numbered as in the x86 instruction encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Gpr {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

impl Gpr {
    /// All registers in encoding order.
    pub const ALL: [Gpr; 16] = [
        Gpr::Rax,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rbx,
        Gpr::Rsp,
        Gpr::Rbp,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ];

    /// The encoding number (0..16).
    pub fn num(self) -> u8 {
        self as u8
    }
}

/// A saved register frame of interrupted code: what an exception handler, a signal
/// handler or the dispatcher trampoline has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// General-purpose registers indexed by [`Gpr::num`] (`gpr[4]` is `rsp`).
    pub gpr: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// Flags.
    pub rflags: u64,
}

impl Frame {
    /// Value of `reg`.
    pub fn get(&self, reg: Gpr) -> u64 {
        self.gpr.get(usize::from(reg.num())).copied().unwrap_or(0)
    }

    /// Sets `reg` to `value`.
    pub fn set(&mut self, reg: Gpr, value: u64) {
        if let Some(slot) = self.gpr.get_mut(usize::from(reg.num())) {
            *slot = value;
        }
    }
}

/// One register whose guest value sits in a stack slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restore {
    /// The register.
    pub reg: Gpr,
    /// Offset of its 8-byte slot from the interrupted `rsp`.
    pub offset: u32,
}

impl Restore {
    /// `reg` is in the slot at `offset` from the interrupted `rsp`.
    pub const fn new(reg: Gpr, offset: u32) -> Self {
        Restore { reg, offset }
    }
}

/// Where the guest instruction pointer comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RipSource {
    /// A fixed guest address.
    Guest(u64),
    /// The 8-byte stack slot at this offset from the interrupted `rsp` (an indirect
    /// branch's target, already stored while leaving to the dispatcher).
    Stack(u32),
}

/// How to turn an interrupted frame into the precise guest state.
///
/// Applied by [`Rollback::apply`]: all reads use the *interrupted* `rsp`; first each
/// `restore` register is loaded from its slot, then `rip` is set from `rip`, then
/// `rsp += rsp_adjust`. Flags are never modified by translated code, so they are always the
/// guest's.
///
/// # Invariants
/// Every slot read (restores and [`RipSource::Stack`]) lies at or above the interrupted
/// `rsp` and below the guest `rsp` it restores, i.e. in memory translated code wrote and
/// nothing (an interrupt, a signal) can have clobbered; `restore` never names `rsp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rollback {
    /// Registers to reload from stack slots.
    pub restore: [Option<Restore>; 3],
    /// Added to `rsp` after the reloads.
    pub rsp_adjust: u32,
    /// The guest `rip`.
    pub rip: RipSource,
}

/// The stack slot at `addr` could not be read while applying a rollback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackReadFault {
    /// Address of the unreadable slot.
    pub addr: u64,
}

impl Rollback {
    /// The state is exactly "before the guest instruction at `pc`" with no stack in use.
    pub fn at(pc: u64) -> Self {
        Rollback {
            restore: [None; 3],
            rsp_adjust: 0,
            rip: RipSource::Guest(pc),
        }
    }

    /// Rewrites `frame` (interrupted state) into the guest state. `read_stack(addr)` reads
    /// the 8-byte slot at `addr` of the interrupted stack. On error `frame` is unchanged.
    pub fn apply<F>(&self, frame: &mut Frame, mut read_stack: F) -> Result<(), StackReadFault>
    where
        F: FnMut(u64) -> Option<u64>,
    {
        let rsp = frame.get(Gpr::Rsp);
        let mut out = *frame;
        for r in self.restore.iter().flatten() {
            let addr = rsp.wrapping_add(u64::from(r.offset));
            out.set(r.reg, read_stack(addr).ok_or(StackReadFault { addr })?);
        }
        out.rip = match self.rip {
            RipSource::Guest(pc) => pc,
            RipSource::Stack(off) => {
                let addr = rsp.wrapping_add(u64::from(off));
                read_stack(addr).ok_or(StackReadFault { addr })?
            }
        };
        out.set(Gpr::Rsp, rsp.wrapping_add(u64::from(self.rsp_adjust)));
        *frame = out;
        Ok(())
    }
}

/// What an address inside translated code corresponds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcMapping {
    /// The guest instruction whose translation contains the address.
    pub insn_pc: u64,
    /// How to recover the precise guest state at that address.
    pub rollback: Rollback,
}

/// How a range of a fragment's code maps back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// Guest instructions copied byte for byte: host offset `d` into the range is guest
    /// address `guest_pc + d`, with nothing to roll back.
    Copy,
    /// Every address in the range maps to this rollback.
    Fixed(Rollback),
}

/// One PC-map entry; it covers the fragment code from `off` up to the next entry's `off`
/// (or the end of the fragment's code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PcEntry {
    /// Offset from the fragment start.
    pub off: u32,
    /// Guest instruction (for `Copy`, guest address of the range start).
    pub guest_pc: u64,
    pub kind: EntryKind,
}
