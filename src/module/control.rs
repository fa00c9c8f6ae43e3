// SPDX-License-Identifier: GPL-2.0

//! Switching translation on and off, flushing, and the cache size: the
//! operations behind the sysfs knobs. Each runs in process context; the
//! per-CPU work happens inside `stop_machine`, with every CPU in kdbt's own
//! (never translated) callback, so no CPU is executing in a code cache while
//! IDTs, MSRs or caches change.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use kernel::bindings;
use kernel::prelude::*;

use crate::cpu::{self, CpuState, NativeRange, Setup};
use crate::entry::{thunks, KDBT_DISPATCH_STACKS, MAX_CPUS};
use crate::execmem::{ExecMem, EXEC_BYTES};
use crate::ffi::{self, MSR_LSTAR};
use crate::idt::{self, Descriptor, VECTORS};

/// Smallest per-CPU cache, in KiB.
pub(crate) const MIN_CACHE_KB: usize = 2048;
const DEFAULT_CACHE_KB: usize = 4096;

static ENABLED: AtomicBool = AtomicBool::new(false);
static CACHE_KB: AtomicUsize = AtomicUsize::new(DEFAULT_CACHE_KB);
static BUSY: AtomicBool = AtomicBool::new(false);

/// Serialises control operations; a concurrent one gets `EBUSY`.
struct Busy;

impl Busy {
    fn take() -> Result<Self> {
        BUSY.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).map_err(|_| EBUSY)?;
        Ok(Busy)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.store(false, Ordering::Release);
    }
}

pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

pub(crate) fn cache_kb() -> usize {
    CACHE_KB.load(Ordering::Relaxed)
}

/// Number of possible CPU ids.
fn cpu_ids() -> usize {
    // SAFETY: `nr_cpu_ids` is set at boot and read-only afterwards.
    unsafe { bindings::nr_cpu_ids as usize }
}

/// Bytes of the executable area each possible CPU gets, whole pages.
fn cpu_share() -> usize {
    (EXEC_BYTES / cpu_ids().max(1)) & !4095
}

/// Largest per-CPU cache, in KiB: each CPU's share of the executable area
/// less its thunk page.
pub(crate) fn max_cache_kb() -> usize {
    (cpu_share() - thunks::SIZE) / 1024
}

/// Sets the per-CPU cache size for the next enable.
pub(crate) fn set_cache_kb(kb: usize) -> Result {
    let _busy = Busy::take()?;
    if enabled() || !(MIN_CACHE_KB..=max_cache_kb()).contains(&kb) {
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

/// The id of the CPU running this (interrupts off or preemption disabled).
fn this_cpu() -> usize {
    const OFF: usize = core::mem::offset_of!(bindings::pcpu_hot__bindgen_ty_1__bindgen_ty_1, cpu_number);
    let id: u32;
    // SAFETY: `pcpu_hot` is a per-CPU variable reached through the kernel GS base.
    unsafe {
        core::arch::asm!("mov {0:e}, gs:[{1} + {2}]", out(reg) id, sym bindings::pcpu_hot, const OFF,
                         options(nostack, readonly, preserves_flags))
    };
    id as usize
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

unsafe extern "C" fn install_on_cpu(_: *mut core::ffi::c_void) -> i32 {
    // SAFETY: stop_machine runs this with interrupts off on each CPU.
    let Some(cpu) = (unsafe { cpu::get(this_cpu()) }) else { return -(bindings::ENODEV as i32) };
    cpu.original_idt = idt::sidt();
    cpu.original_lstar = idt::rdmsr(MSR_LSTAR);
    let d = Descriptor { limit: (VECTORS * 16 - 1) as u16, base: cpu.idt.as_ptr() as u64 };
    // SAFETY: the shadow table holds valid gates (copies of the kernel's, some
    // entering kdbt's stubs) and lives until `remove_from_cpu` reloads the
    // kernel's; the syscall stub jumps to the translated (or native) entry.
    unsafe {
        idt::lidt(&d);
        idt::wrmsr(MSR_LSTAR, cpu.syscall_stub());
    }
    0
}

unsafe extern "C" fn remove_from_cpu(_: *mut core::ffi::c_void) -> i32 {
    // SAFETY: stop_machine runs this with interrupts off on each CPU.
    let Some(cpu) = (unsafe { cpu::get(this_cpu()) }) else { return 0 };
    if cpu.original_lstar == 0 {
        return 0; // never installed here
    }
    // SAFETY: restores exactly what `install_on_cpu` saved on this CPU.
    unsafe {
        idt::lidt(&cpu.original_idt);
        idt::wrmsr(MSR_LSTAR, cpu.original_lstar);
    }
    0
}

unsafe extern "C" fn flush_on_cpu(_: *mut core::ffi::c_void) -> i32 {
    // SAFETY: stop_machine runs this with interrupts off on each CPU.
    let Some(cpu) = (unsafe { cpu::get(this_cpu()) }) else { return 0 };
    cpu.flush();
    0
}

/// Puts every online CPU under translation.
pub(crate) fn enable(exec: &ExecMem, native: NativeRange) -> Result {
    let _busy = Busy::take()?;
    if enabled() {
        return Ok(());
    }
    let ids = cpu_ids();
    if ids > MAX_CPUS {
        pr_err!("{} CPU ids, kdbt handles at most {}\n", ids, MAX_CPUS);
        return Err(ENODEV);
    }
    let share = cpu_share();
    let len = thunks::SIZE + cache_kb() * 1024;
    let d = idt::sidt();
    // SAFETY: `d` is this CPU's IDT register; all CPUs share the kernel's IDT.
    let kernel_idt = unsafe { idt::read_table(&d) };
    let setup = Setup { kernel_idt: &kernel_idt, syscall_entry: idt::rdmsr(MSR_LSTAR), native };
    let built = (0..ids).filter(|&id| cpu_online(id)).try_for_each(|id| {
        // SAFETY: CPU `id` gets the disjoint range `id * share ..`, `len <= share`.
        let region = unsafe { exec.region(id * share, len)? };
        cpu::publish(CpuState::new(id, region, ExecMem::exec_base() + (id * share) as u64, &setup)?);
        Ok(())
    });
    if let Err(e) = built.and_then(|()| on_all_cpus(install_on_cpu)) {
        // Undo wherever the install got to before freeing anything.
        on_all_cpus(remove_from_cpu)?;
        teardown();
        return Err(e);
    }
    ENABLED.store(true, Ordering::Release);
    pr_info!("translation enabled ({} KiB cache per CPU)\n", cache_kb());
    Ok(())
}

fn teardown() {
    drop(cpu::take_all());
    // SAFETY: no CPU runs the entry asm any more (every IDT is the kernel's).
    unsafe { *core::ptr::addr_of_mut!(KDBT_DISPATCH_STACKS) = [0; MAX_CPUS] };
}

/// Gives every CPU back to native execution and frees the caches.
pub(crate) fn disable() -> Result {
    let _busy = Busy::take()?;
    if !enabled() {
        return Ok(());
    }
    on_all_cpus(remove_from_cpu)?;
    ENABLED.store(false, Ordering::Release);
    teardown();
    let (in_use, carved) = crate::heap::usage();
    pr_info!("translation disabled (heap: {} KiB in use, {} KiB carved)\n", in_use >> 10, carved >> 10);
    Ok(())
}

/// Empties every CPU's code cache.
pub(crate) fn flush() -> Result {
    let _busy = Busy::take()?;
    if enabled() {
        on_all_cpus(flush_on_cpu)?;
    }
    Ok(())
}
