//! [`GuestLink`]: rpmsg-fast as the *remote* of a Linux guest's own
//! `virtio_rpmsg_bus`: the guest's kernel owns the virtqueues and buffers in its RAM
//! (exactly as with a remote processor), this process is the virtio rpmsg device over
//! [`pmd::guest::GuestDevice`], and the name service, endpoints and messages are the
//! bus's own ([`Rpmsg`]).
//!
//! The guest needs the modules Debian's kernel lacks (rpmsg_core, rpmsg_ns,
//! virtio_rpmsg_bus, rpmsg_char) and a transport of `rpmsg-fast/linux`: `zh_virtio`
//! (the ZHVQ block) or `zh_rproc` with remoteproc ([`Transport::Rproc`]: a resource
//! table, the way Linux meets OpenAMP firmware on a board); `.ci/rpmsg-linux` builds
//! them and runs a guest against `zerohop rpmsg-guest` with each.
//! docs/RPMSG.md "A Linux peer" has the commands.
//!
//! ```no_run
//! use rpmsg_fast::guest::{GuestLink, GuestLinkConfig};
//! use rpmsg_fast::Addr;
//! # fn main() -> Result<(), rpmsg_fast::RpmsgError> {
//! let mut link = GuestLink::create(&GuestLinkConfig::new("/dev/shm/vm-ram", 256 << 20, "/dev/shm/vm-ctl"))?;
//! loop {
//!     link.poll_control()?;
//!     let Some(bus) = link.bus() else { continue };
//!     // (create endpoints and announce them after each GuestEvent::Up)
//!     bus.poll()?;
//! }
//! # }
//! ```

use std::path::PathBuf;

use pmd::copy::CopyEngine;
pub use pmd::guest::Transport;
use pmd::guest::{GuestConfig, GuestDevice, GuestEvent, GuestRings};
use pmd::queue::{PktHeader, VirtioBackend, VirtioGeometry};
use rings::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1};

use crate::bus::{BusConfig, BusStats, Rpmsg};
use crate::error::RpmsgError;
use crate::link::{LinkQueue, VIRTIO_ID_RPMSG};
use crate::wire::DEFAULT_BUF_SIZE;

/// The queue pair under a [`GuestLink`]'s bus: the device half of the guest's split
/// ([`LinkQueue::SplitRemote`]) or packed ([`LinkQueue::PackedRemote`]) virtqueues.
pub type GuestQueue = LinkQueue;

/// Settings of a [`GuestLink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestLinkConfig {
    /// The guest RAM file (QEMU `memory-backend-file,mem-path=...,share=on`).
    pub ram: PathBuf,
    /// Bytes of guest RAM (QEMU `-m`).
    pub ram_size: usize,
    /// The ivshmem file (QEMU `ivshmem-plain` memdev).
    pub control: PathBuf,
    /// Bytes of the ivshmem file (a power of two, 4 KiB ..= 64 MiB; default 4096).
    pub control_size: usize,
    /// Entries per virtqueue (virtio_rpmsg_bus posts `min(2 * size, 512)` buffers, half
    /// each way; default 256).
    pub queue_size: u16,
    /// Also offer `VIRTIO_F_RING_PACKED` (the guest's virtio core then makes packed
    /// virtqueues; default false: split, as virtio_rpmsg_bus on remoteproc uses).
    /// ZHVQ only.
    pub packed: bool,
    /// The register block: ZHVQ (the guest's `zh_virtio`) or a remoteproc resource
    /// table (the guest's `zh_rproc` and Linux's remoteproc core; default ZHVQ).
    pub transport: Transport,
    /// The bus (its buffer sizes must stay 512: virtio_rpmsg_bus' fixed size).
    pub bus: BusConfig,
}

