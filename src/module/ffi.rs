// SPDX-License-Identifier: GPL-2.0

//! Exported kernel functions that the 6.12 `bindings` crate does not declare,
//! and kdbt's own C helpers (`helpers.c`).

use kernel::bindings;

extern "C" {
    /// `void *vmap(struct page **pages, unsigned int count, unsigned long flags, pgprot_t prot)`
    pub(crate) fn vmap(
        pages: *mut *mut core::ffi::c_void,
        count: u32,
        flags: u64,
        prot: u64,
    ) -> *mut core::ffi::c_void;
    /// `void vunmap(const void *addr)`
    pub(crate) fn vunmap(addr: *const core::ffi::c_void);
    /// `long copy_from_kernel_nofault(void *dst, const void *src, size_t size)`
    pub(crate) fn copy_from_kernel_nofault(
        dst: *mut core::ffi::c_void,
        src: *const core::ffi::c_void,
        size: usize,
    ) -> isize;
    /// `int stop_machine(cpu_stop_fn_t fn, void *data, const struct cpumask *cpus)`
    pub(crate) fn stop_machine(
        f: Option<unsafe extern "C" fn(*mut core::ffi::c_void) -> i32>,
        data: *mut core::ffi::c_void,
        cpus: *const bindings::cpumask,
    ) -> i32;

    // helpers.c
    pub(crate) fn kdbt_control_lock(interruptible: i32) -> i32;
    pub(crate) fn kdbt_control_unlock();
    pub(crate) fn kdbt_page_kernel() -> u64;
    pub(crate) fn kdbt_this_cpu() -> u32;
    pub(crate) fn kdbt_scrub_stack();
    pub(crate) fn kdbt_recapture();
    pub(crate) fn kdbt_gate_init(native: u64);
    pub(crate) fn kdbt_gate_set(target: u64);
    pub(crate) fn kdbt_switch_probe() -> u64;
    pub(crate) fn kdbt_switch_hook_register(gate_return: u64, gate_native: u64) -> i32;
    pub(crate) fn kdbt_switch_hook_unregister();
    pub(crate) fn kdbt_unsupported_entry() -> *const core::ffi::c_char;
    pub(crate) fn kdbt_resolve_symbols() -> i32;
    pub(crate) fn kdbt_symbol(name: *const core::ffi::c_char) -> u64;
    pub(crate) fn kdbt_exec_alloc(size: usize, rox: usize) -> *mut core::ffi::c_void;
    pub(crate) fn kdbt_exec_free(p: *mut core::ffi::c_void);
    pub(crate) fn kdbt_cpuhp_setup(
        online: unsafe extern "C" fn(u32) -> i32,
        offline: unsafe extern "C" fn(u32) -> i32,
    ) -> i32;
    pub(crate) fn kdbt_cpuhp_remove(state: i32);
    pub(crate) fn kdbt_hooks_register() -> i32;
    pub(crate) fn kdbt_hooks_unregister() -> u64;
    pub(crate) fn kdbt_debugfs_create(names: *const *const core::ffi::c_char, n: i32);
    pub(crate) fn kdbt_debugfs_remove();
    pub(crate) fn kdbt_sprint_symbol(buf: *mut u8, addr: u64) -> i32;
    pub(crate) fn kdbt_kaslr_offset() -> u64;
    pub(crate) fn kdbt_scan_stacks(
        lo: u64,
        hi: u64,
        f: unsafe extern "C" fn(*mut core::ffi::c_void, *mut u64),
        ctx: *mut core::ffi::c_void,
        scan: *mut crate::stack::StackScan,
    );
    pub(crate) fn kdbt_module_text(addr: u64, base: *mut u64, size: *mut u64, name: *mut u8) -> i32;
}

/// The address of the kernel symbol `name` (`kallsyms_lookup_name`), 0 if unknown.
pub(crate) fn symbol(name: &core::ffi::CStr) -> u64 {
    // SAFETY: `name` is NUL-terminated; the helper only looks it up.
    unsafe { kdbt_symbol(name.as_ptr()) }
}

/// Room for what `sprint_symbol` writes (`KSYM_SYMBOL_LEN` is about 630).
pub(crate) const KSYM_SYMBOL_LEN: usize = 1024;
/// `MODULE_NAME_LEN`.
pub(crate) const MODULE_NAME_LEN: usize = 56;

/// `VM_MAP` from `<linux/vmalloc.h>`.
pub(crate) const VM_MAP: u64 = 0x4;
/// `MSR_LSTAR`: the 64-bit `syscall` entry point.
pub(crate) const MSR_LSTAR: u32 = 0xc000_0082;
/// `MSR_GS_BASE`: the live GS base.
pub(crate) const MSR_GS_BASE: u32 = 0xc000_0101;
