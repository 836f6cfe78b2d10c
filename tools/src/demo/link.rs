//! The window layout and the per-mode send and receive loops of `zerohop demo`.

use std::path::Path;
use std::time::Instant;

use dataplane::pmd::queue::virtio::{DeviceHalf, DriverHalf};
#[cfg(test)]
use dataplane::pmd::window::HeapWindow;
use dataplane::pmd::window::{self, open_header, OpenOptions, ShmWindow, Window};
use dataplane::rings::header::{Area, AreaKind, Expect, HeaderParams, HEADER_SIZE};
use dataplane::rings::packed::{PackedDevice, PackedDriver, PackedLayout};
use dataplane::rings::posted::{PostedLayout, PostedRx, PostedTx, RxMsg};
use dataplane::rings::split::{SplitDevice, SplitDriver, SplitLayout};
use dataplane::rings::{BufDesc, Mem, Region, RingError};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::{encode_histogram, new_histogram, now_ns, DemoParams, RxReport};

/// Ring modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// virtio 1.x split virtqueue.
    Split,
    /// virtio 1.x packed virtqueue.
    Packed,
    /// zerohop's posted-write ring.
    Posted,
}

impl Mode {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Split => "split",
            Mode::Packed => "packed",
            Mode::Posted => "posted",
        }
    }
}

/// How an idle side waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PollMode {
    /// Busy-poll with a spin hint (each side pinned to its own core).
    Spin,
    /// Yield the CPU after a few empty polls (for tests on a shared machine).
    Yield,
}

/// Idle-loop helper: spin, or yield after a few empty polls.
struct Idle {
    mode: PollMode,
    empty: u32,
}

