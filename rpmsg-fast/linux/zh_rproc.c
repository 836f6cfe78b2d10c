// SPDX-License-Identifier: GPL-2.0
/*
 * zh_rproc: a remoteproc driver that attaches to a zerohop process as it would to
 * a remote core running OpenAMP firmware: through a standard resource table.
 *
 * The remote processor is already running (remoteproc's "attach" mode). It has
 * written a resource table (struct resource_table, with an RSC_VDEV entry for
 * virtio rpmsg) into BAR 2 of an ivshmem-plain device (1af4:1110), behind the
 * "ZHRT" header below. This driver hands that table, in place, to the remoteproc
 * core: the core allocates the vrings in guest RAM (which the device maps whole:
 * QEMU's shared memory-backend-file), writes their addresses into the table and
 * registers the virtio device that virtio_rpmsg_bus drives. Nobody interrupts:
 * a kernel thread polls the vrings (rproc_vq_interrupt) and the device polls the
 * avail rings, so kicks are only counted.
 *
 * ZHRT header (BAR 2 offset 0, little-endian):
 *    0 magic u32 "ZHRT" (device, last)    4 major u16, minor u16 (device)
 *    8 table_off u32 (device)            12 table_len u32 (device)
 *   16 reset_seq u32 (guest)             20 reset_ack u32 (device)
 *   24 heartbeat u32 (device)            28 kicks u32 (guest)
 *   32 reserved[32]
 * The resource table lies at table_off (8-aligned, after the header); the
 * remoteproc core parses it, this driver does not.
 *
 * Stopping (rproc_del() on unbind, or "stop" through sysfs): the core removes the
 * virtio device first (the virtio core resets it, status 0 in the table, then
 * sets ACKNOWLEDGE again: the device finds status 1, not 0), then calls the stop
 * op, which bumps reset_seq and waits for the device to acknowledge that it no
 * longer touches the vrings and has rewritten the table before the core frees
 * them. The rewrite matters: the core leaves the vring da it wrote in the table
 * (its own resets go to a copy), and would publish that stale da again on the
 * next attach (vring da must be back to FW_RSC_ADDR_ANY).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/io.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/remoteproc.h>
#include <linux/workqueue.h>

/*
 * rproc_vq_interrupt(), which in-tree remoteproc drivers get from here too: the
 * copy next to remoteproc.ko's sources in the build directory.
 */
#include "remoteproc_internal.h"

#define ZH_MAGIC 0x5452485aU /* "ZHRT" read as a little-endian u32 */
#define ZH_MAJOR 1
#define ZH_BAR 2

struct zh_rt {
	__le32 magic;
	__le16 major;
	__le16 minor;
	__le32 table_off;
	__le32 table_len;
	__le32 reset_seq;
	__le32 reset_ack;
	__le32 heartbeat;
	__le32 kicks;
	u8 reserved[32];
};

static_assert(offsetof(struct zh_rt, table_off) == 8);
static_assert(offsetof(struct zh_rt, reset_seq) == 16);
static_assert(offsetof(struct zh_rt, reset_ack) == 20);
static_assert(offsetof(struct zh_rt, kicks) == 28);
static_assert(sizeof(struct zh_rt) == 64);

static unsigned int poll_us = 20;
module_param(poll_us, uint, 0644);
MODULE_PARM_DESC(poll_us, "sleep between idle polls of the vrings (us)");

static unsigned int reset_timeout_ms = 1000;
module_param(reset_timeout_ms, uint, 0644);
MODULE_PARM_DESC(reset_timeout_ms, "how long a stop waits for the device to let go");

struct zh_rproc {
	struct rproc *rproc;
	struct pci_dev *pdev;
	struct zh_rt *rt;		/* BAR 2, mapped write-back */
	u32 table_off;
	u32 table_len;
	/* Runs the poller while the vrings exist; see zh_attach(). */
	struct rproc_subdev poll_subdev;
	bool poll_subdev_added;
	struct task_struct *poller;
	int max_notifyid;
};

static int zh_poll(void *data)
{
	struct zh_rproc *zh = data;

	while (!kthread_should_stop()) {
		bool busy = false;
		int id;

		/* IRQ_NONE for an id without a virtqueue (virtio driver not bound). */
		for (id = 0; id <= zh->max_notifyid; id++)
			if (rproc_vq_interrupt(zh->rproc, id) == IRQ_HANDLED)
				busy = true;
		if (busy)
			cond_resched();
		else
			usleep_range(poll_us, 2 * poll_us + 1);
	}
	return 0;
}

