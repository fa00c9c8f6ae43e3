//! The user-space run loop: executes guest functions under translation, with the
//! dispatcher the engine's exit stubs enter. [`Runtime`] owns its cache and runs it in one
//! thread; [`crate::SharedCache`] is one cache run by several.

use std::ops::Range;

use kdbt_engine::{
    CallRetPolicy, CodeCache, Config, Error, Frame, HookClass, IblSize, PcMapping, Thunks,
};

use crate::context::{self, Context, Dispatcher, Sharing};
use crate::exec::ExecMemory;
use crate::signals::{Trace, Trap};
use crate::trampoline::{
    kdbt_host_dispatch_entry, kdbt_host_dispatch_entry_rz0, DispatchFrame, RED_ZONE,
};

/// Where the code-cache arena is mapped relative to the guest code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Wherever mmap puts it.
    Anywhere,
    /// Within ±1 GiB of this address (RIP-relative operands are re-encoded).
    Near(u64),
    /// In the low 2 GiB, like a kernel code cache in the top 2 GiB: the lookup table is
    /// addressed with an absolute disp32 and the lookup sequences spill two registers.
    Low,
    /// More than 4 GiB from this address (RIP-relative operands go through a scratch
    /// register).
    Far(u64),
}

/// Runtime options.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub policy: CallRetPolicy,
    pub hooks: HookClass,
    pub arena_len: usize,
    pub placement: Placement,
    pub ibl: IblSize,
    /// Mitigation thunks the translator recognises (none by default).
    pub thunks: Thunks,
    /// Bytes of the guest stack.
    pub stack_len: usize,
    /// Red zone: 128 (System V user code) or 0 (the kernel's setting; only for guest code
    /// that does not use a red zone, e.g. hand-written code).
    pub red_zone: u32,
}

impl Options {
    /// Defaults: 8 MiB arena anywhere, large lookup table, no hooks, 1 MiB stack.
    pub fn new(policy: CallRetPolicy) -> Self {
        Options {
            policy,
            hooks: HookClass::empty(),
            arena_len: 8 << 20,
            placement: Placement::Anywhere,
            ibl: IblSize::Large,
            thunks: Thunks::NONE,
            stack_len: 1 << 20,
            red_zone: RED_ZONE,
        }
    }
}

/// Fast policy: the calls and `ret`s translated Transparent, for guest code that reads its
/// return address (see [`kdbt_engine::Embedder::transparent_call`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransparentSites {
    /// A direct `call` to a target in one of these ranges pushes its guest return address.
    pub calls: Vec<Range<u64>>,
    /// A `ret` in one of these ranges is an inline lookup of the address it pops.
    pub rets: Vec<Range<u64>>,
}

/// What a hook handler wants after a hooked instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookAction {
    /// Continue at this guest PC (register changes made to the frame are kept, except
    /// `rsp`).
    Resume(u64),
    /// Leave the cache (the Fast policy's way out, as the kernel leaves fast mode): every
    /// code-cache address in the guest registers and on the guest stack is rewritten to
    /// its native value, the cache is flushed, and the run goes on natively at this PC.
    Leave(u64),
    /// End the run with [`RunError::HookStop`].
    Stop,
}

/// What [`HookAction::Leave`] rewrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Code-cache return addresses replaced by their guest return addresses.
    pub return_sites: u32,
    /// Other addresses inside translated code, replaced by their guest instruction's PC
    /// (none is expected: only interrupted frames hold such addresses).
    pub inside_code: u32,
    /// Words pointing at arena data (table, literals, metadata): left as they were.
    pub data: u32,
}

/// A hook handler: (class, guest PC, next guest PC, guest state before the instruction).
pub type HookFn = Box<dyn FnMut(HookClass, u64, u64, &mut Frame) -> HookAction>;

/// Why a run did not return normally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunError {
    /// The engine failed (e.g. a fragment larger than the cache, an unknown exit).
    Engine(Error),
    /// Control reached guest code that cannot be translated; `state` is the guest state
    /// before it (`rip` = the untranslatable PC).
    Untranslatable { state: Frame, error: Error },
    /// A signal interrupted guest code.
    Signal(Trap),
    /// A hook handler stopped the run; `state` is before the hooked instruction.
    HookStop { state: Frame },
}

/// A code cache plus a guest stack, running guest functions in this thread.
pub struct Runtime {
    cache: CodeCache<ExecMemory>,
    sites: TransparentSites,
    /// Targets whose direct calls and jumps translated code drops.
    elided: Vec<Range<u64>>,
    ctx: Context,
}

/// A cache mapped according to `opts`, its exits entering the host's dispatcher.
pub(crate) fn new_cache(opts: &Options) -> Result<CodeCache<ExecMemory>, RunError> {
    let dispatcher = match opts.red_zone {
        RED_ZONE => kdbt_host_dispatch_entry as *const () as u64,
        0 => kdbt_host_dispatch_entry_rz0 as *const () as u64,
        _ => return Err(RunError::Engine(Error::Config)),
    };
    let io = |_| {
        RunError::Engine(Error::ArenaSize {
            len: opts.arena_len,
        })
    };
    let arena = match opts.placement {
        Placement::Anywhere => ExecMemory::new(opts.arena_len),
        Placement::Near(a) => ExecMemory::near(opts.arena_len, a),
        Placement::Far(a) => ExecMemory::far(opts.arena_len, a),
        Placement::Low => ExecMemory::low(opts.arena_len),
    }
    .map_err(io)?;
    let base = arena.base();
    let cfg = Config {
        policy: opts.policy,
        red_zone: opts.red_zone,
        dispatcher,
        hooks: opts.hooks,
        ibl: opts.ibl,
        thunks: opts.thunks,
        through_jcc: true,
    };
    CodeCache::new(arena, base, cfg).map_err(RunError::Engine)
}