impl Idle {
    fn new(mode: PollMode) -> Self {
        Idle { mode, empty: 0 }
    }
    #[inline]
    fn busy(&mut self) {
        self.empty = 0;
    }
    #[inline]
    fn idle(&mut self) {
        self.empty += 1;
        match self.mode {
            PollMode::Spin => core::hint::spin_loop(),
            PollMode::Yield => {
                if self.empty > 64 {
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// Payload: sequence number, send timestamp, then a byte pattern derived from the
/// sequence number (checked by the receiver).
const MIN_SIZE: u32 = 16;

fn fill_payload(buf: &mut [u8], seq: u64, ts: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&ts.to_le_bytes());
    for (i, b) in buf[16..].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_add(i as u8);
    }
}

/// The receiver's bookkeeping.
struct Checker {
    expected: u64,
    report: RxReport,
    hist: Histogram<u64>,
    first_ns: u64,
    last_ns: u64,
    scratch: Vec<u8>,
}

impl Checker {
    fn new(size: u32) -> Self {
        Checker {
            expected: 0,
            report: RxReport::default(),
            hist: new_histogram(),
            first_ns: 0,
            last_ns: 0,
            scratch: vec![0; size as usize],
        }
    }

    /// Checks one received payload (read out of `mem` at `off`).
    fn check(&mut self, mem: &impl Mem, off: usize, len: u32) {
        let now = now_ns();
        if self.first_ns == 0 {
            self.first_ns = now;
        }
        self.last_ns = now;
        self.report.received += 1;
        if len as usize != self.scratch.len() || mem.read_bytes(off, &mut self.scratch).is_err() {
            self.report.corrupted += 1;
            return;
        }
        let seq = u64::from_le_bytes(self.scratch[..8].try_into().expect("8 bytes"));
        let ts = u64::from_le_bytes(self.scratch[8..16].try_into().expect("8 bytes"));
        let pattern_ok = self.scratch[16..]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (seq as u8).wrapping_add(i as u8));
        if !pattern_ok {
            self.report.corrupted += 1;
        }
        use std::cmp::Ordering::*;
        match seq.cmp(&self.expected) {
            Equal => self.expected += 1,
            Greater => {
                self.report.lost += seq - self.expected;
                self.expected = seq + 1;
            }
            Less => {
                // Seen before (a duplicate) or behind the newest (reordered): a strictly
                // in-order link has neither.
                self.report.reordered += 1;
            }
        }
        self.hist.saturating_record(now.saturating_sub(ts).max(1));
    }

    fn finish(mut self, count: u64, err: Option<String>) -> RxReport {
        // Entries never seen at the end were lost too.
        if self.expected < count {
            self.report.lost += count - self.expected;
        }
        self.report.elapsed_ns = self.last_ns.saturating_sub(self.first_ns);
        self.report.histogram_hex = encode_histogram(&self.hist);
        self.report.error = err;
        self.report
    }
}

/// The window of one demo link and the regions of its areas.
pub struct Link {
    _window: Box<dyn Window>,
    ring: Region,
    ring2: Region,
    data: Region,
}

fn align_up(n: usize, a: usize) -> usize {
    n.div_ceil(a) * a
}

/// Area sizes for a mode: (ring area, second ring area, buffer area).
fn area_sizes(p: &DemoParams) -> Result<(usize, usize, usize), RingError> {
    let buf = align_up(p.size as usize, 64);
    Ok(match p.mode {
        Mode::Split => (
            SplitLayout::new(p.ring_size as u16)?.size(),
            0,
            p.ring_size as usize * buf,
        ),
        Mode::Packed => (
            PackedLayout::new(p.ring_size as u16)?.size(),
            0,
            p.ring_size as usize * buf,
        ),
        Mode::Posted => {
            let l = posted_layout(p)?;
            (l.tx_area_size(), l.rx_area_size(), 0)
        }
    })
}

fn posted_layout(p: &DemoParams) -> Result<PostedLayout, RingError> {
    PostedLayout::new(
        p.ring_size,
        64,
        p.ring_size,
        align_up(p.size as usize, 64) as u32,
    )
}

impl Link {
    /// Creates the window at `path` and lays out (and initialises) the mode's rings.
    pub fn create(path: &Path, p: &DemoParams) -> Result<Link, String> {
        if p.size < MIN_SIZE {
            return Err(format!("entry size must be at least {MIN_SIZE} bytes"));
        }
        let (a, b, c) = area_sizes(p).map_err(|e| e.to_string())?;
        let page = window::page_size();
        let ring_off = HEADER_SIZE;
        let ring2_off = ring_off + align_up(a, page);
        let data_off = ring2_off + align_up(b.max(1), page);
        let total = data_off + align_up(c.max(1), page);
        let w = ShmWindow::create(path, total).map_err(|e| e.to_string())?;
        let kind = match p.mode {
            Mode::Split => AreaKind::SplitRing,
            Mode::Packed => AreaKind::PackedRing,
            Mode::Posted => AreaKind::PostedRing,
        };
        let params = HeaderParams {
            window_size: None,
            creator_pid: std::process::id(),
            flags: 0,
            areas: vec![
                Area::new(kind, ring_off as u64, a as u64),
                Area::new(AreaKind::User, ring2_off as u64, b.max(1) as u64),
                Area::new(AreaKind::Buffers, data_off as u64, c.max(1) as u64),
            ],
        };
        let ring = w.region().sub(ring_off, a).map_err(|e| e.to_string())?;
        let ring2 = w
            .region()
            .sub(ring2_off, b.max(1))
            .map_err(|e| e.to_string())?;
        let data = w
            .region()
            .sub(data_off, c.max(1))
            .map_err(|e| e.to_string())?;
        // The rings are initialised before the header's init stamp is written, so a
        // peer that sees a valid header sees initialised rings.
        window::init_header(&w, &params).map_err(|e| e.to_string())?;
        Ok(Link {
            _window: Box::new(w),
            ring,
            ring2,
            data,
        })
    }

    /// Attaches to a window made by [`Link::create`].
    pub fn open(path: &Path, _p: &DemoParams) -> Result<Link, String> {
        let w = ShmWindow::open(path, &OpenOptions::new()).map_err(|e| e.to_string())?;
        let info = open_header(&w, &Expect::default()).map_err(|e| e.to_string())?;
        let areas = info.areas();
        if areas.len() != 3 {
            return Err(format!(
                "{}: expected 3 areas in the window header, found {}",
                path.display(),
                areas.len()
            ));
        }
        let sub = |i: usize| -> Result<Region, String> {
            let a = areas[i];
            w.region()
                .sub(a.offset as usize, a.size as usize)
                .map_err(|e| format!("{}: area {i}: {e}", path.display()))
        };
        let (ring, ring2, data) = (sub(0)?, sub(1)?, sub(2)?);
        Ok(Link {
            _window: Box::new(w),
            ring,
            ring2,
            data,
        })
    }

    /// A heap-backed link (unit tests of the loops).
    #[cfg(test)]
    fn heap(p: &DemoParams) -> Link {
        let (a, b, c) = area_sizes(p).unwrap();
        let w = HeapWindow::new(a + b.max(1) + c.max(1) + 4096 * 3).unwrap();
        let r = w.region().clone();
        Link {
            ring: r.sub(0, a).unwrap(),
            ring2: r.sub(align_up(a, 4096), b.max(1)).unwrap(),
            data: r
                .sub(align_up(a, 4096) + align_up(b.max(1), 4096), c.max(1))
                .unwrap(),
            _window: Box::new(w),
        }
    }

    /// Sends `p.count` entries; returns how many were sent.
    pub fn send_all(&self, p: &DemoParams) -> Result<u64, String> {
        let deadline = Instant::now() + p.deadline;
        match p.mode {
            Mode::Split => self.send_split(p, deadline),
            Mode::Packed => self.send_packed(p, deadline),
            Mode::Posted => self.send_posted(p, deadline),
        }
        .map_err(|e| e.to_string())
    }

    /// Receives until `p.count` entries arrived or the deadline passed.
    pub fn receive_all(&self, p: &DemoParams) -> RxReport {
        let deadline = Instant::now() + p.deadline;
        let mut chk = Checker::new(p.size);
        let r = match p.mode {
            Mode::Split => self.recv_split(p, deadline, &mut chk),
            Mode::Packed => self.recv_packed(p, deadline, &mut chk),
            Mode::Posted => self.recv_posted(p, deadline, &mut chk),
        };
        chk.finish(p.count, r.err().map(|e| e.to_string()))
    }

    fn buf_size(p: &DemoParams) -> usize {
        align_up(p.size as usize, 64)
    }

    fn send_split(&self, p: &DemoParams, deadline: Instant) -> Result<u64, RingError> {
        let mut drv = SplitDriver::open(self.ring.clone(), p.ring_size as u16, self.data.clone())?;
        self.send_virtio(p, deadline, &mut drv)
    }

    fn send_packed(&self, p: &DemoParams, deadline: Instant) -> Result<u64, RingError> {
        let mut drv = PackedDriver::open(self.ring.clone(), p.ring_size as u16, self.data.clone())?;
        self.send_virtio(p, deadline, &mut drv)
    }

    /// The driver loop shared by split and packed: reclaim, fill, add, publish.
    fn send_virtio<D: DriverHalf<Region>>(
        &self,
        p: &DemoParams,
        deadline: Instant,
        drv: &mut D,
    ) -> Result<u64, RingError> {
        let bs = Self::buf_size(p);
        let n = p.ring_size as usize;
        // Buffer i lives at i * bs in the data area; `by_id` maps a chain id to it.
        let mut free: Vec<usize> = (0..n).rev().collect();
        let mut by_id = vec![usize::MAX; 65536];
        let mut payload = vec![0u8; p.size as usize];
        let mut idle = Idle::new(p.poll);
        let mut seq = 0u64;
        let mut in_flight = 0usize;
        while seq < p.count || in_flight > 0 {
            if Instant::now() > deadline {
                return Err(RingError::InvalidRequest("deadline passed"));
            }
            let mut progress = false;
            while let Some((id, _len)) = drv.poll_used()? {
                let b = std::mem::replace(&mut by_id[id as usize], usize::MAX);
                if b == usize::MAX {
                    return Err(RingError::UnexpectedUsedId { id: id as u32 });
                }
                free.push(b);
                in_flight -= 1;
                progress = true;
            }
            let mut added = 0;
            while added < p.burst && seq < p.count {
                let Some(b) = free.pop() else { break };
                fill_payload(&mut payload, seq, now_ns());
                self.data.write_bytes(b * bs, &payload)?;
                let id = drv.add(&[BufDesc::readable((b * bs) as u64, p.size)])?;
                by_id[id as usize] = b;
                seq += 1;
                added += 1;
                in_flight += 1;
            }
            if added > 0 {
                drv.publish()?;
                progress = true;
            }
            if progress {
                idle.busy()
            } else {
                idle.idle()
            }
        }
        Ok(seq)
    }

    fn recv_split(
        &self,
        p: &DemoParams,
        deadline: Instant,
        chk: &mut Checker,
    ) -> Result<(), RingError> {
        let mut dev = SplitDevice::open(self.ring.clone(), p.ring_size as u16, self.data.clone())?;
        self.recv_virtio(p, deadline, chk, &mut dev)
    }

    fn recv_packed(
        &self,
        p: &DemoParams,
        deadline: Instant,
        chk: &mut Checker,
    ) -> Result<(), RingError> {
        let mut dev = PackedDevice::open(self.ring.clone(), p.ring_size as u16, self.data.clone())?;
        self.recv_virtio(p, deadline, chk, &mut dev)
    }

    /// The device loop shared by split and packed: pop a burst, check, return used.
    fn recv_virtio<D: DeviceHalf<Region>>(
        &self,
        p: &DemoParams,
        deadline: Instant,
        chk: &mut Checker,
        dev: &mut D,
    ) -> Result<(), RingError> {
        let mut bufs = [BufDesc::default(); 4];
        let mut idle = Idle::new(p.poll);
        while chk.report.received < p.count {
            if Instant::now() > deadline {
                return Err(RingError::InvalidRequest("deadline passed"));
            }
            let mut n = 0;
            while n < p.burst {
                let Some(c) = dev.pop(&mut bufs)? else { break };
                let b = bufs[0];
                chk.check(&self.data, b.addr as usize, b.len);
                dev.push_used(c.id, 0, c.slots)?;
                n += 1;
            }
            if n > 0 {
                dev.publish_used()?;
                idle.busy();
            } else {
                idle.idle();
            }
        }
        Ok(())
    }

    fn send_posted(&self, p: &DemoParams, deadline: Instant) -> Result<u64, RingError> {
        // Sender: its own memory is the tx area (credits), the peer's the rx area.
        let mut tx = PostedTx::new(self.ring.clone(), self.ring2.clone(), posted_layout(p)?)?;
        let mut payload = vec![0u8; p.size as usize];
        let mut idle = Idle::new(p.poll);
        let mut seq = 0u64;
        while seq < p.count {
            if Instant::now() > deadline {
                return Err(RingError::InvalidRequest("deadline passed"));
            }
            tx.poll_credits()?;
            let mut sent = 0;
            while sent < p.burst && seq < p.count {
                fill_payload(&mut payload, seq, now_ns());
                if !tx.send(&payload, 0)? {
                    break;
                }
                seq += 1;
                sent += 1;
            }
            if sent > 0 {
                tx.publish()?;
                idle.busy();
            } else {
                idle.idle();
            }
        }
        Ok(seq)
    }

    fn recv_posted(
        &self,
        p: &DemoParams,
        deadline: Instant,
        chk: &mut Checker,
    ) -> Result<(), RingError> {
        let mut rx = PostedRx::new(self.ring2.clone(), self.ring.clone(), posted_layout(p)?)?;
        // Credit state is the receiver's own: it grants every buffer once attached.
        rx.init_credits()?;
        let mut msgs = vec![RxMsg::default(); p.burst as usize];
        let mut grants = Vec::with_capacity(p.burst as usize);
        let mut idle = Idle::new(p.poll);
        while chk.report.received < p.count {
            if Instant::now() > deadline {
                return Err(RingError::InvalidRequest("deadline passed"));
            }
            let n = rx.poll(&mut msgs)?;
            if n == 0 {
                idle.idle();
                continue;
            }
            idle.busy();
            grants.clear();
            for m in &msgs[..n] {
                chk.check(&self.ring2, m.payload_off(), m.len);
                if let dataplane::rings::posted::RxKind::Buffer { index, .. } = m.kind {
                    grants.push(index);
                }
            }
            // Done with the slots (inline payload was checked above): let the sender
            // reuse them, and return the buffers as credits.
            rx.release_slots(n as u32)?;
            rx.complete()?;
            if !grants.is_empty() {
                rx.grant(&grants)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn params(mode: Mode, size: u32) -> DemoParams {
        DemoParams {
            mode,
            count: 100_000,
            size,
            burst: 32,
            ring_size: 64,
            poll: PollMode::Yield,
            deadline: Duration::from_secs(30),
        }
    }

    fn run_threads(p: &DemoParams) -> (Result<u64, String>, RxReport) {
        let link = Link::heap(p);
        std::thread::scope(|s| {
            let rx = s.spawn(|| link.receive_all(p));
            let tx = link.send_all(p);
            (tx, rx.join().unwrap())
        })
    }

    #[test]
    fn every_mode_moves_entries_in_order_between_threads() {
        for (mode, size) in [
            (Mode::Split, 64),
            (Mode::Packed, 64),
            (Mode::Posted, 64),
            (Mode::Posted, 32),
        ] {
            let p = params(mode, size);
            let (tx, rx) = run_threads(&p);
            assert_eq!(tx, Ok(p.count), "{mode:?}: {rx:?}");
            assert_eq!(rx.received, p.count, "{mode:?}: {rx:?}");
            assert_eq!(
                (rx.lost, rx.reordered, rx.duplicated, rx.corrupted),
                (0, 0, 0, 0),
                "{mode:?}"
            );
            assert!(rx.error.is_none(), "{mode:?}: {rx:?}");
        }
    }
}