static void zh_stop_poller(struct zh_rproc *zh)
{
	if (zh->poller) {
		kthread_stop(zh->poller);
		zh->poller = NULL;
	}
}

/*
 * The poller's subdevice is added last (zh_attach), after the vdevs': the core
 * starts subdevices in order and stops them in reverse, so the poller starts once
 * the virtio device (and, with virtio_rpmsg_bus loaded, its vrings) exists and
 * stops before the virtio device and its virtqueues go away.
 */
static int zh_poll_start(struct rproc_subdev *subdev)
{
	struct zh_rproc *zh = container_of(subdev, struct zh_rproc, poll_subdev);
	struct task_struct *poller;

	/* Set by rproc_handle_resources(), before zh_attach(). */
	zh->max_notifyid = zh->rproc->max_notifyid;
	poller = kthread_run(zh_poll, zh, "zh_rproc/%s", pci_name(zh->pdev));
	if (IS_ERR(poller))
		return PTR_ERR(poller);
	zh->poller = poller;
	return 0;
}

static void zh_poll_stop(struct rproc_subdev *subdev, bool crashed)
{
	zh_stop_poller(container_of(subdev, struct zh_rproc, poll_subdev));
}

static int zh_attach(struct rproc *rproc)
{
	struct zh_rproc *zh = rproc->priv;

	/*
	 * Called under rproc->lock by __rproc_attach(), after the resources were
	 * handled (the vdev subdevices exist) and before the subdevices start. There
	 * is no .detach, so nothing attaches twice without zh_stop() in between.
	 */
	if (!zh->poll_subdev_added) {
		rproc_add_subdev(rproc, &zh->poll_subdev);
		zh->poll_subdev_added = true;
	}
	return 0;
}

/* The core never boots this processor (there is no firmware): attach only. */
static int zh_start(struct rproc *rproc)
{
	return -EOPNOTSUPP;
}

static int zh_stop(struct rproc *rproc)
{
	struct zh_rproc *zh = rproc->priv;
	struct zh_rt *rt = zh->rt;
	u32 seq = le32_to_cpu(READ_ONCE(rt->reset_seq)) + 1;
	unsigned long deadline = jiffies + msecs_to_jiffies(reset_timeout_ms);

	/* Stopped by zh_poll_stop() already, unless attaching failed midway. */
	zh_stop_poller(zh);
	if (zh->poll_subdev_added) {
		rproc_remove_subdev(rproc, &zh->poll_subdev);
		zh->poll_subdev_added = false;
	}
	/*
	 * Pairs with the device's Acquire load of reset_seq: the virtio core's last
	 * stores into the table (status 0, then ACKNOWLEDGE) are visible once it
	 * sees the new sequence.
	 */
	wmb();
	WRITE_ONCE(rt->reset_seq, cpu_to_le32(seq));
	/*
	 * The device acknowledges once it no longer touches the vrings and has
	 * rewritten the table: only then may the core free the vrings.
	 */
	while (le32_to_cpu(READ_ONCE(rt->reset_ack)) != seq) {
		if (time_after(jiffies, deadline)) {
			dev_warn(&zh->pdev->dev,
				 "device did not acknowledge reset %u in %u ms\n",
				 seq, reset_timeout_ms);
			break;
		}
		usleep_range(100, 200);
	}
	/*
	 * Pairs with the device's Release store of reset_ack. A full barrier: it
	 * orders the load of the ack before the core's stores into the vring memory
	 * it frees and reuses, not only before later loads.
	 */
	mb();
	return 0;
}

static void zh_kick(struct rproc *rproc, int vqid)
{
	struct zh_rproc *zh = rproc->priv;

	/* The device polls; the count is for the curious. */
	WRITE_ONCE(zh->rt->kicks,
		   cpu_to_le32(le32_to_cpu(READ_ONCE(zh->rt->kicks)) + 1));
}

/*
 * The table in place, not a copy: with no .detach op the core keeps no clean
 * copy, and its writes (vring da and notifyid, vdev status) reach the device.
 */
static struct resource_table *zh_get_loaded_rsc_table(struct rproc *rproc,
						      size_t *size)
{
	struct zh_rproc *zh = rproc->priv;

	*size = zh->table_len;
	return (struct resource_table *)((u8 *)zh->rt + zh->table_off);
}

