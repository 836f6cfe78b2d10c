//! Test-pattern packets and a duplex traffic loop over any queue pair ([`TestQueue`]:
//! a [`QueuePair`] whose received bytes can be read through its memory).
//!
//! A packet of `len >= 16` bytes:
//!
//! ```text
//!  0        8          16                                   len
//!  +--------+----------+-------------------------------------+
//!  | seq    | checksum | pattern: word k = seq * K ^ k (LE)  |
//!  +--------+----------+-------------------------------------+
//! ```
//!
//! The checksum is a cheap order-sensitive fold of the 64-bit little-endian words of
//! `seq`, the length and the pattern (the last partial word zero-padded), computed on
//! both sides. [`run_duplex`] sends `count` packets and receives `count` packets on one
//! queue pair in one loop (so two processes or threads each running it exercise both
//! directions at once), checking sequence, length and checksum of every packet: the
//! report counts lost, reordered and corrupted packets.

use std::time::{Duration, Instant};

use rings::Mem;

use super::virtio::{RingKind, VirtioBackend, VirtioFrontend};
use super::{CopyFn, PktHandle, PostedQueuePair, QueueError, QueuePair, RxPkt, TxSlot};

/// A [`QueuePair`] [`run_duplex`] can drive: it reads received bytes through the
/// queue's own memory (so instrumented memory counts them).
pub trait TestQueue: QueuePair {
    /// Copies the first `dst.len()` bytes of a received packet into `dst`.
    fn read_rx(&self, pkt: &RxPkt, dst: &mut [u8]) -> Result<(), QueueError>;
    /// Largest burst one call handles.
    fn burst_limit(&self) -> usize;
    /// Smallest payload worth a zero-copy buffer (posted: above the inline capacity).
    fn zero_copy_min(&self) -> usize {
        0
    }
}

impl<L: Mem + Send, R: Mem + Send, C: CopyFn + Send> TestQueue for PostedQueuePair<L, R, C> {
    fn read_rx(&self, pkt: &RxPkt, dst: &mut [u8]) -> Result<(), QueueError> {
        Ok(self.rx_mem().read_bytes(pkt.off, dst)?)
    }
    fn burst_limit(&self) -> usize {
        self.max_burst()
    }
    fn zero_copy_min(&self) -> usize {
        self.layout().inline_capacity() as usize + 1
    }
}

impl<K: RingKind, M: Mem + Send, C: CopyFn + Send> TestQueue for VirtioFrontend<K, M, C> {
    fn read_rx(&self, pkt: &RxPkt, dst: &mut [u8]) -> Result<(), QueueError> {
        Ok(self.data().read_bytes(pkt.off, dst)?)
    }
    fn burst_limit(&self) -> usize {
        self.max_burst()
    }
}

impl<K: RingKind, M: Mem + Send, C: CopyFn + Send> TestQueue for VirtioBackend<K, M, C> {
    fn read_rx(&self, pkt: &RxPkt, dst: &mut [u8]) -> Result<(), QueueError> {
        Ok(self.data().read_bytes(pkt.off, dst)?)
    }
    fn burst_limit(&self) -> usize {
        self.max_burst()
    }
}

/// Smallest test packet (sequence number + checksum).
pub const MIN_LEN: usize = 16;
const K: u64 = 0x9E37_79B9_7F4A_7C15;
/// `meta` of packets sent by [`PostedQueuePair::tx_burst`] in [`run_duplex`].
pub const META_COPY: u16 = 0xC0;
/// `meta` of packets sent zero-copy in [`run_duplex`].
pub const META_ZC: u16 = 0x2C;

/// The checksum of a packet with sequence number `seq` and bytes `pattern` after the
/// 16-byte header.
pub fn checksum(seq: u64, pattern: &[u8]) -> u64 {
    // Four independent lanes (word i goes to lane i % 4, each lane an order-sensitive
    // rotate-xor fold), combined at the end: as sensitive to order and position as one
    // serial fold, but the lanes run in parallel, so a 1500-byte packet costs about a
    // quarter of the time.
    let mut h = [
        seq ^ (pattern.len() as u64).rotate_left(32),
        seq.rotate_left(16),
        seq.rotate_left(32),
        seq.rotate_left(48),
    ];
    let mut chunks = pattern.chunks_exact(32);
    for c in chunks.by_ref() {
        for (lane, w) in h.iter_mut().zip(c.chunks_exact(8)) {
            let w = u64::from_le_bytes(w.try_into().expect("8-byte chunk"));
            *lane = lane.rotate_left(7) ^ w;
        }
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks(8);
    for (lane, w) in h.iter_mut().zip(words.by_ref()) {
        let mut b = [0u8; 8];
        b[..w.len()].copy_from_slice(w);
        *lane = lane.rotate_left(7) ^ u64::from_le_bytes(b);
    }
    h[0] ^ h[1].rotate_left(13) ^ h[2].rotate_left(29) ^ h[3].rotate_left(43)
}

/// Fills `buf` (`len >= 16`) as packet `seq`.
pub fn fill(buf: &mut [u8], seq: u64) {
    if buf.len() < MIN_LEN {
        return;
    }
    let (hdr, pattern) = buf.split_at_mut(MIN_LEN);
    let base = seq.wrapping_mul(K);
    let mut chunks = pattern.chunks_exact_mut(8);
    let mut k = 0u64;
    for c in chunks.by_ref() {
        c.copy_from_slice(&(base ^ k).to_le_bytes());
        k += 1;
    }
    let rest = chunks.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&(base ^ k).to_le_bytes()[..n]);
    let sum = checksum(seq, pattern);
    hdr[..8].copy_from_slice(&seq.to_le_bytes());
    hdr[8..].copy_from_slice(&sum.to_le_bytes());
}

