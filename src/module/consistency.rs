// SPDX-License-Identifier: GPL-2.0

//! Code-cache consistency: when kernel code changes or goes away, every CPU
//! stops using translations of it before the kernel relies on the change.
//!
//! The kernel's own choke points (`helpers.c`: the module notifier, and
//! kretprobes on `__text_poke`, `text_poke_copy` and `text_poke_set`) report
//! each changed range here. A range goes into a global log; each CPU applies
//! the entries it has not seen to its own cache (invalidate what overlaps,
//! unlink it, drop it from the lookup table) at its next dispatcher entry,
//! and the CPU that made the change applies them at once. Only the owning
//! CPU ever touches a cache, so the cross-modification of its links stays
//! local. What makes the other CPUs enter their dispatcher before the kernel
//! relies on the change is an IPI round: the kernel's own `text_poke_sync`
//! after each step of a live patch, and kdbt's own (`kdbt_sync_cpus`) after
//! module events and JIT copies. docs/kernel.md has the argument.

use core::sync::atomic::{fence, AtomicU64, Ordering};

use crate::cpu::{self, CpuState};
use crate::irq::IrqGuard;

/// Entries the log holds; a CPU further behind flushes its whole cache.
const LOG_ENTRIES: usize = 1024;

struct Log {
    /// Entries reserved by producers (written or being written).
    reserved: AtomicU64,
    /// Entries fully written: `0..published` may be read.
    published: AtomicU64,
    /// Entry `n` is `ranges[n % LOG_ENTRIES]`: start and end of a guest range.
    ranges: [(AtomicU64, AtomicU64); LOG_ENTRIES],
}

static LOG: Log = Log {
    reserved: AtomicU64::new(0),
    published: AtomicU64::new(0),
    ranges: [const { (AtomicU64::new(0), AtomicU64::new(0)) }; LOG_ENTRIES],
};

/// Serialises producers; taken with interrupts off.
static PRODUCER: spin::Mutex<()> = spin::Mutex::new(());

/// Where the published count lives, for the vector stubs to compare.
pub(crate) fn published_address() -> u64 {
    &LOG.published as *const AtomicU64 as u64
}

/// Entries published so far: what a CPU whose cache is empty has seen.
pub(crate) fn published() -> u64 {
    LOG.published.load(Ordering::Acquire)
}

/// Logs that guest code in `start..end` changed. Any context.
fn record(start: u64, end: u64) {
    if start >= end {
        return;
    }
    let _irq = IrqGuard::new();
    let _producer = PRODUCER.lock();
    let n = LOG.reserved.fetch_add(1, Ordering::SeqCst);
    let (s, e) = &LOG.ranges[(n % LOG_ENTRIES as u64) as usize];
    s.store(start, Ordering::Relaxed);
    e.store(end, Ordering::Relaxed);
    LOG.published.store(n + 1, Ordering::Release);
}

/// Whether `cpu` has log entries to apply.
pub(crate) fn pending(cpu: &CpuState) -> bool {
    LOG.published.load(Ordering::Relaxed) != cpu.log_applied
}

/// Applies to `cpu`'s cache the log entries it has not seen. Returns whether
/// the cache changed (fragments invalidated, or a flush). On `cpu`'s CPU,
/// interrupts off, marked busy (dispatcher or [`CpuState::while_busy`]).
pub(crate) fn apply(cpu: &mut CpuState) -> bool {
    let upto = LOG.published.load(Ordering::Acquire);
    let from = cpu.log_applied;
    if upto == from {
        return false;
    }
    let mut changed = false;
    let mut ok = upto - from <= LOG_ENTRIES as u64;
    if ok {
        for n in from..upto {
            let (s, e) = &LOG.ranges[(n % LOG_ENTRIES as u64) as usize];
            let (start, end) = (s.load(Ordering::Relaxed), e.load(Ordering::Relaxed));
            match cpu.cache.invalidate_range(start, end) {
                Ok(k) => changed |= k > 0,
                Err(_) => ok = false,
            }
        }
        // The entries read were not overwritten meanwhile: no producer
        // reserved the slot of entry `from` again.
        fence(Ordering::Acquire);
        ok &= LOG.reserved.load(Ordering::Relaxed) - from <= LOG_ENTRIES as u64;
    }
    if !ok {
        // Too far behind, or the engine failed: nothing stale may stay.
        cpu.flush();
        changed = true;
    } else if changed {
        // The syscall stub jumps straight into the translation of the entry.
        cpu.retarget_syscall();
    }
    cpu.log_applied = upto;
    crate::dispatch::publish_stats(cpu);
    changed
}

/// Applies the log on this CPU from outside the dispatcher: the CPU that
/// changed code, or an IPI of [`kdbt_sync_cpus`]. Any context but NMI.
fn apply_here() {
    let _irq = IrqGuard::new();
    // SAFETY: interrupts are off; the CPU id is this CPU's.
    let id = unsafe { crate::ffi::kdbt_this_cpu() } as usize;
    if cpu::busy(id) {
        // Called from inside the dispatcher's own work: it applies the log
        // itself at its next entry.
        return;
    }
    // SAFETY: this CPU, interrupts off, and not inside the dispatcher (the
    // only other holder), so this is the one reference.
    if let Some(cpu) = unsafe { cpu::get(id) } {
        cpu.while_busy(|c| {
            apply(c);
        });
    }
}

/// Called by `helpers.c` for each range of kernel code that changed or went
/// away (`start..end`), from any context but NMI.
#[no_mangle]
extern "C" fn kdbt_code_changed(start: u64, end: u64) {
    record(start, end);
    apply_here();
}

/// Called by `helpers.c` on each CPU of an IPI round (`kdbt_sync_cpus`), and
/// so on every online CPU before the round returns.
#[no_mangle]
extern "C" fn kdbt_apply_log() {
    apply_here();
}

/// The kernel choke points that report code changes, registered from load
/// to unload.
///
/// # Invariants
/// While the value lives, `helpers.c`'s module notifier and kretprobes are
/// registered.
pub(crate) struct Hooks(());

impl Hooks {
    /// Registers them. Process context, at load.
    pub(crate) fn register() -> kernel::error::Result<Self> {
        // SAFETY: registers static notifier and probe structures of
        // `helpers.c`, whose callbacks only call the two functions above.
        let r = unsafe { crate::ffi::kdbt_hooks_register() };
        if r < 0 {
            kernel::pr_err!("cannot hook the kernel's code changes ({}); refusing to load\n", r);
            return Err(kernel::error::Error::from_errno(r));
        }
        // INVARIANT: registration succeeded.
        Ok(Hooks(()))
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        // SAFETY: registered in `register`; unregistration waits for running
        // callbacks.
        let missed = unsafe { crate::ffi::kdbt_hooks_unregister() };
        if missed > 0 {
            kernel::pr_warn!("{} code changes were missed by the kretprobes\n", missed);
        }
    }
}
