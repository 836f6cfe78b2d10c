//! The test packet, the cheap clock that stamps it, and the receiver's checker.
//!
//! ```text
//!  off  0  dst MAC (6)      off 16  sequence number (u64 LE, per queue)
//!  off  6  src MAC (6)      off 24  transmit timestamp (TSC ticks, u64 LE)
//!  off 12  ethertype 88B5   off 32  pattern: byte i = i + seq (first 64 and last 8
//!  off 14  flow id (u16)            bytes; the middle is i, fixed), checked on receive
//! ```
//!
//! Bytes 0..12 may be rewritten on the way (mac, macswap): the checker skips them.

use hdrhistogram::Histogram;

/// Smallest packet: header, sequence number and timestamp.
pub const MIN_PKT: usize = 32;
/// The ethertype of test packets (IEEE local experimental).
pub const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// Source MAC of generated packets.
pub const GEN_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Destination MAC of generated packets.
pub const GEN_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Pattern bytes that depend on the sequence number (at the start and the end).
const SEQ_HEAD: usize = 64;
const SEQ_TAIL: usize = 8;

pub use pmd::tsc::{calibrate, ticks};

/// Source bytes one `tx_burst` call of generated packets may span: the stamped
/// packets of a call are distinct buffers, and a burst of 32 x 64 KiB (2 MiB) would
/// copy from beyond this core's L2 while 256 KiB stays in it. Larger bursts of large
/// packets go out in several calls (each its own publish, negligible next to copying
/// 64 KiB); DPDK's txonly has no payload source at all.
const SOURCE_BYTES: usize = 256 << 10;

/// Packets of `size` bytes to hand to one `tx_burst` call: at most 64 (the callers'
/// reference arrays) and at most [`SOURCE_BYTES`] of source, at least one.
pub fn per_call(size: usize) -> usize {
    (SOURCE_BYTES / size.max(1)).clamp(1, 64)
}

/// A fresh latency histogram (1 ns .. 60 s, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds")
}

/// The two pattern ranges of a body of `n` bytes: the first [`SEQ_HEAD`] bytes and
/// the last [`SEQ_TAIL`] (not overlapping the first).
#[inline(always)]
fn pattern_ranges(n: usize) -> [core::ops::Range<usize>; 2] {
    [
        0..n.min(SEQ_HEAD),
        n.saturating_sub(SEQ_TAIL).max(SEQ_HEAD).min(n)..n,
    ]
}

/// Writes the pattern of `seq` into `dst`, which starts at body position `at`.
/// Plain loop over an induction variable: the compiler vectorizes it.
#[inline(always)]
fn fill_pattern(dst: &mut [u8], at: usize, seq: u64) {
    let s = seq as u8;
    for (k, d) in dst.iter_mut().enumerate() {
        *d = ((at + k) as u8).wrapping_add(s);
    }
}

/// True if `src` (starting at body position `at`) differs from the pattern of `seq`.
/// Folds every byte (no early exit), so it vectorizes.
#[inline(always)]
fn differs_from_pattern(src: &[u8], at: usize, seq: u64) -> bool {
    let s = seq as u8;
    src.iter().enumerate().fold(0u8, |acc, (k, &d)| {
        acc | (d ^ ((at + k) as u8).wrapping_add(s))
    }) != 0
}

/// A packet template of `size` bytes: header and fixed pattern; [`stamp`] fills in the
/// per-packet fields.
pub fn template(size: usize) -> Vec<u8> {
    let mut b = vec![0u8; size.max(MIN_PKT)];
    b[0..6].copy_from_slice(&GEN_DST);
    b[6..12].copy_from_slice(&GEN_SRC);
    b[12..14].copy_from_slice(&ETHERTYPE);
    for (i, x) in b[MIN_PKT..].iter_mut().enumerate() {
        *x = i as u8;
    }
    b
}

/// Writes the flow id, sequence number, timestamp and sequence-dependent pattern into
/// a buffer made by [`template`].
#[inline]
pub fn stamp(b: &mut [u8], flow: u16, seq: u64, ts: u64) {
    b[14..16].copy_from_slice(&flow.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..32].copy_from_slice(&ts.to_le_bytes());
    let body = &mut b[MIN_PKT..];
    for r in pattern_ranges(body.len()) {
        fill_pattern(&mut body[r.clone()], r.start, seq);
    }
}

