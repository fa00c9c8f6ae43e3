// SPDX-License-Identifier: GPL-2.0

//! Per-CPU translation state: each translating CPU's executable region
//! (thunks and the engine's code cache), shadow IDT and dispatcher stack,
//! built when the CPU joins translation (enable, or coming online) and freed
//! when it leaves (disable, or going offline); and the table, one entry per
//! possible CPU id, through which the entry paths find it.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use iced_x86::Instruction;
use kdbt_engine::{CallRetPolicy, CodeCache, Config, HookClass, IblSize};
use kernel::bindings;
use kernel::prelude::*;

use crate::entry::{self, thunks, SlotInfo};
use crate::execmem::Region;
use crate::idt::{self, Gate, VECTORS};
use crate::stats::CpuStats;


/// Cache bytes per counter byte: one 8-byte counter per 128 bytes of cache,
/// fewer than fragments with an increment take (a cache out of counters is
/// full).
const COUNTER_DIVISOR: usize = 16;

/// Bytes of each dispatcher stack.
pub(crate) const STACK_BYTES: usize = 32 << 10;
/// Bytes of each private NMI stack: the entry asm's frame only (Rust runs on
/// the dispatcher stack).
const NMI_STACK_BYTES: usize = 1 << 10;

/// Where kdbt's own text is: what it runs natively instead of translating,
/// so that it never translates the code that manages the caches.
#[derive(Clone, Copy)]
pub(crate) struct NativeRange {
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// One CPU's state while it translates.
///
/// # Invariants
/// `thunks` and the cache's arena are disjoint parts of `region`'s writable
/// view (declared before it, so dropped first); only this CPU's
/// dispatcher (interrupts off) and its own install/remove callbacks touch them.
pub(crate) struct CpuState {
    pub(crate) id: usize,
    pub(crate) exec: u64,
    pub(crate) thunks: &'static mut [u8],
    pub(crate) cache: CodeCache<&'static mut [u8]>,
    pub(crate) idt: Vec<Gate>,
    pub(crate) handlers: Vec<u64>,
    /// Bit per vector: its gate runs on an IST stack.
    ist: [u64; VECTORS / 64],
    /// Where the syscall stub enters translated code (the kernel's stack is live).
    pub(crate) syscall_entry: u64,
    /// Each syscall stub instruction's page offset and the native PC it stands for.
    pub(crate) syscall_map: [(usize, u64); 5],
    pub(crate) native: NativeRange,
    /// `Setup::ldt_return`.
    pub(crate) ldt_return: u64,
    pub(crate) stats: &'static CpuStats,
    /// The count client's counters (in `_region`).
    counters: &'static [AtomicU64],
    /// Guest PCs of the hardware execute breakpoints armed on this CPU: they
    /// run natively, where the CPU can see them.
    pub(crate) exec_breakpoints: [Option<u64>; 4],
    /// Entries of the code-change log applied to `cache` (see `consistency`).
    pub(crate) log_applied: u64,
    pub(crate) original_idt: idt::Descriptor,
    pub(crate) original_lstar: u64,
    _stack: Vec<u64>,
    _nmi_stack: Vec<u64>,
    _region: Region,
}

/// What [`CpuState::new`] needs besides the CPU's own memory.
pub(crate) struct Setup {
    /// `VECTORS` gates.
    pub(crate) kernel_idt: Vec<Gate>,
    pub(crate) syscall: crate::syscall::Prologue,
    pub(crate) native: NativeRange,
    /// The kernel's return to user mode on a stack segment from the LDT
    /// (`native_irq_return_ldt`, ESPFIX64), 0 without it: it moves onto a
    /// read-only alias of its stack before its last jump, where an exit from
    /// translated code could not push its frame (a double fault the kernel
    /// takes for a faulting `iretq`); it runs natively to its `iretq`.
    pub(crate) ldt_return: u64,
    pub(crate) cache_bytes: usize,
    pub(crate) thunks: kdbt_engine::Thunks,
}

impl CpuState {
    /// Builds the state of CPU `id`. Process context; may sleep.
    pub(crate) fn new(id: usize, setup: &Setup) -> Result<KBox<Self>> {
        let stats = table().and_then(|t| t.stats.as_slice().get(id)).ok_or(ENODEV)?;
        let region = Region::new(thunks::SIZE + setup.cache_bytes, setup.cache_bytes / COUNTER_DIVISOR)?;
        let exec = region.exec();
        // SAFETY: the only split of `region`, which the state owns and drops last.
        let (thunk_page, arena, data) = unsafe { region.split(thunks::SIZE)? };
        let cpu_id = u32::try_from(id).map_err(|_| EINVAL)?;
        let p = &setup.syscall;
        let offs = crate::thunk_page::write_thunks(thunk_page, exec, region.data(), cpu_id, idt::has_error_code, &p.insns, entry::entries())
            .ok_or(EINVAL)?;
        let native = |k: usize| p.insns.get(k).map_or(p.safe_stack, Instruction::ip);
        let syscall_map = [
            (thunks::SYSCALL, p.entry),
            (offs[0], native(0)),
            (offs[1], native(1)),
            (offs[2], native(2)),
            (offs[3], p.safe_stack),
        ];
        let mut nmi_stack = Vec::new();
        nmi_stack.try_reserve_exact(NMI_STACK_BYTES / 8).map_err(|_| ENOMEM)?;
        nmi_stack.resize(NMI_STACK_BYTES / 8, 0u64);
        let nmi_top = (nmi_stack.as_ptr() as u64 + NMI_STACK_BYTES as u64) & !15;
        let at = entry::data::NMI_STACK_TOP;
        data.get_mut(at..at + 8).ok_or(EINVAL)?.copy_from_slice(&nmi_top.to_le_bytes());
        let config = Config {
            policy: CallRetPolicy::Transparent,
            red_zone: 0,
            dispatcher: exec + thunks::EXIT as u64,
            hooks: HookClass::IRETQ_TO_KERNEL | HookClass::MOV_DR,
            // The large lookup table (1 MiB of the arena): with the small one,
            // most of the kernel's returns and indirect branches miss.
            ibl: IblSize::Large,
            thunks: setup.thunks,
            through_jcc: true,
        };
        // SAFETY: the state holds the view no longer than `_region`.
        let counters = unsafe { region.counters() };
        // Fresh memory is not zeroed; counters are zero whenever no fragment has them.
        counters.iter().for_each(|c| c.store(0, Ordering::Relaxed));
        let mut cache = CodeCache::new(arena, exec + thunks::SIZE as u64, config).map_err(|e| {
            pr_err!("cpu {}: code cache: {}\n", id, e);
            EINVAL
        })?;
        cache.set_client(crate::client::for_cache(counters));
        let mut stack = Vec::new();
        stack.try_reserve_exact(STACK_BYTES / 8).map_err(|_| ENOMEM)?;
        stack.resize(STACK_BYTES / 8, 0u64);
        let mut gates = Vec::new();
        gates.try_reserve_exact(VECTORS).map_err(|_| ENOMEM)?;
        gates.resize(VECTORS, Gate::default());
        let mut handlers = Vec::new();
        handlers.try_reserve_exact(VECTORS).map_err(|_| ENOMEM)?;
        let mut ist = [0u64; VECTORS / 64];
        for (v, gate) in setup.kernel_idt.iter().enumerate().take(VECTORS) {
            handlers.push(gate.handler());
            if gate.ist() != 0 {
                ist[v / 64] |= 1 << (v % 64);
            }
            // Every present gate enters kdbt, IST gates on their own stacks.
            let stub = if v == entry::NMI_VECTOR { thunks::NMI_STUB } else { v * thunks::VECTOR_STUB };
            gates[v] = if gate.present() { gate.redirected(exec + stub as u64) } else { *gate };
        }
        let mut cpu = KBox::new(
            CpuState {
                id,
                exec,
                thunks: thunk_page,
                cache,
                idt: gates,
                handlers,
                ist,
                syscall_entry: setup.syscall.safe_stack,
                syscall_map,
                native: setup.native,
                ldt_return: setup.ldt_return,
                stats,
                counters,
                exec_breakpoints: [None; 4],
                // The cache is empty: nothing logged so far concerns it.
                log_applied: crate::consistency::published(),
                original_idt: idt::Descriptor::default(),
                original_lstar: 0,
                _stack: stack,
                _nmi_stack: nmi_stack,
                _region: region,
            },
            GFP_KERNEL,
        )?;
        cpu.retarget_syscall();
        Ok(cpu)
    }