impl GuestLinkConfig {
    /// Defaults for the three files' settings.
    pub fn new(ram: impl Into<PathBuf>, ram_size: usize, control: impl Into<PathBuf>) -> Self {
        GuestLinkConfig {
            ram: ram.into(),
            ram_size,
            control: control.into(),
            control_size: 4096,
            queue_size: 256,
            packed: false,
            transport: Transport::Zhvq,
            bus: BusConfig::default(),
        }
    }
}

/// One guest's rpmsg device; see the [module docs](self).
pub struct GuestLink {
    /// The bus while the guest driver is up (dropped before the reset is acknowledged).
    bus: Option<Rpmsg<GuestQueue>>,
    dev: GuestDevice,
    cfg: GuestLinkConfig,
    ups: u64,
    /// Counters of the buses dropped at earlier resets.
    past: BusStats,
}

impl GuestLink {
    /// Creates the guest's RAM and control files and offers an rpmsg device
    /// (`VIRTIO_F_EVENT_IDX` and the bus's feature bits, plus `VIRTIO_F_VERSION_1`
    /// over ZHVQ; event index is required, it is how the device half suppresses
    /// notifications).
    pub fn create(cfg: &GuestLinkConfig) -> Result<GuestLink, RpmsgError> {
        if cfg.bus.tx_buf_size != DEFAULT_BUF_SIZE || cfg.bus.rx_buf_size != DEFAULT_BUF_SIZE {
            return Err(RpmsgError::Config(format!(
                "virtio_rpmsg_bus uses {DEFAULT_BUF_SIZE}-byte buffers (asked for {} / {})",
                cfg.bus.tx_buf_size, cfg.bus.rx_buf_size
            )));
        }
        let features = match (cfg.transport, cfg.packed) {
            (Transport::Zhvq, packed) => {
                VIRTIO_F_VERSION_1 | if packed { VIRTIO_F_RING_PACKED } else { 0 }
            }
            // remoteproc: legacy virtio, split rings, 32 feature bits.
            (Transport::Rproc, false) => 0,
            (Transport::Rproc, true) => {
                return Err(RpmsgError::Config(
                    "packed rings need the ZHVQ transport (remoteproc makes split rings)".into(),
                ))
            }
        };
        let dev = GuestDevice::create(&GuestConfig {
            ram: cfg.ram.clone(),
            ram_size: cfg.ram_size,
            control: cfg.control.clone(),
            control_size: cfg.control_size,
            device_id: VIRTIO_ID_RPMSG,
            features: cfg.bus.features | VIRTIO_F_EVENT_IDX | features,
            required: VIRTIO_F_EVENT_IDX,
            queue_pairs: 1,
            queue_size: cfg.queue_size,
            transport: cfg.transport,
        })?;
        Ok(GuestLink {
            bus: None,
            dev,
            cfg: cfg.clone(),
            ups: 0,
            past: BusStats::default(),
        })
    }

    /// Runs the transport once (call it every millisecond or few thousand polls). On
    /// [`GuestEvent::Up`] a fresh bus exists ([`bus`](Self::bus)): create and announce
    /// endpoints then. On [`GuestEvent::Reset`] the bus is gone (with its endpoints)
    /// and the guest may free its rings.
    pub fn poll_control(&mut self) -> Result<GuestEvent, RpmsgError> {
        let ev = self.dev.poll()?;
        match ev {
            GuestEvent::Up { features } => {
                let geo = VirtioGeometry::new(self.cfg.queue_size, DEFAULT_BUF_SIZE as u32)?
                    .with_header(PktHeader::None);
                let copy = *CopyEngine::global();
                let q = match self.dev.rings(0)? {
                    GuestRings::Split(areas) => {
                        LinkQueue::SplitRemote(VirtioBackend::new(areas, geo, 0, copy)?)
                    }
                    GuestRings::Packed { rx, tx } => {
                        LinkQueue::PackedRemote(VirtioBackend::from_halves(rx, tx, geo, 0, copy)?)
                    }
                };
                let mut bus = Rpmsg::new(q, self.cfg.bus.clone())?;
                bus.set_peer_up(features);
                self.bus = Some(bus);
                self.ups += 1;
            }
            GuestEvent::Reset => {
                if let Some(bus) = self.bus.take() {
                    self.past = add(self.past, bus.stats());
                }
                self.dev.ack_reset()?;
            }
            GuestEvent::Idle => {}
        }
        Ok(ev)
    }

