// SPDX-License-Identifier: GPL-2.0
/*
 * kdbt_nmi: NMI storms, and what the NMI handlers see.
 *
 * Writing N (decimal) to /proc/kdbt_nmi sends N rounds of NMIs to every
 * other online CPU (apic->send_IPI_mask(NMI_VECTOR), to every CPU whose
 * previous NMI was seen); each round waits until the targets have handled
 * their NMI (at most 10 ms), then 50 us. Writing 0 resets the counters. Reading prints
 *
 *   sent S handled H kernel_mode K bad B first_bad 0x... timeouts T
 *
 * S: NMIs sent (rounds times targets); H: of those, NMIs our NMI_LOCAL
 * handler saw; K: of those, how many interrupted kernel mode; B: how many
 * had a regs->ip that is not kernel text (kernel_text_address(): the core
 * kernel, a module's text, kprobe slots, BPF); first_bad: the first such
 * ip; T: rounds whose NMIs were not all seen within 10 ms. Then one line
 * "bad_ip 0x... cpu C" for each of the first 16 bad NMIs.
 *
 * kdbt's code cache is executable memory in the module area that belongs
 * to no module: an NMI that interrupts translated code must reach the
 * kernel's NMI handlers with the native PC in its frame, so B stays 0.
 *
 * The handler claims (NMI_HANDLED) only NMIs this module sent: a per-CPU
 * pending count is raised for every target before the IPI and taken down
 * by the target's handler. Other NMIs go on to the kernel untouched.
 *
 * kernel_text_address() is not exported: its address comes from
 * kallsyms_lookup_name(), whose address comes from a kprobe registered on
 * it (and unregistered at once).
 */
#include <linux/atomic.h>
#include <linux/delay.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/kstrtox.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/proc_fs.h>
#include <linux/sched.h>
#include <linux/uaccess.h>
#include <asm/apic.h>
#include <asm/irq_vectors.h>
#include <asm/nmi.h>
#include <asm/ptrace.h>

static DEFINE_PER_CPU(atomic_t, nmi_pending);
static atomic_t storm_active;
static atomic_long_t nmi_sent, nmi_handled, nmi_kernel_mode, nmi_bad, nmi_timeouts;
static atomic_long_t nmi_first_bad;
#define BAD_IPS 16
static unsigned long bad_ips[BAD_IPS];
static int bad_cpus[BAD_IPS];
static DEFINE_MUTEX(storm_lock);
static int (*text_address)(unsigned long addr);

static int kdbt_nmi_handler(unsigned int type, struct pt_regs *regs)
{
	unsigned long ip = regs->ip;

	if (!atomic_read(&storm_active))
		return NMI_DONE;
	if (atomic_dec_if_positive(this_cpu_ptr(&nmi_pending)) < 0)
		return NMI_DONE;
	if (!user_mode(regs))
		atomic_long_inc(&nmi_kernel_mode);
	if (!user_mode(regs) && !text_address(ip)) {
		long n = atomic_long_inc_return(&nmi_bad) - 1;

		atomic_long_cmpxchg(&nmi_first_bad, 0, ip);
		if (n < BAD_IPS) {
			bad_cpus[n] = smp_processor_id();
			WRITE_ONCE(bad_ips[n], ip);
		}
	}
	atomic_long_inc(&nmi_handled);
	return NMI_HANDLED;
}

static bool targets_done(int self)
{
	int cpu;

	for_each_online_cpu(cpu)
		if (cpu != self && atomic_read(per_cpu_ptr(&nmi_pending, cpu)) > 0)
			return false;
	return true;
}

static void storm(unsigned long rounds)
{
	struct cpumask mask;
	unsigned long r;
	int cpu, self, us;

	atomic_set(&storm_active, 1);
	for (r = 0; r < rounds; r++) {
		self = get_cpu();
		/*
		 * Only CPUs whose last NMI was seen: a second NMI sent while
		 * one is still latched would merge with it and leave the
		 * pending count behind for good.
		 */
		cpumask_clear(&mask);
		for_each_online_cpu(cpu) {
			if (cpu == self || atomic_read(per_cpu_ptr(&nmi_pending, cpu)) > 0)
				continue;
			atomic_inc(per_cpu_ptr(&nmi_pending, cpu));
			atomic_long_inc(&nmi_sent);
			cpumask_set_cpu(cpu, &mask);
		}
		if (!cpumask_empty(&mask))
			apic->send_IPI_mask(&mask, NMI_VECTOR);
		for (us = 0; us < 10000 && !targets_done(self); us++)
			udelay(1);
		if (!targets_done(self))
			atomic_long_inc(&nmi_timeouts);
		put_cpu();
		udelay(50);
		cond_resched();
	}
	/* Late NMIs of a timed-out round: wait for them a little longer. */
	for (us = 0; us < 1000000 && !targets_done(-1); us++)
		udelay(1);
	atomic_set(&storm_active, 0);
	for_each_possible_cpu(cpu)
		atomic_set(per_cpu_ptr(&nmi_pending, cpu), 0);
}

