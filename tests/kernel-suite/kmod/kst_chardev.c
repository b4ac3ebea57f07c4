// SPDX-License-Identifier: GPL-2.0
/*
 * kst_chardev: the kernel suite's out-of-tree module. A misc character device,
 * /dev/kst_chardev, whose ioctl KST_IOC_ADD adds the module parameter `step` to the value it
 * is given; `step` is visible (and writable) in /sys/module/kst_chardev/parameters/. With
 * `warn_on_ioctl=1` the ioctl also takes a deliberate WARN path, for the harness to report.
 */
#include <linux/bug.h>
#include <linux/fs.h>
#include <linux/ioctl.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/uaccess.h>

#define KST_IOC_ADD _IOWR('k', 1, __u64)

static unsigned int step = 1;
module_param(step, uint, 0644);
MODULE_PARM_DESC(step, "what KST_IOC_ADD adds");

static bool warn_on_ioctl;
module_param(warn_on_ioctl, bool, 0644);
MODULE_PARM_DESC(warn_on_ioctl, "take a deliberate WARN path in the ioctl");

static long kst_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	__u64 value;

	if (cmd != KST_IOC_ADD)
		return -ENOTTY;
	if (copy_from_user(&value, (void __user *)arg, sizeof(value)))
		return -EFAULT;
	WARN(warn_on_ioctl, "kst_chardev: deliberate warning, value %llu\n", value);
	value += step;
	if (copy_to_user((void __user *)arg, &value, sizeof(value)))
		return -EFAULT;
	return 0;
}

static const struct file_operations kst_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = kst_ioctl,
};

static struct miscdevice kst_device = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "kst_chardev",
	.fops = &kst_fops,
};

static int __init kst_init(void)
{
	return misc_register(&kst_device);
}

static void __exit kst_exit(void)
{
	misc_deregister(&kst_device);
}

module_init(kst_init);
module_exit(kst_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmtest kernel suite: an out-of-tree character device");