    /// The bus, while the guest driver is up.
    pub fn bus(&mut self) -> Option<&mut Rpmsg<GuestQueue>> {
        self.bus.as_mut()
    }

    /// The bus counters summed over every time the guest was up.
    pub fn bus_stats(&self) -> BusStats {
        self.bus
            .as_ref()
            .map_or(self.past, |b| add(self.past, b.stats()))
    }

    /// How many times the guest driver came up.
    pub fn ups(&self) -> u64 {
        self.ups
    }

    /// The transport (files, negotiated features, kicks).
    pub fn device(&self) -> &GuestDevice {
        &self.dev
    }

    /// The settings.
    pub fn config(&self) -> &GuestLinkConfig {
        &self.cfg
    }
}

impl core::fmt::Debug for GuestLink {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GuestLink")
            .field("device", &self.dev)
            .field("up", &self.bus.is_some())
            .field("ups", &self.ups)
            .finish()
    }
}

fn add(a: BusStats, b: BusStats) -> BusStats {
    BusStats {
        rx: a.rx + b.rx,
        tx: a.tx + b.tx,
        bad_header: a.bad_header + b.bad_header,
        unknown_dst: a.unknown_dst + b.unknown_dst,
        dropped_full: a.dropped_full + b.dropped_full,
        ns_rx: a.ns_rx + b.ns_rx,
        ns_errors: a.ns_errors + b.ns_errors,
    }
}

#[cfg(test)]
mod tests {
    //! A guest emulated with the driver halves of `rings::split` / `rings::packed`, laid out as Linux'
    //! `virtio_rpmsg_bus` lays out its buffers (512 bytes, `rpmsg_hdr` first), and the
    //! ZHVQ registers written as `zh_virtio.c` writes them. `.ci/rpmsg-linux` runs the
    //! real thing.
    use super::*;
    use crate::wire::{NsMsg, RpmsgHdr, HDR_SIZE, NS_ADDR, NS_MSG_SIZE};
    use crate::Addr;
    use pmd::window::{OpenOptions, ShmWindow, Window};
    use rings::packed::{PackedDriver, PackedLayout};
    use rings::split::{SplitDriver, SplitLayout};
    use rings::sync::Ordering;
    use rings::zhvq::off;
    use rings::{BufDesc, Mem, Region};
    use std::collections::HashMap;

    const RX_RING: u64 = 0x1000;
    const TX_RING: u64 = 0x2000;
    const RX_BUFS: u64 = 0x10000;
    const TX_BUFS: u64 = 0x20000;

    /// One virtqueue's driver half, split or packed.
    enum Drv {
        Split(SplitDriver<Region, Region>),
        Packed(PackedDriver<Region, Region>),
    }

    impl Drv {
        /// Opens the ring at `at` (packed: descriptors there, the two event
        /// structures 2 KiB and 3 KiB further, as separate allocations would be) and
        /// returns it with its (desc, avail, used) registers.
        fn open(ram: &Region, at: u64, n: u16, f: u64) -> (Drv, [u64; 3]) {
            if f & VIRTIO_F_RING_PACKED == 0 {
                let l = SplitLayout::new(n).unwrap();
                let ring = ram.sub(at as usize, l.size()).unwrap();
                let d = SplitDriver::new(ring, l, ram.clone(), f).unwrap();
                let regs = [
                    at,
                    at + l.avail_offset() as u64,
                    at + l.used_offset() as u64,
                ];
                (Drv::Split(d), regs)
            } else {
                let regs = [at, at + 0x800, at + 0xc04];
                let l =
                    PackedLayout::at(n, at as usize, regs[1] as usize, regs[2] as usize).unwrap();
                (
                    Drv::Packed(PackedDriver::new(ram.clone(), l, ram.clone(), f).unwrap()),
                    regs,
                )
            }
        }
        fn add(&mut self, b: BufDesc) -> u16 {
            match self {
                Drv::Split(d) => d.add(&[b]).unwrap(),
                Drv::Packed(d) => d.add(&[b]).unwrap(),
            }
        }
        fn publish(&mut self) {
            match self {
                Drv::Split(d) => d.publish().unwrap(),
                Drv::Packed(d) => d.publish().unwrap(),
            }
        }
        fn poll_used(&mut self) -> Option<(u16, u32)> {
            match self {
                Drv::Split(d) => d.poll_used().unwrap().map(|u| (u.id, u.len)),
                Drv::Packed(d) => d.poll_used().unwrap().map(|u| (u.id, u.len)),
            }
        }
    }

