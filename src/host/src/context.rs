//! A thread's dispatcher context: its guest stack, signal state and hook handler, the
//! run that enters guest code, and the dispatcher step the engine's exits come back to.
//!
//! Translated code names no thread: every exit jumps to the one dispatcher entry
//! (`kdbt_host_dispatch_entry`), which finds the running thread's context through the
//! thread-local [`CURRENT`] (the kernel's exit thunk will read its CPU with `rdpid`, as
//! `docs/fast-mode.md` 2.2 (a) says). The context then dispatches into the cache it runs,
//! its own ([`crate::Runtime`]) or one shared with other threads ([`crate::SharedCache`]),
//! which decides whether a flush is allowed.

use std::cell::Cell;
use std::ops::Range;
use std::ptr::{self, NonNull};

use kdbt_engine::{
    CacheWord, CallRetPolicy, CodeCache, Dispatch, Embedder, Error, Frame, Gpr, GuestMemory,
    HookSite, Step,
};

use crate::exec::ExecMemory;
use crate::memory::ProcessMemory;
use crate::runtime::{HookAction, HookFn, Rewrite, RunError, TransparentSites};
use crate::signals::{self, SignalState};
use crate::trampoline::{
    kdbt_host_enter, kdbt_host_leave, kdbt_host_return, DispatchFrame, EnterCtx,
};

/// What runs guest code on this thread: its context, and the dispatcher step into its
/// cache (taking the cache's lock if it is shared).
pub(crate) trait Dispatcher {
    fn context(&mut self) -> &mut Context;
    /// One dispatcher entry: the address to resume at.
    fn dispatch(&mut self, frame: &mut DispatchFrame) -> u64;
}

thread_local! {
    /// The dispatcher whose [`enter`] is on this thread's stack.
    static CURRENT: Cell<Option<NonNull<dyn Dispatcher>>> = const { Cell::new(None) };
}

/// Whether other threads run the cache a context dispatches into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sharing {
    /// Only this thread: a flush is safe whenever no stack holds a cache address.
    Alone,
    /// Other threads execute it at any moment: it is never flushed.
    Shared,
}

/// One thread's run state.
///
/// # Invariants
/// `signals.ctx` points to the running [`enter`]'s `EnterCtx` while guest code runs, and is
/// null otherwise.
pub(crate) struct Context {
    pub stack: ExecMemory,
    pub mem: ProcessMemory,
    pub hook: Option<HookFn>,
    pending: Option<RunError>,
    /// A panic raised by the hook handler, re-raised once the run has left guest code.
    panic: Option<Box<dyn std::any::Any + Send>>,
    pub signals: Box<SignalState>,
    pub rewrite: Option<Rewrite>,
    /// Dispatcher entries made by this thread.
    pub dispatches: u64,
}

impl Context {
    /// A context with a guest stack of `stack_len` bytes.
    pub fn new(stack_len: usize) -> Result<Self, RunError> {
        let stack = ExecMemory::new(stack_len)
            .map_err(|_| RunError::Engine(Error::ArenaSize { len: stack_len }))?;
        signals::install();
        Ok(Context {
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
            dispatches: 0,
        })
    }

    /// Top of the guest stack (16-byte aligned), a page below the mapping's end.
    pub fn stack_top(&self) -> u64 {
        (self.stack.base() + self.stack.len() as u64 - 4096) & !15
    }

    /// The first dispatcher step of a run: where to enter for guest `entry`.
    pub fn start(
        &mut self,
        cache: &mut CodeCache<ExecMemory>,
        sites: &TransparentSites,
        elided: &[Range<u64>],
        sharing: Sharing,
        entry: u64,
    ) -> Result<u64, RunError> {
        // No stack of this thread holds a cache address yet: a flush is safe alone.
        let mut env = Env {
            mem: &self.mem,
            may_flush: sharing == Sharing::Alone,
            sites,
            elided,
        };
        match cache.dispatch(Step::Enter { pc: entry }, &mut env) {
            Ok(Dispatch::Run { cache_pc }) => Ok(cache_pc),
            Ok(Dispatch::Native { error: None, .. }) => Ok(entry),
            Ok(Dispatch::Native {
                error: Some(error), ..
            })
            | Err(error) => {
                let state = Frame {
                    rip: entry,
                    ..Frame::default()
                };
                Err(RunError::Untranslatable { state, error })
            }
            Ok(Dispatch::Hook(_)) => Err(RunError::Engine(Error::NotLinkable)),
        }
    }

    fn abort(&mut self, frame: &mut DispatchFrame, err: RunError) -> u64 {
        self.pending = Some(err);
        frame.rdi = self.signals.ctx as u64;
        kdbt_host_leave as *const () as u64
    }

