//! One dispatch step: lookup → translate → link → flush-and-retry, the same for the kernel
//! dispatcher and the user-space runtimes, which supply what differs through [`Embedder`].

use crate::cache::{CacheWord, CodeCache, FragmentId};
use crate::error::Error;
use crate::exit::{ExitId, ExitReason, HookSite};
use crate::memory::GuestMemory;
use crate::translate::Sites;

/// What the dispatcher was entered for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Run guest `pc` from the cache: an interrupt handler, a hook's resume PC, a first
    /// entry.
    Enter { pc: u64 },
    /// Translated code left through an exit: the exit id and aux value of its frame.
    Exit { exit_id: u64, aux: u64 },
}

/// Where the dispatcher resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// At this code-cache address.
    Run { cache_pc: u64 },
    /// Natively at guest `pc`: the embedder wants it native (`error: None`), or it could
    /// not be translated even after the flush-and-retry (`Some`, counted in
    /// [`crate::Stats::native_fallbacks`]).
    Native { pc: u64, error: Option<Error> },
    /// A hooked instruction (guest state before it): the caller emulates it, then
    /// dispatches `Step::Enter` at the resume PC.
    Hook(HookSite),
}

/// What the code that embeds a cache decides for it.
pub trait Embedder<A> {
    /// Guest code bytes.
    fn memory(&self) -> &dyn GuestMemory;

    /// Whether guest `pc` must run natively (e.g. the embedder's own code).
    fn runs_natively(&self, _pc: u64) -> bool {
        false
    }

    /// Asked after a translation added a block: whether to flush anyway (the heap runs
    /// short).
    fn under_pressure(&self, _cache: &CodeCache<A>) -> bool {
        false
    }

    /// Whether the cache may be flushed now (not under the Fast policy while stacks hold
    /// cache return addresses). When not, a full cache is a native fallback.
    fn may_flush(&self) -> bool {
        true
    }

    /// Whether to link a direct exit to its target's fragment (false: every transition
    /// comes back to the dispatcher, e.g. to count executed instructions exactly).
    fn links(&self) -> bool {
        true
    }

    /// The cache was just flushed (fragment and exit ids of before are stale): re-create
    /// what must always be translated (e.g. the syscall entry). Nothing flushes again
    /// during this step, so a translation here that fails stays failed.
    fn flushed(&mut self, _cache: &mut CodeCache<A>) {}

    /// Fast policy: whether a direct `call` to `target` pushes its guest return address
    /// and jumps (a Transparent call) instead of pushing a code-cache one, for code that
    /// decides from its return address (the kernel's ftrace trampolines take the traced
    /// function's address from it). Asked when a block with such a call is translated;
    /// an answer may change only where code changes too (the target's or its callers'),
    /// which invalidation re-translates.
    fn transparent_call(&self, _target: u64) -> bool {
        false
    }

    /// Fast policy: whether the `ret` at guest `pc` is translated Transparent (an inline
    /// lookup of the address it pops) instead of copied: the `ret`s of the
    /// [`Self::transparent_call`] targets, which pop guest return addresses. A copied one
    /// would return to the guest address and run natively from there. Asked as
    /// [`Self::transparent_call`] is.
    fn transparent_ret(&self, _pc: u64) -> bool {
        false
    }

    /// Whether direct calls and direct jumps (tail calls) to `target` are dropped from
    /// translated code, for code that matters only when the kernel calls it natively (the
    /// module's own tracepoint probe): from translated code it does not run, at no cost. A
    /// direct `call target` becomes nothing: the block goes on with the next instruction
    /// (no code, no exit). A direct `jmp target` (a tail call, e.g. a static-call
    /// trampoline's `jmp`) becomes the `ret` the callee would end with: the Transparent
    /// policy's inline lookup of the popped address (also at a [`Self::transparent_ret`]
    /// PC of a Fast cache), otherwise a real `ret`. This holds for a target the thunks
    /// would stand in for too. Indirect calls and jumps (the target known only at run
    /// time) and conditional branches to `target` are not affected: they run it. Asked
    /// when a block is translated; an answer may change only where code changes too,
    /// which invalidation re-translates.
    fn elided_call(&self, _target: u64) -> bool {
        false
    }
}

