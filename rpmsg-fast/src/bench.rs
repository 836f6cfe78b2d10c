//! The two-process benchmark's pieces, shared by `zerohop rpmsg-bench` and the
//! criterion-less bench `benches/benches/rpmsg.rs`: the remote's echo/sink loop and
//! the host's one-way and round-trip runs over one [`Link`].
//!
//! ```text
//!  host (creates the window)                      remote (attaches)
//!  CLIENT (3) ── one-way: send_burst ───────────► SINK (2): counts; END -> replies count
//!  CLIENT (3) ── round trip: send, wait reply ──► ECHO (1): sends each message back
//!  CLIENT (3) ── END to ECHO ───────────────────► ECHO: echoes END, exits
//! ```
//!
//! Every wait has a deadline; [`Poll::Yield`] yields the thread after empty polls
//! (shared machines, tests), [`Poll::Spin`] busy-polls (pinned cores).

use std::time::{Duration, Instant};

use crate::bus::EndpointId;
use crate::error::RpmsgError;
use crate::link::Link;
use crate::Addr;

/// The remote's echo endpoint.
pub const ECHO: u32 = 1;
/// The remote's counting endpoint.
pub const SINK: u32 = 2;
/// The host's endpoint.
pub const CLIENT: u32 = 3;
/// First payload byte of the end marker (a 1-byte message).
pub const END: u8 = 0xff;
/// Byte the one-way payloads are filled with.
pub const FILL: u8 = 0x5a;

/// How an idle side waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Busy-poll (each side pinned to its own core).
    Spin,
    /// Yield the thread after a few empty polls.
    Yield,
}

/// Counts empty polls; yields after a few in [`Poll::Yield`] mode.
struct Idle {
    poll: Poll,
    empty: u32,
}

impl Idle {
    fn new(poll: Poll) -> Self {
        Idle { poll, empty: 0 }
    }
    #[inline]
    fn progress(&mut self) {
        self.empty = 0;
    }
    #[inline]
    fn idle(&mut self) {
        self.empty += 1;
        if self.poll == Poll::Yield && self.empty > 16 {
            std::thread::yield_now();
        } else {
            core::hint::spin_loop();
        }
    }
}

/// Polls the control plane every this many loop iterations.
const CONTROL_EVERY: u32 = 4096;

/// The remote's loop: echoes every message on [`ECHO`] (zero-copy send), counts
/// messages on [`SINK`] and answers the 1-byte [`END`] marker there with the count
/// (8 bytes LE). Returns after echoing an `END` on [`ECHO`], or at `deadline`.
pub fn run_peer(link: &mut Link, poll: Poll, deadline: Duration) -> Result<(), RpmsgError> {
    let echo = link.create_endpoint(None, Addr::Fixed(ECHO))?;
    let sink = link.create_endpoint(None, Addr::Fixed(SINK))?;
    // Echoes of payloads up to this size are copied back inline.
    let mut stage = vec![0u8; link.config().inline_payload()];
    let mut count = 0u64;
    let start = Instant::now();
    let mut idle = Idle::new(poll);
    let mut iter = 0u32;
    loop {
        iter = iter.wrapping_add(1);
        if iter.is_multiple_of(CONTROL_EVERY) {
            link.poll_control()?;
            if start.elapsed() > deadline {
                return Err(RpmsgError::Timeout);
            }
        }
        if link.poll()? == 0 {
            idle.idle();
            continue;
        }
        idle.progress();
        while let Some(m) = link.try_recv(echo)? {
            let quit = link.payload(&m).first() == Some(&END);
            // A payload that fits a slot goes back inline (a copying send: fewer lines
            // than a zero-copy buffer, see LinkConfig::inline_payload); a larger one
            // through a zero-copy buffer.
            if m.len() <= stage.len() {
                let n = m.len();
                stage[..n].copy_from_slice(link.payload(&m));
                link.release(m)?;
                link.send(echo, CLIENT, &stage[..n])?;
                if quit {
                    link.flush()?;
                    return Ok(());
                }
                continue;
            }
            let Some(mut tx) = link.get_tx_buffer()? else {
                let d = link.payload(&m).to_vec();
                link.release(m)?;
                link.send(echo, CLIENT, &d)?;
                continue;
            };
            let n = m.len().min(tx.capacity());
            tx.payload_mut()[..n].copy_from_slice(&link.payload(&m)[..n]);
            link.release(m)?;
            link.send_nocopy(echo, CLIENT, tx, n)?;
            if quit {
                link.flush()?;
                return Ok(());
            }
        }
        while let Some(m) = link.try_recv(sink)? {
            let end = m.len() == 1 && link.payload(&m)[0] == END;
            link.release(m)?;
            if end {
                link.send(sink, CLIENT, &count.to_le_bytes())?;
                count = 0;
            } else {
                count += 1;
            }
        }
    }
}

/// How long a host run lasts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    /// This many messages (one-way) or round trips.
    Count(u64),
    /// About this long (checked every 32 messages).
    Time(Duration),
}

/// One one-way run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OneWay {
    /// Payload bytes per message.
    pub size: usize,
    /// Messages sent.
    pub sent: u64,
    /// Messages the remote counted.
    pub received: u64,
    /// Seconds from the first send to the count's arrival.
    pub secs: f64,
}