impl Runtime {
    /// A runtime with a fresh cache mapped according to `opts`.
    pub fn new(opts: Options) -> Result<Self, RunError> {
        let cache = new_cache(&opts)?;
        Ok(Runtime {
            cache,
            sites: TransparentSites::default(),
            elided: Vec::new(),
            ctx: Context::new(opts.stack_len)?,
        })
    }

    /// The code cache.
    pub fn cache(&self) -> &CodeCache<ExecMemory> {
        &self.cache
    }

    /// Runtime addresses of the whole arena (dispatcher slot, table, fragments).
    pub fn arena_range(&self) -> std::ops::Range<u64> {
        let base = self.cache.exec_base();
        base..base + self.cache.arena_len() as u64
    }

    /// The code cache, mutably (flush, invalidate, ...).
    pub fn cache_mut(&mut self) -> &mut CodeCache<ExecMemory> {
        &mut self.cache
    }

    /// Sets the calls and `ret`s a Fast cache translates Transparent, and flushes the cache
    /// if it holds translations (they followed the sites of before).
    pub fn set_transparent_sites(&mut self, sites: TransparentSites) {
        self.sites = sites;
        if self.cache.used() > 0 {
            self.cache.flush();
        }
    }

    /// Sets the callees translated code drops (see [`kdbt_engine::Embedder::elided_call`]): a
    /// direct `call` to a target in one of these ranges is no code, a direct `jmp` to one
    /// a `ret`; indirect ones still run the target. Flushes the cache if it holds
    /// translations (they followed the callees of before).
    pub fn set_elided_calls(&mut self, targets: Vec<Range<u64>>) {
        self.elided = targets;
        if self.cache.used() > 0 {
            self.cache.flush();
        }
    }

    /// Sets the handler for hooked instructions (without one, a hook stops the run).
    pub fn set_hook(&mut self, hook: HookFn) {
        self.ctx.hook = Some(hook);
    }

    /// Starts single-step tracing for the following runs (TF set at entry).
    pub fn set_trace(&mut self, trace: Option<Trace>) {
        self.ctx.signals.trace = trace;
    }

    /// Takes the trace recorded so far.
    pub fn take_trace(&mut self) -> Option<Trace> {
        self.ctx.signals.trace.take()
    }

    /// Top of the guest stack (16-byte aligned); the guest function starts with
    /// `rsp = stack_top() - 24`. A page of headroom stays above it (single-step traces
    /// save the words above `rsp`).
    pub fn stack_top(&self) -> u64 {
        self.ctx.stack_top()
    }

    /// Runs the function at guest address `entry` under translation with up to six
    /// integer arguments; returns its `rax`.
    pub fn run(&mut self, entry: u64, args: &[u64]) -> Result<u64, RunError> {
        let pc = self.ctx.start(
            &mut self.cache,
            &self.sites,
            &self.elided,
            Sharing::Alone,
            entry,
        )?;
        context::enter(self, pc, args)
    }

    /// Runs the function at `entry` natively, on the same guest stack and with the same
    /// initial registers as [`Self::run`] (for comparisons).
    pub fn run_native(&mut self, entry: u64, args: &[u64]) -> Result<u64, RunError> {
        context::enter(self, entry, args)
    }

    /// The precise guest state for an interrupted frame inside translated code: the PC
    /// map's answer for `frame.rip` and the frame with its rollback applied.
    /// Stack slots are read from live memory.
    pub fn guest_state(&self, frame: &Frame) -> Option<(PcMapping, Frame)> {
        self.guest_state_with(frame, |a| self.ctx.mem.read_u64(a))
    }

    /// [`Self::guest_state`] reading stack slots through `read_stack` (e.g.
    /// [`crate::Step::read_stack`] for a recorded trap).
    pub fn guest_state_with<F: FnMut(u64) -> Option<u64>>(
        &self,
        frame: &Frame,
        read_stack: F,
    ) -> Option<(PcMapping, Frame)> {
        let mapping = self.cache.pc_map(frame.rip)?;
        let mut state = *frame;
        mapping.rollback.apply(&mut state, read_stack).ok()?;
        // A lookup's miss path rolls back to after its branch, at the target it read: in a
        // Fast cache that may be a caller's return site (a Transparent `ret` popped it),
        // which stands for its guest return address.
        if let Some(guest) = self.cache.return_site(state.rip) {
            state.rip = guest;
        }
        Some((mapping, state))
    }

    /// What the last [`HookAction::Leave`] rewrote (`None` before any).
    pub fn last_rewrite(&self) -> Option<Rewrite> {
        self.ctx.rewrite
    }
}

impl Dispatcher for Runtime {
    fn context(&mut self) -> &mut Context {
        &mut self.ctx
    }

    fn dispatch(&mut self, frame: &mut DispatchFrame) -> u64 {
        self.ctx.dispatch(
            &mut self.cache,
            &self.sites,
            &self.elided,
            Sharing::Alone,
            frame,
        )
    }
}