impl<A: AsRef<[u8]> + AsMut<[u8]>> CodeCache<A> {
    /// One dispatcher step. `Err` only for an exit id that names no current exit, or a
    /// target in the cache that is no return site (no guest PC is known then). See
    /// `docs/engine.md` for the contract.
    pub fn dispatch<E: Embedder<A>>(&mut self, step: Step, env: &mut E) -> Result<Dispatch, Error> {
        let (target, exit) = match step {
            Step::Enter { pc } => (pc, None),
            Step::Exit { exit_id, aux } => match self.exit_reason(exit_id, aux)? {
                ExitReason::Hook(site) => return Ok(Dispatch::Hook(site)),
                ExitReason::DirectMiss { exit, target } => (target, Some(exit)),
                ExitReason::IndirectMiss { target, .. } => (target, None),
            },
        };
        let pc = self.guest_target(target)?;
        if env.runs_natively(pc) {
            return Ok(Dispatch::Native { pc, error: None });
        }
        Ok(self.settle(pc, exit, env))
    }

    /// The guest PC a step's `target` stands for. A code-cache return site (a Transparent
    /// site's `ret` popped a Fast caller's return address, or an indirect branch loaded
    /// one) stands for its guest return address: resuming at the translation of that,
    /// rather than at the site, is right whether the site's fragment was invalidated
    /// since, and survives a flush in this step. Any other address in the arena is
    /// refused: it is not guest code, and running it would skip or repeat guest state.
    fn guest_target(&mut self, target: u64) -> Result<u64, Error> {
        match self.classify(target) {
            None => Ok(target),
            Some(CacheWord::ReturnSite(guest)) => {
                self.stats.site_resumes += 1;
                Ok(guest)
            }
            Some(CacheWord::Code(_) | CacheWord::Data) => Err(Error::CacheTarget { target }),
        }
    }

    /// [`Self::translate`] with the embedder's Transparent sites and elided callees.
    fn translate_for<E: Embedder<A>>(&mut self, pc: u64, env: &E) -> Result<FragmentId, Error> {
        let call = |target| env.transparent_call(target);
        let ret = |pc| env.transparent_ret(pc);
        let elide = |target| env.elided_call(target);
        let sites = Sites {
            call: &call,
            ret: &ret,
            elide: &elide,
        };
        self.translate_with(pc, env.memory(), sites)
    }

    /// Translates (or finds) `pc`, flushing and retrying once when the cache is full, the
    /// heap failed, or the embedder reports pressure after a translation; links `exit` to
    /// the result unless a flush made it stale.
    fn settle<E: Embedder<A>>(&mut self, pc: u64, exit: Option<ExitId>, env: &mut E) -> Dispatch {
        let blocks = self.stats.blocks;
        let mut r = self.translate_for(pc, env);
        let full = matches!(r, Err(Error::CacheFull { .. } | Error::OutOfMemory));
        let pressed = r.is_ok() && self.stats.blocks != blocks && env.under_pressure(self);
        if (full || pressed) && env.may_flush() {
            self.flush();
            env.flushed(self);
            r = self.translate_for(pc, env);
        }
        let id = match r {
            Ok(id) => id,
            Err(error) => {
                self.stats.native_fallbacks += 1;
                return Dispatch::Native {
                    pc,
                    error: Some(error),
                };
            }
        };
        let current = |x: &ExitId| x.generation == self.generation() && env.links();
        if let Some(exit) = exit.filter(current) {
            // Cannot fail for a current direct exit and its target's fragment; if it did,
            // the exit would just stay unlinked.
            let _ = self.link(exit, id);
        }
        match self.fragment_entry(id) {
            Ok(cache_pc) => Dispatch::Run { cache_pc },
            Err(error) => {
                self.stats.native_fallbacks += 1;
                Dispatch::Native {
                    pc,
                    error: Some(error),
                }
            }
        }
    }
}
