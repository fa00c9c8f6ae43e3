//! kdbt's translation engine: same-ISA dynamic binary translation of x86-64 code, one
//! basic block at a time, into a code cache.
//!
//! The engine is `no_std` + `alloc`, free of `unsafe`, floating point and panics on guest
//! input. It never touches raw memory: code is written into a caller-provided arena (a
//! `&mut [u8]`-like buffer) whose runtime (execution) address is given separately, and
//! guest code is read through [`GuestMemory`]. The same API serves the user-space runtime
//! (`kdbt-host`) and the kernel module; `docs/engine.md` describes it for both.
//!
//! - [`CodeCache`]: arena, inline lookup table, fragments, linking ([`CodeCache::link`]),
//!   flushing, the dispatcher step ([`CodeCache::dispatch`] with an [`Embedder`]) and its
//!   parts ([`CodeCache::exit_reason`], [`CodeCache::resolve`]).
//! - [`CodeCache::pc_map`] + [`Rollback::apply`]: precise guest state at any address of
//!   translated code.
//! - [`Config`]: call/ret policy, red zone, dispatcher address, hooked instruction classes,
//!   the kernel's mitigation thunks ([`Thunks`]).

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod cache;
mod client;
mod config;
mod decode;
mod dispatch;
mod emit;
mod error;
mod exit;
mod hooks;
mod ibl;
mod link;
mod memory;
mod meta;
mod pcmap;
mod stale;
mod stats;
mod thunks;
mod translate;

pub use cache::{
    CacheWord, CodeCache, FragmentId, DISPATCHER_SLOT_OFFSET, MAX_ARENA, TABLE_OFFSET,
};
pub use client::{BlockRange, BlockSlot, BlockTable, Client, ClientKind};
pub use config::{CallRetPolicy, Config, IblSize};
pub use dispatch::{Dispatch, Embedder, Step};
pub use error::{Error, Unsupported};
pub use exit::{
    ExitId, ExitReason, HookSite, IndirectKind, AUX_OFFSET, EXIT_ID_OFFSET, FRAME_SIZE,
};
pub use hooks::HookClass;
pub use memory::{GuestMemory, MemoryFault, SliceMemory};
pub use pcmap::{Frame, Gpr, PcMapping, Restore, RipSource, Rollback, StackReadFault};
pub use stale::{STALE_CHUNK, STALE_CHUNK_SHIFT};
pub use stats::Stats;
pub use thunks::{ThunkArray, Thunks};
