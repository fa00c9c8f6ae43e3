// SPDX-License-Identifier: GPL-2.0
/*
 * kdbt's C helpers: kernel interfaces that are macros, inline functions or
 * enums Rust cannot reach through the 6.12 bindings (mutexes, CPU hotplug
 * states, kprobes), and the kernel functions kdbt needs that are not exported
 * (executable memory near kernel text), which it finds through
 * kallsyms_lookup_name. Every function here is called from Rust.
 */
#include <linux/cpu.h>
#include <linux/cpuhotplug.h>
#include <linux/execmem.h>
#include <linux/kprobes.h>
#include <linux/mutex.h>
#include <linux/set_memory.h>
#include <linux/smp.h>
#include <linux/vmalloc.h>

#include "helpers.h"

/* Serialises enable, disable, flush and cache_kb: a second writer waits. */
static DEFINE_MUTEX(kdbt_control_mutex);

int kdbt_control_lock(int interruptible)
{
	if (interruptible)
		return mutex_lock_interruptible(&kdbt_control_mutex);
	mutex_lock(&kdbt_control_mutex);
	return 0;
}

void kdbt_control_unlock(void)
{
	mutex_unlock(&kdbt_control_mutex);
}

/* PAGE_KERNEL as this kernel defines it (with _PAGE_ENC under SME/SEV). */
unsigned long kdbt_page_kernel(void)
{
	return pgprot_val(PAGE_KERNEL);
}

unsigned int kdbt_this_cpu(void)
{
	return raw_smp_processor_id();
}

typedef unsigned long (*lookup_fn)(const char *);
typedef void *(*execmem_alloc_fn)(enum execmem_type, size_t);
typedef void (*execmem_free_fn)(void *);
typedef int (*set_memory_fn)(unsigned long, int);

static execmem_alloc_fn kdbt_execmem_alloc;
static execmem_free_fn kdbt_execmem_free;
static set_memory_fn kdbt_set_memory_rox;

/*
 * kallsyms_lookup_name is not exported since 5.7; a kprobe on it resolves
 * its address (register_kprobe looks the symbol up) without arming anything
 * that stays: the probe is removed at once.
 */
static lookup_fn find_lookup(void)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	lookup_fn fn;

	if (register_kprobe(&kp) < 0)
		return NULL;
	fn = (lookup_fn)kp.addr;
	unregister_kprobe(&kp);
	return fn;
}

/* Finds the executable-memory functions; 0 or -ENOENT (no kprobes, no symbol). */
int kdbt_resolve_symbols(void)
{
	lookup_fn lookup = find_lookup();

	if (!lookup)
		return -ENOENT;
	kdbt_execmem_alloc = (execmem_alloc_fn)lookup("execmem_alloc");
	kdbt_execmem_free = (execmem_free_fn)lookup("execmem_free");
	kdbt_set_memory_rox = (set_memory_fn)lookup("set_memory_rox");
	if (!kdbt_execmem_alloc || !kdbt_execmem_free || !kdbt_set_memory_rox)
		return -ENOENT;
	return 0;
}

/*
 * Memory in the module area (within +-2 GB of kernel text, as module code
 * is), whole pages: the first `rox` bytes read-only and executable, the rest
 * read-write data. NULL on failure. Sleeps.
 */
void *kdbt_exec_alloc(size_t size, size_t rox)
{
	void *p;

	if (!kdbt_execmem_alloc || !size || size % PAGE_SIZE || rox % PAGE_SIZE || rox > size)
		return NULL;
	p = kdbt_execmem_alloc(EXECMEM_DEFAULT, size);
	if (!p)
		return NULL;
	if (kdbt_set_memory_rox((unsigned long)p, rox / PAGE_SIZE)) {
		kdbt_execmem_free(p);
		return NULL;
	}
	return p;
}

/* Frees what kdbt_exec_alloc returned (vfree resets the permissions). Sleeps. */
void kdbt_exec_free(void *p)
{
	if (p)
		kdbt_execmem_free(p);
}

/* Registers the CPU hotplug callbacks (run on the CPU concerned, may sleep). */
int kdbt_cpuhp_setup(int (*online)(unsigned int), int (*offline)(unsigned int))
{
	return cpuhp_setup_state_nocalls(CPUHP_AP_ONLINE_DYN, "kdbt:online", online, offline);
}

void kdbt_cpuhp_remove(int state)
{
	cpuhp_remove_state_nocalls(state);
}