/// Checks a received packet: its sequence number if the checksum matches.
pub fn verify(buf: &[u8]) -> Option<u64> {
    if buf.len() < MIN_LEN {
        return None;
    }
    let seq = u64::from_le_bytes(buf[..8].try_into().ok()?);
    let sum = u64::from_le_bytes(buf[8..16].try_into().ok()?);
    (checksum(seq, &buf[MIN_LEN..]) == sum).then_some(seq)
}

/// What [`run_duplex`] does.
#[derive(Clone, Debug)]
pub struct Traffic {
    /// Packets to send, and to receive.
    pub count: u64,
    /// Packet `seq` has length `sizes[seq % sizes.len()]` (each `>= 16`).
    pub sizes: Vec<usize>,
    /// Every n-th transmit burst is zero-copy (`alloc_tx` + `tx_commit`); 0 = never.
    pub zero_copy_every: u64,
    /// Packets with `seq % hold_every == 3` are held and freed later, out of order
    /// (0 = never).
    pub hold_every: u64,
    /// Held packets are freed (newest first) when this many are held.
    pub hold_max: usize,
    /// Burst size.
    pub burst: usize,
    /// Give up after this long.
    pub deadline: Duration,
    /// Check the `meta` of received packets (off for queues that do not carry it,
    /// such as split/packed with [`super::PktHeader::None`]).
    pub check_meta: bool,
}

impl Traffic {
    /// `count` packets of the given sizes, every third burst zero-copy, every 7th
    /// packet held (up to 8 at a time), bursts of 32, a deadline of 60 s.
    pub fn new(count: u64, sizes: &[usize]) -> Self {
        Traffic {
            count,
            sizes: sizes.to_vec(),
            zero_copy_every: 3,
            hold_every: 7,
            hold_max: 8,
            burst: 32,
            deadline: Duration::from_secs(60),
            check_meta: true,
        }
    }
    fn size(&self, seq: u64) -> usize {
        self.sizes[(seq % self.sizes.len() as u64) as usize].max(MIN_LEN)
    }
}

/// What [`run_duplex`] saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficReport {
    /// Packets sent.
    pub sent: u64,
    /// Packets received.
    pub received: u64,
    /// Sequence numbers skipped (never received).
    pub lost: u64,
    /// Packets that arrived behind a later one (or twice).
    pub reordered: u64,
    /// Packets with a wrong checksum, length or meta.
    pub corrupted: u64,
    /// Time from start to the last packet.
    pub elapsed: Duration,
    /// Why the loop stopped early.
    pub error: Option<String>,
}

impl TrafficReport {
    /// True if every packet went both ways intact and in order.
    pub fn clean(&self, count: u64) -> bool {
        self.sent == count
            && self.received == count
            && self.lost == 0
            && self.reordered == 0
            && self.corrupted == 0
            && self.error.is_none()
    }
}