static const struct rproc_ops zh_ops = {
	.start = zh_start,
	.stop = zh_stop,
	.attach = zh_attach,
	.kick = zh_kick,
	.get_loaded_rsc_table = zh_get_loaded_rsc_table,
};

static int zh_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	resource_size_t len = pci_resource_len(pdev, ZH_BAR);
	struct zh_rproc *zh;
	struct rproc *rproc;
	struct zh_rt *rt;
	u32 off, tlen;
	int err;

	err = pcim_enable_device(pdev);
	if (err)
		return err;
	if (len < sizeof(struct zh_rt) || len > U32_MAX)
		return -ENODEV;
	/*
	 * Write-back, not __iomem: the core stores into the table with memset and
	 * plain struct stores. The BAR is memory shared with the device process.
	 */
	rt = devm_memremap(&pdev->dev, pci_resource_start(pdev, ZH_BAR), len,
			   MEMREMAP_WB);
	if (IS_ERR(rt))
		return PTR_ERR(rt);
	if (le32_to_cpu(READ_ONCE(rt->magic)) != ZH_MAGIC) {
		dev_info(&pdev->dev, "no ZHRT block in BAR %d: not ours\n", ZH_BAR);
		return -ENODEV;
	}
	/* Pairs with the device's Release store of magic, after the rest. */
	rmb();
	if (le16_to_cpu(rt->major) != ZH_MAJOR) {
		dev_err(&pdev->dev, "ZHRT version %u.%u, this driver speaks %u.x\n",
			le16_to_cpu(rt->major), le16_to_cpu(rt->minor), ZH_MAJOR);
		return -ENODEV;
	}
	off = le32_to_cpu(rt->table_off);
	tlen = le32_to_cpu(rt->table_len);
	if (off < sizeof(*rt) || !IS_ALIGNED(off, 8) || off > len ||
	    tlen > len - off || tlen < sizeof(struct resource_table)) {
		dev_err(&pdev->dev, "ZHRT table at %u (%u bytes) does not fit BAR %d (%llu bytes)\n",
			off, tlen, ZH_BAR, (unsigned long long)len);
		return -ENODEV;
	}
	/* The table's vring da and pa fields are 32-bit. */
	err = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(32));
	if (err)
		return err;

	rproc = devm_rproc_alloc(&pdev->dev, "zh-rproc", &zh_ops, NULL, sizeof(*zh));
	if (!rproc)
		return -ENOMEM;
	zh = rproc->priv;
	zh->rproc = rproc;
	zh->pdev = pdev;
	zh->rt = rt;
	zh->table_off = off;
	zh->table_len = tlen;
	zh->poll_subdev.start = zh_poll_start;
	zh->poll_subdev.stop = zh_poll_stop;
	/* The remote runs already: rproc_add()'s auto boot attaches to it. */
	rproc->state = RPROC_DETACHED;
	rproc->auto_boot = true;
	pci_set_drvdata(pdev, zh);

	err = rproc_add(rproc);
	if (err)
		return err;
	/*
	 * rproc_add() attaches from a work item (rproc_trigger_auto_boot()), and
	 * rproc_del() does not wait for it: wait here, so that the attach is done,
	 * or has failed, when probe returns.
	 */
	flush_work(&rproc->attach_work);
	if (rproc->state != RPROC_ATTACHED) {
		dev_err(&pdev->dev, "attaching to the remote processor failed\n");
		rproc_del(rproc);
		return -ENODEV;
	}
	pr_info("attached to ZHRT table at BAR2+%u (%u bytes)\n", off, tlen);
	return 0;
}

static void zh_remove(struct pci_dev *pdev)
{
	struct zh_rproc *zh = pci_get_drvdata(pdev);

	/*
	 * Stops the subdevices in reverse (the poller, then the virtio device), then
	 * zh_stop(), then frees the vrings; devres frees the rproc afterwards.
	 */
	rproc_del(zh->rproc);
}

static const struct pci_device_id zh_ids[] = {
	{ PCI_DEVICE(0x1af4, 0x1110) }, /* ivshmem */
	{}
};
MODULE_DEVICE_TABLE(pci, zh_ids);

static struct pci_driver zh_driver = {
	.name = "zh_rproc",
	.id_table = zh_ids,
	.probe = zh_probe,
	.remove = zh_remove,
};
module_pci_driver(zh_driver);

MODULE_DESCRIPTION("remoteproc attach to a zerohop resource table in an ivshmem BAR");
MODULE_LICENSE("GPL");
