/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kdbt_reuse_a / kdbt_reuse_b: one source built twice (VARIANT 'A' or 'B'),
 * two modules with the same code and data layout and different constants.
 * Reading /proc/kdbt_reuse prints
 *	variant <V> (<tag>) value <reuse_compute(reuse_input)>
 * where V and reuse_compute's multiplier and addend are immediates in the
 * code and the tag is a string in .rodata: B loaded where A was and run from
 * A's translations prints A's letter and value (and B's tag, or faults on
 * A's freed data). Only one of the two can be loaded at a time (same /proc
 * name).
 *
 * No __init/__exit: every function stays in .text, and no init sections are
 * freed after loading (which would change where the next module lands).
 */
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/uaccess.h>

#if VARIANT == 'A'
#define REUSE_MUL 0x2545f491UL
#define REUSE_ADD 0x1b873593UL
#define REUSE_TAG "first"
#else
#define REUSE_MUL 0x5bd1e995UL
#define REUSE_ADD 0x6b43a9b5UL
#define REUSE_TAG "other"
#endif

/* Data, so that the computation is not folded at compile time. */
static unsigned long reuse_input = 12345;

static noinline unsigned long reuse_compute(unsigned long x)
{
	int i;

	for (i = 0; i < 16; i++) {
		x = x * REUSE_MUL + REUSE_ADD;
		x ^= x >> 29;
	}
	return x;
}

static ssize_t reuse_read(struct file *file, char __user *ubuf, size_t len, loff_t *pos)
{
	char buf[80];
	int n = scnprintf(buf, sizeof(buf), "variant %c (%s) value %lu\n", VARIANT, REUSE_TAG,
			  reuse_compute(READ_ONCE(reuse_input)));

	return simple_read_from_buffer(ubuf, len, pos, buf, n);
}

static const struct proc_ops reuse_ops = {
	.proc_read = reuse_read,
	.proc_lseek = default_llseek,
};

static int reuse_init(void)
{
	return proc_create("kdbt_reuse", 0444, NULL, &reuse_ops) ? 0 : -ENOMEM;
}

static void reuse_exit(void)
{
	remove_proc_entry("kdbt_reuse", NULL);
}

module_init(reuse_init);
module_exit(reuse_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kdbt test: module text reused at the same address (one of two variants)");
