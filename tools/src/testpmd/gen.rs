//! The generator lcore: sends sequence-numbered, TSC-stamped packets on its queue and
//! checks what comes back (order, payload, latency).
//!
//! ```text
//!  Stream     (rxonly):             send as fast as the ring takes; nothing returns
//!  RoundTrip  (io, mac, macswap,    send while in flight < ring size; check returns
//!              echo):               (round-trip latency)
//!  PingPong   (latency):            one packet in flight (round-trip latency)
//!  Sink       (txonly, flowgen):    receive and check what the peer generates
//!                                   (one-way latency)
//! ```

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dataplane::lcore::{LcoreCtx, Poller, Work};
use dataplane::port::QueueHandle;
use dataplane::stats::LcoreStats;

use super::fwd::PHASE_RUN;
use super::pkt::{self, Checker};
use super::QueueReport;

/// What the generator side does in a forwarding mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenKind {
    /// Send only.
    Stream,
    /// Send and check returns, many in flight.
    RoundTrip,
    /// Send and check returns, one in flight.
    PingPong,
    /// Receive only.
    Sink,
}

/// Generator parameters.
#[derive(Debug, Clone, Copy)]
pub struct GenCfg {
    /// Mode.
    pub kind: GenKind,
    /// Packet size.
    pub size: usize,
    /// Burst.
    pub burst: usize,
    /// Most packets in flight (round trips).
    pub window: u64,
    /// TSC conversion.
    pub ns_per_tick: f64,
    /// `--packets`: send (or, for Sink, receive) exactly this many, then set `quiet`
    /// and wait for the main thread to end the run (`u64::MAX`: no limit).
    pub limit: u64,
}

/// One generator lcore's result.
#[derive(Debug, Clone)]
pub struct GenResult {
    /// Packets sent.
    pub sent: u64,
    /// What came back (or, for Sink, what the peer generated).
    pub checker: Checker,
    /// Queue errors.
    pub errors: u64,
    /// The first error.
    pub error: Option<String>,
}

impl GenResult {
    /// A result for an lcore that could not start.
    pub fn failed(why: &str, cfg: &GenCfg) -> GenResult {
        GenResult {
            sent: 0,
            checker: Checker::new(cfg.ns_per_tick),
            errors: 1,
            error: Some(why.to_owned()),
        }
    }

    /// Per-queue counts.
    pub fn report(&self) -> QueueReport {
        QueueReport {
            sent: self.sent,
            received: self.checker.received,
            reordered: self.checker.reordered,
            corrupted: self.checker.corrupted,
            drops: 0,
            errors: self.errors,
        }
    }
}

