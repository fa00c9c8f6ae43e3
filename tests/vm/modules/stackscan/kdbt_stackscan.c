// SPDX-License-Identifier: GPL-2.0
/*
 * kdbt_stackscan: looks for given addresses on every task's kernel stack,
 * with every CPU stopped, independently of kdbt.
 *
 * Writing "lo hi [lo hi ...]" (hex, up to 72 half-open ranges) to
 * /proc/kdbt_stackscan scans, inside stop_machine, the live part of the
 * kernel stack (from its saved stack pointer to its top) of every task on
 * the task list and of every CPU's idle task, and counts the words that fall
 * in each range. Reading prints
 *   tasks <scanned> skipped <n> words <n> idle <0|1>
 *   range <i> found <n> [pid <pid> comm <comm> word <hex>]
 * the last part naming the first word found. A task that is running (the
 * stoppers), exiting (its stack may be gone) or whose saved stack pointer is
 * outside its stack is skipped and counted; "idle 0" says the idle tasks
 * could not be found (no kprobes) and were not scanned.
 */
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/proc_fs.h>
#include <linux/slab.h>
#include <linux/sched/signal.h>
#include <linux/sched/task_stack.h>
#include <linux/stop_machine.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#define MAX_RANGES 72
#define IN_MAX (MAX_RANGES * 2 * 17 + 1)
#define OUT_MAX 8192

struct hit {
	unsigned long found;
	pid_t pid;
	char comm[TASK_COMM_LEN];
	unsigned long word;
};

struct scan {
	int n;
	unsigned long lo[MAX_RANGES], hi[MAX_RANGES];
	unsigned long tasks, skipped, words;
	struct hit hit[MAX_RANGES];
};

static DEFINE_MUTEX(scan_lock);
static struct scan result;
static struct task_struct *(*idle_task_fn)(int cpu);

static void scan_task(struct scan *s, struct task_struct *t)
{
	unsigned long base = (unsigned long)task_stack_page(t);
	unsigned long sp = t->thread.sp, p;
	int i;

	if (t->exit_state || READ_ONCE(t->on_cpu) || !base ||
	    sp < base || sp >= base + THREAD_SIZE) {
		s->skipped++;
		return;
	}
	s->tasks++;
	for (p = sp & ~7UL; p < base + THREAD_SIZE; p += 8) {
		unsigned long w = READ_ONCE_NOCHECK(*(unsigned long *)p);

		s->words++;
		for (i = 0; i < s->n; i++) {
			struct hit *h = &s->hit[i];

			if (w < s->lo[i] || w >= s->hi[i])
				continue;
			if (!h->found++) {
				h->pid = t->pid;
				memcpy(h->comm, t->comm, TASK_COMM_LEN);
				h->word = w;
			}
		}
	}
}

/* On one CPU, the others spinning with interrupts off: no task changes. */
static int scan_all(void *data)
{
	struct scan *s = data;
	struct task_struct *g, *t;
	int cpu;

	for_each_process_thread(g, t)
		scan_task(s, t);
	if (idle_task_fn)
		for_each_online_cpu(cpu)
			scan_task(s, idle_task_fn(cpu));
	return 0;
}

static struct scan work;

static ssize_t scan_write(struct file *file, const char __user *ubuf, size_t len, loff_t *pos)
{
	char *buf, *cur, *tok;
	unsigned long v;
	int k = 0, err = 0;

	if (len >= IN_MAX)
		return -EINVAL;
	buf = memdup_user_nul(ubuf, len);
	if (IS_ERR(buf))
		return PTR_ERR(buf);
	mutex_lock(&scan_lock);
	memset(&work, 0, sizeof(work));
	cur = buf;
	while ((tok = strsep(&cur, " \t\n"))) {
		if (!*tok)
			continue;
		if (k >= 2 * MAX_RANGES || kstrtoul(tok, 16, &v)) {
			err = -EINVAL;
			break;
		}
		if (k % 2)
			work.hi[k / 2] = v;
		else
			work.lo[k / 2] = v;
		k++;
	}
	if (!err && (!k || k % 2))
		err = -EINVAL;
	if (!err) {
		work.n = k / 2;
		err = stop_machine(scan_all, &work, NULL);
	}
	if (!err)
		result = work;
	mutex_unlock(&scan_lock);
	kfree(buf);
	return err ? err : len;
}

static ssize_t scan_read(struct file *file, char __user *ubuf, size_t len, loff_t *pos)
{
	char *buf = kvmalloc(OUT_MAX, GFP_KERNEL);
	ssize_t r;
	int i, n;

	if (!buf)
		return -ENOMEM;
	mutex_lock(&scan_lock);
	n = scnprintf(buf, OUT_MAX, "tasks %lu skipped %lu words %lu idle %d\n",
		      result.tasks, result.skipped, result.words, idle_task_fn != NULL);
	for (i = 0; i < result.n; i++) {
		struct hit *h = &result.hit[i];

		n += scnprintf(buf + n, OUT_MAX - n, "range %d found %lu", i, h->found);
		if (h->found)
			n += scnprintf(buf + n, OUT_MAX - n, " pid %d comm %s word %lx",
				       h->pid, h->comm, h->word);
		n += scnprintf(buf + n, OUT_MAX - n, "\n");
	}
	mutex_unlock(&scan_lock);
	r = simple_read_from_buffer(ubuf, len, pos, buf, n);
	kvfree(buf);
	return r;
}

static const struct proc_ops scan_ops = {
	.proc_read = scan_read,
	.proc_write = scan_write,
};

/* idle_task() is not exported: found the way kdbt finds its symbols. */
static void find_idle_task(void)
{
	struct kprobe kp = { .symbol_name = "idle_task" };

	if (register_kprobe(&kp) < 0)
		return;
	idle_task_fn = (void *)kp.addr;
	unregister_kprobe(&kp);
}

static int __init scan_init(void)
{
	find_idle_task();
	if (!proc_create("kdbt_stackscan", 0600, NULL, &scan_ops))
		return -ENOMEM;
	return 0;
}

static void __exit scan_exit(void)
{
	remove_proc_entry("kdbt_stackscan", NULL);
}

module_init(scan_init);
module_exit(scan_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kdbt test: scan every kernel stack for addresses in given ranges");
