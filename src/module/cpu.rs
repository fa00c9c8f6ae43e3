// SPDX-License-Identifier: GPL-2.0

//! One CPU's translation state: its region of executable memory (thunks and
//! the engine's code cache), its shadow IDT and its dispatcher stack.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, Ordering};
use kdbt_engine::{CallRetPolicy, CodeCache, Config, HookClass, IblSize};
use kernel::prelude::*;

use crate::entry::{self, thunks, MAX_CPUS};
use crate::idt::{Gate, VECTORS};

/// Smallest arena that gets the large inline lookup table.
const LARGE_IBL_MIN_ARENA: usize = 2 << 20;

/// Bytes of each dispatcher stack.
const STACK_BYTES: usize = 32 << 10;

/// Where the kernel's own code is: what kdbt runs natively instead of
/// translating (its own text, so that it never translates the code that
/// manages the caches).
#[derive(Clone, Copy)]
pub(crate) struct NativeRange {
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// One CPU's state while translation is enabled.
///
/// # Invariants
/// `thunks` and the cache's arena are the disjoint halves of this CPU's region
/// of [`crate::execmem::ExecMem`], executed at `exec`; only this CPU's
/// dispatcher (interrupts off) and stop_machine callbacks touch them.
pub(crate) struct CpuState {
    pub(crate) slot: usize,
    pub(crate) exec: u64,
    pub(crate) thunks: &'static mut [u8],
    pub(crate) cache: CodeCache<&'static mut [u8]>,
    pub(crate) idt: Vec<Gate>,
    pub(crate) handlers: [u64; VECTORS],
    pub(crate) syscall_entry: u64,
    pub(crate) native: NativeRange,
    pub(crate) original_idt: crate::idt::Descriptor,
    pub(crate) original_lstar: u64,
    _stack: Vec<u64>,
}

static CPUS: [AtomicPtr<CpuState>; MAX_CPUS] = [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

/// What [`CpuState::new`] needs besides the CPU's own memory.
pub(crate) struct Setup<'a> {
    pub(crate) kernel_idt: &'a [Gate; VECTORS],
    pub(crate) syscall_entry: u64,
    pub(crate) native: NativeRange,
}

impl CpuState {
    /// Builds the state of CPU `slot` over `region` (executed at `exec`).
    pub(crate) fn new(slot: usize, region: &'static mut [u8], exec: u64, setup: &Setup<'_>) -> Result<KBox<Self>> {
        let (thunk_page, arena) = region.split_at_mut(thunks::SIZE);
        entry::write_thunks(thunk_page, exec, slot as u8).ok_or(EINVAL)?;
        let config = Config {
            policy: CallRetPolicy::Transparent,
            red_zone: 0,
            dispatcher: exec + thunks::EXIT as u64,
            hooks: HookClass::IRETQ_TO_KERNEL,
            // The large lookup table (1 MiB) pays off once the cache can spare it:
            // with the small one, most indirect branches of the kernel miss.
            ibl: if arena.len() >= LARGE_IBL_MIN_ARENA { IblSize::Large } else { IblSize::Small },
        };
        let cache = CodeCache::new(arena, exec + thunks::SIZE as u64, config).map_err(|e| {
            pr_err!("cpu {}: code cache: {}\n", slot, e);
            EINVAL
        })?;
        let mut stack = Vec::new();
        stack.try_reserve_exact(STACK_BYTES / 8).map_err(|_| ENOMEM)?;
        stack.resize(STACK_BYTES / 8, 0u64);
        let stack_top = (stack.as_ptr() as u64 + STACK_BYTES as u64) & !15;
        let mut idt = Vec::new();
        idt.try_reserve_exact(VECTORS).map_err(|_| ENOMEM)?;
        idt.resize(VECTORS, Gate::default());
        let mut handlers = [0u64; VECTORS];
        for (v, gate) in setup.kernel_idt.iter().enumerate() {
            handlers[v] = gate.handler();
            // IST gates (NMI, #DB, #DF, #MC) stay native: they run on their own
            // stacks at any moment, including inside the dispatcher.
            idt[v] = if gate.present() && gate.ist() == 0 {
                gate.redirected(exec + (v * thunks::VECTOR_STUB) as u64)
            } else {
                *gate
            };
        }
        // SAFETY: the stacks array is only read by the entry asm of this slot,
        // which cannot run before this CPU's shadow IDT is installed.
        unsafe { entry::KDBT_DISPATCH_STACKS[slot] = stack_top };
        let mut cpu = KBox::new(
            CpuState {
            slot,
            exec,
            thunks: thunk_page,
            cache,
            idt,
            handlers,
            syscall_entry: setup.syscall_entry,
            native: setup.native,
            original_idt: crate::idt::Descriptor::default(),
            original_lstar: 0,
            _stack: stack,
            },
            GFP_KERNEL,
        )?;
        cpu.retarget_syscall();
        Ok(cpu)
    }

    /// Empties this CPU's code cache (counted in `flushes`) and translates the
    /// syscall entry again, which the `syscall` stub must always reach.
    pub(crate) fn flush(&mut self) {
        self.cache.flush();
        crate::stats::bump(&crate::stats::STATS[self.slot].flushes);
        self.retarget_syscall();
    }

    /// Points this CPU's `syscall` stub at the translation of the kernel's
    /// syscall entry, translating it if needed (after a flush, say).
    pub(crate) fn retarget_syscall(&mut self) {
        let target = crate::dispatch::target_for(self, self.syscall_entry);
        let at = thunks::SYSCALL_TARGET;
        if let Some(slot) = self.thunks.get_mut(at..at + 8) {
            slot.copy_from_slice(&target.to_le_bytes());
        }
    }

    /// Address of this CPU's `syscall` stub.
    pub(crate) fn syscall_stub(&self) -> u64 {
        self.exec + thunks::SYSCALL as u64
    }
}

/// Publishes `cpu` for the entry paths of its slot.
pub(crate) fn publish(cpu: KBox<CpuState>) {
    let slot = cpu.slot;
    CPUS[slot].store(KBox::into_raw(cpu), Ordering::Release);
}

/// Takes back every published state.
pub(crate) fn take_all() -> Vec<KBox<CpuState>> {
    let mut all = Vec::new();
    for p in &CPUS {
        let raw = p.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !raw.is_null() {
            // SAFETY: `raw` came from `KBox::into_raw` in `publish`, and no
            // entry path can use it any more (the caller restored every IDT).
            all.push(unsafe { KBox::from_raw(raw) });
        }
    }
    all
}

/// The state of `slot`, for that CPU's dispatcher or its stop_machine callback.
///
/// # Safety
/// Only the CPU that owns `slot`, with interrupts off, may call this, and it
/// must not hold two results at once.
pub(crate) unsafe fn get(slot: usize) -> Option<&'static mut CpuState> {
    let raw = CPUS.get(slot)?.load(Ordering::Acquire);
    // SAFETY: published states stay valid until `take_all`, which runs only
    // after every CPU has left translation; exclusivity is the caller's contract.
    unsafe { raw.as_mut() }
}
