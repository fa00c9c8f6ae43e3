//! The user-space run loop: executes guest functions under translation, with the
//! dispatcher the engine's exit stubs enter.

use std::cell::Cell;
use std::ops::Range;
use std::ptr;

use kdbt_engine::{
    CacheWord, CallRetPolicy, CodeCache, Config, Dispatch, Embedder, Error, Frame, Gpr,
    GuestMemory, HookClass, HookSite, IblSize, PcMapping, Step, Thunks,
};

use crate::exec::ExecMemory;
use crate::memory::ProcessMemory;
use crate::signals::{self, SignalState, Trace, Trap};
use crate::trampoline::{
    kdbt_host_dispatch_entry, kdbt_host_dispatch_entry_rz0, kdbt_host_enter, kdbt_host_leave,
    kdbt_host_return, DispatchFrame, EnterCtx, RED_ZONE,
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

thread_local! {
    static CURRENT: Cell<*mut Runtime> = const { Cell::new(ptr::null_mut()) };
}

/// A code cache plus a guest stack, running guest functions in this thread.
pub struct Runtime {
    cache: CodeCache<ExecMemory>,
    stack: ExecMemory,
    mem: ProcessMemory,
    hook: Option<HookFn>,
    pending: Option<RunError>,
    /// A panic raised by the hook handler, re-raised once the run has left guest code.
    panic: Option<Box<dyn std::any::Any + Send>>,
    signals: Box<SignalState>,
    rewrite: Option<Rewrite>,
    sites: TransparentSites,
}

impl Runtime {
    /// A runtime with a fresh cache mapped according to `opts`.
    pub fn new(opts: Options) -> Result<Self, RunError> {
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
        let stack = ExecMemory::new(opts.stack_len).map_err(io)?;
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
        let cache = CodeCache::new(arena, base, cfg).map_err(RunError::Engine)?;
        signals::install();
        Ok(Runtime {
            cache,
            stack,
            mem: ProcessMemory,
            hook: None,
            pending: None,
            panic: None,
            signals: Box::new(SignalState {
                ctx: ptr::null_mut(),
                trap: None,
                trace: None,
            }),
            rewrite: None,
            sites: TransparentSites::default(),
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

    /// Sets the handler for hooked instructions (without one, a hook stops the run).
    pub fn set_hook(&mut self, hook: HookFn) {
        self.hook = Some(hook);
    }

    /// Starts single-step tracing for the following runs (TF set at entry).
    pub fn set_trace(&mut self, trace: Option<Trace>) {
        self.signals.trace = trace;
    }

    /// Takes the trace recorded so far.
    pub fn take_trace(&mut self) -> Option<Trace> {
        self.signals.trace.take()
    }

    /// Top of the guest stack (16-byte aligned); the guest function starts with
    /// `rsp = stack_top() - 24`. A page of headroom stays above it (single-step traces
    /// save the words above `rsp`).
    pub fn stack_top(&self) -> u64 {
        (self.stack.base() + self.stack.len() as u64 - 4096) & !15
    }

    /// Runs the function at guest address `entry` under translation with up to six
    /// integer arguments; returns its `rax`.
    pub fn run(&mut self, entry: u64, args: &[u64]) -> Result<u64, RunError> {
        // No guest stack is live yet: a flush is safe under either policy.
        let mut env = Env {
            mem: &self.mem,
            may_flush: true,
            sites: &self.sites,
        };
        let pc = match self.cache.dispatch(Step::Enter { pc: entry }, &mut env) {
            Ok(Dispatch::Run { cache_pc }) => cache_pc,
            Ok(Dispatch::Native { error: None, .. }) => entry,
            Ok(Dispatch::Native {
                error: Some(error), ..
            })
            | Err(error) => {
                let state = Frame {
                    rip: entry,
                    ..Frame::default()
                };
                return Err(RunError::Untranslatable { state, error });
            }
            Ok(Dispatch::Hook(_)) => return Err(RunError::Engine(Error::NotLinkable)),
        };
        self.enter(pc, args)
    }

    /// Runs the function at `entry` natively, on the same guest stack and with the same
    /// initial registers as [`Self::run`] (for comparisons).
    pub fn run_native(&mut self, entry: u64, args: &[u64]) -> Result<u64, RunError> {
        self.enter(entry, args)
    }

    fn enter(&mut self, entry: u64, args: &[u64]) -> Result<u64, RunError> {
        let mut ctx = EnterCtx {
            stack_top: self.stack_top(),
            entry,
            rflags: 0x202,
            ..EnterCtx::default()
        };
        if self.signals.trace.is_some() {
            ctx.rflags |= 0x100;
        }
        for (slot, a) in ctx.args.iter_mut().zip(args) {
            *slot = *a;
        }
        signals::ensure_altstack();
        self.pending = None;
        self.signals.trap = None;
        self.signals.ctx = &mut ctx;
        let state: *mut SignalState = &mut *self.signals;
        let me: *mut Runtime = self;
        let prev = CURRENT.with(|c| c.replace(me));
        let guard = signals::activate(state);
        // SAFETY: `ctx` lives across the call; the trampoline only returns through
        // `kdbt_host_leave`, which restores the callee-saved registers and stack it saved.
        // Guest code runs on `self.stack`, which outlives the call. While it runs, `self` is
        // only reached through `CURRENT` (dispatcher) and `state` (signal handler).
        let rax = unsafe { kdbt_host_enter(&mut ctx) };
        drop(guard);
        CURRENT.with(|c| c.set(prev));
        self.signals.ctx = ptr::null_mut();
        if let Some(payload) = self.panic.take() {
            std::panic::resume_unwind(payload);
        }
        if let Some(trap) = self.signals.trap.take() {
            return Err(RunError::Signal(trap));
        }
        match self.pending.take() {
            Some(e) => Err(e),
            None => Ok(rax),
        }
    }

    /// The precise guest state for an interrupted frame inside translated code: the PC
    /// map's answer for `frame.rip` and the frame with its rollback applied.
    /// Stack slots are read from live memory.
    pub fn guest_state(&self, frame: &Frame) -> Option<(PcMapping, Frame)> {
        self.guest_state_with(frame, |a| self.mem.read_u64(a))
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
        self.rewrite
    }

    /// Rewrites every code-cache address in `state`'s registers and on the guest stack
    /// above its `rsp` to its native value, then flushes the cache.
    fn leave_cache(&mut self, state: &mut Frame) {
        let mut rw = Rewrite::default();
        let cache = &self.cache;
        let mut native = |word: u64| match cache.classify(word) {
            Some(CacheWord::ReturnSite(guest)) => {
                rw.return_sites += 1;
                guest
            }
            Some(CacheWord::Code(m)) => {
                rw.inside_code += 1;
                m.insn_pc
            }
            Some(CacheWord::Data) => {
                rw.data += 1;
                word
            }
            None => word,
        };
        for reg in Gpr::ALL {
            if reg != Gpr::Rsp {
                state.set(reg, native(state.get(reg)));
            }
        }
        let mut slot = state.get(Gpr::Rsp) & !7;
        while slot < self.stack_top() {
            if let Some(word) = self.mem.read_u64(slot) {
                let n = native(word);
                if n != word {
                    // SAFETY: `slot` is an aligned word of the guest stack (between the
                    // guest `rsp` and its top), which this runtime maps and owns; no
                    // guest code runs while the dispatcher does.
                    unsafe { ptr::write(slot as *mut u64, n) };
                }
            }
            slot += 8;
        }
        self.cache.flush();
        self.rewrite = Some(rw);
    }

    fn abort(&mut self, frame: &mut DispatchFrame, err: RunError) -> u64 {
        self.pending = Some(err);
        frame.rdi = self.signals.ctx as u64;
        kdbt_host_leave as *const () as u64
    }

    fn dispatch(&mut self, frame: &mut DispatchFrame) -> u64 {
        let red_zone = u64::from(self.cache.config().red_zone);
        let guest_rsp = (frame as *const DispatchFrame as u64) + 16 * 8 + 16 + red_zone;
        let mut step = Step::Exit {
            exit_id: frame.exit_id,
            aux: frame.aux,
        };
        loop {
            // Transparent stacks hold no cache addresses, so a flush mid-run is safe.
            let mut env = Env {
                mem: &self.mem,
                may_flush: self.cache.config().policy == CallRetPolicy::Transparent,
                sites: &self.sites,
            };
            match self.cache.dispatch(step, &mut env) {
                Ok(Dispatch::Run { cache_pc }) => return cache_pc,
                Ok(Dispatch::Native { pc, error: None }) => return pc,
                Ok(Dispatch::Native {
                    pc,
                    error: Some(error),
                }) => {
                    let state = guest_frame(frame, guest_rsp, pc);
                    return self.abort(frame, RunError::Untranslatable { state, error });
                }
                Ok(Dispatch::Hook(HookSite { class, pc, next_pc })) => {
                    let mut state = guest_frame(frame, guest_rsp, pc);
                    let action = match self.hook.as_mut() {
                        Some(h) => h(class, pc, next_pc, &mut state),
                        None => HookAction::Stop,
                    };
                    match action {
                        HookAction::Resume(to) => {
                            state.set(Gpr::Rsp, guest_rsp);
                            set_guest_frame(frame, &state);
                            step = Step::Enter { pc: to };
                        }
                        HookAction::Leave(to) => {
                            state.set(Gpr::Rsp, guest_rsp);
                            self.leave_cache(&mut state);
                            set_guest_frame(frame, &state);
                            return to;
                        }
                        HookAction::Stop => return self.abort(frame, RunError::HookStop { state }),
                    }
                }
                Err(e) => return self.abort(frame, RunError::Engine(e)),
            }
        }
    }
}

/// What the runtime decides for the engine's dispatcher step.
struct Env<'m> {
    mem: &'m ProcessMemory,
    may_flush: bool,
    sites: &'m TransparentSites,
}

impl<A> Embedder<A> for Env<'_> {
    fn memory(&self) -> &dyn GuestMemory {
        self.mem
    }

    /// The return into `enter`'s trampoline leaves guest code.
    fn runs_natively(&self, pc: u64) -> bool {
        pc == kdbt_host_return as *const () as u64
    }

    fn may_flush(&self) -> bool {
        self.may_flush
    }

    fn transparent_call(&self, target: u64) -> bool {
        self.sites.calls.iter().any(|r| r.contains(&target))
    }

    fn transparent_ret(&self, pc: u64) -> bool {
        self.sites.rets.iter().any(|r| r.contains(&pc))
    }
}

fn guest_frame(d: &DispatchFrame, rsp: u64, rip: u64) -> Frame {
    let gpr = [
        d.rax, d.rcx, d.rdx, d.rbx, rsp, d.rbp, d.rsi, d.rdi, d.r8, d.r9, d.r10, d.r11, d.r12,
        d.r13, d.r14, d.r15,
    ];
    Frame {
        gpr,
        rip,
        rflags: d.rflags,
    }
}

fn set_guest_frame(d: &mut DispatchFrame, f: &Frame) {
    let [rax, rcx, rdx, rbx, _, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15] = f.gpr;
    (d.rax, d.rcx, d.rdx, d.rbx, d.rbp, d.rsi, d.rdi) = (rax, rcx, rdx, rbx, rbp, rsi, rdi);
    (d.r8, d.r9, d.r10, d.r11, d.r12, d.r13, d.r14, d.r15) = (r8, r9, r10, r11, r12, r13, r14, r15);
    d.rflags = f.rflags;
}

/// Called by `kdbt_host_dispatch_entry` with the saved guest frame; returns the address
/// to resume at.
pub(crate) extern "C" fn kdbt_host_dispatch(frame: *mut DispatchFrame) -> u64 {
    let rt = CURRENT.with(|c| c.get());
    if rt.is_null() || frame.is_null() {
        std::process::abort();
    }
    // SAFETY: `rt` is the Runtime whose `enter` is on this thread's stack (set in `enter`,
    // not otherwise used while guest code runs); `frame` points to the trampoline's saved
    // registers on the guest stack, exclusively ours until we return.
    let (rt, frame) = unsafe { (&mut *rt, &mut *frame) };
    // A panic must not unwind through the assembly trampoline: leave the guest and re-raise
    // it from `enter`.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.dispatch(frame))) {
        Ok(resume) => resume,
        Err(payload) => {
            rt.panic = Some(payload);
            frame.rdi = rt.signals.ctx as u64;
            kdbt_host_leave as *const () as u64
        }
    }
}
