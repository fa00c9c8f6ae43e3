// SPDX-License-Identifier: GPL-2.0

//! Switching translation on and off, flushing, the cache size, the client,
//! and CPU hotplug: the operations behind the sysfs knobs and the hotplug
//! callbacks.
//!
//! The knobs run in process context, one at a time (a mutex: a second writer
//! waits and then sees the state the first left). Per-CPU changes of enable,
//! disable and flush happen inside `stop_machine`, with every CPU in kdbt's
//! own (never translated) callback, so no CPU is executing in a code cache
//! while IDTs, MSRs or caches change. Enable and disable keep CPU hotplug
//! off while they run; a CPU coming online while translation is on joins it
//! from its hotplug callback, on that CPU, and one going offline leaves it
//! and gives its cache back.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use kdbt_engine::ClientKind;
use kernel::bindings;
use kernel::prelude::*;

use crate::client;
use crate::cpu::{self, CpuState, NativeRange, Setup};
use crate::ffi::{self, MSR_LSTAR};
use crate::heap::{self, Chunk};
use crate::idt;
use crate::irq::IrqGuard;
use crate::switch_hook::SwitchHook;

/// Smallest per-CPU cache, in KiB.
pub(crate) const MIN_CACHE_KB: usize = 3072;
/// Largest per-CPU cache, in KiB.
pub(crate) const MAX_CACHE_KB: usize = 64 << 10;
const DEFAULT_CACHE_KB: usize = 8192;
/// Heap per CPU beyond its metadata budget (half its cache size; the engine
/// needs under 0.4 heap bytes per cache byte, docs/engine.md): its dispatcher
/// stack, shadow IDT and state, and the translation headroom.
const CPU_HEAP_EXTRA: usize = (64 << 10) + heap::HEADROOM;

static ENABLED: AtomicBool = AtomicBool::new(false);
static CACHE_KB: AtomicUsize = AtomicUsize::new(DEFAULT_CACHE_KB);

/// What exists while translation is on.
struct Session {
    setup: Setup,
    /// Each CPU id's heap chunk, kept while translation is on (a CPU coming
    /// back online reuses its chunk).
    chunks: KVec<Option<Chunk>>,
    /// Registered once every CPU translates, dropped before any leaves.
    switch: Option<SwitchHook>,
}

/// The session; changed by enable and disable (hotplug off) and by hotplug
/// callbacks (which exclude them and each other), so never concurrently.
static SESSION: spin::Mutex<Option<KBox<Session>>> = spin::Mutex::new(None);

/// The control mutex, held for the life of the guard.
struct Control;

impl Control {
    /// Waits for the mutex; a signal ends the wait (`EINTR`) unless
    /// `interruptible` is false.
    fn wait(interruptible: bool) -> Result<Self> {
        // SAFETY: plain call; sleeps until the mutex is free (or a signal comes).
        let r = unsafe { ffi::kdbt_control_lock(i32::from(interruptible)) };
        if r != 0 {
            return Err(Error::from_errno(r));
        }
        Ok(Control)
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        // SAFETY: this guard holds the mutex.
        unsafe { ffi::kdbt_control_unlock() };
    }
}

/// CPU hotplug is off for the life of the guard.
struct NoHotplug;

impl NoHotplug {
    fn new() -> Self {
        // SAFETY: plain call; waits for a hotplug operation in progress.
        unsafe { bindings::cpu_hotplug_disable() };
        NoHotplug
    }
}

impl Drop for NoHotplug {
    fn drop(&mut self) {
        // SAFETY: balances `cpu_hotplug_disable` in `new`.
        unsafe { bindings::cpu_hotplug_enable() };
    }
}

pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

pub(crate) fn cache_kb() -> usize {
    CACHE_KB.load(Ordering::Relaxed)
}

/// Sets the per-CPU cache size for the next enable.
pub(crate) fn set_cache_kb(kb: usize) -> Result {
    let _c = Control::wait(true)?;
    if enabled() || !(MIN_CACHE_KB..=MAX_CACHE_KB).contains(&kb) {
        return Err(EINVAL);
    }
    CACHE_KB.store(kb, Ordering::Relaxed);
    Ok(())
}

fn cpu_online(id: usize) -> bool {
    // SAFETY: reading the online mask's bits; it is a static bitmap.
    let bits = unsafe { &*core::ptr::addr_of!(bindings::__cpu_online_mask.bits) };
    bits.get(id / 64).is_some_and(|w| w & (1 << (id % 64)) != 0)
}

/// The id of the CPU running this (interrupts off or pinned).
fn this_cpu() -> usize {
    // SAFETY: plain call (`raw_smp_processor_id`).
    unsafe { ffi::kdbt_this_cpu() as usize }
}

