//! User-space runtime for kdbt's engine: executable code-cache memory, the dispatcher
//! entry trampoline, a run loop executing guest functions under translation, and signal
//! capture mapping faults back through the engine's PC map; one cache can also be shared
//! by several threads ([`SharedCache`]). It is the user-space counterpart of the kernel
//! glue and uses the engine's API the same way.

mod context;
mod corpus;
mod exec;
mod memory;
mod runtime;
mod shared;
mod signals;
mod trampoline;

pub use corpus::text_section;
pub use exec::ExecMemory;
pub use memory::ProcessMemory;
pub use runtime::{
    HookAction, HookFn, Options, Placement, Rewrite, RunError, Runtime, TransparentSites,
};
pub use shared::{SharedCache, SharedRuntime};
pub use signals::{Step, Trace, Trap, STACK_WORDS};
pub use trampoline::{
    kdbt_host_dispatch_entry, kdbt_host_return, kdbt_host_trampolines_end,
    kdbt_host_trampolines_start, RED_ZONE,
};
