// SPDX-License-Identifier: GPL-2.0
/*
 * kdbt_kprobe: one kprobe, armed and disarmed through /proc/kdbt_kprobe.
 *
 * Writes:
 *	arm SYMBOL[+OFFSET]	register a kprobe at SYMBOL+OFFSET (OFFSET in
 *				decimal or 0x hex) whose pre_handler counts
 *				hits; the count starts at 0 (EBUSY if armed,
 *				register_kprobe's error if refused)
 *	disarm			unregister it (EINVAL if not armed); the count
 *				stays readable
 * Reading prints "hits <N> armed <SYMBOL>+<OFFSET>" or "hits <N> disarmed".
 * At SYMBOL+0 after the fentry call the kernel makes an ftrace-based probe;
 * further in, an int3 probe that the optimizer later turns into a jump
 * (/sys/kernel/debug/kprobes/list shows which).
 */
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/kstrtox.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/proc_fs.h>
#include <linux/string.h>
#include <linux/uaccess.h>

static struct kprobe kp;
static bool kp_armed;
static char kp_symbol[KSYM_NAME_LEN];
static atomic_long_t kp_hits;
static DEFINE_MUTEX(kp_lock);

static int kp_pre(struct kprobe *p, struct pt_regs *regs)
{
	atomic_long_inc(&kp_hits);
	return 0;
}

static int kp_arm(char *target)
{
	char *plus = strchr(target, '+');
	unsigned int offset = 0;
	int err;

	if (plus) {
		*plus++ = 0;
		err = kstrtouint(plus, 0, &offset);
		if (err)
			return err;
	}
	if (!*target)
		return -EINVAL;
	if (kp_armed)
		return -EBUSY;
	strscpy(kp_symbol, target, sizeof(kp_symbol));
	memset(&kp, 0, sizeof(kp));
	kp.symbol_name = kp_symbol;
	kp.offset = offset;
	kp.pre_handler = kp_pre;
	atomic_long_set(&kp_hits, 0);
	err = register_kprobe(&kp);
	if (err)
		return err;
	kp_armed = true;
	return 0;
}

static ssize_t kp_write(struct file *file, const char __user *ubuf, size_t len, loff_t *pos)
{
	char buf[KSYM_NAME_LEN + 32], *arg, *cmd;
	int err = -EINVAL;

	if (len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = 0;
	arg = strim(buf);
	cmd = strsep(&arg, " ");
	mutex_lock(&kp_lock);
	if (!strcmp(cmd, "arm") && arg) {
		err = kp_arm(strim(arg));
	} else if (!strcmp(cmd, "disarm") && !arg && kp_armed) {
		unregister_kprobe(&kp);
		kp_armed = false;
		err = 0;
	}
	mutex_unlock(&kp_lock);
	return err ? err : len;
}

static ssize_t kp_read(struct file *file, char __user *ubuf, size_t len, loff_t *pos)
{
	char buf[KSYM_NAME_LEN + 64];
	int n;

	mutex_lock(&kp_lock);
	if (kp_armed)
		n = scnprintf(buf, sizeof(buf), "hits %ld armed %s+%u at 0x%lx\n",
			      atomic_long_read(&kp_hits), kp_symbol, kp.offset,
			      (unsigned long)kp.addr);
	else
		n = scnprintf(buf, sizeof(buf), "hits %ld disarmed\n", atomic_long_read(&kp_hits));
	mutex_unlock(&kp_lock);
	return simple_read_from_buffer(ubuf, len, pos, buf, n);
}

static const struct proc_ops kp_ops = {
	.proc_read = kp_read,
	.proc_write = kp_write,
	.proc_lseek = default_llseek,
};

static int kp_init(void)
{
	return proc_create("kdbt_kprobe", 0600, NULL, &kp_ops) ? 0 : -ENOMEM;
}

static void kp_exit(void)
{
	remove_proc_entry("kdbt_kprobe", NULL);
	if (kp_armed)
		unregister_kprobe(&kp);
}

module_init(kp_init);
module_exit(kp_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kdbt test: a kprobe armed and disarmed from user space");
