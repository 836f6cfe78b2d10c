//! [`GuestDevice`]: a zerohop poll-mode virtio *device* for a Linux guest's own virtio
//! drivers, over the guest's RAM (the vhost-user memory model, without vhost-user's
//! socket: the registers are the [`rings::zhvq`] block in shared memory).
//!
//! ```text
//!  QEMU guest                                      host process (this module)
//!  RAM  = memory-backend-file,share=on  =========  ram file, mapped whole: guest
//!         (virtqueues + buffers, by the guest's    physical address = file offset
//!          virtio driver, e.g. virtio_rpmsg_bus)
//!  BAR2 = ivshmem-plain (zh_virtio binds) =======  control file: the ZHVQ block
//! ```
//!
//! The device creates both files (exclusively, mode 0600) and writes the block before
//! the guest boots; the guest's `zh_virtio` driver (rpmsg-fast/linux) registers a
//! virtio device of the block's id, and once its driver sets DRIVER_OK,
//! [`GuestDevice::poll`] reports [`GuestEvent::Up`] and [`GuestDevice::rings`] turns
//! the queue registers into [`VirtioAreas`] (split) or device halves (packed, when the
//! guest accepted `VIRTIO_F_RING_PACKED`) for a [`crate::queue::VirtioBackend`].
//! Queue `2k` is the pair's receive queue (device -> guest: `VirtioAreas::rx_ring`),
//! `2k + 1` its transmit queue (guest -> device), the virtio-net / rpmsg order.
//!
//! The registers can instead be a remoteproc resource table ([`Transport::Rproc`],
//! the [`rings::rproc`] ZHRT block): the guest's `zh_rproc` driver hands it to Linux's
//! remoteproc core, which attaches as to a running remote processor and writes the
//! vring addresses into it. Same RAM file, same checks; split rings only (remoteproc
//! speaks legacy virtio, 32 feature bits) and one queue pair.
//!
//! Every register is guest-written and checked: a split ring must be exactly where
//! `rings::split::SplitLayout` puts desc/avail/used (the driver creates it with used
//! alignment 4), a packed ring's three parts aligned and apart
//! (`rings::packed::PackedLayout::at`); both inside the RAM file, of the offered size.
//! Descriptors are then checked against the RAM size by the device halves. A bad
//! register is a typed [`GuestError`]; the device stays down until the guest resets it.

use std::path::{Path, PathBuf};

use rings::control::status;
use rings::features::VIRTIO_F_RING_PACKED;
use rings::packed::{PackedDevice, PackedLayout};
use rings::rproc::{Rproc, VdevInfo};
use rings::split::SplitLayout;
use rings::zhvq::{self, DeviceInfo, GuestRegs, QueueRegs, Zhvq};
use rings::{MemError, Region};

use crate::queue::VirtioAreas;
use crate::window::{ShmWindow, Window, WindowError};

/// Settings of a [`GuestDevice`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestConfig {
    /// The file QEMU maps as guest RAM (`-object memory-backend-file,mem-path=...`).
    pub ram: PathBuf,
    /// Bytes of guest RAM (QEMU's `-m`; at most 2 GiB so that guest-physical
    /// addresses are file offsets below the PCI hole).
    pub ram_size: usize,
    /// The file behind the guest's ivshmem BAR 2 (the ZHVQ block at offset 0).
    pub control: PathBuf,
    /// Bytes of the control file (QEMU wants a power of two; 4 KiB ..= 64 MiB).
    pub control_size: usize,
    /// What the device offers.
    pub device_id: u32,
    /// Offered feature bits.
    pub features: u64,
    /// Bits the guest must accept (the device refuses to start otherwise).
    pub required: u64,
    /// Queue pairs (two virtqueues each).
    pub queue_pairs: u16,
    /// Entries per virtqueue (a power of two).
    pub queue_size: u16,
    /// The register block in the control file.
    pub transport: Transport,
}

/// The register block a [`GuestDevice`] writes into its control file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// The [`rings::zhvq`] block, for the guest's `zh_virtio` transport.
    #[default]
    Zhvq,
    /// The [`rings::rproc`] resource table, for the guest's `zh_rproc` driver and
    /// Linux's remoteproc core (one queue pair, split rings, 32 feature bits).
    Rproc,
}

/// Largest guest RAM mapped one to one (QEMU's pc/q35 machines put RAM above this
/// above 4 GiB, where addresses are no longer file offsets).
pub const MAX_RAM: usize = 2 << 30;

