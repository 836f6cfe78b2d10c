// SPDX-License-Identifier: GPL-2.0
/*
 * zh_virtio: a virtio transport whose control block sits in a PCI BAR shared with a
 * poll-mode zerohop device (the "ZHVQ" block of rings::vq_window) and whose
 * virtqueues and buffers live in ordinary guest RAM, which the device maps whole
 * (QEMU: a shared memory-backend-file; the vhost-user memory model).
 *
 * It lets Linux' own virtio drivers, virtio_rpmsg_bus above all, talk to zerohop with
 * no device model in the hypervisor: the guest binds this driver to an ivshmem-plain
 * device (1af4:1110) whose BAR 2 starts with the control block, registers a virtio
 * device of the id the block names, and publishes the guest-physical addresses of
 * each virtqueue there. The device never interrupts: a kernel thread polls the
 * virtqueues (vring_interrupt) and the device polls the avail rings, so neither side
 * notifies the other.
 *
 * Control block (little-endian, offsets pinned by rings::vq_window's asserts):
 *    0 magic u32 "ZHVQ" (device, last)    4 major u16, minor u16 (device)
 *    8 device_id u32 (device)            12 num_queues u32 (device)
 *   16 device_features u64 (device)      24 driver_features u64 (guest)
 *   32 status u32 (guest)                36 queue_size u32 (device)
 *   40 reset_seq u32 (guest)             44 reset_ack u32 (device)
 *   48 heartbeat u32 (device)            52 kicks u32 (guest)
 *   56 reserved u64
 *   64 queues[8] { desc u64, avail u64, used u64, num u32, ready u32 } (guest;
 *      packed rings: avail / used are the driver / device event structures)
 */
#include <linux/delay.h>
#include <linux/io.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>

#define ZH_MAGIC 0x5156485aU /* "ZHVQ" read as a little-endian u32 */
#define ZH_MAJOR 1
#define ZH_MAX_QUEUES 8
#define ZH_BAR 2

struct zh_queue_regs {
	__le64 desc;
	__le64 avail;
	__le64 used;
	__le32 num;
	__le32 ready;
};

struct zh_ctl {
	__le32 magic;
	__le16 major;
	__le16 minor;
	__le32 device_id;
	__le32 num_queues;
	__le64 device_features;
	__le64 driver_features;
	__le32 status;
	__le32 queue_size;
	__le32 reset_seq;
	__le32 reset_ack;
	__le32 heartbeat;
	__le32 kicks;
	__le64 reserved;
	struct zh_queue_regs q[ZH_MAX_QUEUES];
};

static_assert(offsetof(struct zh_ctl, status) == 32);
static_assert(offsetof(struct zh_ctl, reset_ack) == 44);
static_assert(offsetof(struct zh_ctl, q) == 64);
static_assert(sizeof(struct zh_queue_regs) == 32);
static_assert(sizeof(struct zh_ctl) == 320);

static unsigned int poll_us = 20;
module_param(poll_us, uint, 0644);
MODULE_PARM_DESC(poll_us, "sleep between idle polls of the virtqueues (us)");

static unsigned int reset_timeout_ms = 1000;
module_param(reset_timeout_ms, uint, 0644);
MODULE_PARM_DESC(reset_timeout_ms, "how long a reset waits for the device to let go");

struct zh_vdev {
	struct virtio_device vdev;
	struct pci_dev *pdev;
	struct zh_ctl __iomem *ctl;
	struct virtqueue *vqs[ZH_MAX_QUEUES];
	unsigned int nvqs;
	struct task_struct *poller;
};

static struct zh_vdev *to_zh(struct virtio_device *vdev)
{
	return container_of(vdev, struct zh_vdev, vdev);
}

/* rpmsg and the other users here have no device config space. */
static void zh_get(struct virtio_device *vdev, unsigned int off, void *buf,
		   unsigned int len)
{
	memset(buf, 0, len);
}

static void zh_set(struct virtio_device *vdev, unsigned int off, const void *buf,
		   unsigned int len)
{
}

static u8 zh_get_status(struct virtio_device *vdev)
{
	return ioread32(&to_zh(vdev)->ctl->status) & 0xff;
}

static void zh_set_status(struct virtio_device *vdev, u8 status)
{
	/*
	 * Pairs with the device's Acquire load of status (Zhvq::status): what was
	 * written before (features, queue registers) is visible once it sees it.
	 */
	wmb();
	iowrite32(status, &to_zh(vdev)->ctl->status);
}

static void zh_stop_poller(struct zh_vdev *zh)
{
	if (zh->poller) {
		kthread_stop(zh->poller);
		zh->poller = NULL;
	}
}

