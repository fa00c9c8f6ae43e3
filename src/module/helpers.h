/* SPDX-License-Identifier: GPL-2.0 */
/* kdbt's C helpers, called from Rust (declared again in ffi.rs). */
#ifndef KDBT_HELPERS_H
#define KDBT_HELPERS_H

#include <linux/types.h>

int kdbt_control_lock(int interruptible);
void kdbt_control_unlock(void);
unsigned long kdbt_page_kernel(void);
unsigned int kdbt_this_cpu(void);
void kdbt_scrub_stack(void);
void kdbt_recapture(void);
void kdbt_gate_init(unsigned long native);
void kdbt_gate_set(unsigned long target);
unsigned long kdbt_switch_probe(void);
int kdbt_switch_hook_register(unsigned long gate_return, unsigned long gate_native);
void kdbt_switch_hook_unregister(void);
const char *kdbt_unsupported_entry(void);
int kdbt_resolve_symbols(void);
unsigned long kdbt_symbol(const char *name);
void *kdbt_exec_alloc(size_t size, size_t rox);
void kdbt_exec_free(void *p);
int kdbt_cpuhp_setup(int (*online)(unsigned int), int (*offline)(unsigned int));
void kdbt_cpuhp_remove(int state);
int kdbt_hooks_register(void);
unsigned long kdbt_hooks_unregister(void);

void kdbt_debugfs_create(const char *const *names, int n);
void kdbt_debugfs_remove(void);
int kdbt_sprint_symbol(char *buf, unsigned long addr);
unsigned long kdbt_kaslr_offset(void);
int kdbt_module_text(unsigned long addr, unsigned long *base, unsigned long *size, char *name);

/* Rust (switch_hook.rs), called from here. */
void kdbt_native_switch(void);

/* Rust (consistency.rs), called from here. */
void kdbt_code_changed(unsigned long start, unsigned long end);
void kdbt_apply_log(void);

/* What kdbt_scan_stacks looked at (stack.rs: StackScan). */
struct kdbt_stack_scan {
	unsigned long stacks;
	unsigned long skipped;
	unsigned long words;
};
void kdbt_scan_stacks(unsigned long lo, unsigned long hi,
		      void (*fn)(void *, unsigned long *), void *ctx,
		      struct kdbt_stack_scan *st);

/* Rust (report.rs), called from here. */
void *kdbt_report_build(long kind);
const char *kdbt_report_bytes(void *report, size_t *len);
void kdbt_report_free(void *report);

#endif
