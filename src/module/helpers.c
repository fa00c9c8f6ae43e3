// SPDX-License-Identifier: GPL-2.0
/*
 * kdbt's C helpers: kernel interfaces that are macros, inline functions or
 * enums Rust cannot reach through the 6.12 bindings (mutexes, CPU hotplug
 * states, kprobes, notifiers), the kernel's code-change choke points
 * (consistency.rs), and the kernel functions kdbt needs that are not exported
 * (executable memory near kernel text), which it finds through
 * kallsyms_lookup_name. Every function here is called from Rust.
 */
#include <linux/cpu.h>
#include <linux/cpuhotplug.h>
#include <linux/debugfs.h>
#include <linux/execmem.h>
#include <linux/fs.h>
#include <linux/kallsyms.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/sched/signal.h>
#include <linux/sched/task_stack.h>
#include <linux/set_memory.h>
#include <linux/smp.h>
#include <linux/tracepoint.h>
#include <linux/vmalloc.h>
#include <asm/apic.h>
#include <asm/cpufeature.h>
#include <asm/irq_vectors.h>
#include <asm/setup.h>

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

/*
 * Why this kernel's entry cannot be translated, or NULL. With PTI active the
 * syscall entry switches CR3 before it has a stack; FRED replaces the IDT.
 */
const char *kdbt_unsupported_entry(void)
{
	if (cpu_feature_enabled(X86_FEATURE_PTI))
		return "page-table isolation (PTI) is active; boot with pti=off";
	if (cpu_feature_enabled(X86_FEATURE_FRED))
		return "FRED is active; boot with fred=off";
	return NULL;
}

/*
 * A reschedule IPI to this CPU: the enable's stop_machine callback runs in
 * a stopper that is not translated yet, and returns into it; the IPI,
 * delivered as soon as the stopper enables interrupts again, brings it
 * under translation at once (the handler's iretq is kdbt's) rather than at
 * the CPU's next interrupt.
 */
void kdbt_recapture(void)
{
	apic->send_IPI_self(RESCHEDULE_VECTOR);
}

/*
 * The return gate (entry.rs): this CPU's exit thunk while it translates,
 * else the gate's native return.
 */
DEFINE_PER_CPU(unsigned long, kdbt_gate);

void kdbt_gate_init(unsigned long native)
{
	int cpu;

	for_each_possible_cpu(cpu)
		per_cpu(kdbt_gate, cpu) = native;
}

void kdbt_gate_set(unsigned long target)
{
	this_cpu_write(kdbt_gate, target);
}

/*
 * Native context switches (switch_hook.rs). kdbt's own code runs natively,
 * and so do the kernel functions it calls: when it sleeps, the switch is
 * made natively, and the next task resumes natively in its own __schedule
 * frame (its return addresses are native) until this CPU's next interrupt.
 * This probe on sched_switch sees such a switch: translated code never calls
 * it (the dispatcher elides direct calls and tail calls to it) or calls it
 * through the return gate. The reschedule IPI it sends comes in as soon as
 * the next task enables interrupts again (finish_task_switch), and that
 * handler's iretq, kdbt's, brings the task back under translation.
 */
static unsigned long kdbt_gate_return_addr, kdbt_gate_native_addr;
static struct tracepoint *kdbt_switch_tp;

static void kdbt_on_switch(void *data, bool preempt, struct task_struct *prev,
			   struct task_struct *next, unsigned int prev_state)
{
	if ((unsigned long)__builtin_return_address(0) == kdbt_gate_return_addr ||
	    this_cpu_read(kdbt_gate) == kdbt_gate_native_addr)
		return;
	apic->send_IPI_self(RESCHEDULE_VECTOR);
	kdbt_native_switch();
}

static void find_switch_tp(struct tracepoint *tp, void *priv)
{
	if (!strcmp(tp->name, "sched_switch"))
		*(struct tracepoint **)priv = tp;
}

/* The probe's address, which translated code must not call. */
unsigned long kdbt_switch_probe(void)
{
	return (unsigned long)kdbt_on_switch;
}