/// The generator loop of one queue. Runs until the run phase leaves RUN and then:
/// round trips are back (or 1 s passed: `quiet` is set), and `expected` packets were
/// received (Sink; set by the main thread after the peer's report) or 1 s passed.
#[allow(clippy::too_many_arguments)]
pub fn run(
    ctx: &mut LcoreCtx,
    poller: &Poller,
    mut q: QueueHandle,
    tx_stats: &LcoreStats,
    cfg: &GenCfg,
    phase: &AtomicU32,
    expected: &AtomicU64,
    quiet: &AtomicBool,
) -> GenResult {
    let mut res = GenResult::failed("", cfg);
    res.errors = 0;
    res.error = None;
    let mut bufs: Vec<Vec<u8>> = (0..cfg.burst).map(|_| pkt::template(cfg.size)).collect();
    let mut rx = Vec::with_capacity(cfg.burst);
    let sends = cfg.kind != GenKind::Sink;
    let window = match cfg.kind {
        GenKind::PingPong => 1,
        GenKind::RoundTrip => cfg.window.max(1),
        _ => u64::MAX,
    };
    let returns = matches!(cfg.kind, GenKind::RoundTrip | GenKind::PingPong);
    let mut drain_end: Option<Instant> = None;
    // TSC of the last receive (a clock read on the round trip's path would cost a
    // vDSO call per packet; the TSC is read there anyway).
    let mut last_rx = pkt::ticks();
    let silence = (1e9 / cfg.ns_per_tick) as u64;
    let mut polls = 0u32;
    // Ping-pong packets given up on (lost): they no longer hold the window.
    let mut abandoned = 0u64;
    poller.run(ctx, |ctx| {
        // Relaxed: run control.
        let running = phase.load(Ordering::Relaxed) == PHASE_RUN;
        if running && cfg.limit != u64::MAX {
            let reached = if sends {
                res.sent >= cfg.limit
            } else {
                res.checker.received >= cfg.limit
            };
            if reached {
                // Relaxed: a progress flag the main thread polls.
                quiet.store(true, Ordering::Relaxed);
            }
        }
        if !running {
            let end = *drain_end.get_or_insert_with(|| Instant::now() + Duration::from_secs(2));
            let back = !returns || res.checker.received + abandoned >= res.sent;
            if back || Instant::now() > end {
                // Relaxed: a progress flag the main thread polls.
                quiet.store(true, Ordering::Relaxed);
            }
            // Relaxed: run control (u64::MAX until the main thread knows the count).
            let want = expected.load(Ordering::Relaxed);
            let sink_done =
                cfg.kind != GenKind::Sink || (want != u64::MAX && res.checker.received >= want);
            let past = Instant::now() > end;
            if (back && sink_done && want != u64::MAX) || past {
                return Work::Stop;
            }
        }
        let mut sent_now = 0usize;
        if sends && running {
            let in_flight = if returns {
                res.sent - (res.checker.received + abandoned).min(res.sent)
            } else {
                0
            };
            let room = window
                .saturating_sub(in_flight)
                .min(cfg.burst as u64)
                .min(cfg.limit.saturating_sub(res.sent)) as usize;
            if room > 0 {
                let now = pkt::ticks();
                let mut refs: [&[u8]; 64] = [&[]; 64];
                let n = room.min(pkt::per_call(cfg.size));
                for (j, b) in bufs[..n].iter_mut().enumerate() {
                    pkt::stamp(b, 0, res.sent + j as u64, now);
                }
                for (r, b) in refs.iter_mut().zip(&bufs[..n]) {
                    *r = b.as_slice();
                }
                match q.tx_burst(&refs[..n]) {
                    Ok(k) => {
                        sent_now = k;
                        res.sent += k as u64;
                        tx_stats.add_packets(k as u64, (k * cfg.size) as u64);
                    }
                    Err(e) => {
                        res.errors += 1;
                        tx_stats.add_errors(1);
                        res.error.get_or_insert_with(|| format!("tx: {e}"));
                    }
                }
            }
        }
        let n = match q.rx_burst(&mut rx, cfg.burst) {
            Ok(n) => n,
            // After the traffic phase the peer may leave (its port's reset request
            // takes the link down): that ends the drain, it is not an error.
            Err(_) if !running => return Work::Stop,
            // A --packets run that is done here: the peer leaving is the expected end.
            // Relaxed: our own flag.
            Err(_) if cfg.limit != u64::MAX && quiet.load(Ordering::Relaxed) => return Work::Idle,
            Err(e) => {
                res.errors += 1;
                ctx.stats.add_errors(1);
                res.error.get_or_insert_with(|| format!("rx: {e}"));
                0
            }
        };
        if n == 0 {
            // A lost round trip would stall the window: after 1 s of silence in
            // ping-pong, give up on it (it counts as lost).
            polls = polls.wrapping_add(1);
            if cfg.kind == GenKind::PingPong
                && polls.is_multiple_of(1024)
                && pkt::ticks().wrapping_sub(last_rx) > silence
            {
                abandoned = res.sent - res.checker.received.min(res.sent);
            }
            return if sent_now > 0 {
                Work::Busy {
                    packets: 0,
                    bytes: 0,
                }
            } else {
                Work::Idle
            };
        }
        let now = pkt::ticks();
        last_rx = now;
        let mut bytes = 0;
        for m in rx.iter() {
            bytes += m.len() as u64;
            res.checker.check(m.data(), now);
        }
        q.free(&mut rx);
        Work::Busy {
            packets: n as u32,
            bytes,
        }
    });
    res
}