    struct Guest {
        rx: Drv,
        tx: Drv,
        /// Receive buffer of each id in flight.
        rx_bufs: HashMap<u16, u64>,
        ram: Region,
        ctl: Region,
        /// The registers are a remoteproc resource table (`rings::rproc`).
        rproc: bool,
        _w: (ShmWindow, ShmWindow),
    }

    impl Guest {
        /// zh_virtio's probe (a reset), virtio_rpmsg_bus' probe (a receive buffer per
        /// entry), then DRIVER_OK, accepting packed rings if `packed`. Over a resource
        /// table (`cfg.transport`), what remoteproc's attach writes instead: the vring
        /// addresses, gfeatures (legacy virtio, no VERSION_1), the status byte.
        fn boot(cfg: &GuestLinkConfig, reset_seq: u32, packed: bool) -> Guest {
            let ram_w = ShmWindow::open(&cfg.ram, &OpenOptions::new()).unwrap();
            let ctl_w = ShmWindow::open(&cfg.control, &OpenOptions::new()).unwrap();
            let (ram, ctl) = (ram_w.region().clone(), ctl_w.region().clone());
            let rproc = cfg.transport == Transport::Rproc;
            let magic = if rproc {
                rings::rproc::MAGIC
            } else {
                rings::zhvq::MAGIC
            };
            assert_eq!(ctl.load_u32(0, Ordering::Acquire).unwrap(), magic);
            let f = VIRTIO_F_EVENT_IDX
                | 1
                | if rproc { 0 } else { VIRTIO_F_VERSION_1 }
                | if packed { VIRTIO_F_RING_PACKED } else { 0 };
            let n = cfg.queue_size;
            let (mut rx, rx_regs) = Drv::open(&ram, RX_RING, n, f);
            let (tx, tx_regs) = Drv::open(&ram, TX_RING, n, f);
            let mut rx_bufs = HashMap::new();
            for i in 0..u64::from(n) {
                let at = RX_BUFS + 512 * i;
                rx_bufs.insert(rx.add(BufDesc::writable(at, 512)), at);
            }
            rx.publish();
            if rproc {
                use rings::rproc::off;
                for (q, regs) in [rx_regs, tx_regs].into_iter().enumerate() {
                    let da = u32::try_from(regs[0]).unwrap();
                    ctl.store_u32(off::VRING + off::VRING_SIZE * q, da, Ordering::Relaxed)
                        .unwrap();
                }
                ctl.store_u32(off::GFEATURES, f as u32, Ordering::Relaxed)
                    .unwrap();
                ctl.store_u32(off::STATUS, (2 << 8) | 0xf, Ordering::Release)
                    .unwrap();
            } else {
                ctl.store_u32(off::RESET_SEQ, reset_seq, Ordering::Release)
                    .unwrap();
                ctl.store_u64(off::DRIVER_FEATURES, f, Ordering::Relaxed)
                    .unwrap();
                for (q, regs) in [rx_regs, tx_regs].into_iter().enumerate() {
                    let b = off::QUEUES + 32 * q;
                    for (i, r) in regs.into_iter().enumerate() {
                        ctl.store_u64(b + 8 * i, r, Ordering::Relaxed).unwrap();
                    }
                    ctl.store_u32(b + 24, n.into(), Ordering::Relaxed).unwrap();
                    ctl.store_u32(b + 28, 1, Ordering::Release).unwrap();
                }
                ctl.store_u32(off::STATUS, 0xf, Ordering::Release).unwrap();
            }
            Guest {
                rx,
                tx,
                rx_bufs,
                ram,
                ctl,
                rproc,
                _w: (ram_w, ctl_w),
            }
        }

