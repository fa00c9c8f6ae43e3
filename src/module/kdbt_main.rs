// SPDX-License-Identifier: GPL-2.0

//! kdbt: runs the x86-64 Linux kernel under dynamic binary translation.
//!
//! Module layout, after DynamoRIO's core: `control` (switching translation on
//! and off), `idt` + `entry` (shadow IDT, entry stubs), `dispatch` (the
//! dispatcher: PC rewriting, rollback, translate-and-run), `cpu` (per-CPU
//! state), `execmem` (executable cache memory), `heap` (the allocator behind
//! `alloc`), `consistency` (code changes), `switch_hook` (tasks switched to
//! natively), `stats` + `sysfs` (the user interface), `client` + `report` (the
//! instrumentation clients and their debugfs reports). Translation itself is
//! the `kdbt_engine` crate.

use core::sync::atomic::{AtomicU64, Ordering};
use kernel::bindings;
use kernel::prelude::*;

mod client;
mod consistency;
mod control;
mod cpu;
mod debugreg;
mod dispatch;
mod entry;
mod execmem;
mod ffi;
mod heap;
mod idt;
mod irq;
mod mitigations;
mod report;
mod selftest;
mod stack;
mod stats;
mod syscall;
mod switch_hook;
mod sysfs;
mod thunk_page;

module! {
    type: Kdbt,
    name: "kdbt",
    author: "kdbt developers",
    description: "Dynamic binary translator for the running kernel",
    license: "GPL",
}

/// kdbt's own text, which always runs natively (set at load).
static NATIVE_START: AtomicU64 = AtomicU64::new(0);
static NATIVE_END: AtomicU64 = AtomicU64::new(0);

/// kdbt's own text: the knobs, the stop_machine and hotplug callbacks and the
/// dispatcher itself, which the dispatcher never translates.
pub(crate) fn native_range() -> cpu::NativeRange {
    cpu::NativeRange { start: NATIVE_START.load(Ordering::Relaxed), end: NATIVE_END.load(Ordering::Relaxed) }
}

/// Declared in the order they are torn down.
struct Kdbt {
    sysfs: Option<sysfs::Sysfs>,
    hotplug: Option<control::Hotplug>,
    hooks: Option<consistency::Hooks>,
    table: Option<KBox<cpu::Table>>,
}

impl kernel::Module for Kdbt {
    fn init(module: &'static ThisModule) -> Result<Self> {
        heap::init()?;
        let r = Self::start(module);
        if r.is_err() {
            heap::exit();
        }
        r
    }
}

impl Kdbt {
    fn start(module: &'static ThisModule) -> Result<Self> {
        // SAFETY: plain call; every CPU's gate slot starts native.
        unsafe { ffi::kdbt_gate_init(entry::gate_native()) };
        selftest::decode_kernel_function()?;
        execmem::init()?;
        // SAFETY: `module` is this live module; its text layout is fixed once loaded.
        let text = unsafe { &(*module.as_ptr()).mem[bindings::mod_mem_type_MOD_TEXT as usize] };
        NATIVE_START.store(text.base as u64, Ordering::Relaxed);
        NATIVE_END.store(text.base as u64 + u64::from(text.size), Ordering::Relaxed);
        let mut this = Kdbt { sysfs: None, hotplug: None, hooks: None, table: Some(cpu::Table::new()?) };
        this.hooks = Some(consistency::Hooks::register()?);
        this.hotplug = Some(control::Hotplug::register()?);
        this.sysfs = Some(sysfs::Sysfs::new()?);
        report::create();
        heap::mark_tables();
        pr_info!("loaded (heap: {} KiB in use, iced-x86's tables)\n", heap::tables() >> 10);
        Ok(this)
    }
}

impl Drop for Kdbt {
    fn drop(&mut self) {
        // Sysfs and debugfs removal wait for running handlers, so no knob or
        // report runs after them.
        self.sysfs = None;
        report::remove();
        if let Err(e) = control::disable_at_unload() {
            // Some CPU may still enter kdbt: keep everything it could use.
            pr_crit!("disable at unload failed ({:?}): leaking kdbt's memory\n", e);
            core::mem::forget(self.hotplug.take());
            core::mem::forget(self.hooks.take());
            core::mem::forget(self.table.take());
            return;
        }
        self.hotplug = None;
        // No CPU translates any more: changes from now on concern no cache.
        self.hooks = None;
        let blocks = stats::total(|s| &s.blocks_translated);
        self.table = None;
        heap::exit();
        pr_info!("unloaded ({} blocks translated while loaded)\n", blocks);
    }
}
