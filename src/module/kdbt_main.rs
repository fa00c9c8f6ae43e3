// SPDX-License-Identifier: GPL-2.0

//! kdbt: runs the x86-64 Linux kernel under dynamic binary translation.
//!
//! Module layout, after DynamoRIO's core: `control` (switching translation on
//! and off), `idt` + `entry` (shadow IDT, entry stubs), `dispatch` (the
//! dispatcher: PC rewriting, rollback, translate-and-run), `cpu` (per-CPU
//! state), `execmem` (executable cache memory), `heap` (the allocator behind
//! `alloc`), `stats` + `sysfs` (the user interface). Translation itself is
//! the `kdbt_engine` crate.

use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::bindings;
use kernel::prelude::*;

mod control;
mod cpu;
mod dispatch;
mod entry;
mod execmem;
mod ffi;
mod heap;
mod idt;
mod irq;
mod selftest;
mod stats;
mod sysfs;

module! {
    type: Kdbt,
    name: "kdbt",
    author: "kdbt developers",
    description: "Dynamic binary translator for the running kernel",
    license: "GPL",
}

/// Size of kdbt's private heap (see `heap`).
const HEAP_BYTES: usize = 192 << 20;

/// What the sysfs handlers need while the module is loaded.
pub(crate) struct Shared {
    pub(crate) exec: execmem::ExecMem,
    /// kdbt's own text (including the code caches), which always runs natively.
    pub(crate) native: cpu::NativeRange,
}

static SHARED: AtomicPtr<Shared> = AtomicPtr::new(core::ptr::null_mut());

/// Runs `f` with the module's shared state; `ENODEV` while it is going away.
pub(crate) fn with_module<R>(f: impl FnOnce(&Shared) -> Result<R>) -> Result<R> {
    let p = SHARED.load(Ordering::Acquire);
    // SAFETY: `SHARED` points to the module's `Shared` from init until exit
    // clears it, and exit first removes the sysfs files that call this.
    match unsafe { p.as_ref() } {
        Some(s) => f(s),
        None => Err(ENODEV),
    }
}

struct Kdbt {
    sysfs: Option<sysfs::Sysfs>,
    shared: Option<KBox<Shared>>,
}

impl kernel::Module for Kdbt {
    fn init(module: &'static ThisModule) -> Result<Self> {
        heap::init(HEAP_BYTES)?;
        let r = Self::start(module);
        if r.is_err() {
            heap::exit();
        }
        r
    }
}

impl Kdbt {
    fn start(module: &'static ThisModule) -> Result<Self> {
        selftest::decode_kernel_function()?;
        // SAFETY: `module` is this live module; its text layout is fixed once loaded.
        let text = unsafe { &(*module.as_ptr()).mem[bindings::mod_mem_type_MOD_TEXT as usize] };
        let start = text.base as u64;
        let native = cpu::NativeRange { start, end: start + u64::from(text.size) };
        let mut shared = KBox::new(Shared { exec: execmem::ExecMem::new()?, native }, GFP_KERNEL)?;
        SHARED.store(&mut *shared, Ordering::Release);
        let mut this = Kdbt { sysfs: None, shared: Some(shared) };
        this.sysfs = Some(sysfs::Sysfs::new()?);
        pr_info!("loaded\n");
        Ok(this)
    }
}

impl Drop for Kdbt {
    fn drop(&mut self) {
        // Sysfs removal waits for running handlers, so no knob runs after it.
        self.sysfs = None;
        if let Err(e) = control::disable() {
            pr_err!("disable at unload failed: {:?}\n", e);
        }
        SHARED.store(core::ptr::null_mut(), Ordering::Release);
        self.shared = None;
        heap::exit();
        pr_info!("unloaded ({} blocks translated while loaded)\n", stats::total(|s| &s.blocks_translated));
    }
}
