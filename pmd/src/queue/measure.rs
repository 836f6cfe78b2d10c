//! Measures the remote accesses per packet of a ring mode: a short duplex run between
//! two threads over a fresh /dev/shm window (removed afterwards), with every area a
//! side reaches *through the link* wrapped in [`Counted`]. Tools call it before a timed run so the figures they print
//! were measured in the same run (GUIDE.md section 6).
//!
//! Who counts: in `posted` mode both sides reach the other's areas (payload and slots
//! one way, credits and `consumed` the other), so both are counted; in `split` and
//! `packed` mode every ring and buffer is in the frontend's memory, so only the
//! backend's accesses cross the link and the frontend's are all local.

use std::sync::Arc;
use std::time::Duration;

use rings::posted::PostedLayout;
use rings::Region;

use super::testpkt::{run_duplex, TestQueue, Traffic};
use super::virtio::{RingKind, RingMode};
use super::{
    Packed, PlainCopy, PostedLinkLayout, PostedQueuePair, QueueError, Side, SideAreas, Split,
    VirtioAreas, VirtioBackend, VirtioLinkLayout,
};
use crate::window::{AccessCounters, AccessSnapshot, Counted, ShmWindow, WindowError};

/// Remote reads and writes per packet on one direction's path.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PathAccesses {
    /// Loads of memory on the other side of the link, per packet.
    pub reads: f64,
    /// Stores into memory on the other side of the link, per packet.
    pub writes: f64,
}

/// Remote accesses per packet in each direction (frontend -> backend and back). In
/// `posted` mode "frontend" is side A, the window's creator.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RemoteAccesses {
    /// A packet from the frontend to the backend.
    pub to_backend: PathAccesses,
    /// A packet from the backend to the frontend.
    pub to_frontend: PathAccesses,
    /// Packets each way in the measured run.
    pub packets: u64,
}

/// Which ring mode to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeasuredRing {
    /// zerohop's posted ring (`POSTED_SLOT_SIZE` slots, 2 KiB buffers).
    Posted,
    /// virtio split virtqueues.
    Split,
    /// virtio packed virtqueues.
    Packed,
}

const RING: u16 = 256;
const BUF: u32 = 2048;

/// Runs `packets` packets of `size` bytes each way (duplex, two threads) and returns
/// the remote accesses per packet. `size` must fit a 2 KiB buffer (minus the virtio
/// modes' 8-byte header).
pub fn remote_accesses(
    ring: MeasuredRing,
    size: usize,
    packets: u64,
) -> Result<RemoteAccesses, QueueError> {
    let mut t = Traffic::new(packets, &[size.max(16)]);
    t.deadline = Duration::from_secs(60);
    match ring {
        MeasuredRing::Posted => posted(&t),
        MeasuredRing::Split => virtio::<Split>(RingMode::Split, &t),
        MeasuredRing::Packed => virtio::<Packed>(RingMode::Packed, &t),
    }
}

/// Drives both queues to completion on two threads; an unclean run is an error.
fn duplex<A: TestQueue, B: TestQueue>(a: &mut A, b: &mut B, t: &Traffic) -> Result<(), QueueError> {
    let (ra, rb) = std::thread::scope(|s| {
        let hb = s.spawn(|| run_duplex(b, t));
        (run_duplex(a, t), hb.join())
    });
    let rb = rb.map_err(|_| QueueError::Protocol {
        what: "measuring thread panicked",
        value: 0,
    })?;
    if ra.clean(t.count) && rb.clean(t.count) {
        Ok(())
    } else {
        Err(QueueError::Protocol {
            what: "measuring run lost, reordered or corrupted packets",
            value: ra.lost + rb.lost + ra.corrupted + rb.corrupted,
        })
    }
}

/// A fresh window under /dev/shm for one measurement (removed when dropped).
fn scratch_window(size: usize) -> Result<ShmWindow, WindowError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    // Relaxed: only makes the name unique within this process.
    let n = N.fetch_add(1, Ordering::Relaxed);
    ShmWindow::create(
        format!("/dev/shm/zerohop-measure-{}-{n}", std::process::id()),
        size,
    )
}

fn per(x: u64, n: u64) -> f64 {
    (x as f64 / n.max(1) as f64 * 1000.0).round() / 1000.0
}