static void zh_reset(struct virtio_device *vdev)
{
	struct zh_vdev *zh = to_zh(vdev);
	u32 seq = ioread32(&zh->ctl->reset_seq) + 1;
	unsigned long deadline = jiffies + msecs_to_jiffies(reset_timeout_ms);

	/* No callback runs after a reset (the next find_vqs starts a new poller). */
	zh_stop_poller(zh);
	iowrite32(seq, &zh->ctl->reset_seq);
	/* Pairs with the device's Acquire load of reset_seq (Zhvq::pending_reset). */
	wmb();
	iowrite32(0, &zh->ctl->status);
	/*
	 * The device acknowledges once it no longer touches the rings or buffers: only
	 * then may the guest free them.
	 */
	while (ioread32(&zh->ctl->reset_ack) != seq) {
		if (time_after(jiffies, deadline)) {
			dev_warn(&zh->pdev->dev,
				 "device did not acknowledge reset %u in %u ms\n",
				 seq, reset_timeout_ms);
			break;
		}
		usleep_range(100, 200);
	}
	/* Pairs with the device's Release store of reset_ack (Zhvq::ack_reset). */
	rmb();
}

static u64 zh_get_features(struct virtio_device *vdev)
{
	struct zh_ctl __iomem *ctl = to_zh(vdev)->ctl;

	return ioread32(&ctl->device_features) |
	       ((u64)ioread32((u8 __iomem *)&ctl->device_features + 4) << 32);
}

static int zh_finalize_features(struct virtio_device *vdev)
{
	struct zh_ctl __iomem *ctl = to_zh(vdev)->ctl;

	vring_transport_features(vdev);
	/* Guest RAM is addressed physically: no IOMMU. */
	__virtio_clear_bit(vdev, VIRTIO_F_ACCESS_PLATFORM);
	iowrite32((u32)vdev->features, &ctl->driver_features);
	iowrite32((u32)(vdev->features >> 32),
		  (u8 __iomem *)&ctl->driver_features + 4);
	return 0;
}

static bool zh_notify(struct virtqueue *vq)
{
	struct zh_vdev *zh = to_zh(vq->vdev);

	/* The device polls; the count is for the curious. */
	iowrite32(ioread32(&zh->ctl->kicks) + 1, &zh->ctl->kicks);
	return true;
}

static int zh_poll(void *data)
{
	struct zh_vdev *zh = data;

	while (!kthread_should_stop()) {
		bool busy = false;
		unsigned int i;

		for (i = 0; i < zh->nvqs; i++)
			if (zh->vqs[i] && vring_interrupt(0, zh->vqs[i]) == IRQ_HANDLED)
				busy = true;
		if (busy)
			cond_resched();
		else
			usleep_range(poll_us, 2 * poll_us + 1);
	}
	return 0;
}

static void zh_del_vqs(struct virtio_device *vdev)
{
	struct zh_vdev *zh = to_zh(vdev);
	unsigned int i;

	zh_stop_poller(zh);
	for (i = 0; i < zh->nvqs; i++) {
		iowrite32(0, &zh->ctl->q[i].ready);
		if (zh->vqs[i])
			vring_del_virtqueue(zh->vqs[i]);
		zh->vqs[i] = NULL;
	}
	zh->nvqs = 0;
}

static int zh_find_vqs(struct virtio_device *vdev, unsigned int nvqs,
		       struct virtqueue *vqs[], vq_callback_t *callbacks[],
		       const char * const names[], const bool *ctx,
		       struct irq_affinity *desc)
{
	struct zh_vdev *zh = to_zh(vdev);
	u32 num = ioread32(&zh->ctl->queue_size);
	unsigned int i;