    /// The thunk page and the code cache: where this CPU's generated code
    /// and the addresses it hands out lie.
    pub(crate) fn code_range(&self) -> core::ops::Range<u64> {
        self.exec..self.cache.exec_base() + self.cache.arena_len() as u64
    }

    /// Whether `pc` is code kdbt runs for the guest on this CPU: its code
    /// cache or its thunks.
    pub(crate) fn runs_kdbt_code(&self, pc: u64) -> bool {
        pc.wrapping_sub(self.exec) < thunks::SIZE as u64 || self.cache.contains(pc)
    }

    /// Whether `vector`'s gate runs on an IST stack.
    pub(crate) fn is_ist(&self, vector: usize) -> bool {
        self.ist.get(vector / 64).is_some_and(|w| w & (1 << (vector % 64)) != 0)
    }

    /// Top of the dispatcher stack, 16-byte aligned.
    fn stack_top(&self) -> u64 {
        (self._stack.as_ptr() as u64 + STACK_BYTES as u64) & !15
    }

    /// Empties this CPU's code cache (counted in `flushes`) and translates the
    /// syscall entry again, which the `syscall` stub must always reach.
    pub(crate) fn flush(&mut self) {
        self.cache.flush();
        crate::stats::bump(&self.stats.flushes);
        self.retarget_syscall();
    }

