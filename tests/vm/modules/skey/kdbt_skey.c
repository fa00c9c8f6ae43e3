// SPDX-License-Identifier: GPL-2.0
/*
 * kdbt_skey: a static key (DEFINE_STATIC_KEY_FALSE) whose branch site is
 * patched while other CPUs run it.
 *
 * Writing "1" or "0" to /proc/kdbt_skey enables or disables the key
 * (static_branch_enable/disable: the kernel rewrites the jump in
 * skey_branch). A write that changes the state increments a sequence
 * counter before and after the flip, under a mutex: the counter is odd while
 * a flip is in progress, and when it is even the key is enabled exactly when
 * (counter / 2) % 2 == 1. A write of the current state changes nothing.
 *
 * Reading prints "<branch> <seq before> <seq after>": the branch the code
 * took (1: the static_branch_unlikely path), with the counter read before
 * and after running the branch. A read with equal, even counters ran
 * entirely between two flips and must show the state of that interval.
 */
#include <linux/jump_label.h>
#include <linux/kernel.h>
#include <linux/kstrtox.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/proc_fs.h>
#include <linux/uaccess.h>

static DEFINE_STATIC_KEY_FALSE(kdbt_skey);
static DEFINE_MUTEX(skey_lock);
static unsigned long skey_seq;

static noinline int skey_branch(void)
{
	if (static_branch_unlikely(&kdbt_skey))
		return 1;
	return 0;
}

static ssize_t skey_read(struct file *file, char __user *ubuf, size_t len, loff_t *pos)
{
	char buf[64];
	unsigned long before, after;
	int branch, n;

	before = READ_ONCE(skey_seq);
	smp_mb();
	branch = skey_branch();
	smp_mb();
	after = READ_ONCE(skey_seq);
	n = scnprintf(buf, sizeof(buf), "%d %lu %lu\n", branch, before, after);
	return simple_read_from_buffer(ubuf, len, pos, buf, n);
}

static ssize_t skey_write(struct file *file, const char __user *ubuf, size_t len, loff_t *pos)
{
	bool on;
	int err = kstrtobool_from_user(ubuf, len, &on);

	if (err)
		return err;
	mutex_lock(&skey_lock);
	if (static_key_enabled(&kdbt_skey) != on) {
		WRITE_ONCE(skey_seq, skey_seq + 1);
		smp_mb();
		if (on)
			static_branch_enable(&kdbt_skey);
		else
			static_branch_disable(&kdbt_skey);
		smp_mb();
		WRITE_ONCE(skey_seq, skey_seq + 1);
	}
	mutex_unlock(&skey_lock);
	return len;
}

static const struct proc_ops skey_ops = {
	.proc_read = skey_read,
	.proc_write = skey_write,
	.proc_lseek = default_llseek,
};

static int skey_init(void)
{
	return proc_create("kdbt_skey", 0666, NULL, &skey_ops) ? 0 : -ENOMEM;
}

static void skey_exit(void)
{
	remove_proc_entry("kdbt_skey", NULL);
}

module_init(skey_init);
module_exit(skey_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kdbt test: a static key flipped while other CPUs run its branch");
