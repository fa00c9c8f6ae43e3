//! Runs a loaded guest process under translation: the dispatcher loop around
//! [`GuestContext::resume`], with the guest's system calls carried out by [`GuestOs`].

use super::fsbase::FsSwitch;
use super::guest::Guest;
use super::switch::{self, GuestContext, RED_ZONE};
use super::syscall::{GuestOs, Outcome};
use kdbt_engine::{
    CallRetPolicy, CodeCache, Config, Dispatch, Embedder, Error, ExitReason, FragmentId,
    GuestMemory, HookClass, IblSize, Stats, Step, Thunks,
};
use kdbt_host::{ExecMemory, ProcessMemory};
use std::fmt;

/// Code-cache arena: busybox's applets touch well under a megabyte of guest code, so a
/// run never fills it (under Fast a flush mid-run would leave cache return addresses
/// dangling on the guest stack, so a full cache is an error there).
const ARENA: usize = 64 << 20;
/// IF set, as Linux starts a process (bit 1 is always one).
const INITIAL_RFLAGS: u64 = 0x202;

/// How block transitions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transitions {
    /// Exits are linked and the inline lookup table is used: the normal, timed mode.
    Linked,
    /// Nothing is linked and the lookup table is kept empty, so every fragment is entered
    /// from the dispatcher, which adds up the guest instructions it runs: exact counts.
    /// Transparent only: under Fast, copied `ret`s go back into the cache directly.
    Counted,
}

/// What one translated run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Guest instructions executed in translated code: exact in [`Transitions::Counted`]
    /// runs, not measured (0) in linked ones, whose fragments chain without the dispatcher.
    pub from_cache: u64,
    /// Guest instructions the dispatcher carried out instead (the hooked `syscall`s).
    pub emulated: u64,
    pub dispatches: u64,
    pub engine: Stats,
}

impl Report {
    /// Fixed-size encoding, to bring a report back from the child process.
    pub fn to_bytes(self) -> Vec<u8> {
        let s = &self.engine;
        [
            self.from_cache,
            self.emulated,
            self.dispatches,
            s.blocks,
            s.guest_insns,
            s.guest_bytes,
            s.cache_bytes,
            s.links,
            s.unlinks,
            s.lookups,
            s.hits,
            s.misses,
            s.flushes,
            s.native_fallbacks,
        ]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
    }

    pub fn from_bytes(b: &[u8]) -> Option<Report> {
        let w: Vec<u64> = b
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let &[from_cache, emulated, dispatches, blocks, guest_insns, guest_bytes, cache_bytes, links, unlinks, lookups, hits, misses, flushes, native_fallbacks] =
            &w[..]
        else {
            return None;
        };
        let engine = Stats {
            blocks,
            guest_insns,
            guest_bytes,
            cache_bytes,
            links,
            unlinks,
            lookups,
            hits,
            misses,
            flushes,
            native_fallbacks,
            // The user runtime's guest code never changes under it.
            ..Stats::default()
        };
        Some(Report {
            from_cache,
            emulated,
            dispatches,
            engine,
        })
    }
}

/// Why a translated run stopped before the guest exited.
#[derive(Debug)]
pub enum RunError {
    /// Another guest context is live in this process, or the CPU lacks xsave.
    NoContext,
    Arena(std::io::Error),
    Engine(Error),
    /// Counted transitions were asked for under the Fast policy.
    CountedNeedsTransparent,
    /// A counted run found a linked exit or a filled lookup-table slot at its end: some
    /// fragments may have been entered without the dispatcher, so it reports no count.
    CountingBypassed,
    /// A hook class other than `syscall` reached the dispatcher.
    UnexpectedHook {
        class: HookClass,
        pc: u64,
    },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::NoContext => write!(f, "no guest context (already in use, or no xsave)"),
            RunError::Arena(e) => write!(f, "mapping the code cache: {e}"),
            RunError::Engine(e) => write!(f, "engine: {e}"),
            RunError::CountedNeedsTransparent => {
                write!(f, "a counted run needs the Transparent policy")
            }
            RunError::CountingBypassed => write!(
                f,
                "counted run: a fragment may have been entered without the dispatcher"
            ),
            RunError::UnexpectedHook { class, pc } => {
                write!(f, "unexpected hook {class:?} at {pc:#x}")
            }
        }
    }
}

/// The code cache plus what the counted mode knows about each fragment.
struct Translator {
    cache: CodeCache<ExecMemory>,
    mem: ProcessMemory,
    transitions: Transitions,
    /// Guest instructions of each fragment, by `FragmentId` (until a flush).
    insns: Vec<u64>,
}

/// What kdbt-user decides for the engine's dispatcher step.
struct Env<'m> {
    mem: &'m ProcessMemory,
    /// Transparent stacks hold only guest addresses, so a full cache may be flushed.
    may_flush: bool,
    links: bool,
    flushed: bool,
}

impl Embedder<ExecMemory> for Env<'_> {
    fn memory(&self) -> &dyn GuestMemory {
        self.mem
    }

    fn may_flush(&self) -> bool {
        self.may_flush
    }

    fn links(&self) -> bool {
        self.links
    }

    fn flushed(&mut self, _cache: &mut CodeCache<ExecMemory>) {
        self.flushed = true;
    }
}