        /// The next message the device wrote, and its buffer given back.
        fn recv(&mut self) -> Option<(RpmsgHdr, Vec<u8>)> {
            let (id, len) = self.rx.poll_used()?;
            let at = self.rx_bufs.remove(&id).expect("a buffer of ours");
            let mut b = vec![0u8; len as usize];
            self.ram.read_bytes(at as usize, &mut b).unwrap();
            let h = RpmsgHdr::parse(&b, 512).unwrap();
            let id = self.rx.add(BufDesc::writable(at, 512));
            self.rx_bufs.insert(id, at);
            self.rx.publish();
            Some((h, b[HDR_SIZE..HDR_SIZE + h.len as usize].to_vec()))
        }

        /// Sends from transmit buffer `slot`; returns the ring id it went out with.
        fn send(&mut self, slot: u64, src: u32, dst: u32, data: &[u8]) -> u16 {
            let at = TX_BUFS + 512 * slot;
            let h = RpmsgHdr::new(src, dst, data.len() as u16);
            self.ram.write_bytes(at as usize, &h.to_bytes()).unwrap();
            self.ram.write_bytes(at as usize + HDR_SIZE, data).unwrap();
            let len = (HDR_SIZE + data.len()) as u32;
            let id = self.tx.add(BufDesc::readable(at, len));
            self.tx.publish();
            id
        }

        /// zh_virtio's reset (bump the sequence, status 0), or zh_rproc's stop op
        /// after remoteproc's vdev reset (status 0, bump the sequence); then the ack.
        fn reset(&self, seq: u32, link: &mut GuestLink) -> GuestEvent {
            let ack = if self.rproc {
                use rings::rproc::off;
                self.ctl
                    .store_u32(off::STATUS, 2 << 8, Ordering::Relaxed)
                    .unwrap();
                self.ctl
                    .store_u32(off::RESET_SEQ, seq, Ordering::Release)
                    .unwrap();
                off::RESET_ACK
            } else {
                self.ctl
                    .store_u32(off::RESET_SEQ, seq, Ordering::Release)
                    .unwrap();
                self.ctl
                    .store_u32(off::STATUS, 0, Ordering::Release)
                    .unwrap();
                off::RESET_ACK
            };
            let ev = link.poll_control().unwrap();
            assert_eq!(self.ctl.load_u32(ack, Ordering::Acquire).unwrap(), seq);
            ev
        }
    }

    fn up(link: &mut GuestLink) -> u64 {
        for _ in 0..4 {
            if let GuestEvent::Up { features } = link.poll_control().unwrap() {
                return features;
            }
        }
        panic!("the guest did not come up");
    }

    /// Boots a guest, waits for Up, and creates a "rpmsg-raw" endpoint (not announced).
    fn boot_with_endpoint(
        link: &mut GuestLink,
        cfg: &GuestLinkConfig,
        reset_seq: u32,
        packed: bool,
    ) -> (Guest, crate::EndpointId, u32) {
        let g = Guest::boot(cfg, reset_seq, packed);
        up(link);
        let bus = link.bus().unwrap();
        let ep = bus
            .create_endpoint(Some("rpmsg-raw"), Addr::Dynamic)
            .unwrap();
        let addr = bus.addr(ep).unwrap();
        (g, ep, addr)
    }

