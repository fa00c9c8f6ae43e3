//! Errors returned by the engine. Every failure on guest-controlled input is one of these;
//! the engine never panics.

use core::fmt;

/// Why a guest instruction can be decoded but not translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// `xbegin`: its abort path would leave the code cache.
    Xbegin,
    /// A near `jmp`/`call` through a 16-bit operand, or with 32-bit addressing.
    OperandSize,
    /// A RIP-relative operand out of ±2 GB reach in an instruction that also uses `rsp`,
    /// so it cannot be rewritten through a scratch register spilled on the stack.
    FarRipRelativeWithRsp,
    /// An EIP-relative (32-bit address size) operand.
    EipRelative,
    /// `ret imm16` whose immediate does not fit the lookup sequence's `ret imm16`.
    RetImmediate,
}

/// Errors of translation, linking and dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The instruction at `pc` is not a valid x86-64 instruction.
    Undecodable { pc: u64 },
    /// The guest bytes at `pc` could not be read (or end in the middle of the instruction).
    GuestMemory { pc: u64 },
    /// The instruction at `pc` is valid but cannot be translated.
    Unsupported { pc: u64, what: Unsupported },
    /// The fragment needs `needed` bytes, only `available` are left: flush and retry.
    CacheFull { needed: u32, available: u32 },
    /// The fragment needs `needed` bytes, more than the whole code area (`capacity`):
    /// flushing does not help.
    FragmentTooLarge { needed: u32, capacity: u32 },
    /// The arena cannot hold the dispatcher slot, the lookup table and any code, or is
    /// larger than 1 GiB (code must reach the table RIP-relative).
    ArenaSize { len: usize },
    /// The configuration is invalid (red zone not a multiple of 8 or larger than 4096).
    Config,
    /// iced-x86 could not re-encode the instruction at `pc`.
    Encode { pc: u64 },
    /// An exit id the dispatcher received does not name a current exit.
    UnknownExit { id: u64 },
    /// The dispatcher was to run `target`, an address in the code cache's arena that is not
    /// a code-cache return site (inside a fragment's code, in its data, or stale since a
    /// flush): not guest code to translate, nor a place to resume.
    CacheTarget { target: u64 },
    /// A fragment id does not name a current fragment.
    UnknownFragment,
    /// The exit is not a direct exit, so it cannot be linked.
    NotLinkable,
    /// A heap allocation for the cache's metadata failed; nothing was changed. Like
    /// `CacheFull`: flush (which frees nothing but makes the metadata reusable) and retry.
    OutOfMemory,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Undecodable { pc } => write!(f, "undecodable instruction at {pc:#x}"),
            Error::GuestMemory { pc } => write!(f, "guest memory unreadable at {pc:#x}"),
            Error::Unsupported { pc, what } => {
                write!(f, "unsupported instruction at {pc:#x}: {what:?}")
            }
            Error::CacheFull { needed, available } => {
                write!(f, "code cache full: need {needed} bytes, {available} left")
            }
            Error::FragmentTooLarge { needed, capacity } => {
                write!(
                    f,
                    "fragment of {needed} bytes exceeds the code area of {capacity} bytes"
                )
            }
            Error::ArenaSize { len } => write!(f, "arena of {len} bytes is too small or too large"),
            Error::Config => write!(f, "invalid engine configuration"),
            Error::Encode { pc } => write!(f, "cannot re-encode instruction at {pc:#x}"),
            Error::UnknownExit { id } => write!(f, "unknown exit id {id}"),
            Error::CacheTarget { target } => {
                write!(
                    f,
                    "target {target:#x} is in the code cache but no return site"
                )
            }
            Error::UnknownFragment => write!(f, "unknown fragment"),
            Error::NotLinkable => write!(f, "exit is not a direct exit"),
            Error::OutOfMemory => write!(f, "out of memory for code-cache metadata"),
        }
    }
}