/// Runs `f` on every online CPU at once, inside `stop_machine`.
fn on_all_cpus(f: unsafe extern "C" fn(*mut core::ffi::c_void) -> i32) -> Result {
    // SAFETY: `f` only touches its own CPU's published state and registers,
    // and the online mask outlives the call.
    let r = unsafe {
        ffi::stop_machine(Some(f), core::ptr::null_mut(), core::ptr::addr_of!(bindings::__cpu_online_mask))
    };
    if r != 0 {
        return Err(Error::from_errno(r));
    }
    Ok(())
}

/// Makes this CPU's next interrupt come as soon as interrupts are on again:
/// the enable's callback returns into a stopper not yet translated, which
/// would run natively until then. (The other callbacks are called from
/// translated code and return through the gate, `entry::gate_return`.)
fn recapture() {
    // SAFETY: plain call; interrupts are off, the IPI waits until they are on.
    unsafe { ffi::kdbt_recapture() };
}

unsafe extern "C" fn install_on_cpu(_: *mut core::ffi::c_void) -> i32 {
    // SAFETY: stop_machine runs this on each CPU with interrupts off.
    match unsafe { cpu::get(this_cpu()) } {
        Some(cpu) => match cpu.install() {
            Ok(()) => {
                recapture();
                0
            }
            Err(e) => e.to_errno(),
        },
        None => -(bindings::ENODEV as i32),
    }
}

unsafe extern "C" fn remove_from_cpu(_: *mut core::ffi::c_void) -> i32 {
    // SAFETY: stop_machine runs this on each CPU with interrupts off.
    if let Some(cpu) = unsafe { cpu::get(this_cpu()) } {
        cpu.cache.harvest();
        cpu.remove();
    }
    0
}

/// CPUs that have yet to leave translation in the running `leave_on_cpu`.
static LEAVING: AtomicUsize = AtomicUsize::new(0);

/// `remove_from_cpu`; then the last CPU to get there, with every other one
/// done and waiting in `stop_machine`, rewrites the kernel stacks so that
/// none names the caches about to be freed (`stack::rewrite_stacks`).
unsafe extern "C" fn leave_on_cpu(data: *mut core::ffi::c_void) -> i32 {
    // SAFETY: the same contract as ours.
    unsafe { leave(data) };
    // The frames below held addresses in the regions about to be freed; the
    // stopper's next frames need not overwrite them (`disable`).
    // SAFETY: plain call; it writes only below this frame, in this stopper's stack.
    unsafe { ffi::kdbt_scrub_stack() };
    0
}

/// `leave_on_cpu`'s work, in a frame of its own below the scrub's reach.
///
/// # Safety
/// As `leave_on_cpu`.
#[inline(never)]
unsafe fn leave(data: *mut core::ffi::c_void) {
    // SAFETY: the same contract as ours.
    unsafe { remove_from_cpu(data) };
    if LEAVING.fetch_sub(1, Ordering::AcqRel) != 1 {
        return;
    }
    let Some(stats) = crate::stats::all().get(this_cpu()) else { return };
    // SAFETY: every other online CPU has left translation (`LEAVING`) and
    // waits in `stop_machine` until this callback returns; this CPU holds
    // no state reference.
    let (scan, rewritten) = unsafe { crate::stack::rewrite_stacks(stats) };
    pr_info!(
        "kernel stacks: {} scanned, {} skipped, {} words, {} rewritten\n",
        scan.stacks,
        scan.skipped,
        scan.words,
        rewritten
    );
}

unsafe extern "C" fn client_on_cpu(_: *mut core::ffi::c_void) -> i32 {
    // SAFETY: stop_machine runs this on each CPU with interrupts off.
    if let Some(cpu) = unsafe { cpu::get(this_cpu()) } {
        cpu.while_busy(CpuState::apply_client);
    }
    0
}

unsafe extern "C" fn harvest_on_cpu(_: *mut core::ffi::c_void) -> i32 {
    // SAFETY: stop_machine runs this on each CPU with interrupts off.
    if let Some(cpu) = unsafe { cpu::get(this_cpu()) } {
        cpu.cache.harvest();
    }
    0
}

unsafe extern "C" fn flush_on_cpu(_: *mut core::ffi::c_void) -> i32 {
    // SAFETY: stop_machine runs this on each CPU with interrupts off.
    if let Some(cpu) = unsafe { cpu::get(this_cpu()) } {
        // Busy like the dispatcher: a fault while re-translating the syscall
        // entry goes to the kernel's handler, not into this CPU's state.
        cpu.while_busy(CpuState::flush);
    }
    0
}