int kdbt_switch_hook_register(unsigned long gate_return, unsigned long gate_native)
{
	struct tracepoint *tp = NULL;
	int r;

	kdbt_gate_return_addr = gate_return;
	kdbt_gate_native_addr = gate_native;
	for_each_kernel_tracepoint(find_switch_tp, &tp);
	if (!tp)
		return -ENOENT;
	r = tracepoint_probe_register(tp, kdbt_on_switch, NULL);
	if (!r)
		kdbt_switch_tp = tp;
	return r;
}

void kdbt_switch_hook_unregister(void)
{
	if (!kdbt_switch_tp)
		return;
	tracepoint_probe_unregister(kdbt_switch_tp, kdbt_on_switch, NULL);
	/* No CPU is still inside the probe when the module's text goes. */
	tracepoint_synchronize_unregister();
	kdbt_switch_tp = NULL;
}

/*
 * Zeroes the unused part of this task's kernel stack, below the caller's
 * frame (with room for this function's own). kdbt's teardown runs natively
 * in the knob writer's stack and leaves addresses in the regions it frees in
 * slots it no longer uses, which the task's later frames need not overwrite
 * (padding, locals not yet written): a stack scan would then find words that
 * name freed code, though never as return addresses. An interrupt meanwhile
 * pushes its frame below the stack pointer and is done with it before the
 * loop goes on.
 */
noinline void kdbt_scrub_stack(void)
{
	unsigned long *p = end_of_stack(current) + 1;
	unsigned long *hi = (unsigned long *)(current_stack_pointer - 256);

	while (p < hi)
		WRITE_ONCE(*p++, 0);
}

unsigned int kdbt_this_cpu(void)
{
	return raw_smp_processor_id();
}

typedef unsigned long (*lookup_fn)(const char *);
typedef void *(*execmem_alloc_fn)(enum execmem_type, size_t);
typedef void (*execmem_free_fn)(void *);
typedef int (*set_memory_fn)(unsigned long, int);
typedef struct task_struct *(*idle_task_fn)(int);

static lookup_fn kdbt_lookup;
static execmem_alloc_fn kdbt_execmem_alloc;
static execmem_free_fn kdbt_execmem_free;
static set_memory_fn kdbt_set_memory_rox;
static idle_task_fn kdbt_idle_task;

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
	kdbt_lookup = lookup;
	kdbt_execmem_alloc = (execmem_alloc_fn)lookup("execmem_alloc");
	kdbt_execmem_free = (execmem_free_fn)lookup("execmem_free");
	kdbt_set_memory_rox = (set_memory_fn)lookup("set_memory_rox");
	kdbt_idle_task = (idle_task_fn)lookup("idle_task");
	if (!kdbt_execmem_alloc || !kdbt_execmem_free || !kdbt_set_memory_rox)
		return -ENOENT;
	return 0;
}

