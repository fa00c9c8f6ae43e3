//! Per-cache translation configuration.

use crate::error::Error;
use crate::hooks::HookClass;
use crate::thunks::Thunks;

/// How guest `call` and `ret` are translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallRetPolicy {
    /// The stack holds native (guest) return addresses: `call` pushes the guest return
    /// address and continues in the cache; `ret` pops it and does an inline lookup.
    Transparent,
    /// BTKernel's policy: the stack holds code-cache return addresses. A direct `call` is a
    /// real `call` into the cache, an indirect one a real `call` into its inline lookup
    /// (whose hits then jump), and `ret` stays `ret`, so the CPU's return stack predicts
    /// every return. Flushing the cache invalidates return addresses on live stacks.
    Fast,
}

/// Size of the inline lookup table (guest PC → cache PC), indexed by the low bits of the
/// guest PC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IblSize {
    /// 256 entries (4 KiB), indexed by the low 8 bits.
    Small,
    /// 65536 entries (1 MiB), indexed by the low 16 bits.
    Large,
}

impl IblSize {
    /// Number of table entries (the index is the target's low bits).
    pub const fn entries(self) -> u32 {
        match self {
            IblSize::Small => 1 << 8,
            IblSize::Large => 1 << 16,
        }
    }

    /// Number of table slots: a lookup probes its index's slot and the next, so the last
    /// entry has one more.
    pub const fn slots(self) -> u32 {
        self.entries() + 1
    }

    /// Bytes of the table in the arena (keys, then values).
    pub const fn table_bytes(self) -> usize {
        self.slots() as usize * 16
    }
}

/// Configuration of one code cache.
///
/// # Invariants
/// `red_zone` is a multiple of 8 and at most 4096: [`crate::CodeCache::new`] rejects any
/// other value with [`Error::Config`], so every emitted displacement fits its field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// call/ret translation policy.
    pub policy: CallRetPolicy,
    /// Bytes below `rsp` the guest may use without moving `rsp` (128 in user space, 0 in
    /// the kernel). Translated code skips it before pushing anything. A multiple of 8, at
    /// most 4096.
    pub red_zone: u32,
    /// Runtime address of the dispatcher entry trampoline that exit stubs jump to.
    pub dispatcher: u64,
    /// Special-instruction classes that become hooks.
    pub hooks: HookClass,
    /// Size of the inline lookup table.
    pub ibl: IblSize,
    /// The kernel's mitigation thunks.
    pub thunks: Thunks,
    /// Whether a block goes on past a conditional branch into its fall-through (a
    /// single-entry, multiple-exit block: one `jmp` fewer per branch not taken). Off
    /// where each fragment must run whole or not at all, as for kdbt-user's counted runs;
    /// a client's blocks never do.
    pub through_jcc: bool,
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.red_zone & 7 != 0 || self.red_zone > 4096 {
            return Err(Error::Config);
        }
        Ok(())
    }
}
