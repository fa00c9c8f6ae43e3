//! One code cache run by several threads at once, as fast mode's kernel will run one cache
//! on every CPU (`docs/fast-mode.md` 2.2, option A; `docs/engine.md`, "Sharing a cache
//! between CPUs").
//!
//! The cache lives behind a [`Mutex`]. A thread takes it for a dispatcher step only (its
//! [`SharedRuntime`]'s dispatcher entry) and runs translated code without it; another
//! thread may take it at any time to change the cache ([`SharedCache::lock`]: link, unlink,
//! invalidate, translate) while the others execute. Each thread has its own guest stack
//! and dispatcher context; the translated code names none of them. The cache is never
//! flushed: under the Fast policy other threads' stacks hold its return sites, and under
//! either policy other threads may be executing it (a full cache makes the run fail with
//! `CacheFull` instead).

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use kdbt_engine::CodeCache;

use crate::context::{self, Context, Dispatcher, Sharing};
use crate::exec::ExecMemory;
use crate::runtime::{new_cache, HookFn, Options, RunError, TransparentSites};
use crate::trampoline::DispatchFrame;

/// A code cache shared by the threads that run guest code from it.
///
/// # Invariants
/// `cache` was made shared ([`CodeCache::set_shared`]) before any thread ran it and is
/// never flushed here: every dispatcher step runs with [`Sharing::Shared`].
pub struct SharedCache {
    cache: Mutex<CodeCache<ExecMemory>>,
    sites: TransparentSites,
    arena: Range<u64>,
    stack_len: usize,
}

impl SharedCache {
    /// A cache mapped according to `opts` (each thread's guest stack: `opts.stack_len`),
    /// translating `sites` Transparent under the Fast policy (eliding no callees).
    pub fn new(opts: Options, sites: TransparentSites) -> Result<Arc<Self>, RunError> {
        let mut cache = new_cache(&opts)?;
        cache.set_shared(true);
        let base = cache.exec_base();
        let arena = base..base + cache.arena_len() as u64;
        Ok(Arc::new(SharedCache {
            cache: Mutex::new(cache),
            sites,
            arena,
            stack_len: opts.stack_len,
        }))
    }

    /// The cache, for as long as the guard lives: the lock every dispatcher step takes.
    /// Other threads go on executing translated code meanwhile.
    pub fn lock(&self) -> MutexGuard<'_, CodeCache<ExecMemory>> {
        // A panic in a dispatcher step (caught and re-raised by its run) leaves the cache
        // as consistent as any engine error does.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runtime addresses of the whole arena.
    pub fn arena_range(&self) -> Range<u64> {
        self.arena.clone()
    }

    /// A runtime for the calling thread (its own guest stack and dispatcher context).
    pub fn runtime(self: &Arc<Self>) -> Result<SharedRuntime, RunError> {
        Ok(SharedRuntime {
            shared: Arc::clone(self),
            ctx: Context::new(self.stack_len)?,
        })
    }
}

/// One thread's runtime on a [`SharedCache`].
pub struct SharedRuntime {
    shared: Arc<SharedCache>,
    ctx: Context,
}

impl SharedRuntime {
    /// The cache this runtime runs.
    pub fn shared(&self) -> &Arc<SharedCache> {
        &self.shared
    }

    /// Sets the handler for hooked instructions (without one, a hook stops the run).
    /// [`crate::HookAction::Leave`] rewrites this thread's stack but does not flush.
    pub fn set_hook(&mut self, hook: HookFn) {
        self.ctx.hook = Some(hook);
    }

    /// Top of this thread's guest stack.
    pub fn stack_top(&self) -> u64 {
        self.ctx.stack_top()
    }

    /// Guest stack addresses of this thread.
    pub fn stack_range(&self) -> Range<u64> {
        let base = self.ctx.stack.base();
        base..base + self.ctx.stack.len() as u64
    }

    /// Dispatcher entries this thread made (its exits from translated code).
    pub fn dispatches(&self) -> u64 {
        self.ctx.dispatches
    }

    /// Runs the function at guest address `entry` under translation in the shared cache
    /// with up to six integer arguments; returns its `rax`.
    pub fn run(&mut self, entry: u64, args: &[u64]) -> Result<u64, RunError> {
        let pc = {
            let mut cache = self.shared.lock();
            self.ctx
                .start(&mut cache, &self.shared.sites, &[], Sharing::Shared, entry)?
        };
        context::enter(self, pc, args)
    }

    /// Runs the function at `entry` natively on this thread's guest stack.
    pub fn run_native(&mut self, entry: u64, args: &[u64]) -> Result<u64, RunError> {
        context::enter(self, entry, args)
    }
}

impl Dispatcher for SharedRuntime {
    fn context(&mut self) -> &mut Context {
        &mut self.ctx
    }

    /// The lock is held for the engine's step only: the thread resumes translated code
    /// without it.
    fn dispatch(&mut self, frame: &mut DispatchFrame) -> u64 {
        let mut cache = self.shared.lock();
        self.ctx
            .dispatch(&mut cache, &self.shared.sites, &[], Sharing::Shared, frame)
    }
}
