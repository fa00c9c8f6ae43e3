// SPDX-License-Identifier: GPL-2.0
/*
 * kdbt_cov: code whose executed blocks user space chooses, for the coverage
 * and count clients' tests (tests/vm/t-client_coverage.sh, t-client_count.sh).
 *
 * Writes to /proc/kdbt_cov (one command a write, serialized):
 *	branch V	V in 0..255: kdbt_cov_branch(V) calls kdbt_cov_arm<i>
 *			for each bit i set in V, lowest first
 *	loop K [MS]	K in 0..100000000: kdbt_cov_loop(K) calls
 *			kdbt_cov_body K times; after every 1024th call it
 *			sleeps MS (0..100) milliseconds, or with MS 0 or
 *			absent calls cond_resched() (so that a flush's
 *			stop_machine can run in the middle of a long loop;
 *			MS makes the loop last at least K / 1024 * MS ms
 *			however fast it runs)
 *	reset		zeroes the counters below
 * Anything else: EINVAL. Numbers in decimal or 0x hex.
 *
 * Reading prints the functions' call counters, one "<name> <calls>" line
 * each: arm0 .. arm7, body, branch, loop (the number of branch and loop
 * commands run), so the tests can check the native runs too. The tests read
 * between writes: no lock, each counter read once.
 *
 * Each function is its own symbol, called (never inlined, cloned or merged:
 * GCC's identical-code folding would otherwise give two arms one address),
 * with a body of its own: it adds a constant of its own to kdbt_cov_sink and
 * counts its call.
 */
#include <linux/kernel.h>
#include <linux/delay.h>
#include <linux/kstrtox.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/proc_fs.h>
#include <linux/sched.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#if defined(__GNUC__) && !defined(__clang__)
#define COV_FN static noinline __attribute__((__noipa__, __used__))
#else
#define COV_FN static noinline __attribute__((__used__))
#endif

#define COV_ARMS 8
#define COV_MAX_LOOP 100000000U
#define COV_MAX_PAUSE_MS 100U

static DEFINE_MUTEX(cov_lock);
static unsigned long cov_arm_calls[COV_ARMS];
static unsigned long cov_body_calls, cov_branch_calls, cov_loop_calls;
/* Never read for a result: what the arms and the body write keeps them distinct. */
static volatile unsigned long kdbt_cov_sink;

#define COV_ARM(i, c)					\
	COV_FN void kdbt_cov_arm##i(void)		\
	{						\
		kdbt_cov_sink += (c);			\
		WRITE_ONCE(cov_arm_calls[i], cov_arm_calls[i] + 1); \
	}
COV_ARM(0, 0x1001)
COV_ARM(1, 0x2003)
COV_ARM(2, 0x3005)
COV_ARM(3, 0x4007)
COV_ARM(4, 0x5009)
COV_ARM(5, 0x600b)
COV_ARM(6, 0x700d)
COV_ARM(7, 0x800f)

COV_FN void kdbt_cov_branch(unsigned int v)
{
	WRITE_ONCE(cov_branch_calls, cov_branch_calls + 1);
	if (v & 0x01)
		kdbt_cov_arm0();
	if (v & 0x02)
		kdbt_cov_arm1();
	if (v & 0x04)
		kdbt_cov_arm2();
	if (v & 0x08)
		kdbt_cov_arm3();
	if (v & 0x10)
		kdbt_cov_arm4();
	if (v & 0x20)
		kdbt_cov_arm5();
	if (v & 0x40)
		kdbt_cov_arm6();
	if (v & 0x80)
		kdbt_cov_arm7();
}

COV_FN void kdbt_cov_body(void)
{
	kdbt_cov_sink ^= 0x9e3779b9;
	WRITE_ONCE(cov_body_calls, cov_body_calls + 1);
}

COV_FN void kdbt_cov_loop(unsigned int k, unsigned int pause_ms)
{
	unsigned int i;

	WRITE_ONCE(cov_loop_calls, cov_loop_calls + 1);
	for (i = 0; i < k; i++) {
		kdbt_cov_body();
		/* Long loops let the stop_machine of a flush in (no preemption here). */
		if ((i & 1023) != 1023)
			continue;
		if (pause_ms)
			msleep(pause_ms);
		else
			cond_resched();
	}
}

static ssize_t cov_write(struct file *file, const char __user *ubuf, size_t len, loff_t *pos)
{
	char buf[64], *arg, *cmd, *arg2;
	unsigned int n, ms = 0;
	int err = -EINVAL;

	if (len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = 0;
	arg = strim(buf);
	cmd = strsep(&arg, " ");
	arg2 = arg ? strim(arg) : NULL;
	arg = arg2 ? strsep(&arg2, " ") : NULL;
	if (arg && kstrtouint(arg, 0, &n))
		return -EINVAL;
	if (arg2 && (strcmp(cmd, "loop") || kstrtouint(strim(arg2), 0, &ms) || ms > COV_MAX_PAUSE_MS))
		return -EINVAL;
	mutex_lock(&cov_lock);
	if (!strcmp(cmd, "branch") && arg && n < (1U << COV_ARMS)) {
		kdbt_cov_branch(n);
		err = 0;
	} else if (!strcmp(cmd, "loop") && arg && n <= COV_MAX_LOOP) {
		kdbt_cov_loop(n, ms);
		err = 0;
	} else if (!strcmp(cmd, "reset") && !arg) {
		memset(cov_arm_calls, 0, sizeof(cov_arm_calls));
		cov_body_calls = cov_branch_calls = cov_loop_calls = 0;
		err = 0;
	}
	mutex_unlock(&cov_lock);
	return err ? err : len;
}

static ssize_t cov_read(struct file *file, char __user *ubuf, size_t len, loff_t *pos)
{
	char buf[COV_ARMS * 32 + 96];
	int i, n = 0;

	for (i = 0; i < COV_ARMS; i++)
		n += scnprintf(buf + n, sizeof(buf) - n, "arm%d %lu\n", i, READ_ONCE(cov_arm_calls[i]));
	n += scnprintf(buf + n, sizeof(buf) - n, "body %lu\nbranch %lu\nloop %lu\n",
		       READ_ONCE(cov_body_calls), READ_ONCE(cov_branch_calls), READ_ONCE(cov_loop_calls));
	return simple_read_from_buffer(ubuf, len, pos, buf, n);
}

static const struct proc_ops cov_ops = {
	.proc_read = cov_read,
	.proc_write = cov_write,
	.proc_lseek = default_llseek,
};

static int cov_init(void)
{
	return proc_create("kdbt_cov", 0600, NULL, &cov_ops) ? 0 : -ENOMEM;
}

static void cov_exit(void)
{
	remove_proc_entry("kdbt_cov", NULL);
}

module_init(cov_init);
module_exit(cov_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kdbt test: branches and loop trips chosen from user space, for the coverage and count clients");