/* The address of a kernel symbol, 0 if it has none (or before kdbt_resolve_symbols). */
unsigned long kdbt_symbol(const char *name)
{
	return kdbt_lookup ? kdbt_lookup(name) : 0;
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

/*
 * The kernel's code-change choke points (docs/kernel.md, "Consistency").
 * Each reports the ranges that changed to consistency.rs, which logs them
 * and applies them on this CPU; kdbt_sync_cpus makes every other CPU apply
 * them before it returns, where the caller does not do that itself.
 */

static void apply_on_cpu(void *unused)
{
	kdbt_apply_log();
}

/*
 * An IPI round: every online CPU applies the log before this returns. Needs
 * interrupts on (smp_call_function waits); callers with them off change
 * only code that the kernel's own text_poke_sync or a later round covers.
 */
static void kdbt_sync_cpus(void)
{
	if (!irqs_disabled())
		on_each_cpu(apply_on_cpu, NULL, 1);
}

static void module_text_changed(const struct module_memory *mem)
{
	if (mem->size)
		kdbt_code_changed((unsigned long)mem->base, (unsigned long)mem->base + mem->size);
}

/*
 * Coming: the module's text may hold translations of a module that was
 * there before. Live: its init text is about to be freed. Going (also after
 * a failed load or init): all of its text goes away.
 */
static int module_event(struct notifier_block *nb, unsigned long state, void *data)
{
	struct module *mod = data;

	switch (state) {
	case MODULE_STATE_COMING:
	case MODULE_STATE_GOING:
		module_text_changed(&mod->mem[MOD_TEXT]);
		fallthrough;
	case MODULE_STATE_LIVE:
		module_text_changed(&mod->mem[MOD_INIT_TEXT]);
		kdbt_sync_cpus();
	}
	return NOTIFY_DONE;
}

static struct notifier_block module_nb = { .notifier_call = module_event };

struct poke_range {
	unsigned long addr;
	unsigned long len;
};

static unsigned long missed_seen;
static struct kretprobe poke_probe;

/* Hits a kretprobe missed: kprobe recursion, or no free instance. */
static unsigned long probe_missed(const struct kretprobe *rp)
{
	return READ_ONCE(rp->kp.nmissed) + READ_ONCE(rp->nmissed);
}

/* A missed probe hit is a change kdbt did not see: drop every translation. */
static void check_missed(void)
{
	unsigned long missed = probe_missed(&poke_probe);

	if (missed != READ_ONCE(missed_seen)) {
		WRITE_ONCE(missed_seen, missed);
		kdbt_code_changed(0, ULONG_MAX);
	}
}

/* __text_poke(func, addr, src, len): every text_poke* write goes through it. */
static int poke_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct poke_range *r = (struct poke_range *)ri->data;

	r->addr = regs->si;
	r->len = regs->cx;
	return 0;
}

/* After the write: from here on no CPU may run a translation of the old bytes. */
static int poke_return(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct poke_range *r = (struct poke_range *)ri->data;

	check_missed();
	kdbt_code_changed(r->addr, r->addr + r->len);
	return 0;
}

static struct kretprobe poke_probe = {
	.kp.symbol_name = "__text_poke",
	.entry_handler = poke_entry,
	.handler = poke_return,
	.data_size = sizeof(struct poke_range),
	.maxactive = 16,
};

/*
 * text_poke_copy and text_poke_set fill (unused) executable memory for JITs
 * (BPF programs and their freeing, ftrace and kprobe trampolines) without a
 * text_poke_sync: kdbt's own IPI round takes its place.
 */
static int jit_return(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	check_missed();
	kdbt_sync_cpus();
	return 0;
}

static struct kretprobe jit_copy_probe = {
	.kp.symbol_name = "text_poke_copy",
	.handler = jit_return,
	.maxactive = 16,
};

static struct kretprobe jit_set_probe = {
	.kp.symbol_name = "text_poke_set",
	.handler = jit_return,
	.maxactive = 16,
};

static struct kretprobe *code_probes[] = { &poke_probe, &jit_copy_probe, &jit_set_probe };

int kdbt_hooks_register(void)
{
	int r = register_kretprobes(code_probes, ARRAY_SIZE(code_probes));

	if (r)
		return r;
	r = register_module_notifier(&module_nb);
	if (r)
		unregister_kretprobes(code_probes, ARRAY_SIZE(code_probes));
	return r;
}

/* Returns how many probe hits were missed while registered. */
unsigned long kdbt_hooks_unregister(void)
{
	unsigned long missed = 0;
	int i;

	unregister_module_notifier(&module_nb);
	unregister_kretprobes(code_probes, ARRAY_SIZE(code_probes));
	for (i = 0; i < ARRAY_SIZE(code_probes); i++)
		missed += probe_missed(code_probes[i]);
	return missed;
}

/*
 * Client reports (report.rs): /sys/kernel/debug/kdbt/, one file per report
 * kind. Opening builds the report (Rust, as a whole: the data is a snapshot),
 * reads copy from it, release frees it.
 */
static struct dentry *kdbt_debugfs_dir;

static int report_open(struct inode *inode, struct file *file)
{
	void *report = kdbt_report_build((long)inode->i_private);

	if (IS_ERR(report))
		return PTR_ERR(report);
	file->private_data = report;
	return 0;
}