fn posted(t: &Traffic) -> Result<RemoteAccesses, QueueError> {
    // The geometry ports use (`POSTED_SLOT_SIZE`), so the counts match the run.
    let layout = PostedLayout::new(RING as u32, super::POSTED_SLOT_SIZE, RING as u32, BUF)?;
    let l = PostedLinkLayout::new(layout, 1)?;
    let w = scratch_window(l.window_size())?;
    l.create(&w)?;
    // Per side: [its TX into the peer's rx area, its RX's credits into the peer's tx area].
    let open = |side: Side| -> Result<_, QueueError> {
        let c: [Arc<AccessCounters>; 2] = Default::default();
        let ar = l.side_areas(&w, side, 0)?;
        let areas = SideAreas {
            local_tx: ar.local_tx,
            local_rx: ar.local_rx,
            remote_tx: Counted::with_counters(ar.remote_tx, c[1].clone()),
            remote_rx: Counted::with_counters(ar.remote_rx, c[0].clone()),
        };
        Ok((PostedQueuePair::new(areas, l.ring(), 32)?, c))
    };
    let (mut a, ca) = open(Side::A)?;
    let (mut b, cb) = open(Side::B)?;
    let before: Vec<AccessSnapshot> = ca.iter().chain(cb.iter()).map(|c| c.snapshot()).collect();
    duplex(&mut a, &mut b, t)?;
    let d: Vec<AccessSnapshot> = ca
        .iter()
        .chain(cb.iter())
        .zip(before)
        .map(|(c, b)| c.snapshot() - b)
        .collect();
    let n = t.count;
    // A -> B: A's TX stores and B's credit stores; B -> A the mirror image.
    Ok(RemoteAccesses {
        to_backend: PathAccesses {
            reads: per(d[0].reads + d[3].reads, n),
            writes: per(d[0].writes + d[3].writes, n),
        },
        to_frontend: PathAccesses {
            reads: per(d[2].reads + d[1].reads, n),
            writes: per(d[2].writes + d[1].writes, n),
        },
        packets: n,
    })
}

fn virtio<K: RingKind>(mode: RingMode, t: &Traffic) -> Result<RemoteAccesses, QueueError> {
    let l = VirtioLinkLayout::new(mode, RING, BUF, 1)?;
    let w = scratch_window(l.window_size())?;
    l.create(&w)?;
    let mut f = l.open_frontend::<K>(&w, 0)?;
    // The backend's view of the frontend's memory: [TX ring, RX ring, data].
    let c: [Arc<AccessCounters>; 3] = Default::default();
    let a: VirtioAreas<Region> = l.areas(&w, 0)?;
    let areas = VirtioAreas {
        tx_ring: Counted::with_counters(a.tx_ring, c[0].clone()),
        rx_ring: Counted::with_counters(a.rx_ring, c[1].clone()),
        data: Counted::with_counters(a.data, c[2].clone()),
    };
    let mut b = VirtioBackend::<K, _, _>::new(areas, l.geometry(), 32, PlainCopy)?;
    let before = c.each_ref().map(|c| c.snapshot());
    duplex(&mut f, &mut b, t)?;
    let d: Vec<AccessSnapshot> = c
        .iter()
        .zip(before)
        .map(|(c, b)| c.snapshot() - b)
        .collect();
    let n = t.count;
    // The data area is read only on the F->B path (the backend reads payload in
    // place) and written only on the B->F path (it copies payload in).
    Ok(RemoteAccesses {
        to_backend: PathAccesses {
            reads: per(d[0].reads + d[2].reads, n),
            writes: per(d[0].writes, n),
        },
        to_frontend: PathAccesses {
            reads: per(d[1].reads, n),
            writes: per(d[1].writes + d[2].writes, n),
        },
        packets: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posted_reads_nothing_remote_and_virtio_backends_do() {
        let p = remote_accesses(MeasuredRing::Posted, 64, 20_000).unwrap();
        assert_eq!(p.to_backend.reads, 0.0);
        assert_eq!(p.to_frontend.reads, 0.0);
        assert!(p.to_backend.writes > 0.0 && p.to_frontend.writes > 0.0);
        for ring in [MeasuredRing::Split, MeasuredRing::Packed] {
            let v = remote_accesses(ring, 64, 20_000).unwrap();
            assert!(v.to_backend.reads > 0.0, "{ring:?}: {v:?}");
            assert!(v.to_frontend.writes > 0.0, "{ring:?}: {v:?}");
        }
    }
}