/// Per-queue receive bookkeeping: order, integrity, latency.
#[derive(Debug, Clone)]
pub struct Checker {
    /// Packets seen.
    pub received: u64,
    /// Bytes seen.
    pub bytes: u64,
    /// Packets with a lower sequence number than one seen before.
    pub reordered: u64,
    /// Packets whose header or pattern was wrong.
    pub corrupted: u64,
    /// Highest sequence number seen + 1.
    pub next: u64,
    /// Latency (ns) from the stamp to the check, without the pending run below.
    hist: Histogram<u64>,
    /// A run of equal latencies not yet recorded: (ticks, count). Packets of one burst
    /// carry one stamp and are checked at one `now` (the TSC ticks in 10 ns steps
    /// here), so one `record_n` per run replaces one `record` per packet, exactly.
    run: (u64, u64),
    ns_per_tick: f64,
}

impl Checker {
    /// A checker converting ticks with `ns_per_tick`.
    pub fn new(ns_per_tick: f64) -> Checker {
        Checker {
            received: 0,
            bytes: 0,
            reordered: 0,
            corrupted: 0,
            next: 0,
            hist: new_histogram(),
            run: (0, 0),
            ns_per_tick,
        }
    }

    /// Checks one packet received at `now` (ticks); `data` is read in place.
    #[inline]
    pub fn check(&mut self, data: &[u8], now: u64) {
        self.received += 1;
        self.bytes += data.len() as u64;
        if data.len() < MIN_PKT {
            self.corrupted += 1;
            return;
        }
        // Copy the fields out once (the bytes live in peer-writable memory).
        let mut hdr = [0u8; MIN_PKT];
        hdr.copy_from_slice(&data[..MIN_PKT]);
        let seq = u64::from_le_bytes(hdr[16..24].try_into().unwrap_or_default());
        let ts = u64::from_le_bytes(hdr[24..32].try_into().unwrap_or_default());
        let body = &data[MIN_PKT..];
        let bad = hdr[12..14] != ETHERTYPE
            || pattern_ranges(body.len())
                .into_iter()
                .any(|r| differs_from_pattern(&body[r.clone()], r.start, seq));
        if bad {
            self.corrupted += 1;
            return;
        }
        if seq < self.next {
            self.reordered += 1;
        } else {
            self.next = seq + 1;
        }
        let ticks = now.wrapping_sub(ts);
        if ticks == self.run.0 && self.run.1 > 0 {
            self.run.1 += 1;
        } else {
            self.flush_run();
            self.run = (ticks, 1);
        }
    }

    /// Records the pending run of equal latencies.
    fn flush_run(&mut self) {
        let (ticks, count) = std::mem::take(&mut self.run);
        if count > 0 {
            let ns = (ticks as f64 * self.ns_per_tick) as u64;
            // A stamp from the future (clock skew) or beyond the bound is clamped.
            self.hist
                .saturating_record_n(ns.clamp(1, 60_000_000_000), count);
        }
    }

    /// Every latency checked so far.
    pub fn histogram(&mut self) -> &Histogram<u64> {
        self.flush_run();
        &self.hist
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_equal_latency_are_all_recorded() {
        let mut b = template(64);
        let mut c = Checker::new(1.0);
        // Three packets of one burst (one stamp, one check time), then two others.
        for (seq, ts, now) in [
            (0, 10, 50),
            (1, 10, 50),
            (2, 10, 50),
            (3, 20, 50),
            (4, 30, 50),
        ] {
            stamp(&mut b, 0, seq, ts);
            c.check(&b, now);
        }
        let h = c.histogram();
        assert_eq!(h.len(), 5);
        assert_eq!(h.count_at(40), 3);
        assert_eq!(h.count_at(30), 1);
        assert_eq!(h.count_at(20), 1);
        // Reading the histogram flushed the run; later packets still count.
        c.check(&b, 60);
        assert_eq!(c.histogram().len(), 6);
    }

    #[test]
    fn stamped_packets_check_clean_and_damage_is_seen() {
        for size in [32, 64, 100, 1500] {
            let mut b = template(size);
            let mut c = Checker::new(1.0);
            for seq in [0u64, 1, 2, 5] {
                stamp(&mut b, 3, seq, 10);
                c.check(&b, 20);
            }
            assert_eq!((c.received, c.reordered, c.corrupted), (4, 0, 0));
            stamp(&mut b, 3, 4, 10);
            c.check(&b, 20);
            assert_eq!(c.reordered, 1);
            if size > 32 {
                let last = b.len() - 1;
                b[last] ^= 1;
                c.check(&b, 20);
                assert_eq!(c.corrupted, 1, "size {size}");
            }
            // MAC rewrites are not damage.
            stamp(&mut b, 3, 9, 10);
            b[0..12].fill(0xee);
            c.check(&b, 20);
            assert_eq!(c.next, 10);
        }
    }
}