    /// Gives this CPU's cache the selected client, which flushes it.
    pub(crate) fn apply_client(&mut self) {
        self.cache.set_client(crate::client::for_cache(self.counters));
        crate::stats::bump(&self.stats.flushes);
        self.retarget_syscall();
    }

    /// Points this CPU's `syscall` stub at the translation of the kernel's
    /// syscall entry, translating it if needed, and sends its vector stubs
    /// from user mode to the dispatcher again: the cache changed, and the
    /// translations they went to may be gone.
    pub(crate) fn retarget_syscall(&mut self) {
        crate::thunk_page::reset_user_entries(self.thunks, self.exec);
        let target = crate::dispatch::target_for(self, self.syscall_entry);
        crate::dispatch::set_syscall_target(self.thunks, target);
    }

    /// Makes `vector`'s stub go from user mode straight to `target`, the
    /// translation of its handler, while this CPU's applied log count stays
    /// the published one.
    pub(crate) fn set_user_entry(&mut self, vector: usize, target: u64) {
        crate::thunk_page::set_log_applied(self.thunks, self.log_applied);
        let _ = crate::thunk_page::set_user_entry(self.thunks, self.exec, vector, Some(target));
    }

    /// Runs `f` marked as inside the dispatcher, so that the entry asm sends
    /// any event meanwhile to the kernel's handler. On this CPU, interrupts off.
    pub(crate) fn while_busy(&mut self, f: impl FnOnce(&mut Self)) {
        let slot = &table_slots()[self.id];
        slot.busy.store(1, Ordering::Relaxed);
        f(self);
        slot.busy.store(0, Ordering::Relaxed);
    }

