// SPDX-License-Identifier: GPL-2.0
/*
 * kdbt_edge: /proc/kdbt_edge holds a number (write it in decimal); reading
 * the file prints "<value> <kdbt_edge_fn(value)>". kdbt_edge_fn (edge_fn.S)
 * is the last code of the module, ending at the last byte of the module's
 * text mapping: the page after it is vmalloc's guard page, unmapped.
 *
 * No __init/__exit: every function of this file stays in .text, before
 * .text.kdbt_edge.
 */
#include <linux/kernel.h>
#include <linux/kstrtox.h>
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/uaccess.h>

unsigned long kdbt_edge_fn(unsigned long x);

static unsigned long edge_value;

static ssize_t edge_read(struct file *file, char __user *ubuf, size_t len, loff_t *pos)
{
	char buf[64];
	unsigned long v = READ_ONCE(edge_value);
	int n = scnprintf(buf, sizeof(buf), "%lu %lu\n", v, kdbt_edge_fn(v));

	return simple_read_from_buffer(ubuf, len, pos, buf, n);
}

static ssize_t edge_write(struct file *file, const char __user *ubuf, size_t len, loff_t *pos)
{
	unsigned long v;
	int err = kstrtoul_from_user(ubuf, len, 10, &v);

	if (err)
		return err;
	WRITE_ONCE(edge_value, v);
	return len;
}

static const struct proc_ops edge_ops = {
	.proc_read = edge_read,
	.proc_write = edge_write,
	.proc_lseek = default_llseek,
};

static int kdbt_edge_init(void)
{
	return proc_create("kdbt_edge", 0666, NULL, &edge_ops) ? 0 : -ENOMEM;
}

static void kdbt_edge_exit(void)
{
	remove_proc_entry("kdbt_edge", NULL);
}

module_init(kdbt_edge_init);
module_exit(kdbt_edge_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kdbt test: code ending at the end of its text mapping");
