//! Signal handling while guest code runs: faults and traps are captured (with the
//! interrupted register frame) and abort the run; single-step traps can be recorded.

use std::cell::Cell;
use std::ops::Range;
use std::ptr;
use std::sync::Once;

use kdbt_engine::{Frame, Gpr};

use crate::trampoline::{kdbt_host_leave, EnterCtx};

/// A signal raised by guest (or translated) code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trap {
    /// Signal number (`SIGSEGV`, `SIGTRAP`, ...).
    pub signo: i32,
    /// Interrupted registers, `rip` as delivered by the kernel.
    pub frame: Frame,
    /// `si_addr` of the signal.
    pub fault_addr: u64,
}

/// Words of stack saved with each single-step trap (enough for every rollback offset).
pub const STACK_WORDS: usize = 32;

/// One single-step trap: the interrupted frame and the stack above its `rsp` at that
/// moment (rollbacks read the stack as it was, not as it is after the run).
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub frame: Frame,
    pub stack: [u64; STACK_WORDS],
}

impl Step {
    /// The saved 8-byte stack slot at `addr`, if it was saved.
    pub fn read_stack(&self, addr: u64) -> Option<u64> {
        let off = addr.checked_sub(self.frame.get(Gpr::Rsp))?;
        if off % 8 != 0 {
            return None;
        }
        self.stack.get(usize::try_from(off / 8).ok()?).copied()
    }
}

/// Single-step recording: with TF set, every trap whose `rip` is in `include` and not in
/// `exclude` is recorded, up to the capacity given at creation.
#[derive(Debug)]
pub struct Trace {
    /// Addresses to record.
    pub include: Range<u64>,
    /// Addresses not to record (e.g. the trampolines).
    pub exclude: Range<u64>,
    /// Recorded traps, in order.
    pub frames: Vec<Step>,
    /// Set when a trap was dropped for lack of capacity.
    pub overflow: bool,
}

impl Trace {
    /// A trace recording at most `capacity` frames.
    pub fn new(include: Range<u64>, exclude: Range<u64>, capacity: usize) -> Self {
        Trace {
            include,
            exclude,
            frames: Vec::with_capacity(capacity),
            overflow: false,
        }
    }
}

/// Per-run signal state, reachable from the handler through a thread-local pointer.
#[derive(Debug)]
pub(crate) struct SignalState {
    pub ctx: *mut EnterCtx,
    pub trap: Option<Trap>,
    pub trace: Option<Trace>,
}

thread_local! {
    static STATE: Cell<*mut SignalState> = const { Cell::new(ptr::null_mut()) };
}

const SIGNALS: [i32; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGTRAP,
    libc::SIGILL,
    libc::SIGFPE,
];
const TRAP_TRACE: i32 = 2;

/// Installs the process-wide handler (once).
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for sig in SIGNALS {
            // SAFETY: a zeroed sigaction is valid; the handler is an extern "C" function
            // with the SA_SIGINFO signature.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, ptr::null_mut());
            }
        }
    });
}

/// Gives the current thread an alternate signal stack if it has none, so faults with a
/// broken guest `rsp` can still be handled. The stack is leaked with the thread.
pub(crate) fn ensure_altstack() {
    thread_local! {
        static DONE: Cell<bool> = const { Cell::new(false) };
    }
    if DONE.with(|d| d.replace(true)) {
        return;
    }
    const SIZE: usize = 1 << 16;
    // SAFETY: querying the current alternate stack, then installing a fresh anonymous
    // mapping that is never unmapped (the kernel may use it until the thread exits).
    unsafe {
        let mut old: libc::stack_t = std::mem::zeroed();
        if libc::sigaltstack(ptr::null(), &mut old) == 0 && old.ss_flags & libc::SS_DISABLE == 0 {
            return;
        }
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let p = libc::mmap(
            ptr::null_mut(),
            SIZE,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return;
        }
        let st = libc::stack_t {
            ss_sp: p,
            ss_flags: 0,
            ss_size: SIZE,
        };
        libc::sigaltstack(&st, ptr::null_mut());
    }
}

/// Makes `state` the current thread's signal state until the returned guard drops.
pub(crate) fn activate(state: *mut SignalState) -> impl Drop {
    struct Guard(*mut SignalState);
    impl Drop for Guard {
        fn drop(&mut self) {
            STATE.with(|s| s.set(self.0));
        }
    }
    Guard(STATE.with(|s| s.replace(state)))
}

const GREG: [i32; 16] = [
    libc::REG_RAX,
    libc::REG_RCX,
    libc::REG_RDX,
    libc::REG_RBX,
    libc::REG_RSP,
    libc::REG_RBP,
    libc::REG_RSI,
    libc::REG_RDI,
    libc::REG_R8,
    libc::REG_R9,
    libc::REG_R10,
    libc::REG_R11,
    libc::REG_R12,
    libc::REG_R13,
    libc::REG_R14,
    libc::REG_R15,
];

fn frame_of(gregs: &[libc::greg_t; 23]) -> Frame {
    let mut f = Frame::default();
    for (g, idx) in Gpr::ALL.iter().zip(GREG) {
        f.set(*g, gregs[idx as usize] as u64);
    }
    f.rip = gregs[libc::REG_RIP as usize] as u64;
    f.rflags = gregs[libc::REG_EFL as usize] as u64;
    f
}

extern "C" fn on_signal(sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let st = STATE.with(|s| s.get());
    if st.is_null() {
        // Not raised under a run: restore the default action; returning re-raises it.
        // SAFETY: resetting a signal disposition is async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
        return;
    }
    // SAFETY: `st` points to the running Runtime's SignalState (set by `activate` for the
    // duration of the run on this thread); `uc` is the ucontext the kernel passed to an
    // SA_SIGINFO handler, and `info` its siginfo.
    let (st, uc, info) = unsafe { (&mut *st, &mut *(uc as *mut libc::ucontext_t), &*info) };
    let gregs = &mut uc.uc_mcontext.gregs;
    let frame = frame_of(gregs);
    if sig == libc::SIGTRAP && info.si_code == TRAP_TRACE {
        if let Some(t) = st.trace.as_mut() {
            if t.include.contains(&frame.rip) && !t.exclude.contains(&frame.rip) {
                if t.frames.len() < t.frames.capacity() {
                    let mut stack = [0u64; STACK_WORDS];
                    let rsp = frame.get(Gpr::Rsp) as *const u64;
                    for (i, w) in stack.iter_mut().enumerate() {
                        // SAFETY: single-stepped guest code runs on the runtime's guest
                        // stack, which has at least STACK_WORDS words of headroom above
                        // any rsp the guest function can have.
                        *w = unsafe { ptr::read_volatile(rsp.wrapping_add(i)) };
                    }
                    t.frames.push(Step { frame, stack });
                } else {
                    t.overflow = true;
                }
            }
            return;
        }
    }
    if st.trap.is_none() {
        // SAFETY: reading si_addr of a siginfo delivered for this signal.
        let fault_addr = unsafe { info.si_addr() } as u64;
        st.trap = Some(Trap {
            signo: sig,
            frame,
            fault_addr,
        });
    }
    gregs[libc::REG_RIP as usize] = kdbt_host_leave as *const () as i64;
    gregs[libc::REG_RDI as usize] = st.ctx as i64;
    gregs[libc::REG_EFL as usize] &= !0x100;
}