    /// Puts this CPU under translation. Runs on the CPU itself, interrupts off.
    /// `EINVAL` (nothing changed) if the exit thunk would not find this CPU's id.
    pub(crate) fn install(&mut self) -> Result {
        if crate::thunk_page::cpunode_cpu().map(|c| c as usize) != Some(self.id) {
            pr_err!("cpu {}: its CPUNODE segment does not name it\n", self.id);
            return Err(EINVAL);
        }
        let slot = &table_slots()[self.id];
        slot.stack_top.store(self.stack_top(), Ordering::Relaxed);
        slot.kernel_gs.store(idt::rdmsr(crate::ffi::MSR_GS_BASE), Ordering::Relaxed);
        slot.busy.store(0, Ordering::Relaxed);
        slot.thunks.store(self.exec, Ordering::Release);
        self.exec_breakpoints = crate::debugreg::exec_breakpoints();
        self.original_idt = idt::sidt();
        self.original_lstar = idt::rdmsr(crate::ffi::MSR_LSTAR);
        let d = idt::Descriptor { limit: (VECTORS * 16 - 1) as u16, base: self.idt.as_ptr() as u64 };
        // SAFETY: the shadow table holds valid gates entering this CPU's stubs,
        // whose slot words were just written, and lives until `remove`; the
        // syscall stub jumps to the translated (or native) entry.
        unsafe {
            idt::lidt(&d);
            idt::wrmsr(crate::ffi::MSR_LSTAR, self.exec + thunks::SYSCALL as u64);
            crate::ffi::kdbt_gate_set(self.exec + thunks::EXIT as u64);
        }
        Ok(())
    }

    /// Gives this CPU back to the kernel's IDT and syscall entry. Runs on the
    /// CPU itself, interrupts off, outside the dispatcher.
    pub(crate) fn remove(&mut self) {
        if self.original_lstar == 0 {
            return; // never installed
        }
        // SAFETY: restores exactly what `install` saved on this CPU.
        unsafe {
            idt::lidt(&self.original_idt);
            idt::wrmsr(crate::ffi::MSR_LSTAR, self.original_lstar);
            crate::ffi::kdbt_gate_set(crate::entry::gate_native());
        }
        self.original_lstar = 0;
        table_slots()[self.id].thunks.store(0, Ordering::Release);
    }
}

/// The per-CPU-id table: states, the entry asm's slot words, statistics.
///
/// # Invariants
/// The three vectors have one entry per possible CPU id; a non-null state
/// pointer came from `KBox::into_raw` and is owned by the table.
pub(crate) struct Table {
    states: KVec<AtomicPtr<CpuState>>,
    slots: KVec<SlotInfo>,
    pub(crate) stats: KVec<CpuStats>,
    /// Per CPU id: the code range (thunks and code cache) of its last
    /// published state, kept after it is freed so that a test can look for
    /// stale addresses into it.
    ranges: KVec<[AtomicU64; 2]>,
}

static TABLE: AtomicPtr<Table> = AtomicPtr::new(core::ptr::null_mut());

/// Number of possible CPU ids.
pub(crate) fn ids() -> usize {
    // SAFETY: `nr_cpu_ids` is set at boot and read-only afterwards.
    unsafe { bindings::nr_cpu_ids as usize }
}

impl Table {
    /// Builds and publishes the table, at load.
    pub(crate) fn new() -> Result<KBox<Self>> {
        let n = ids();
        let mut t = KBox::new(
            Table {
                states: KVec::with_capacity(n, GFP_KERNEL)?,
                slots: KVec::with_capacity(n, GFP_KERNEL)?,
                stats: KVec::with_capacity(n, GFP_KERNEL)?,
                ranges: KVec::with_capacity(n, GFP_KERNEL)?,
            },
            GFP_KERNEL,
        )?;
        for _ in 0..n {
            t.states.push(AtomicPtr::new(core::ptr::null_mut()), GFP_KERNEL)?;
            t.slots.push(SlotInfo::new(), GFP_KERNEL)?;
            t.stats.push(CpuStats::new(), GFP_KERNEL)?;
            t.ranges.push([AtomicU64::new(0), AtomicU64::new(0)], GFP_KERNEL)?;
        }
        // SAFETY: the slot array lives in the box until `Drop` unpublishes it,
        // which runs after every CPU left translation.
        unsafe { entry::publish_slots(t.slots.as_mut_ptr()) };
        TABLE.store(&mut *t, Ordering::Release);
        Ok(t)
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        TABLE.store(core::ptr::null_mut(), Ordering::Release);
        // SAFETY: no CPU translates any more, so no entry asm reads the slots.
        unsafe { entry::publish_slots(core::ptr::null_mut()) };
        for p in self.states.iter() {
            let raw = p.swap(core::ptr::null_mut(), Ordering::AcqRel);
            if !raw.is_null() {
                // SAFETY: the table owns published states (see `publish`).
                drop(unsafe { KBox::from_raw(raw) });
            }
        }
    }
}

/// The table, from load to unload.
pub(crate) fn table() -> Option<&'static Table> {
    // SAFETY: published in `Table::new`, cleared before it is freed.
    unsafe { TABLE.load(Ordering::Acquire).as_ref() }
}

