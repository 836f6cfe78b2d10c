//! Forwarding engines: one module per `--forward-mode`, one trait, one table
//! (DPDK's `iofwd.c` / `macfwd.c` / `txonly.c` pattern).
//!
//! ```text
//!  generator process (frontend)              forwarding process (backend)
//!  gen lcore q --seq,tsc--> queue q ------->  rx_burst -> ENGINE.on_burst --+
//!            <------------- queue q <-------  tx (io, mac, macswap, echo,   |
//!                                             latency: back to the sender) <+
//!                                             ENGINE.generate (txonly, flowgen)
//! ```
//!
//! Each engine is one file registered in [`ENGINES`]; [`new_engine`] builds one per
//! lcore. The engines share [`FwdCtx`] (per-lcore state allocated before the loop) and
//! the transmit helpers below, which retry under back-pressure until every packet is
//! taken or the run ends (then the rest count as drops).

mod echo;
mod flowgen;
mod io;
mod latency;
mod mac;
mod macswap;
mod rxonly;
mod txonly;

use std::sync::atomic::{AtomicU32, Ordering};

use dataplane::port::{PortError, QueueHandle, RxMbuf, TxBuf};
use dataplane::stats::LcoreStats;

use super::pkt::{self, Checker};

/// What a poll of an engine did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Packets sent on.
    pub packets: u32,
    /// Bytes sent on.
    pub bytes: u64,
}

/// One forwarding mode.
pub trait ForwardEngine: Send {
    /// Handles one received burst; the engine frees (or sends on) every packet in
    /// `rx`, leaving it empty.
    fn on_burst(
        &mut self,
        rx: &mut Vec<RxMbuf>,
        q: &mut QueueHandle,
        ctx: &mut FwdCtx,
    ) -> Result<Moved, PortError>;

    /// Generating engines (txonly, flowgen) make one burst here; others do nothing.
    fn generate(&mut self, _q: &mut QueueHandle, _ctx: &mut FwdCtx) -> Result<Moved, PortError> {
        Ok(Moved::default())
    }

    /// True for engines whose [`generate`](Self::generate) does something.
    fn generates(&self) -> bool {
        false
    }
}

/// A registered engine: its `--forward-mode` name, a constructor, and a line of help.
pub struct EngineInfo {
    /// The mode name.
    pub name: &'static str,
    /// Builds one engine (one per lcore).
    pub new: fn() -> Box<dyn ForwardEngine>,
    /// What it does (`zerohop testpmd --help` lists it through the docs).
    #[allow(dead_code)]
    pub help: &'static str,
}

/// Every engine, in `--forward-mode` order.
pub const ENGINES: &[EngineInfo] = &[
    io::INFO,
    mac::INFO,
    macswap::INFO,
    rxonly::INFO,
    txonly::INFO,
    flowgen::INFO,
    echo::INFO,
    latency::INFO,
];

/// Builds the engine named `name`.
pub fn new_engine(name: &str) -> Option<Box<dyn ForwardEngine>> {
    ENGINES.iter().find(|e| e.name == name).map(|e| (e.new)())
}

/// Run phase shared by the lcores of one process (written by the main thread).
pub const PHASE_RUN: u32 = 0;
/// Stop generating; finish what is in flight.
pub const PHASE_DRAIN: u32 = 1;

/// Per-lcore state the engines share, allocated before the loop.
pub struct FwdCtx<'a> {
    /// Packet size for generating engines.
    pub size: usize,
    /// Burst size.
    pub burst: usize,
    /// Next sequence number (generating engines).
    pub seq: u64,
    /// Flows for flowgen.
    pub flows: u16,
    /// Packets sent.
    pub sent: u64,
    /// `--packets`: generating engines stop after this many (`u64::MAX`: no limit).
    pub limit: u64,
    /// Packets dropped (not accepted before the run ended).
    pub drops: u64,
    /// Receive checks (rxonly).
    pub checker: Checker,
    /// Transmit counters (a stats block of its own).
    pub tx_stats: &'a LcoreStats,
    /// The process's run phase.
    pub phase: &'a AtomicU32,
    /// Generated packets (burst buffers, from [`pkt::template`]).
    pub scratch: Vec<Vec<u8>>,
    /// Zero-copy transmit buffers.
    pub txbufs: Vec<TxBuf>,
}

impl FwdCtx<'_> {
    #[inline]
    fn running(&self) -> bool {
        // Relaxed: a run-control flag; nothing is read on the strength of it.
        self.phase.load(Ordering::Relaxed) == PHASE_RUN
    }

    #[inline]
    fn note_sent(&mut self, n: usize, bytes: u64) {
        self.sent += n as u64;
        self.tx_stats.add_packets(n as u64, bytes);
    }
}

/// Largest burst the helpers handle in one go (the `--burst` bound).
const MAX: usize = 512;

/// Sends every packet of `pkts` (copying), retrying under back-pressure until all
/// are taken or the run left [`PHASE_RUN`] with no progress (then the rest are drops).
pub fn tx_all(q: &mut QueueHandle, pkts: &[&[u8]], ctx: &mut FwdCtx) -> Result<Moved, PortError> {
    let mut done = 0;
    let mut stuck = 0u32;
    while done < pkts.len() {
        let n = q.tx_burst(&pkts[done..])?;
        if n == 0 {
            stuck += 1;
            if !ctx.running() && stuck > 1_000_000 {
                break;
            }
            if stuck > 64 {
                std::thread::yield_now();
            }
            continue;
        }
        stuck = 0;
        done += n;
    }
    let bytes = pkts[..done].iter().map(|p| p.len() as u64).sum();
    ctx.note_sent(done, bytes);
    ctx.drops += (pkts.len() - done) as u64;
    ctx.tx_stats.add_drops((pkts.len() - done) as u64);
    Ok(Moved {
        packets: done as u32,
        bytes,
    })
}