impl OneWay {
    /// Messages per second (received).
    pub fn msgs_per_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.received as f64 / self.secs
        } else {
            0.0
        }
    }
    /// Payload megabytes (1e6) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.msgs_per_s() * self.size as f64 / 1e6
    }
    /// Messages sent but not counted by the remote.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
}

/// The host's endpoint ([`CLIENT`]).
pub fn client(link: &mut Link) -> Result<EndpointId, RpmsgError> {
    link.create_endpoint(None, Addr::Fixed(CLIENT))
}

/// Sends `size`-byte messages to [`SINK`] in bursts of 32 for `limit`, then the
/// [`END`] marker, and waits (until `deadline` from the start) for the remote's count.
pub fn one_way(
    link: &mut Link,
    ep: EndpointId,
    size: usize,
    limit: Limit,
    poll: Poll,
    deadline: Duration,
) -> Result<OneWay, RpmsgError> {
    let payload = vec![FILL; size];
    let burst: [&[u8]; 32] = [&payload[..]; 32];
    let start = Instant::now();
    let mut sent = 0u64;
    let mut idle = Idle::new(poll);
    let mut iter = 0u32;
    loop {
        let k = match limit {
            Limit::Count(n) if sent >= n => break,
            Limit::Count(n) => ((n - sent) as usize).min(32),
            Limit::Time(d) if start.elapsed() >= d => break,
            Limit::Time(_) => 32,
        };
        let n = link.send_burst(ep, SINK, &burst[..k])?;
        sent += n as u64;
        iter = iter.wrapping_add(1);
        if iter.is_multiple_of(CONTROL_EVERY) {
            link.poll_control()?;
        }
        if n == 0 {
            link.poll()?;
            if start.elapsed() > deadline {
                return Err(RpmsgError::Timeout);
            }
            idle.idle();
        } else {
            idle.progress();
        }
    }
    let dl = start + deadline;
    link.send_deadline(ep, SINK, &[END], dl)?;
    let r = recv_wait(link, ep, poll, dl)?;
    let secs = start.elapsed().as_secs_f64();
    let d = link.payload(&r);
    let received = d
        .first_chunk::<8>()
        .map(|b| u64::from_le_bytes(*b))
        .unwrap_or(0);
    link.release(r)?;
    Ok(OneWay {
        size,
        sent,
        received,
        secs,
    })
}

fn recv_wait(
    link: &mut Link,
    ep: EndpointId,
    poll: Poll,
    deadline: Instant,
) -> Result<crate::RxBuf, RpmsgError> {
    let mut idle = Idle::new(poll);
    let mut iter = 0u32;
    loop {
        if let Some(b) = link.recv(ep)? {
            return Ok(b);
        }
        iter = iter.wrapping_add(1);
        if iter.is_multiple_of(CONTROL_EVERY) {
            link.poll_control()?;
            if Instant::now() >= deadline {
                return Err(RpmsgError::Timeout);
            }
        }
        idle.idle();
    }
}

/// Round trips of `size`-byte messages through [`ECHO`] for `limit` (counted
/// after `warmup` unrecorded ones); `record(ns)` gets each one's time. Returns the number
/// recorded. A reply of the wrong size is an error (`Config`).
#[allow(clippy::too_many_arguments)]
pub fn round_trips(
    link: &mut Link,
    ep: EndpointId,
    size: usize,
    warmup: u64,
    limit: Limit,
    poll: Poll,
    deadline: Duration,
    mut record: impl FnMut(u64),
) -> Result<u64, RpmsgError> {
    let msg = vec![7u8; size.max(1)];
    let start = Instant::now();
    let dl = start + deadline;
    // Each round trip is timed with ordered TSC reads (two `Instant::now` cost ~25 ns
    // more per trip); the time limit is checked against the TSC too.
    let per = pmd::tsc::ns_per_tick();
    let mut done = 0u64;
    let mut i = 0u64;
    // The time limit counts from the end of the warm-up.
    let mut end = u64::MAX;
    loop {
        if i == warmup {
            if let Limit::Time(d) = limit {
                end = pmd::tsc::ticks().saturating_add((d.as_nanos() as f64 / per) as u64);
            }
        }
        let t = pmd::tsc::ticks_ordered();
        if i >= warmup {
            match limit {
                Limit::Count(n) if done >= n => break,
                Limit::Time(_) if t >= end => break,
                _ => {}
            }
        }
        link.send_deadline(ep, ECHO, &msg, dl)?;
        let r = recv_wait(link, ep, poll, dl)?;
        let ns = (pmd::tsc::ticks_ordered().wrapping_sub(t) as f64 * per) as u64;
        let len = r.len();
        link.release(r)?;
        if len != msg.len() {
            return Err(RpmsgError::Config(format!(
                "echo of {} bytes came back with {len}",
                msg.len()
            )));
        }
        if i >= warmup {
            record(ns);
            done += 1;
        }
        i += 1;
        if i.is_multiple_of(u64::from(CONTROL_EVERY)) {
            link.poll_control()?;
        }
    }
    Ok(done)
}

/// Tells the remote to exit (an [`END`] through [`ECHO`]) and waits for the echo.
pub fn finish(
    link: &mut Link,
    ep: EndpointId,
    poll: Poll,
    deadline: Duration,
) -> Result<(), RpmsgError> {
    let dl = Instant::now() + deadline;
    link.send_deadline(ep, ECHO, &[END], dl)?;
    let r = recv_wait(link, ep, poll, dl)?;
    link.release(r)?;
    link.flush()
}