fn table_slots() -> &'static [SlotInfo] {
    table().map_or(&[], |t| t.slots.as_slice())
}

/// Publishes `cpu` for the entry paths of its CPU; gives it back if that
/// CPU already has one (a kdbt bug).
pub(crate) fn publish(cpu: KBox<CpuState>) -> core::result::Result<(), KBox<CpuState>> {
    let Some(t) = table() else { return Err(cpu) };
    let Some(slot) = t.states.as_slice().get(cpu.id) else { return Err(cpu) };
    if let Some([start, end]) = t.ranges.as_slice().get(cpu.id) {
        let r = cpu.code_range();
        start.store(r.start, Ordering::Relaxed);
        end.store(r.end, Ordering::Relaxed);
    }
    let raw = KBox::into_raw(cpu);
    match slot.compare_exchange(core::ptr::null_mut(), raw, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Ok(()),
        // SAFETY: `raw` came from `into_raw` just above and was not published.
        Err(_) => Err(unsafe { KBox::from_raw(raw) }),
    }
}

/// Takes back the state of CPU `id`, once it no longer translates.
pub(crate) fn take(id: usize) -> Option<KBox<CpuState>> {
    let slot = table()?.states.as_slice().get(id)?;
    let raw = slot.swap(core::ptr::null_mut(), Ordering::AcqRel);
    // SAFETY: `raw` came from `KBox::into_raw` in `publish`; the caller made
    // sure CPU `id` left translation, so no entry path uses it any more.
    (!raw.is_null()).then(|| unsafe { KBox::from_raw(raw) })
}

/// Per CPU id with a state published since load: the id and its last code
/// range (see [`Table`]).
pub(crate) fn code_ranges() -> impl Iterator<Item = (usize, u64, u64)> {
    let ranges = table().map_or(&[][..], |t| t.ranges.as_slice());
    ranges.iter().enumerate().filter_map(|(id, [s, e])| {
        let (s, e) = (s.load(Ordering::Relaxed), e.load(Ordering::Relaxed));
        (s != 0).then_some((id, s, e))
    })
}

/// Whether CPU `id` is inside the dispatcher (or [`CpuState::while_busy`]).
pub(crate) fn busy(id: usize) -> bool {
    table_slots().get(id).is_some_and(|s| s.busy.load(Ordering::Relaxed) != 0)
}

/// The state of CPU `id`, for that CPU's dispatcher or its own callbacks.
///
/// # Safety
/// Only CPU `id` itself, with interrupts off, may call this, and it must not
/// hold two results at once.
pub(crate) unsafe fn get(id: usize) -> Option<&'static mut CpuState> {
    let raw = table()?.states.as_slice().get(id)?.load(Ordering::Acquire);
    // SAFETY: published states stay valid until `take`, which runs only after
    // the CPU left translation; exclusivity is the caller's contract.
    unsafe { raw.as_mut() }
}

/// The state of CPU `id`, for the one CPU that looks at every CPU's state
/// while all are stopped (`stack::rewrite_stacks`).
///
/// # Safety
/// Every other online CPU is stopped in kdbt's `stop_machine` callback and
/// done with its state, and the caller holds no [`get`] result.
pub(crate) unsafe fn stopped(id: usize) -> Option<&'static CpuState> {
    let raw = table()?.states.as_slice().get(id)?.load(Ordering::Acquire);
    // SAFETY: published states stay valid until `take`, which runs only
    // after `stop_machine` returned; no CPU changes its state meanwhile (the
    // caller's contract).
    unsafe { raw.as_ref() }
}