	if (nvqs > ioread32(&zh->ctl->num_queues) || nvqs > ZH_MAX_QUEUES)
		return -EINVAL;
	if (!is_power_of_2(num) || num > 32768)
		return -EINVAL;
	zh->nvqs = nvqs;
	for (i = 0; i < nvqs; i++) {
		struct virtqueue *vq;

		if (!names[i]) {
			vqs[i] = NULL;
			continue;
		}
		/*
		 * Split: used ring aligned to 4, the virtio 1.x minimum, so desc, avail and
		 * used are contiguous as in rings::split::SplitLayout. Packed (when the
		 * device offers VIRTIO_F_RING_PACKED): avail and used below are the driver
		 * and device event structures, allocated apart from the descriptors.
		 */
		vq = vring_create_virtqueue(i, num, 4, vdev, true, false,
					    ctx ? ctx[i] : false, zh_notify,
					    callbacks[i], names[i]);
		if (!vq) {
			zh_del_vqs(vdev);
			return -ENOMEM;
		}
		zh->vqs[i] = vq;
		vqs[i] = vq;
		iowrite32(virtqueue_get_desc_addr(vq), &zh->ctl->q[i].desc);
		iowrite32(virtqueue_get_desc_addr(vq) >> 32,
			  (u8 __iomem *)&zh->ctl->q[i].desc + 4);
		iowrite32(virtqueue_get_avail_addr(vq), &zh->ctl->q[i].avail);
		iowrite32(virtqueue_get_avail_addr(vq) >> 32,
			  (u8 __iomem *)&zh->ctl->q[i].avail + 4);
		iowrite32(virtqueue_get_used_addr(vq), &zh->ctl->q[i].used);
		iowrite32(virtqueue_get_used_addr(vq) >> 32,
			  (u8 __iomem *)&zh->ctl->q[i].used + 4);
		iowrite32(virtqueue_get_vring_size(vq), &zh->ctl->q[i].num);
		/* Pairs with the device's Acquire load of ready (Zhvq::queue). */
		wmb();
		iowrite32(1, &zh->ctl->q[i].ready);
	}
	zh->poller = kthread_run(zh_poll, zh, "zh_virtio/%s", pci_name(zh->pdev));
	if (IS_ERR(zh->poller)) {
		int err = PTR_ERR(zh->poller);

		zh->poller = NULL;
		zh_del_vqs(vdev);
		return err;
	}
	return 0;
}

static const char *zh_bus_name(struct virtio_device *vdev)
{
	return pci_name(to_zh(vdev)->pdev);
}

static const struct virtio_config_ops zh_config_ops = {
	.get = zh_get,
	.set = zh_set,
	.get_status = zh_get_status,
	.set_status = zh_set_status,
	.reset = zh_reset,
	.find_vqs = zh_find_vqs,
	.del_vqs = zh_del_vqs,
	.get_features = zh_get_features,
	.finalize_features = zh_finalize_features,
	.bus_name = zh_bus_name,
};

static void zh_release(struct device *dev)
{
	struct virtio_device *vdev = dev_to_virtio(dev);

	kfree(to_zh(vdev));
}

static int zh_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct zh_ctl __iomem *ctl;
	struct zh_vdev *zh;
	int err;

	err = pcim_enable_device(pdev);
	if (err)
		return err;
	if (pci_resource_len(pdev, ZH_BAR) < sizeof(struct zh_ctl))
		return -ENODEV;
	ctl = pcim_iomap(pdev, ZH_BAR, sizeof(struct zh_ctl));
	if (!ctl)
		return -ENOMEM;
	if (ioread32(&ctl->magic) != ZH_MAGIC) {
		dev_info(&pdev->dev, "no ZHVQ block in BAR %d: not ours\n", ZH_BAR);
		return -ENODEV;
	}
	if (ioread16(&ctl->major) != ZH_MAJOR) {
		dev_err(&pdev->dev, "ZHVQ version %u.%u, this driver speaks %u.x\n",
			ioread16(&ctl->major), ioread16(&ctl->minor), ZH_MAJOR);
		return -ENODEV;
	}
	zh = kzalloc(sizeof(*zh), GFP_KERNEL);
	if (!zh)
		return -ENOMEM;
	zh->pdev = pdev;
	zh->ctl = ctl;
	zh->vdev.dev.parent = &pdev->dev;
	zh->vdev.dev.release = zh_release;
	zh->vdev.config = &zh_config_ops;
	zh->vdev.id.device = ioread32(&ctl->device_id);
	zh->vdev.id.vendor = 0x5a48;
	pci_set_master(pdev);
	pci_set_drvdata(pdev, zh);
	dev_info(&pdev->dev, "ZHVQ %u.%u: virtio device %u, %u queues of %u\n",
		 ioread16(&ctl->major), ioread16(&ctl->minor), zh->vdev.id.device,
		 ioread32(&ctl->num_queues), ioread32(&ctl->queue_size));
	err = register_virtio_device(&zh->vdev);
	if (err) {
		put_device(&zh->vdev.dev);
		return err;
	}
	return 0;
}

static void zh_remove(struct pci_dev *pdev)
{
	struct zh_vdev *zh = pci_get_drvdata(pdev);

	unregister_virtio_device(&zh->vdev);
}

static const struct pci_device_id zh_ids[] = {
	{ PCI_DEVICE(0x1af4, 0x1110) }, /* ivshmem */
	{}
};
MODULE_DEVICE_TABLE(pci, zh_ids);

static struct pci_driver zh_driver = {
	.name = "zh_virtio",
	.id_table = zh_ids,
	.probe = zh_probe,
	.remove = zh_remove,
};
module_pci_driver(zh_driver);

MODULE_DESCRIPTION("virtio transport over a zerohop ZHVQ control block (guest RAM rings)");
MODULE_LICENSE("GPL");
