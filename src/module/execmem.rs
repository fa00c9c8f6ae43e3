// SPDX-License-Identifier: GPL-2.0

//! Executable memory for the code caches, within ±2 GB of kernel text.
//!
//! `execmem_alloc` and `set_memory_rox` are not exported; the C helpers find
//! them with `kallsyms_lookup_name` (`helpers.c`) and hand out read-only,
//! executable pages in the module area, allocated per CPU as it joins
//! translation. kdbt writes a region through a second, writable mapping of
//! the same pages made with the exported `vmap` (W^X holds per mapping).

use core::ptr::NonNull;
use kernel::bindings;
use kernel::prelude::*;

use crate::ffi;

const PAGE: usize = 4096;

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
/// `exec` is `len` bytes of read-only executable memory from
/// `kdbt_exec_alloc`; `alias` maps the same pages writable; both live until
/// drop, and nothing else writes the pages.
pub(crate) struct Region {
    exec: NonNull<u8>,
    alias: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by this value.
unsafe impl Send for Region {}
// SAFETY: shared references only read the addresses.
unsafe impl Sync for Region {}

impl Region {
    /// Allocates `len` bytes (whole pages). Process context; may sleep.
    pub(crate) fn new(len: usize) -> Result<Self> {
        let len = len.checked_next_multiple_of(PAGE).ok_or(EINVAL)?;
        // SAFETY: plain call; returns null or `len` bytes of ROX memory.
        let exec = NonNull::new(unsafe { ffi::kdbt_exec_alloc(len) }.cast::<u8>()).ok_or(ENOMEM)?;
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
            Ok(alias) => Ok(Self { exec, alias, len }),
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

    /// The writable view, split at `at`.
    ///
    /// # Safety
    /// Called at most once per region: the halves must be its only views, and
    /// must not outlive it.
    pub(crate) unsafe fn split(&self, at: usize) -> Result<(&'static mut [u8], &'static mut [u8])> {
        if at > self.len {
            return Err(EINVAL);
        }
        // SAFETY: the alias maps `len` writable bytes; exclusivity and
        // lifetime are the caller's contract.
        let all = unsafe { core::slice::from_raw_parts_mut(self.alias.as_ptr(), self.len) };
        Ok(all.split_at_mut(at))
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