/// Sends every received packet back zero-copy (alloc, one or two writes, commit),
/// with `rewrite` given the first 12 bytes (the MAC addresses) to change. Frees `rx`.
pub fn tx_rewrite(
    q: &mut QueueHandle,
    rx: &mut Vec<RxMbuf>,
    ctx: &mut FwdCtx,
    rewrite: Option<fn(&mut [u8; 12])>,
) -> Result<Moved, PortError> {
    let mut moved = Moved::default();
    let mut i = 0;
    let mut stuck = 0u32;
    let result = loop {
        if i >= rx.len() {
            break Ok(());
        }
        ctx.txbufs.clear();
        let want = (rx.len() - i).min(q.burst());
        let got = match q.alloc_tx(&mut ctx.txbufs, want) {
            Ok(g) => g,
            Err(e) => break Err(e),
        };
        if got == 0 {
            stuck += 1;
            if !ctx.running() && stuck > 1_000_000 {
                break Ok(());
            }
            if stuck > 64 {
                std::thread::yield_now();
            }
            continue;
        }
        stuck = 0;
        let mut bytes = 0;
        for (b, m) in ctx.txbufs.iter_mut().zip(&rx[i..i + got]) {
            let d = m.data();
            let r = match rewrite {
                Some(f) if d.len() >= 12 => {
                    let mut mac = [0u8; 12];
                    mac.copy_from_slice(&d[..12]);
                    f(&mut mac);
                    q.write(b, &mac).and_then(|()| q.write(b, &d[12..]))
                }
                _ => q.write(b, d),
            };
            if r.is_err() {
                ctx.drops += 1;
            }
            bytes += d.len() as u64;
        }
        let sent = match q.commit(&mut ctx.txbufs) {
            Ok(s) => s,
            Err(e) => break Err(e),
        };
        ctx.note_sent(sent, bytes);
        moved.packets += sent as u32;
        moved.bytes += bytes;
        i += got;
    };
    let left = rx.len().saturating_sub(i) as u64;
    ctx.drops += left;
    ctx.tx_stats.add_drops(left);
    q.free(rx);
    result.map(|()| moved)
}

/// Sends received packets back unchanged with copying `tx_burst` (io, latency).
pub fn tx_back(
    q: &mut QueueHandle,
    rx: &mut Vec<RxMbuf>,
    ctx: &mut FwdCtx,
) -> Result<Moved, PortError> {
    let mut moved = Moved::default();
    let mut r = Ok(());
    for chunk in rx.chunks(64) {
        let mut refs: [&[u8]; 64] = [&[]; 64];
        for (s, m) in refs.iter_mut().zip(chunk) {
            *s = m.data();
        }
        match tx_all(q, &refs[..chunk.len()], ctx) {
            Ok(m) => {
                moved.packets += m.packets;
                moved.bytes += m.bytes;
            }
            Err(e) => {
                r = Err(e);
                break;
            }
        }
    }
    q.free(rx);
    r.map(|()| moved)
}

/// Generates one burst of stamped packets (`flow_of(seq)` gives the flow id).
pub fn generate_burst(
    q: &mut QueueHandle,
    ctx: &mut FwdCtx,
    flow_of: impl Fn(u64) -> u16,
) -> Result<Moved, PortError> {
    if !ctx.running() {
        return Ok(Moved::default());
    }
    let left = ctx.limit.saturating_sub(ctx.seq);
    let n = ctx
        .burst
        .min(MAX)
        .min(ctx.scratch.len())
        .min(usize::try_from(left).unwrap_or(usize::MAX));
    if n == 0 {
        return Ok(Moved::default());
    }
    let now = pkt::ticks();
    let mut moved = Moved::default();
    let mut start = 0;
    while start < n {
        let k = (n - start).min(pkt::per_call(ctx.size));
        for (j, b) in ctx.scratch[..k].iter_mut().enumerate() {
            let seq = ctx.seq + (start + j) as u64;
            pkt::stamp(b, flow_of(seq), seq, now);
            if flow_of(seq) != 0 {
                // flowgen: vary the source MAC with the flow, as DPDK's flowgen varies
                // the IP addresses.
                b[10..12].copy_from_slice(&flow_of(seq).to_be_bytes());
            }
        }
        let sent = {
            let mut refs: [&[u8]; 64] = [&[]; 64];
            for (s, b) in refs.iter_mut().zip(&ctx.scratch[..k]) {
                *s = b.as_slice();
            }
            q.tx_burst(&refs[..k])?
        };
        ctx.note_sent(sent, (sent * ctx.size) as u64);
        moved.packets += sent as u32;
        moved.bytes += (sent * ctx.size) as u64;
        start += sent;
        if sent < k {
            break; // back-pressure: the unsent sequence numbers go out next time
        }
    }
    ctx.seq += start as u64;
    Ok(moved)
}
