// SPDX-License-Identifier: GPL-2.0

//! Executable memory for the code caches, within ±2 GB of kernel text.
//!
//! `execmem_alloc` and `set_memory_x` are not exported, so the memory is a
//! large zero-filled executable section of kdbt.ko itself (the module loader
//! places it in module text, next to the kernel, mapped read-only and
//! executable). kdbt writes it through a second, writable mapping of the same
//! pages made with the exported `vmap` (W^X holds per mapping).

use core::ptr::NonNull;
use kernel::bindings;
use kernel::prelude::*;

use crate::ffi;

/// Bytes of the executable section; split evenly between possible CPUs.
pub(crate) const EXEC_BYTES: usize = 16 << 20;
const PAGE: usize = 4096;

core::arch::global_asm!(
    ".pushsection .text.kdbt_exec, \"ax\", @nobits",
    ".balign 4096",
    ".globl kdbt_exec_area",
    "kdbt_exec_area:",
    ".skip {size}",
    ".popsection",
    size = const EXEC_BYTES,
);

extern "C" {
    static kdbt_exec_area: [u8; EXEC_BYTES];
}

/// The executable area and its writable alias.
///
/// # Invariants
/// `alias` maps exactly the `EXEC_BYTES` bytes at `exec_base()` writable, for as
/// long as this value lives; nothing else writes the area.
pub(crate) struct ExecMem {
    alias: NonNull<u8>,
}

// SAFETY: the alias is plain memory; callers serialise access per CPU region.
unsafe impl Send for ExecMem {}
// SAFETY: as above; shared references only hand out disjoint per-CPU regions.
unsafe impl Sync for ExecMem {}

impl ExecMem {
    /// Runtime (execution) address of the area.
    pub(crate) fn exec_base() -> u64 {
        core::ptr::addr_of!(kdbt_exec_area) as u64
    }

    /// Maps the area writable.
    pub(crate) fn new() -> Result<Self> {
        let npages = EXEC_BYTES / PAGE;
        let mut pages: KVec<*mut core::ffi::c_void> = KVec::with_capacity(npages, GFP_KERNEL)?;
        for i in 0..npages {
            let addr = Self::exec_base() as usize + i * PAGE;
            // SAFETY: `addr` lies in kdbt.ko's text, which is mapped for the
            // module's lifetime and backed by ordinary pages.
            let page = unsafe { bindings::vmalloc_to_page(addr as *const core::ffi::c_void) }.cast::<core::ffi::c_void>();
            if page.is_null() {
                return Err(ENOMEM);
            }
            pages.push(page, GFP_KERNEL)?;
        }
        // SAFETY: `pages` holds `npages` valid page pointers; the mapping is
        // released in `drop`.
        let alias = unsafe { ffi::vmap(pages.as_mut_ptr(), npages as u32, ffi::VM_MAP, ffi::PAGE_KERNEL) };
        let alias = NonNull::new(alias.cast::<u8>()).ok_or(ENOMEM)?;
        Ok(Self { alias })
    }

    /// The writable view of `len` bytes at offset `off` of the area.
    ///
    /// # Safety
    /// No other live slice may overlap `off..off + len`.
    pub(crate) unsafe fn region(&self, off: usize, len: usize) -> Result<&'static mut [u8]> {
        if off.checked_add(len).is_none_or(|end| end > EXEC_BYTES) {
            return Err(EINVAL);
        }
        // SAFETY: in bounds of the alias (checked above); exclusivity is the
        // caller's contract; the alias outlives every region (`KdbtState` drops
        // regions before `ExecMem`).
        Ok(unsafe { core::slice::from_raw_parts_mut(self.alias.as_ptr().add(off), len) })
    }
}

impl Drop for ExecMem {
    fn drop(&mut self) {
        // SAFETY: `alias` came from `vmap` in `new` and is unmapped once.
        unsafe { ffi::vunmap(self.alias.as_ptr().cast()) };
    }
}
