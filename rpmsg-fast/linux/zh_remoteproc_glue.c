// SPDX-License-Identifier: GPL-2.0
/*
 * remoteproc.ko for the CI guest: Linux' remoteproc core built as a module.
 *
 * Debian's kernel is built without CONFIG_REMOTEPROC, and in-tree that option is a
 * bool: drivers/remoteproc is meant to be built in, never a module. zh_rproc needs
 * it in the CI guest, so remoteproc_core.c, remoteproc_virtio.c and their helpers
 * (copied unmodified from Debian's linux-source package) are linked into one
 * remoteproc.ko, compiled with -DCONFIG_REMOTEPROC_MODULE=1 so <linux/remoteproc.h>
 * and the rest declare what a modular build would.
 *
 * Each of the two files has an initcall, which in a module becomes init_module();
 * the Kbuild renames them (-Dinit_module=rproc_core_init_module, and
 * rproc_virtio_init_module for remoteproc_virtio.c) and this file is the module's
 * only entry point, calling both. The core's module_exit() is renamed away as
 * well (-Dcleanup_module=rproc_core_cleanup_module) and never called:
 * remoteproc_virtio.c registers its platform driver with builtin_platform_driver(),
 * which has no exit, so the whole module has no module_exit() and cannot be
 * unloaded, just as if it were built in.
 */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

/*
 * remoteproc_core.c's remoteproc_init() and remoteproc_virtio.c's
 * rproc_virtio_driver_init(), as the Kbuild renames them (no header declares them).
 */
int rproc_core_init_module(void), rproc_virtio_init_module(void);

static int __init zh_remoteproc_init(void)
{
	int ret = rproc_core_init_module();

	if (ret)
		return ret;
	ret = rproc_virtio_init_module();
	if (ret) {
		/*
		 * The core's registrations (class, debugfs, panic notifier) have no
		 * undo outside its discarded exit: keep the module loaded, without
		 * virtio devices for remote processors.
		 */
		pr_err("remoteproc: rproc-virtio platform driver not registered (%d): remote processors get no virtio devices\n",
		       ret);
	}
	return 0;
}
module_init(zh_remoteproc_init);