/// Builds and publishes CPU `id`'s state, growing the heap for it first if
/// it has no chunk yet. Process context.
fn build_cpu(session: &mut Session, id: usize) -> Result {
    let slot = session.chunks.as_mut_slice().get_mut(id).ok_or(ENODEV)?;
    if slot.is_none() {
        *slot = Some(heap::grow(session.setup.cache_bytes / 2 + CPU_HEAP_EXTRA)?);
    }
    cpu::publish(CpuState::new(id, &session.setup)?).map_err(|_| EEXIST)
}

/// Frees every CPU's state and gives the heap chunks back. Process context,
/// after every CPU left translation.
fn teardown(session: Option<KBox<Session>>) {
    for id in 0..cpu::ids() {
        drop(cpu::take(id));
    }
    if let Some(mut s) = session {
        s.chunks.as_mut_slice().iter_mut().filter_map(Option::take).for_each(heap::release);
    }
}

/// `EOPNOTSUPP`, with the reason in the log, if the kernel enters through a
/// mechanism kdbt does not translate (PTI active, FRED).
fn unsupported_entry() -> Result {
    // SAFETY: plain call; the helper returns a static string or null.
    let reason = unsafe { crate::ffi::kdbt_unsupported_entry() };
    if reason.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is one of the helper's static C strings.
    let reason = unsafe { core::ffi::CStr::from_ptr(reason) };
    pr_err!("cannot enable translation: {}\n", reason.to_str().unwrap_or("unsupported kernel entry"));
    Err(crate::syscall::eopnotsupp())
}

/// Puts every online CPU under translation; `native` is kdbt's own text.
pub(crate) fn enable(native: NativeRange) -> Result {
    let _c = Control::wait(true)?;
    if enabled() {
        return Ok(());
    }
    unsupported_entry()?;
    let _h = NoHotplug::new();
    let d = idt::sidt();
    // SAFETY: `d` is this CPU's IDT register; all CPUs share the kernel's IDT.
    let kernel_idt = unsafe { idt::read_table(&d) }.ok_or(ENOMEM)?;
    crate::entry::set_native_handlers(kernel_idt.iter().map(idt::Gate::handler));
    let syscall = crate::syscall::prologue(idt::rdmsr(MSR_LSTAR))?;
    let thunks = crate::mitigations::thunks();
    let ldt_return = ffi::symbol(c"native_irq_return_ldt");
    let setup = Setup { kernel_idt, syscall, native, ldt_return, cache_bytes: cache_kb() * 1024, thunks };
    let mut chunks = KVec::with_capacity(cpu::ids(), GFP_KERNEL)?;
    for _ in 0..cpu::ids() {
        chunks.push(None, GFP_KERNEL)?;
    }
    let mut session = KBox::new(Session { setup, chunks, switch: None }, GFP_KERNEL)?;
    let built = (0..cpu::ids()).filter(|&id| cpu_online(id)).try_for_each(|id| build_cpu(&mut session, id));
    let installed = built.and_then(|()| on_all_cpus(install_on_cpu));
    // Once every CPU translates (`SwitchHook`).
    match installed.and_then(|()| SwitchHook::register()) {
        Ok(hook) => session.switch = Some(hook),
        Err(e) => {
            // Undo wherever the install got to before freeing anything.
            let undone = on_all_cpus(remove_from_cpu);
            if undone.is_ok() {
                teardown(Some(session));
            } else {
                pr_crit!("cannot undo a failed enable; keeping its memory\n");
                core::mem::forget(session);
            }
            return Err(e);
        }
    }
    *SESSION.lock() = Some(session);
    ENABLED.store(true, Ordering::Release);
    pr_info!("translation enabled ({} KiB cache per CPU)\n", cache_kb());
    Ok(())
}

/// Gives every CPU back to native execution and frees the caches.
pub(crate) fn disable() -> Result {
    let r = disable_locked(Control::wait(true)?);
    // The teardown's frames, below this one, held addresses in the freed
    // regions; the writer's later system calls must not find them.
    // SAFETY: plain call; it writes only below this frame, in this task's stack.
    unsafe { ffi::kdbt_scrub_stack() };
    r
}

/// `disable`, which a signal cannot stop: the module is going away.
pub(crate) fn disable_at_unload() -> Result {
    disable_locked(Control::wait(false)?)
}

/// Not inlined: its frame and its callees' lie below `disable`'s, where the scrub reaches.
#[inline(never)]
fn disable_locked(_c: Control) -> Result {
    if !enabled() {
        return Ok(());
    }
    let _h = NoHotplug::new();
    // While every CPU still runs `__schedule` translated (`SwitchHook`).
    let switch = SESSION.lock().as_mut().and_then(|s| s.switch.take());
    drop(switch);
    // Hotplug is off: every online CPU runs the callback.
    LEAVING.store((0..cpu::ids()).filter(|&id| cpu_online(id)).count(), Ordering::Release);
    if let Err(e) = on_all_cpus(leave_on_cpu) {
        // Still translating: the probe goes back (not under the spinlock: it sleeps).
        let hook = SwitchHook::register().ok();
        if let Some(s) = SESSION.lock().as_mut() {
            s.switch = hook;
        }
        return Err(e);
    }
    ENABLED.store(false, Ordering::Release);
    let session = SESSION.lock().take();
    teardown(session);
    let (in_use, claimed) = heap::usage();
    pr_info!("translation disabled (heap: {} KiB in use, {} KiB claimed)\n", in_use >> 10, claimed >> 10);
    Ok(())
}