    /// The dispatcher step for an exit whose frame is `frame`, in `cache`.
    pub fn dispatch(
        &mut self,
        cache: &mut CodeCache<ExecMemory>,
        sites: &TransparentSites,
        elided: &[Range<u64>],
        sharing: Sharing,
        frame: &mut DispatchFrame,
    ) -> u64 {
        let red_zone = u64::from(cache.config().red_zone);
        let guest_rsp = (frame as *const DispatchFrame as u64) + 16 * 8 + 16 + red_zone;
        // Transparent stacks hold no cache addresses, so a flush mid-run is safe, unless
        // other threads are running the cache.
        let may_flush =
            sharing == Sharing::Alone && cache.config().policy == CallRetPolicy::Transparent;
        let mut step = Step::Exit {
            exit_id: frame.exit_id,
            aux: frame.aux,
        };
        loop {
            let mut env = Env {
                mem: &self.mem,
                may_flush,
                sites,
                elided,
            };
            match cache.dispatch(step, &mut env) {
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
                            self.leave_cache(cache, &mut state);
                            if sharing == Sharing::Alone {
                                cache.flush();
                            }
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

    /// Rewrites every code-cache address in `state`'s registers and on the guest stack
    /// above its `rsp` to its native value.
    fn leave_cache(&mut self, cache: &CodeCache<ExecMemory>, state: &mut Frame) {
        let mut rw = Rewrite::default();
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
                    // guest `rsp` and its top), which this context maps and owns; no
                    // guest code runs on it while its thread is in the dispatcher.
                    unsafe { ptr::write(slot as *mut u64, n) };
                }
            }
            slot += 8;
        }
        self.rewrite = Some(rw);
    }
}

/// Runs guest code from `entry` (a cache or native address) on `d`'s thread context with
/// up to six integer arguments until it returns; its `rax`.
pub(crate) fn enter<D: Dispatcher + 'static>(
    d: &mut D,
    entry: u64,
    args: &[u64],
) -> Result<u64, RunError> {
    let c = d.context();
    let mut ctx = EnterCtx {
        stack_top: c.stack_top(),
        entry,
        rflags: 0x202,
        ..EnterCtx::default()
    };
    if c.signals.trace.is_some() {
        ctx.rflags |= 0x100;
    }
    for (slot, a) in ctx.args.iter_mut().zip(args) {
        *slot = *a;
    }
    signals::ensure_altstack();
    c.pending = None;
    c.signals.trap = None;
    c.signals.ctx = &mut ctx;
    let state: *mut SignalState = &mut *c.signals;
    let me: NonNull<dyn Dispatcher> = NonNull::from(&mut *d as &mut dyn Dispatcher);
    let prev = CURRENT.with(|cur| cur.replace(Some(me)));
    let guard = signals::activate(state);
    // SAFETY: `ctx` lives across the call; the trampoline only returns through
    // `kdbt_host_leave`, which restores the callee-saved registers and stack it saved.
    // Guest code runs on the context's stack, which outlives the call. While it runs, `d`
    // is only reached through `CURRENT` (dispatcher) and `state` (signal handler).
    let rax = unsafe { kdbt_host_enter(&mut ctx) };
    drop(guard);
    CURRENT.with(|cur| cur.set(prev));
    let c = d.context();
    c.signals.ctx = ptr::null_mut();
    if let Some(payload) = c.panic.take() {
        std::panic::resume_unwind(payload);
    }
    if let Some(trap) = c.signals.trap.take() {
        return Err(RunError::Signal(trap));
    }
    match c.pending.take() {
        Some(e) => Err(e),
        None => Ok(rax),
    }
}

/// What the runtime decides for the engine's dispatcher step.
struct Env<'m> {
    mem: &'m ProcessMemory,
    may_flush: bool,
    sites: &'m TransparentSites,
    /// Targets whose direct calls and jumps are dropped.
    elided: &'m [Range<u64>],
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

    fn elided_call(&self, target: u64) -> bool {
        self.elided.iter().any(|r| r.contains(&target))
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
/// to resume at. The same entry serves every thread: the context is the thread's own.
pub(crate) extern "C" fn kdbt_host_dispatch(frame: *mut DispatchFrame) -> u64 {
    let Some(d) = CURRENT.with(|c| c.get()) else {
        std::process::abort();
    };
    if frame.is_null() {
        std::process::abort();
    }
    // SAFETY: `d` is the dispatcher whose `enter` is on this thread's stack (set there, not
    // otherwise used while guest code runs); `frame` points to the trampoline's saved
    // registers on the guest stack, exclusively ours until we return.
    let (d, frame) = unsafe { (&mut *d.as_ptr(), &mut *frame) };
    d.context().dispatches += 1;
    // A panic must not unwind through the assembly trampoline: leave the guest and re-raise
    // it from `enter`.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.dispatch(frame))) {
        Ok(resume) => resume,
        Err(payload) => {
            let c = d.context();
            c.panic = Some(payload);
            frame.rdi = c.signals.ctx as u64;
            kdbt_host_leave as *const () as u64
        }
    }
}
