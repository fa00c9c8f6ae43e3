// SPDX-License-Identifier: GPL-2.0

//! Executable memory for the code caches, within ±2 GB of kernel text, and
//! the count client's counters next to it.
//!
//! `execmem_alloc` and `set_memory_rox` are not exported; the C helpers find
//! them with `kallsyms_lookup_name` (`helpers.c`) and hand out read-only,
//! executable pages in the module area, allocated per CPU as it joins
//! translation. kdbt writes a region through a second, writable mapping of
//! the same pages made with the exported `vmap` (W^X holds per mapping).

use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;
use kernel::bindings;
use kernel::prelude::*;

use crate::ffi;

const PAGE: usize = 4096;
/// Bytes of data at the end of each region, reachable RIP-relative from its code.
pub(crate) const DATA_BYTES: usize = PAGE;

/// Finds the kernel functions behind [`Region::new`]; once, at load.
pub(crate) fn init() -> Result {
    // SAFETY: plain call; the helper only stores function addresses.
    let r = unsafe { ffi::kdbt_resolve_symbols() };
    if r != 0 {
        pr_err!("cannot find execmem_alloc/set_memory_rox (needs CONFIG_KPROBES and KALLSYMS)\n");
        return Err(Error::from_errno(r));
    }
    Ok(())
}

/// One CPU's executable region and its writable alias.
///
/// # Invariants
/// `exec` is `len` bytes from `kdbt_exec_alloc`: `code` bytes read-only
/// executable, then `counters` bytes and [`DATA_BYTES`] read-write; `alias`
/// maps the same pages writable; both live until drop, and nothing else
/// writes the pages.
pub(crate) struct Region {
    exec: NonNull<u8>,
    alias: NonNull<u8>,
    len: usize,
    code: usize,
    counters: usize,
}

// SAFETY: the region is plain memory owned by this value.
unsafe impl Send for Region {}
// SAFETY: shared references only read the addresses.
unsafe impl Sync for Region {}

impl Region {
    /// Allocates `code` bytes of code and `counters` bytes of data written by
    /// that code (whole pages each), and [`DATA_BYTES`] of data after them.
    /// Process context; may sleep.
    pub(crate) fn new(code: usize, counters: usize) -> Result<Self> {
        let code = code.checked_next_multiple_of(PAGE).ok_or(EINVAL)?;
        let counters = counters.checked_next_multiple_of(PAGE).ok_or(EINVAL)?;
        let len = code.checked_add(counters).and_then(|n| n.checked_add(DATA_BYTES)).ok_or(EINVAL)?;
        // SAFETY: plain call; returns null or `len` bytes, the first `code` ROX.
        let exec = NonNull::new(unsafe { ffi::kdbt_exec_alloc(len, code) }.cast::<u8>()).ok_or(ENOMEM)?;
        let npages = len / PAGE;
        let mapped = (|| {
            let mut pages: KVec<*mut core::ffi::c_void> = KVec::with_capacity(npages, GFP_KERNEL)?;
            for i in 0..npages {
                // SAFETY: `exec + i * PAGE` lies in the vmalloc'ed region.
                let page = unsafe { bindings::vmalloc_to_page(exec.as_ptr().add(i * PAGE).cast()) };
                if page.is_null() {
                    return Err(ENOMEM);
                }
                pages.push(page.cast(), GFP_KERNEL)?;
            }
            // SAFETY: `pages` holds `npages` valid page pointers; the mapping
            // is released in `drop`.
            let alias = unsafe { ffi::vmap(pages.as_mut_ptr(), npages as u32, ffi::VM_MAP, ffi::kdbt_page_kernel()) };
            NonNull::new(alias.cast::<u8>()).ok_or(ENOMEM)
        })();
        match mapped {
            // INVARIANT: `alias` maps exactly the `len` bytes at `exec`.
            Ok(alias) => Ok(Self { exec, alias, len, code, counters }),
            Err(e) => {
                // SAFETY: `exec` came from `kdbt_exec_alloc` and is unused.
                unsafe { ffi::kdbt_exec_free(exec.as_ptr().cast()) };
                Err(e)
            }
        }
    }

    /// Runtime (execution) address of the region.
    pub(crate) fn exec(&self) -> u64 {
        self.exec.as_ptr() as u64
    }

    /// Execution address of the data at the end of the region.
    pub(crate) fn data(&self) -> u64 {
        self.exec() + (self.len - DATA_BYTES) as u64
    }

    /// The writable view: code up to `at`, code from `at`, data.
    ///
    /// # Safety
    /// Called at most once per region: the parts must be its only views, and
    /// must not outlive it.
    pub(crate) unsafe fn split(&self, at: usize) -> Result<(&'static mut [u8], &'static mut [u8], &'static mut [u8])> {
        if at > self.code {
            return Err(EINVAL);
        }
        // SAFETY: the alias maps `len` writable bytes; exclusivity and
        // lifetime are the caller's contract.
        let all = unsafe { core::slice::from_raw_parts_mut(self.alias.as_ptr(), self.len) };
        let (code, rest) = all.split_at_mut(self.code);
        let (low, high) = code.split_at_mut(at);
        Ok((low, high, &mut rest[self.counters..]))
    }

    /// The counters, at their execution addresses (read-write there, unlike
    /// the code, so translated code increments them in place).
    ///
    /// # Safety
    /// The slice must not outlive the region.
    pub(crate) unsafe fn counters(&self) -> &'static [AtomicU64] {
        // SAFETY: `counters` read-write bytes follow the code at `exec`, page
        // aligned (so 8-byte aligned), and zeroed or written only as
        // counters; the lifetime is the caller's contract.
        unsafe {
            core::slice::from_raw_parts(self.exec.as_ptr().add(self.code).cast::<AtomicU64>(), self.counters / 8)
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `alias` came from `vmap` and `exec` from `kdbt_exec_alloc`
        // in `new`; each is released once, in process context.
        unsafe {
            ffi::vunmap(self.alias.as_ptr().cast());
            ffi::kdbt_exec_free(self.exec.as_ptr().cast());
        }
    }
}