    /// 1 MiB of guest RAM, 8-entry queues, files named by `tag`.
    fn test_cfg(tag: &str, packed: bool) -> GuestLinkConfig {
        let pid = std::process::id();
        let mut cfg = GuestLinkConfig::new(
            format!("/dev/shm/zerohop-test-rg-ram-{tag}-{pid}"),
            1 << 20,
            format!("/dev/shm/zerohop-test-rg-ctl-{tag}-{pid}"),
        );
        cfg.queue_size = 8;
        cfg.packed = packed;
        cfg
    }

    fn announcements_and_echoes(packed: bool, transport: Transport) {
        let mut cfg = test_cfg(
            match (packed, transport) {
                (_, Transport::Rproc) => "rproc",
                (true, _) => "packed",
                (false, _) => "split",
            },
            packed,
        );
        cfg.transport = transport;
        let mut link = GuestLink::create(&cfg).unwrap();
        assert!(link.bus().is_none());
        let want = VIRTIO_F_EVENT_IDX
            | 1
            | if transport == Transport::Rproc {
                0
            } else {
                VIRTIO_F_VERSION_1
            }
            | if packed { VIRTIO_F_RING_PACKED } else { 0 };

        for round in 1..=2u32 {
            let mut g = Guest::boot(&cfg, 2 * round - 1, packed);
            assert_eq!(up(&mut link), want);
            let bus = link.bus().unwrap();
            assert_eq!(matches!(bus.queue(), LinkQueue::PackedRemote(_)), packed);
            let ep = bus
                .create_endpoint(Some("rpmsg-raw"), Addr::Dynamic)
                .unwrap();
            bus.announce(ep).unwrap();
            let addr = bus.addr(ep).unwrap();

            // The announcement, as virtio_rpmsg_bus' rpmsg_ns_cb parses it.
            let (h, ns) = g.recv().expect("announcement");
            assert_eq!((h.src, h.dst, h.len as usize), (addr, NS_ADDR, NS_MSG_SIZE));
            let ns = NsMsg::parse(&ns).unwrap();
            assert_eq!((ns.addr, ns.flags), (addr, 0));
            assert_eq!(&ns.name[..10], b"rpmsg-raw\0");

            // Every size up to 496, echoed back to the sender; more messages than
            // ring entries, so both rings wrap (packed: the wrap counters flip).
            for (i, size) in [1usize, 64, 200, 496]
                .into_iter()
                .cycle()
                .take(20)
                .enumerate()
            {
                let data: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
                let id = g.send(i as u64 % 8, 0x400 + round, addr, &data);
                let bus = link.bus().unwrap();
                bus.poll().unwrap();
                let m = bus.try_recv(ep).unwrap().expect("message");
                assert_eq!((m.src(), bus.payload(&m)), (0x400 + round, &data[..]));
                let src = m.src();
                bus.release(m).unwrap();
                bus.send(ep, src, &data).unwrap();
                let (h, back) = g.recv().expect("echo");
                assert_eq!((h.src, h.dst, back), (addr, src, data));
                // Released buffers go back with the next poll's batch.
                link.bus().unwrap().poll().unwrap();
                assert_eq!(g.tx.poll_used().map(|u| u.0), Some(id));
            }
            // Too long for the 512-byte buffer: refused, nothing written.
            let bus = link.bus().unwrap();
            assert!(bus.send(ep, 0x400, &[0u8; 497]).is_err());
            assert!(g.recv().is_none());

            // The driver unloads: the bus goes, the reset is acknowledged.
            assert_eq!(g.reset(2 * round, &mut link), GuestEvent::Reset);
            assert!(link.bus().is_none());
        }
        let s = link.bus_stats();
        assert_eq!((s.rx, s.tx), (40, 42));
        assert_eq!(s.bad_header + s.unknown_dst + s.dropped_full, 0);
        assert_eq!(link.ups(), 2);
        drop(link);
        assert!(!cfg.ram.exists() && !cfg.control.exists());
    }