static ssize_t nmi_read(struct file *file, char __user *ubuf, size_t len, loff_t *pos)
{
	char buf[192 + BAD_IPS * 32];
	long bad = atomic_long_read(&nmi_bad);
	int i, n = scnprintf(buf, sizeof(buf),
			     "sent %ld handled %ld kernel_mode %ld bad %ld first_bad %#lx timeouts %ld\n",
			     atomic_long_read(&nmi_sent), atomic_long_read(&nmi_handled),
			     atomic_long_read(&nmi_kernel_mode), bad,
			     (unsigned long)atomic_long_read(&nmi_first_bad),
			     atomic_long_read(&nmi_timeouts));

	for (i = 0; i < bad && i < BAD_IPS; i++)
		n += scnprintf(buf + n, sizeof(buf) - n, "bad_ip %#lx cpu %d\n",
			       READ_ONCE(bad_ips[i]), bad_cpus[i]);

	return simple_read_from_buffer(ubuf, len, pos, buf, n);
}

static ssize_t nmi_write(struct file *file, const char __user *ubuf, size_t len, loff_t *pos)
{
	unsigned long rounds;
	int err = kstrtoul_from_user(ubuf, len, 10, &rounds);

	if (err)
		return err;
	if (rounds > 1000000)
		return -EINVAL;
	mutex_lock(&storm_lock);
	if (rounds == 0) {
		atomic_long_set(&nmi_sent, 0);
		atomic_long_set(&nmi_handled, 0);
		atomic_long_set(&nmi_kernel_mode, 0);
		atomic_long_set(&nmi_bad, 0);
		atomic_long_set(&nmi_first_bad, 0);
		atomic_long_set(&nmi_timeouts, 0);
		memset(bad_ips, 0, sizeof(bad_ips));
	} else {
		storm(rounds);
	}
	mutex_unlock(&storm_lock);
	return len;
}

static const struct proc_ops nmi_ops = {
	.proc_read = nmi_read,
	.proc_write = nmi_write,
	.proc_lseek = default_llseek,
};

static unsigned long lookup_name(const char *name)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	unsigned long (*lookup)(const char *name);

	if (register_kprobe(&kp) < 0)
		return 0;
	lookup = (void *)kp.addr;
	unregister_kprobe(&kp);
	return lookup ? lookup(name) : 0;
}

static int __init kdbt_nmi_init(void)
{
	int err;

	text_address = (void *)lookup_name("kernel_text_address");
	if (!text_address) {
		pr_err("kdbt_nmi: kernel_text_address not found\n");
		return -ENOENT;
	}
	if (!text_address((unsigned long)kdbt_nmi_handler) || text_address((unsigned long)&storm_active)) {
		pr_err("kdbt_nmi: kernel_text_address does not tell text from data\n");
		return -EINVAL;
	}
	err = register_nmi_handler(NMI_LOCAL, kdbt_nmi_handler, 0, "kdbt_nmi");
	if (err)
		return err;
	if (!proc_create("kdbt_nmi", 0600, NULL, &nmi_ops)) {
		unregister_nmi_handler(NMI_LOCAL, "kdbt_nmi");
		return -ENOMEM;
	}
	return 0;
}

static void __exit kdbt_nmi_exit(void)
{
	remove_proc_entry("kdbt_nmi", NULL);
	/* Waits for running handlers (synchronize_rcu). */
	unregister_nmi_handler(NMI_LOCAL, "kdbt_nmi");
}

module_init(kdbt_nmi_init);
module_exit(kdbt_nmi_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kdbt test: NMI storms, and the interrupted IP NMI handlers see");