/// Empties every CPU's code cache.
pub(crate) fn flush() -> Result {
    let _c = Control::wait(true)?;
    if enabled() {
        on_all_cpus(flush_on_cpu)?;
    }
    Ok(())
}

/// Sets the client of every cache. Switching from one recording client to
/// the other clears the data; `none` keeps it.
pub(crate) fn set_client(kind: Option<ClientKind>) -> Result {
    let _c = Control::wait(true)?;
    if kind == client::selected() {
        return Ok(());
    }
    let clear = kind.is_some() && client::recorded().is_some_and(|r| Some(r) != kind);
    change_client(kind, clear)
}

/// Zeroes the client's data.
pub(crate) fn reset_client() -> Result {
    let _c = Control::wait(true)?;
    change_client(client::selected(), true)
}

/// With the control mutex held: every cache drops its client (harvesting
/// its counts), the table is cleared if asked, then every cache takes `kind`.
fn change_client(kind: Option<ClientKind>, clear: bool) -> Result {
    let _h = NoHotplug::new();
    client::select(None);
    if enabled() {
        on_all_cpus(client_on_cpu)?;
    }
    if clear {
        client::clear();
    }
    client::select(kind);
    if enabled() && kind.is_some() {
        on_all_cpus(client_on_cpu)?;
    }
    Ok(())
}

/// Runs `f` with the control mutex held and every count harvested into the
/// block table, so that `f` sees the counts of everything run so far.
pub(crate) fn with_client_data<T>(f: impl FnOnce() -> T) -> Result<T> {
    let _c = Control::wait(true)?;
    if enabled() && client::selected() == Some(ClientKind::Count) {
        let _h = NoHotplug::new();
        on_all_cpus(harvest_on_cpu)?;
    }
    Ok(f())
}

/// CPU hotplug, `CPUHP_AP_ONLINE_DYN` startup: runs on CPU `id` itself, in
/// its hotplug thread, while enable and disable are excluded.
unsafe extern "C" fn cpu_online_cb(id: u32) -> i32 {
    let id = id as usize;
    if !enabled() || this_cpu() != id {
        return 0;
    }
    // Taken out while building (which sleeps); nothing else can look at the
    // session meanwhile: hotplug callbacks exclude enable, disable and each other.
    let Some(mut session) = SESSION.lock().take() else { return 0 };
    let built = build_cpu(&mut session, id);
    *SESSION.lock() = Some(session);
    let installed = built.and_then(|()| {
        let _irq = IrqGuard::new();
        // SAFETY: this is CPU `id`, interrupts are off, and its state was just published.
        unsafe { cpu::get(id) }.map_or(Err(ENODEV), CpuState::install)
    });
    if let Err(e) = installed {
        pr_warn!("cpu {} came online but stays native: {:?}\n", id, e);
        // Never installed (if published at all): no entry path can be using it.
        drop(cpu::take(id));
    }
    0
}

/// CPU hotplug teardown: runs on CPU `id` itself before it goes offline.
unsafe extern "C" fn cpu_offline_cb(id: u32) -> i32 {
    let id = id as usize;
    if this_cpu() != id {
        return 0;
    }
    {
        let _irq = IrqGuard::new();
        // SAFETY: this is CPU `id`, interrupts are off, outside the dispatcher.
        if let Some(cpu) = unsafe { cpu::get(id) } {
            cpu.cache.harvest();
            cpu.remove();
        }
    }
    // No entry path of this CPU uses its state any more; its chunk stays in
    // the session for when it comes back.
    drop(cpu::take(id));
    0
}

/// The registered hotplug callbacks, from load to unload.
pub(crate) struct Hotplug(i32);

impl Hotplug {
    pub(crate) fn register() -> Result<Self> {
        // SAFETY: the callbacks are kdbt functions that live as long as the module.
        let r = unsafe { ffi::kdbt_cpuhp_setup(cpu_online_cb, cpu_offline_cb) };
        if r < 0 {
            return Err(Error::from_errno(r));
        }
        Ok(Hotplug(r))
    }
}

impl Drop for Hotplug {
    fn drop(&mut self) {
        // SAFETY: `self.0` is the state `register` got.
        unsafe { ffi::kdbt_cpuhp_remove(self.0) };
    }
}