impl Translator {
    /// One dispatcher step towards guest `target` (the step's destination): where to
    /// resume and the fragment entered, translated if needed.
    fn enter(&mut self, step: Step, target: u64) -> Result<(u64, FragmentId), Error> {
        // A Fast caller's return site as the target (a `longjmp` to a saved return
        // address) is resumed at its guest return address.
        let target = self.cache.return_site(target).unwrap_or(target);
        let before = self.cache.stats().guest_insns;
        let mut env = Env {
            mem: &self.mem,
            may_flush: self.cache.config().policy == CallRetPolicy::Transparent,
            links: self.transitions == Transitions::Linked,
            flushed: false,
        };
        let pc = match self.cache.dispatch(step, &mut env)? {
            Dispatch::Run { cache_pc } => cache_pc,
            Dispatch::Native { error: Some(e), .. } => return Err(e),
            Dispatch::Native { error: None, .. } | Dispatch::Hook(_) => {
                return Err(Error::NotLinkable)
            }
        };
        if env.flushed {
            self.insns.clear();
        }
        let id = self.cache.lookup(target).ok_or(Error::UnknownFragment)?;
        if id.0 as usize == self.insns.len() {
            self.insns.push(self.cache.stats().guest_insns - before);
        }
        if self.transitions == Transitions::Counted {
            // `translate` (re)inserts `target` into the lookup table on a miss and on a hit.
            self.cache.table_remove(target);
        }
        Ok((pc, id))
    }
}

/// Runs `guest` under translation with `policy` until it exits; returns its exit status
/// and what the run did. Call in a disposable child: guest system calls act on this process.
pub fn run(
    guest: &Guest,
    policy: CallRetPolicy,
    transitions: Transitions,
) -> Result<(i32, Report), RunError> {
    if (policy, transitions) == (CallRetPolicy::Fast, Transitions::Counted) {
        return Err(RunError::CountedNeedsTransparent);
    }
    let mut ctx = GuestContext::claim(FsSwitch::detect()).ok_or(RunError::NoContext)?;
    let arena = ExecMemory::near(ARENA, guest.image.entry).map_err(RunError::Arena)?;
    let base = arena.base();
    let cfg = Config {
        policy,
        red_zone: RED_ZONE,
        dispatcher: switch::dispatcher(),
        hooks: HookClass::SYSCALL,
        ibl: IblSize::Large,
        thunks: Thunks::NONE,
        // A counted run adds a fragment's instructions when it is entered.
        through_jcc: transitions != Transitions::Counted,
    };
    let cache = CodeCache::new(arena, base, cfg).map_err(RunError::Engine)?;
    let mut t = Translator {
        cache,
        mem: ProcessMemory,
        transitions,
        insns: Vec::new(),
    };
    let mut os = GuestOs::new(&guest.image);
    let mut report = Report::default();

    let entry = guest.image.entry;
    let (pc, first) = t
        .enter(Step::Enter { pc: entry }, entry)
        .map_err(RunError::Engine)?;
    *ctx.frame() = switch::GuestFrame {
        rsp: guest.rsp,
        rflags: INITIAL_RFLAGS,
        pc,
        ..Default::default()
    };
    let counted = transitions == Transitions::Counted;
    let mut entered = first;
    loop {
        if counted {
            report.from_cache += t.insns[entered.0 as usize];
        }
        ctx.set_guest_fs_base(os.fs_base);
        // SAFETY: the frame holds the guest's state and pc a fragment entry of `t.cache`,
        // whose exits go to switch::dispatcher(); the guest stack is the loader's.
        unsafe { ctx.resume() };
        report.dispatches += 1;
        let f = ctx.frame();
        let reason = t
            .cache
            .exit_reason(f.exit_id, f.aux)
            .map_err(RunError::Engine)?;
        let (mut step, mut target) = (
            Step::Exit {
                exit_id: f.exit_id,
                aux: f.aux,
            },
            0,
        );
        if let ExitReason::DirectMiss { target: to, .. }
        | ExitReason::IndirectMiss { target: to, .. } = reason
        {
            target = to;
        }
        if let ExitReason::Hook(site) = reason {
            if site.class != HookClass::SYSCALL {
                return Err(RunError::UnexpectedHook {
                    class: site.class,
                    pc: site.pc,
                });
            }
            if counted {
                // The hooked instruction was counted with its fragment but ran here.
                report.from_cache -= 1;
            }
            report.emulated += 1;
            // SAFETY: this is the disposable child the guest owns (see above).
            match unsafe { os.syscall(f.rax, [f.rdi, f.rsi, f.rdx, f.r10, f.r8, f.r9]) } {
                Outcome::Exit(status) => {
                    report.engine = *t.cache.stats();
                    if counted && (report.engine.links != 0 || !t.cache.lookup_table_is_empty()) {
                        return Err(RunError::CountingBypassed);
                    }
                    return Ok((status, report));
                }
                Outcome::Resume(ret) => {
                    // As the CPU's syscall/sysret leave them: rcx = next rip, r11 = rflags.
                    f.rax = ret;
                    f.rcx = site.next_pc;
                    f.r11 = f.rflags;
                    (step, target) = (Step::Enter { pc: site.next_pc }, site.next_pc);
                }
            }
        }
        let (pc, id) = t.enter(step, target).map_err(RunError::Engine)?;
        ctx.frame().pc = pc;
        entered = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_survives_the_trip_through_the_pipe() {
        let engine = Stats {
            blocks: 2,
            guest_insns: 3,
            guest_bytes: 4,
            cache_bytes: 5,
            links: 6,
            unlinks: 7,
            lookups: 8,
            hits: 9,
            misses: 10,
            flushes: 11,
            native_fallbacks: 12,
            ..Stats::default()
        };
        let r = Report {
            from_cache: 1 << 40,
            emulated: 13,
            dispatches: 14,
            engine,
        };
        assert_eq!(Report::from_bytes(&r.to_bytes()), Some(r));
        assert_eq!(
            Report::from_bytes(&r.to_bytes()[8..]),
            None,
            "a short report is rejected"
        );
    }
}