static ssize_t report_read(struct file *file, char __user *buf, size_t count, loff_t *pos)
{
	size_t len;
	const char *data = kdbt_report_bytes(file->private_data, &len);

	return simple_read_from_buffer(buf, count, pos, data, len);
}

static int report_release(struct inode *inode, struct file *file)
{
	kdbt_report_free(file->private_data);
	return 0;
}

static const struct file_operations report_fops = {
	.owner = THIS_MODULE,
	.open = report_open,
	.read = report_read,
	.llseek = default_llseek,
	.release = report_release,
};

/* Creates the directory and its files; no debugfs is not an error. */
void kdbt_debugfs_create(const char *const *names, int n)
{
	long i;

	kdbt_debugfs_dir = debugfs_create_dir("kdbt", NULL);
	if (IS_ERR(kdbt_debugfs_dir))
		return;
	for (i = 0; i < n; i++)
		debugfs_create_file(names[i], 0400, kdbt_debugfs_dir, (void *)i, &report_fops);
}

void kdbt_debugfs_remove(void)
{
	debugfs_remove_recursive(kdbt_debugfs_dir);
	kdbt_debugfs_dir = NULL;
}

/* What %pS prints for addr; returns its length. */
int kdbt_sprint_symbol(char *buf, unsigned long addr)
{
	return sprint_symbol(buf, addr);
}

/* Runtime minus link-time address of the kernel's text (kaslr_offset()). */
unsigned long kdbt_kaslr_offset(void)
{
	return kdbt_symbol("_text") - __START_KERNEL;
}

typedef struct module *(*module_address_fn)(unsigned long);

/*
 * The text of the module containing addr: its base and size, and its name
 * copied into name (MODULE_NAME_LEN bytes); 0 if no module has addr.
 */
int kdbt_module_text(unsigned long addr, unsigned long *base, unsigned long *size, char *name)
{
	module_address_fn module_address = (module_address_fn)kdbt_symbol("__module_address");
	struct module *mod;
	int found = 0;

	if (!module_address)
		return 0;
	preempt_disable();
	mod = module_address(addr);
	if (mod) {
		*base = (unsigned long)mod->mem[MOD_TEXT].base;
		*size = mod->mem[MOD_TEXT].size;
		strscpy(name, mod->name, MODULE_NAME_LEN);
		found = 1;
	}
	preempt_enable();
	return found;
}

static void scan_stack(struct task_struct *t, unsigned long lo, unsigned long hi,
		       void (*fn)(void *, unsigned long *), void *ctx,
		       struct kdbt_stack_scan *st)
{
	unsigned long base = (unsigned long)task_stack_page(t);
	unsigned long sp = t->thread.sp, p;

	/* Running: the stoppers, whose saved sp is stale. Exiting: the stack may be gone. */
	if (t->exit_state || READ_ONCE(t->on_cpu) || !base || sp < base ||
	    sp >= base + THREAD_SIZE) {
		st->skipped++;
		return;
	}
	st->stacks++;
	for (p = sp & ~7UL; p < base + THREAD_SIZE; p += 8) {
		unsigned long w = READ_ONCE_NOCHECK(*(unsigned long *)p);

		st->words++;
		if (w >= lo && w < hi)
			fn(ctx, (unsigned long *)p);
	}
}

/*
 * Calls fn(ctx, slot) for every word in [lo, hi) in the live part (saved
 * stack pointer to top) of the kernel stack of every task that is not
 * running, each online CPU's idle task included. Only inside stop_machine,
 * with every other CPU stopped: no task runs, exits or is created.
 */
void kdbt_scan_stacks(unsigned long lo, unsigned long hi,
		      void (*fn)(void *, unsigned long *), void *ctx,
		      struct kdbt_stack_scan *st)
{
	struct task_struct *g, *t;
	int cpu;

	rcu_read_lock();
	for_each_process_thread(g, t)
		scan_stack(t, lo, hi, fn, ctx, st);
	rcu_read_unlock();
	/* Without the symbol, the idle tasks count as skipped. */
	for_each_online_cpu(cpu) {
		if (kdbt_idle_task)
			scan_stack(kdbt_idle_task(cpu), lo, hi, fn, ctx, st);
		else
			st->skipped++;
	}
}