/// Largest control file (the block needs 320 bytes; QEMU maps the whole file as BAR 2).
pub const MAX_CONTROL: usize = 64 << 20;

/// What went wrong with the guest or its files.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// Creating or mapping a file.
    #[error(transparent)]
    Window(#[from] WindowError),
    /// A settings value out of range.
    #[error("guest device: {what} ({value})")]
    Config {
        /// What is wrong.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// The control block could not be read or written (a bug: it is checked at
    /// creation).
    #[error("guest control block: {0}")]
    Mem(#[from] MemError),
    /// The guest accepted features the device did not offer, or refused required ones.
    #[error("guest accepted features {accepted:#x}: offered {offered:#x}, required {required:#x}")]
    Features {
        /// What the guest wrote.
        accepted: u64,
        /// What the device offered.
        offered: u64,
        /// What the device requires.
        required: u64,
    },
    /// A queue's registers do not describe a usable split ring.
    #[error("guest queue {queue}: {what} ({value:#x})")]
    Queue {
        /// Virtqueue index.
        queue: usize,
        /// What is wrong.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
}

/// The rings of one queue pair, by the format the guest accepted.
#[allow(clippy::large_enum_variant)] // made once per guest Up and moved into a queue pair
pub enum GuestRings {
    /// Split rings: each ring's three parts are contiguous (the guest driver uses used
    /// alignment 4), so the areas of a [`crate::queue::VirtioBackend::new`].
    Split(VirtioAreas<Region>),
    /// Packed rings (`VIRTIO_F_RING_PACKED` accepted): Linux allocates each ring's
    /// descriptors and two event structures separately, so these are device halves
    /// over all of guest RAM for [`crate::queue::VirtioBackend::from_halves`].
    Packed {
        /// The guest's transmit ring (we receive from it).
        rx: PackedDevice<Region, Region>,
        /// The guest's receive ring (we transmit into its buffers).
        tx: PackedDevice<Region, Region>,
    },
}

/// What [`GuestDevice::poll`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestEvent {
    /// Nothing new.
    Idle,
    /// The guest driver set DRIVER_OK with these features: the queues can be opened.
    Up {
        /// The negotiated feature bits.
        features: u64,
    },
    /// The guest reset the device (driver unloaded, or it gave up). Drop every queue
    /// pair over its rings, then call [`GuestDevice::ack_reset`].
    Reset,
}

/// The device side of one guest's transport (ZHVQ block or resource table); see the
/// [module docs](self).
#[derive(Debug)]
pub struct GuestDevice {
    ctl: Box<dyn GuestRegs<M = Region> + Send + Sync>,
    cfg: GuestConfig,
    /// The negotiated features while the guest driver is up.
    up: Option<u64>,
    /// A reset seen but not acknowledged yet.
    reset: Option<u32>,
    /// The guest driver's configuration was refused: wait for its reset.
    refused: bool,
    // Field order: the views above drop before the mappings.
    ram: ShmWindow,
    control: ShmWindow,
}

impl GuestDevice {
    /// Creates the RAM and control files (neither may exist; both are removed when the
    /// device drops) and writes the ZHVQ block.
    pub fn create(cfg: &GuestConfig) -> Result<GuestDevice, GuestError> {
        let qs = cfg.queue_size;
        let queues = 2 * u32::from(cfg.queue_pairs);
        if !qs.is_power_of_two() || qs < 2 {
            return Err(config("queue size must be a power of two >= 2", qs.into()));
        }
        if cfg.queue_pairs == 0 || queues as usize > zhvq::MAX_QUEUES {
            return Err(config("queue pairs must be 1..=4", cfg.queue_pairs.into()));
        }
        if cfg.ram_size == 0 || cfg.ram_size > MAX_RAM {
            return Err(config(
                "guest RAM must be 1 byte ..= 2 GiB",
                cfg.ram_size as u64,
            ));
        }
        if !(4096..=MAX_CONTROL).contains(&cfg.control_size) || !cfg.control_size.is_power_of_two()
        {
            return Err(config(
                "control file size must be a power of two in 4 KiB..=64 MiB",
                cfg.control_size as u64,
            ));
        }
        if cfg.required & !cfg.features != 0 {
            return Err(config("required features not offered", cfg.required));
        }
        // A remoteproc vdev: one queue pair, 32 feature bits.
        let rproc_features = match cfg.transport {
            Transport::Zhvq => None,
            Transport::Rproc => {
                if cfg.queue_pairs != 1 {
                    return Err(config(
                        "a remoteproc vdev has one queue pair",
                        cfg.queue_pairs.into(),
                    ));
                }
                Some(
                    u32::try_from(cfg.features)
                        .map_err(|_| config("remoteproc carries 32 feature bits", cfg.features))?,
                )
            }
        };
        let control = ShmWindow::create(&cfg.control, cfg.control_size)?;
        let ram = ShmWindow::create(&cfg.ram, cfg.ram_size)?;
        let mem = control.region().clone();
        let ctl: Box<dyn GuestRegs<M = Region> + Send + Sync> = match rproc_features {
            Some(features) => Box::new(Rproc::create(
                mem,
                VdevInfo {
                    device_id: cfg.device_id,
                    features,
                    queue_size: u32::from(qs),
                },
            )?),
            None => {
                let z = Zhvq::new(mem)?;
                z.init(&DeviceInfo {
                    device_id: cfg.device_id,
                    num_queues: queues,
                    queue_size: u32::from(qs),
                    features: cfg.features,
                })?;
                Box::new(z)
            }
        };
        Ok(GuestDevice {
            ctl,
            cfg: cfg.clone(),
            up: None,
            reset: None,
            refused: false,
            ram,
            control,
        })
    }

    /// The settings.
    pub fn config(&self) -> &GuestConfig {
        &self.cfg
    }

    /// The two files, RAM first.
    pub fn paths(&self) -> (&Path, &Path) {
        (
            self.ram.path().unwrap_or(&self.cfg.ram),
            self.control.path().unwrap_or(&self.cfg.control),
        )
    }

    /// The negotiated features while the guest driver is up.
    pub fn features(&self) -> Option<u64> {
        self.up
    }

    /// Notifications the guest counted (it never needs to send any: we poll).
    pub fn kicks(&self) -> Result<u32, GuestError> {
        Ok(self.ctl.kicks()?)
    }

    /// Runs the transport once: a few loads of the block (call it every millisecond
    /// or every few thousand polls). Resets are acknowledged here while no queue is
    /// up; while one is, [`GuestEvent::Reset`] comes back and the caller acknowledges
    /// after dropping its queue pairs.
    pub fn poll(&mut self) -> Result<GuestEvent, GuestError> {
        self.ctl.beat()?;
        if let Some(seq) = self.ctl.pending_reset()? {
            self.refused = false;
            if self.up.take().is_some() {
                self.reset = Some(seq);
                return Ok(GuestEvent::Reset);
            }
            if self.reset.is_none() {
                self.ctl.ack_reset(seq)?;
            }
            return Ok(GuestEvent::Idle);
        }
        if self.up.is_some() || self.refused || self.reset.is_some() {
            return Ok(GuestEvent::Idle);
        }
        let status = self.ctl.status()?;
        if status & status::FAILED != 0 || status & status::DRIVER_OK == 0 {
            return Ok(GuestEvent::Idle);
        }
        let accepted = self.ctl.driver_features()?;
        if accepted & !self.cfg.features != 0 || accepted & self.cfg.required != self.cfg.required {
            self.refused = true;
            return Err(GuestError::Features {
                accepted,
                offered: self.cfg.features,
                required: self.cfg.required,
            });
        }
        let packed = accepted & VIRTIO_F_RING_PACKED != 0;
        for q in 0..2 * usize::from(self.cfg.queue_pairs) {
            let r = if packed {
                self.packed_layout(q).map(drop)
            } else {
                self.ring(q).map(drop)
            };
            if let Err(e) = r {
                self.refused = true;
                return Err(e);
            }
        }
        self.up = Some(accepted);
        Ok(GuestEvent::Up { features: accepted })
    }

    /// Acknowledges the reset [`poll`](Self::poll) reported, once no queue pair over
    /// the guest's rings is left: the guest frees them after this.
    pub fn ack_reset(&mut self) -> Result<(), GuestError> {
        if let Some(seq) = self.reset.take() {
            // The guest may have reset again meanwhile: acknowledge the latest.
            let latest = self.ctl.pending_reset()?.unwrap_or(seq);
            self.ctl.ack_reset(latest)?;
        }
        Ok(())
    }

    /// The rings of queue pair `pair` while the guest is up (checked), with all of
    /// guest RAM as the data area (descriptor addresses are guest-physical, so file
    /// offsets).
    pub fn rings(&self, pair: u16) -> Result<GuestRings, GuestError> {
        let Some(features) = self.up else {
            return Err(config("the guest driver is not up", 0));
        };
        if pair >= self.cfg.queue_pairs {
            return Err(config("no such queue pair", pair.into()));
        }
        let q = 2 * usize::from(pair);
        let ram = self.ram.region();
        if features & VIRTIO_F_RING_PACKED == 0 {
            return Ok(GuestRings::Split(VirtioAreas {
                rx_ring: self.ring(q)?,
                tx_ring: self.ring(q + 1)?,
                data: ram.clone(),
            }));
        }
        let half = |q: usize| -> Result<PackedDevice<Region, Region>, GuestError> {
            let l = self.packed_layout(q)?;
            PackedDevice::new(ram.clone(), l, ram.clone(), features).map_err(|_| {
                GuestError::Queue {
                    queue: q,
                    what: "packed ring not usable",
                    value: l.desc_ring() as u64,
                }
            })
        };
        Ok(GuestRings::Packed {
            rx: half(q + 1)?,
            tx: half(q)?,
        })
    }

    /// Queue `q`'s registers, once the guest set it up with the offered size.
    fn regs(&self, q: usize) -> Result<QueueRegs, GuestError> {
        let regs = self.ctl.queue(q)?;
        if !regs.ready {
            return Err(queue_err(q, "not set up", 0));
        }
        if regs.num != u32::from(self.cfg.queue_size) {
            return Err(queue_err(
                q,
                "size differs from the offered one",
                regs.num.into(),
            ));
        }
        Ok(regs)
    }

    /// Queue `q`'s packed layout (parts anywhere in RAM), checked.
    fn packed_layout(&self, q: usize) -> Result<PackedLayout, GuestError> {
        let regs = self.regs(q)?;
        let bad = |what, value| queue_err(q, what, value);
        let off = |a: u64| usize::try_from(a).map_err(|_| bad("beyond RAM", a));
        let l = PackedLayout::at(
            self.cfg.queue_size,
            off(regs.desc)?,
            off(regs.avail)?,
            off(regs.used)?,
        )
        .map_err(|_| bad("packed parts misaligned or overlapping", regs.desc))?;
        if l.size() > self.ram.len() {
            return Err(bad("packed ring beyond guest RAM", regs.desc));
        }
        Ok(l)
    }

    /// Queue `q`'s ring region, checked against the split layout and the RAM size.
    fn ring(&self, q: usize) -> Result<Region, GuestError> {
        let regs = self.regs(q)?;
        let bad = |what, value| queue_err(q, what, value);
        let layout = SplitLayout::new(self.cfg.queue_size).map_err(|_| {
            bad("size has no split layout", regs.num.into()) // checked at create
        })?;
        if regs.desc % 16 != 0 {
            return Err(bad("descriptor table not 16-byte aligned", regs.desc));
        }
        let at = |o: usize| regs.desc.checked_add(o as u64);
        if at(layout.avail_offset()) != Some(regs.avail) {
            return Err(bad(
                "avail ring not right after the descriptors",
                regs.avail,
            ));
        }
        if at(layout.used_offset()) != Some(regs.used) {
            return Err(bad(
                "used ring not where used alignment 4 puts it",
                regs.used,
            ));
        }
        let start = usize::try_from(regs.desc).map_err(|_| bad("beyond RAM", regs.desc))?;
        self.ram
            .region()
            .sub(start, layout.size())
            .map_err(|_| bad("ring beyond guest RAM", regs.desc))
    }
}

fn config(what: &'static str, value: u64) -> GuestError {
    GuestError::Config { what, value }
}

fn queue_err(queue: usize, what: &'static str, value: u64) -> GuestError {
    GuestError::Queue { queue, what, value }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rings::sync::Ordering;
    use rings::zhvq::off;
    use rings::Mem;

    fn cfg(tag: &str) -> GuestConfig {
        let pid = std::process::id();
        GuestConfig {
            ram: format!("/dev/shm/zerohop-test-guest-ram-{tag}-{pid}").into(),
            ram_size: 1 << 20,
            control: format!("/dev/shm/zerohop-test-guest-ctl-{tag}-{pid}").into(),
            control_size: 4096,
            device_id: 7,
            features: (1 << 32) | (1 << 29) | 1,
            required: 1 << 29,
            queue_pairs: 1,
            queue_size: 8,
            transport: Transport::Zhvq,
        }
    }

    /// What zh_virtio.c does in find_vqs + set_status(DRIVER_OK).
    fn guest_up(ctl: &Region, features: u64, rings: &[u64]) {
        ctl.store_u64(off::DRIVER_FEATURES, features, Ordering::Relaxed)
            .unwrap();
        let l = SplitLayout::new(8).unwrap();
        for (i, &desc) in rings.iter().enumerate() {
            let b = off::QUEUES + 32 * i;
            ctl.store_u64(b, desc, Ordering::Relaxed).unwrap();
            ctl.store_u64(
                b + 8,
                desc.wrapping_add(l.avail_offset() as u64),
                Ordering::Relaxed,
            )
            .unwrap();
            ctl.store_u64(
                b + 16,
                desc.wrapping_add(l.used_offset() as u64),
                Ordering::Relaxed,
            )
            .unwrap();
            ctl.store_u32(b + 24, 8, Ordering::Relaxed).unwrap();
            ctl.store_u32(b + 28, 1, Ordering::Release).unwrap();
        }
        ctl.store_u32(off::STATUS, 0xf, Ordering::Release).unwrap();
    }

    fn reset(ctl: &Region, seq: u32) {
        ctl.store_u32(off::RESET_SEQ, seq, Ordering::Release)
            .unwrap();
        ctl.store_u32(off::STATUS, 0, Ordering::Release).unwrap();
    }

    #[test]
    fn up_reset_and_up_again() {
        let c = cfg("cycle");
        let mut d = GuestDevice::create(&c).unwrap();
        let ctl = ShmWindow::open(&c.control, &crate::window::OpenOptions::new()).unwrap();
        let ctl = ctl.region().clone();
        assert_eq!(ctl.load_u32(0, Ordering::Acquire).unwrap(), zhvq::MAGIC);
        assert_eq!(d.poll().unwrap(), GuestEvent::Idle);
        assert!(d.rings(0).is_err());

        // A reset before any driver is up (zh_virtio's probe) is acknowledged at once.
        reset(&ctl, 1);
        assert_eq!(d.poll().unwrap(), GuestEvent::Idle);
        assert_eq!(ctl.load_u32(off::RESET_ACK, Ordering::Acquire).unwrap(), 1);

        guest_up(&ctl, (1 << 32) | (1 << 29) | 1, &[0x1000, 0x2000]);
        assert_eq!(
            d.poll().unwrap(),
            GuestEvent::Up {
                features: (1 << 32) | (1 << 29) | 1
            }
        );
        let GuestRings::Split(a) = d.rings(0).unwrap() else {
            panic!("split rings expected");
        };
        assert_eq!(a.data.len(), 1 << 20);
        assert_eq!(a.rx_ring.len(), SplitLayout::new(8).unwrap().size());
        assert!(d.rings(1).is_err());

        // A reset while up: reported, acknowledged only when the caller says so.
        reset(&ctl, 2);
        assert_eq!(d.poll().unwrap(), GuestEvent::Reset);
        assert_eq!(d.poll().unwrap(), GuestEvent::Idle);
        assert_eq!(ctl.load_u32(off::RESET_ACK, Ordering::Acquire).unwrap(), 1);
        drop(a);
        d.ack_reset().unwrap();
        assert_eq!(ctl.load_u32(off::RESET_ACK, Ordering::Acquire).unwrap(), 2);

        guest_up(&ctl, (1 << 32) | (1 << 29), &[0x3000, 0x4000]);
        assert!(matches!(d.poll().unwrap(), GuestEvent::Up { .. }));
        drop(d);
        assert!(!c.ram.exists() && !c.control.exists());
    }

    #[test]
    fn bad_registers_are_refused_until_a_reset() {
        let c = cfg("bad");
        let mut d = GuestDevice::create(&c).unwrap();
        let ctl = ShmWindow::open(&c.control, &crate::window::OpenOptions::new()).unwrap();
        let ctl = ctl.region().clone();
        let l = SplitLayout::new(8).unwrap();

        // Features: not offered, then required one missing.
        guest_up(&ctl, 1 << 40, &[0x1000, 0x2000]);
        assert!(matches!(d.poll(), Err(GuestError::Features { .. })));
        assert_eq!(d.poll().unwrap(), GuestEvent::Idle, "refused until reset");
        let cases: [(u64, &[u64]); 4] = [
            (1 << 29, &[0x1008, 0x2000]),         // misaligned
            (1 << 29, &[0x1000, (1 << 20) - 64]), // past the end of RAM
            (1 << 29, &[0x1000, u64::MAX - 15]),  // address overflow
            (1, &[0x1000, 0x2000]),               // EVENT_IDX refused
        ];
        for (seq, (features, rings)) in (1u32..).zip(cases) {
            reset(&ctl, seq);
            assert_eq!(d.poll().unwrap(), GuestEvent::Idle);
            guest_up(&ctl, features, rings);
            let e = d.poll().unwrap_err();
            assert!(
                matches!(e, GuestError::Queue { .. } | GuestError::Features { .. }),
                "{e}"
            );
        }
        // Avail ring moved, size changed.
        reset(&ctl, 10);
        d.poll().unwrap();
        guest_up(&ctl, 1 << 29, &[0x1000, 0x2000]);
        ctl.store_u64(
            off::QUEUES + 8,
            0x1000 + l.avail_offset() as u64 + 64,
            Ordering::Relaxed,
        )
        .unwrap();
        assert!(matches!(d.poll(), Err(GuestError::Queue { queue: 0, .. })));
        reset(&ctl, 11);
        d.poll().unwrap();
        guest_up(&ctl, 1 << 29, &[0x1000, 0x2000]);
        ctl.store_u32(off::QUEUES + 32 + 24, 16, Ordering::Relaxed)
            .unwrap();
        assert!(matches!(d.poll(), Err(GuestError::Queue { queue: 1, .. })));
        // And a good one after all that.
        reset(&ctl, 12);
        d.poll().unwrap();
        guest_up(&ctl, 1 << 29, &[0x1000, 0x2000]);
        assert!(matches!(d.poll().unwrap(), GuestEvent::Up { .. }));
    }

    /// What zh_virtio writes for packed rings: desc, driver event, device event.
    fn guest_up_packed(ctl: &Region, rings: &[[u64; 3]]) {
        let f = (1 << 34) | (1 << 29);
        ctl.store_u64(off::DRIVER_FEATURES, f, Ordering::Relaxed)
            .unwrap();
        for (i, regs) in rings.iter().enumerate() {
            let b = off::QUEUES + 32 * i;
            for (j, &r) in regs.iter().enumerate() {
                ctl.store_u64(b + 8 * j, r, Ordering::Relaxed).unwrap();
            }
            ctl.store_u32(b + 24, 8, Ordering::Relaxed).unwrap();
            ctl.store_u32(b + 28, 1, Ordering::Release).unwrap();
        }
        ctl.store_u32(off::STATUS, 0xf, Ordering::Release).unwrap();
    }

    #[test]
    fn packed_rings_with_parts_apart() {
        let c = GuestConfig {
            features: (1 << 34) | (1 << 29),
            ..cfg("packed")
        };
        let mut d = GuestDevice::create(&c).unwrap();
        let ctl = ShmWindow::open(&c.control, &crate::window::OpenOptions::new()).unwrap();
        let ctl = ctl.region().clone();
        let good = [[0x1000, 0x3000, 0x4004], [0x2000, 0x5000, 0x6000]];
        guest_up_packed(&ctl, &good);
        assert!(matches!(d.poll().unwrap(), GuestEvent::Up { .. }));
        assert!(matches!(d.rings(0).unwrap(), GuestRings::Packed { .. }));
        let bad: [[u64; 3]; 4] = [
            [0x1008, 0x3000, 0x4000],        // descriptors misaligned
            [0x1000, 0x1040, 0x4000],        // driver event inside the descriptors
            [0x1000, 0x3000, 0x3002],        // events overlap (and misaligned)
            [0x1000, 0x3000, (1 << 20) - 2], // device event past RAM
        ];
        for (seq, regs) in (1u32..).zip(bad) {
            reset(&ctl, seq);
            assert_eq!(d.poll().unwrap(), GuestEvent::Reset);
            d.ack_reset().unwrap();
            guest_up_packed(&ctl, &[regs, good[1]]);
            let e = d.poll().unwrap_err();
            assert!(matches!(e, GuestError::Queue { queue: 0, .. }), "{e}");
            // Refused until the next reset; the good ring is not enough.
            assert_eq!(d.poll().unwrap(), GuestEvent::Idle);
            reset(&ctl, seq + 100);
            d.poll().unwrap();
            guest_up_packed(&ctl, &good);
            assert!(matches!(d.poll().unwrap(), GuestEvent::Up { .. }));
        }
    }

    /// What Linux's remoteproc core writes into the table when it attaches (vring
    /// addresses, gfeatures, then status), at `rings::rproc::off`.
    fn rproc_attach(ctl: &Region, gfeatures: u32, das: [u32; 2]) {
        use rings::rproc::off;
        for (i, da) in das.into_iter().enumerate() {
            ctl.store_u32(off::VRING + off::VRING_SIZE * i, da, Ordering::Relaxed)
                .unwrap();
        }
        ctl.store_u32(off::GFEATURES, gfeatures, Ordering::Relaxed)
            .unwrap();
        ctl.store_u32(off::STATUS, (2 << 8) | 0xf, Ordering::Release)
            .unwrap();
    }

    #[test]
    fn remoteproc_table_attach_refusal_and_reset() {
        use rings::rproc::{self, off};
        let c = GuestConfig {
            transport: Transport::Rproc,
            features: (1 << 29) | 1,
            ..cfg("rproc")
        };
        let mut d = GuestDevice::create(&c).unwrap();
        let ctl = ShmWindow::open(&c.control, &crate::window::OpenOptions::new()).unwrap();
        let ctl = ctl.region().clone();
        assert_eq!(ctl.load_u32(0, Ordering::Acquire).unwrap(), rproc::MAGIC);
        assert_eq!(d.poll().unwrap(), GuestEvent::Idle);

        rproc_attach(&ctl, (1 << 29) | 1, [0x1000, 0x2000]);
        assert_eq!(
            d.poll().unwrap(),
            GuestEvent::Up {
                features: (1 << 29) | 1
            }
        );
        let GuestRings::Split(a) = d.rings(0).unwrap() else {
            panic!("split rings expected");
        };
        assert_eq!(a.rx_ring.len(), SplitLayout::new(8).unwrap().size());
        assert_eq!(d.kicks().unwrap(), 0);

        // The stop op's handshake: reported, and the table rewritten at the ack.
        ctl.store_u32(off::STATUS, 2 << 8, Ordering::Relaxed)
            .unwrap();
        ctl.store_u32(off::RESET_SEQ, 1, Ordering::Release).unwrap();
        assert_eq!(d.poll().unwrap(), GuestEvent::Reset);
        drop(a);
        d.ack_reset().unwrap();
        assert_eq!(ctl.load_u32(off::RESET_ACK, Ordering::Acquire).unwrap(), 1);
        assert_eq!(
            ctl.load_u32(off::VRING, Ordering::Relaxed).unwrap(),
            rproc::FW_RSC_ADDR_ANY
        );

        // Refused: a vring past RAM, a vring misaligned, EVENT_IDX not accepted, a
        // scribbled align; each until the next reset.
        let cases: [(u32, [u32; 2], u32); 4] = [
            (1 << 29, [0x1000, (1 << 20) - 64], 4),
            (1 << 29, [0x1008, 0x2000], 4),
            (1, [0x1000, 0x2000], 4),
            (1 << 29, [0x1000, 0x2000], 4096),
        ];
        for (seq, (features, das, align)) in (2u32..).zip(cases) {
            ctl.store_u32(off::VRING + 4, align, Ordering::Relaxed)
                .unwrap();
            rproc_attach(&ctl, features, das);
            assert!(d.poll().is_err(), "case {seq}");
            assert_eq!(d.poll().unwrap(), GuestEvent::Idle, "refused until reset");
            ctl.store_u32(off::RESET_SEQ, seq, Ordering::Release)
                .unwrap();
            assert_eq!(d.poll().unwrap(), GuestEvent::Idle);
            assert_eq!(
                ctl.load_u32(off::RESET_ACK, Ordering::Acquire).unwrap(),
                seq
            );
            // The ack put the offered align back.
            assert_eq!(ctl.load_u32(off::VRING + 4, Ordering::Relaxed).unwrap(), 4);
        }
        rproc_attach(&ctl, 1 << 29, [0x3000, 0x4000]);
        assert!(matches!(d.poll().unwrap(), GuestEvent::Up { .. }));
        drop(d);
        assert!(!c.ram.exists() && !c.control.exists());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// A guest that sets the device up properly, then overwrites up to 24 words
        /// of the block with anything (ZHVQ or resource table): every poll returns,
        /// rings come back only inside guest RAM, and a reset always brings the
        /// device back to a clean Idle.
        #[test]
        fn any_block_contents_give_errors_or_rings_inside_ram(
            rproc in proptest::prelude::any::<bool>(),
            words in proptest::collection::vec(
                (0usize..80, proptest::prelude::any::<u32>()), 0..24),
        ) {
            use std::sync::atomic::{AtomicU32, Ordering as O};
            static CASE: AtomicU32 = AtomicU32::new(0);
            // Relaxed: only makes the file names unique.
            let n = CASE.fetch_add(1, O::Relaxed);
            let mut c = cfg(&format!("prop{n}"));
            if rproc {
                (c.transport, c.features) = (Transport::Rproc, (1 << 29) | 1);
            }
            let mut d = GuestDevice::create(&c).unwrap();
            let w = ShmWindow::open(&c.control, &crate::window::OpenOptions::new()).unwrap();
            let ctl = w.region().clone();
            let block = if rproc { rings::rproc::BLOCK_SIZE } else { zhvq::BLOCK_SIZE };
            if rproc {
                rproc_attach(&ctl, 1 << 29, [0x1000, 0x2000]);
            } else {
                guest_up(&ctl, (1 << 29) | 1, &[0x1000, 0x2000]);
            }
            for (i, v) in words {
                let at = (4 * i) % block;
                ctl.store_u32(at, v, Ordering::Relaxed).unwrap();
            }
            for _ in 0..3 {
                if let Ok(GuestEvent::Up { .. }) = d.poll() {
                    if let Ok(GuestRings::Split(a)) = d.rings(0) {
                        for r in [&a.rx_ring, &a.tx_ring] {
                            let end = r.addr() + r.len();
                            proptest::prop_assert!(end <= a.data.addr() + a.data.len());
                            proptest::prop_assert!(r.addr() >= a.data.addr());
                        }
                    }
                }
            }
            // The guest resets: the device lets go and is Idle (or reports the reset
            // of an Up it had), then acknowledges.
            let seq_at = if rproc { rings::rproc::off::RESET_SEQ } else { off::RESET_SEQ };
            let seq = ctl.load_u32(seq_at, Ordering::Relaxed).unwrap().wrapping_add(1);
            let ack_at = if rproc { rings::rproc::off::RESET_ACK } else { off::RESET_ACK };
            ctl.store_u32(ack_at, seq.wrapping_sub(1), Ordering::Relaxed).unwrap();
            ctl.store_u32(seq_at, seq, Ordering::Release).unwrap();
            let ev = d.poll().unwrap();
            proptest::prop_assert!(ev == GuestEvent::Idle || ev == GuestEvent::Reset);
            d.ack_reset().unwrap();
            proptest::prop_assert_eq!(ctl.load_u32(ack_at, Ordering::Acquire).unwrap(), seq);
            drop(d);
            proptest::prop_assert!(!c.ram.exists() && !c.control.exists());
        }
    }

    #[test]
    fn bad_settings_are_refused_before_any_file_exists() {
        let base = cfg("settings");
        let bad = [
            GuestConfig {
                queue_size: 6,
                ..base.clone()
            },
            GuestConfig {
                queue_pairs: 0,
                ..base.clone()
            },
            GuestConfig {
                queue_pairs: 5,
                ..base.clone()
            },
            GuestConfig {
                ram_size: MAX_RAM + 1,
                ..base.clone()
            },
            GuestConfig {
                control_size: 1000,
                ..base.clone()
            },
            GuestConfig {
                required: 1 << 50,
                ..base.clone()
            },
            // remoteproc: 32 feature bits, one queue pair.
            GuestConfig {
                transport: Transport::Rproc,
                ..base.clone()
            },
            GuestConfig {
                transport: Transport::Rproc,
                features: (1 << 29) | 1,
                queue_pairs: 2,
                ..base.clone()
            },
        ];
        for c in bad {
            assert!(matches!(
                GuestDevice::create(&c),
                Err(GuestError::Config { .. })
            ));
            assert!(!c.ram.exists() && !c.control.exists());
        }
    }
}