/// Sends and receives `t.count` packets on `q` in one polling loop (see the module
/// docs); yields the CPU after 64 idle iterations.
pub fn run_duplex<Q: TestQueue + ?Sized>(q: &mut Q, t: &Traffic) -> TrafficReport {
    let start = Instant::now();
    let deadline = start + t.deadline;
    let burst = t.burst.clamp(1, q.burst_limit());
    let zc_min = q.zero_copy_min();
    let max_size = t
        .sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(MIN_LEN)
        .max(MIN_LEN);
    let mut rep = TrafficReport::default();
    let mut expected = 0u64;
    let mut pkts = vec![RxPkt::default(); burst];
    let mut frees: Vec<PktHandle> = Vec::with_capacity(burst);
    let mut held: Vec<PktHandle> = Vec::with_capacity(t.hold_max + burst);
    let mut scratch = vec![0u8; max_size];
    let mut arena: Vec<Vec<u8>> = (0..burst).map(|_| vec![0u8; max_size]).collect();
    let mut slots = vec![TxSlot::default(); burst];
    let mut commits: Vec<(TxSlot, u32, u16)> = Vec::with_capacity(burst);
    let mut tx_bursts = 0u64;
    let mut idle = 0u32;
    let mut iter = 0u32;
    let fail = |rep: &mut TrafficReport, what: &str, e: &dyn std::fmt::Display| {
        rep.error = Some(format!("{what}: {e}"));
    };
    while rep.sent < t.count || rep.received < t.count || !held.is_empty() {
        iter = iter.wrapping_add(1);
        if iter & 255 == 0 && Instant::now() > deadline {
            rep.error = Some(format!(
                "deadline passed: sent {} received {} of {}",
                rep.sent, rep.received, t.count
            ));
            break;
        }
        let mut progress = false;

        // ---- receive ----
        let n = match q.rx_burst(&mut pkts) {
            Ok(n) => n,
            Err(e) => {
                fail(&mut rep, "rx_burst", &e);
                break;
            }
        };
        frees.clear();
        for p in &pkts[..n] {
            let len = p.len as usize;
            let ok = len <= scratch.len() && q.read_rx(p, &mut scratch[..len]).is_ok();
            match ok.then(|| verify(&scratch[..len])).flatten() {
                Some(seq) => {
                    if len != t.size(seq)
                        || (t.check_meta && p.meta != META_COPY && p.meta != META_ZC)
                    {
                        rep.corrupted += 1;
                    }
                    match seq.cmp(&expected) {
                        std::cmp::Ordering::Equal => expected += 1,
                        std::cmp::Ordering::Greater => {
                            rep.lost += seq - expected;
                            expected = seq + 1;
                        }
                        std::cmp::Ordering::Less => rep.reordered += 1,
                    }
                    if t.hold_every != 0 && seq % t.hold_every == 3 && held.len() < t.hold_max {
                        held.push(p.handle);
                    } else {
                        frees.push(p.handle);
                    }
                }
                None => {
                    rep.corrupted += 1;
                    frees.push(p.handle);
                }
            }
        }
        rep.received += n as u64;
        // Free the held ones, newest first, when enough are held, when the ring went
        // quiet (they may be what holds it back) or at the end.
        if !held.is_empty() && (held.len() >= t.hold_max || n == 0 || rep.received >= t.count) {
            while let Some(h) = held.pop() {
                frees.push(h);
            }
        }
        if !frees.is_empty() {
            if let Err(e) = q.free(&frees) {
                fail(&mut rep, "free", &e);
                break;
            }
        }
        if n > 0 {
            progress = true;
        }

        // ---- transmit ----
        if rep.sent < t.count {
            let left = (t.count - rep.sent).min(burst as u64) as usize;
            tx_bursts += 1;
            let zc = t.zero_copy_every != 0 && tx_bursts == t.zero_copy_every;
            if zc {
                tx_bursts = 0;
            }
            // Zero-copy only for a run of buffer-sized packets.
            let run = if zc {
                (0..left)
                    .take_while(|&k| t.size(rep.sent + k as u64) >= zc_min)
                    .count()
            } else {
                0
            };
            let sent = if run > 0 {
                tx_zero_copy(
                    q,
                    t,
                    rep.sent,
                    &mut slots[..run],
                    &mut commits,
                    &mut arena[0],
                )
            } else {
                let mut lens = [0usize; super::MAX_BURST];
                for k in 0..left {
                    let len = t.size(rep.sent + k as u64);
                    fill(&mut arena[k][..len], rep.sent + k as u64);
                    lens[k] = len;
                }
                let refs: Vec<&[u8]> = (0..left).map(|k| &arena[k][..lens[k]]).collect();
                q.tx_burst(&refs, META_COPY)
                    .map_err(|e| format!("tx_burst: {e}"))
            };
            match sent {
                Ok(k) => {
                    rep.sent += k as u64;
                    progress |= k > 0;
                }
                Err(e) => {
                    rep.error = Some(e);
                    break;
                }
            }
        }

        if progress {
            idle = 0;
        } else {
            idle += 1;
            if idle > 64 {
                std::thread::yield_now();
            } else {
                core::hint::spin_loop();
            }
        }
    }
    if expected < t.count && rep.error.is_none() {
        rep.lost += t.count - expected;
    }
    rep.elapsed = start.elapsed();
    rep
}

/// One zero-copy burst: alloc, build each packet in place, commit.
fn tx_zero_copy<Q: TestQueue + ?Sized>(
    q: &mut Q,
    t: &Traffic,
    first: u64,
    slots: &mut [TxSlot],
    commits: &mut Vec<(TxSlot, u32, u16)>,
    tmp: &mut [u8],
) -> Result<usize, String> {
    let n = q.alloc_tx(slots).map_err(|e| format!("alloc_tx: {e}"))?;
    commits.clear();
    for (k, s) in slots[..n].iter().enumerate() {
        let seq = first + k as u64;
        let len = t.size(seq);
        // Built in a scratch buffer and written with one copy here; a real
        // application builds headers directly at `s.ptr()`.
        fill(&mut tmp[..len], seq);
        q.tx_write(s, 0, &tmp[..len])
            .map_err(|e| format!("tx_write: {e}"))?;
        commits.push((*s, len as u32, META_ZC));
    }
    q.tx_commit(commits).map_err(|e| format!("tx_commit: {e}"))
}