    #[test]
    fn a_guest_driver_sees_announcements_and_echoes_split() {
        announcements_and_echoes(false, Transport::Zhvq);
    }

    #[test]
    fn a_guest_driver_sees_announcements_and_echoes_packed() {
        announcements_and_echoes(true, Transport::Zhvq);
    }

    #[test]
    fn a_guest_driver_sees_announcements_and_echoes_over_a_resource_table() {
        announcements_and_echoes(false, Transport::Rproc);
    }

    #[test]
    fn a_guest_scribbling_over_its_rings_breaks_only_its_own_link() {
        // Packed offered; the guest takes packed rings in even rounds, split in odd ones.
        scribbling_guest(test_cfg("hostile", true));
    }

    #[test]
    fn a_guest_scribbling_over_its_remoteproc_rings_breaks_only_its_own_link() {
        let mut cfg = test_cfg("hostile-rproc", false);
        cfg.transport = Transport::Rproc;
        scribbling_guest(cfg);
    }

    /// 20 rounds of a guest writing garbage over its rings and a transmit buffer's
    /// header while the device polls and sends; each ends with the guest's reset.
    fn scribbling_guest(cfg: GuestLinkConfig) {
        let mut link = GuestLink::create(&cfg).unwrap();
        let l = SplitLayout::new(cfg.queue_size).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut violations = 0;
        for round in 1..=20u32 {
            let packed = cfg.packed && round % 2 == 0;
            let (mut g, ep, addr) = boot_with_endpoint(&mut link, &cfg, 2 * round - 1, packed);
            g.send(0, 0x400, addr, b"ok");
            // Then garbage over both rings (descriptors, indices, used entries) and a
            // transmit buffer's header, while the device polls and sends.
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let ring = if x & 1 == 0 { RX_RING } else { TX_RING };
                let at = ring as usize + (((x >> 8) as usize % (l.size() - 8)) & !7);
                g.ram.store_u64(at, x, Ordering::Relaxed).unwrap();
                g.ram
                    .store_u64(
                        TX_BUFS as usize + 8 * (x as usize % 2),
                        x,
                        Ordering::Relaxed,
                    )
                    .unwrap();
                let bus = link.bus().unwrap();
                violations += usize::from(bus.poll().is_err());
                while let Ok(Some(m)) = bus.try_recv(ep) {
                    let src = m.src();
                    bus.release(m).unwrap();
                    let _ = bus.send_deadline(ep, src, b"echo", std::time::Instant::now());
                }
            }
            // Whatever the damage, the guest's reset brings a clean link back.
            assert_eq!(g.reset(2 * round, &mut link), GuestEvent::Reset);
        }
        let (mut g, ep, addr) = boot_with_endpoint(&mut link, &cfg, 41, false);
        g.send(0, 0x400, addr, b"after");
        let bus = link.bus().unwrap();
        bus.poll().unwrap();
        let m = bus
            .try_recv(ep)
            .unwrap()
            .expect("a clean link after the resets");
        assert_eq!(bus.payload(&m), b"after");
        bus.release(m).unwrap();
        assert_eq!(link.ups(), 21);
        assert!(violations > 20, "only {violations} polls saw a violation");
    }

    #[test]
    fn only_512_byte_buffers_and_split_rings_over_remoteproc() {
        let mut cfg = GuestLinkConfig::new("/dev/shm/unused-ram", 1 << 20, "/dev/shm/unused-ctl");
        cfg.bus.tx_buf_size = 1024;
        assert!(matches!(
            GuestLink::create(&cfg),
            Err(RpmsgError::Config(_))
        ));
        let mut cfg = GuestLinkConfig::new("/dev/shm/unused-ram", 1 << 20, "/dev/shm/unused-ctl");
        (cfg.transport, cfg.packed) = (Transport::Rproc, true);
        assert!(matches!(
            GuestLink::create(&cfg),
            Err(RpmsgError::Config(_))
        ));
        assert!(!cfg.ram.exists());
    }
}
