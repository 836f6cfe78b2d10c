//! Lcores: one pinned thread per core, each running the application's loop (DPDK
//! `rte_eal_remote_launch` / `rte_eal_mp_wait_lcore`).
//!
//! ```text
//!  "0-2,6" --parse_core_list--> [0,1,2,6] --validate vs /sys/.../cpu/online--+
//!                                                                           v
//!  Lcores::launch(cores, f) -> lcore 0 on cpu 0: f(&mut LcoreCtx{id 0, cpu 0, stop, stats[0]})
//!                              lcore 1 on cpu 1: f(&mut LcoreCtx{id 1, ...})
//!                              ...
//!  stop() sets the shared flag; join(timeout) waits for every lcore up to a deadline.
//! ```
//!
//! Inside the closure, [`poll_loop`] / [`Poller::run`] is the busy-poll loop: it
//! calls the poll function, records each poll in the lcore's [`LcoreStats`], backs off
//! only if asked ([`Backoff::None`], pure spinning, is the default: GUIDE.md section
//! 4), and checks the stop flag every [`Poller::stop_check_every`] iterations.
//!
//! Core numbers are validated against the cores that exist and are online
//! (`/sys/devices/system/cpu/online`, else `available_parallelism`), not against
//! `core_affinity::get_core_ids()`, which only lists the cores of the calling thread's
//! current affinity mask.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::stats::{LcoreStats, Stats, StatsError};

/// Errors from parsing core lists and running lcores.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LcoreError {
    /// The list has no cores.
    #[error("core list {input:?} is empty")]
    Empty {
        /// The list as given.
        input: String,
    },
    /// A token is neither a core number nor a range `a-b`.
    #[error("core list {input:?}: {token:?} is not a core number or a range a-b")]
    BadToken {
        /// The list as given.
        input: String,
        /// The offending token.
        token: String,
    },
    /// A range whose end is below its start.
    #[error("core list {input:?}: range {token:?} runs backwards")]
    BackwardRange {
        /// The list as given.
        input: String,
        /// The offending range.
        token: String,
    },
    /// A core listed twice.
    #[error("core list {input:?}: core {core} is listed twice")]
    Duplicate {
        /// The list as given.
        input: String,
        /// The core.
        core: usize,
    },
    /// A core that does not exist or is offline.
    #[error("core list {input:?}: core {core} does not exist or is offline (online: {online})")]
    NoSuchCore {
        /// The list as given.
        input: String,
        /// The core.
        core: usize,
        /// The online cores, as a list string.
        online: String,
    },
    /// Spawning a thread failed.
    #[error("cannot start lcore {lcore}: {why}")]
    Spawn {
        /// The lcore.
        lcore: u32,
        /// The OS error.
        why: String,
    },
    /// An lcore's closure panicked.
    #[error("lcore {lcore} panicked")]
    Panicked {
        /// The lcore.
        lcore: u32,
    },
    /// Lcores still running at the deadline (they keep running, detached).
    #[error("lcores {pending:?} did not finish within {timeout:?}")]
    JoinTimeout {
        /// The lcores still running.
        pending: Vec<u32>,
        /// The timeout given.
        timeout: Duration,
    },
    /// The stats could not give an lcore its block.
    #[error(transparent)]
    Stats(#[from] StatsError),
}

/// Parses a core list such as `"0-3,6"` (DPDK `-l` syntax: numbers and inclusive
/// ranges, comma separated, blanks ignored). Syntax only: see [`parse_cores`] for the
/// validated form.
pub fn parse_core_list(input: &str) -> Result<Vec<usize>, LcoreError> {
    let mut out = Vec::new();
    let bad = |token: &str| LcoreError::BadToken {
        input: input.to_owned(),
        token: token.to_owned(),
    };
    for token in input.split(',').map(str::trim) {
        if token.is_empty() {
            if input.trim().is_empty() {
                break;
            }
            return Err(bad(token));
        }
        let num = |s: &str| s.trim().parse::<usize>().map_err(|_| bad(token));
        let (lo, hi) = match token.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let n = num(token)?;
                (n, n)
            }
        };
        if hi < lo {
            return Err(LcoreError::BackwardRange {
                input: input.to_owned(),
                token: token.to_owned(),
            });
        }
        for c in lo..=hi {
            if out.contains(&c) {
                return Err(LcoreError::Duplicate {
                    input: input.to_owned(),
                    core: c,
                });
            }
            out.push(c);
        }
    }
    if out.is_empty() {
        return Err(LcoreError::Empty {
            input: input.to_owned(),
        });
    }
    Ok(out)
}

/// Formats cores as a compact list (`[0,1,2,6]` -> `"0-2,6"`).
pub fn format_core_list(cores: &[usize]) -> String {
    let mut s = String::new();
    let mut i = 0;
    while i < cores.len() {
        let mut j = i;
        while j + 1 < cores.len() && cores[j + 1] == cores[j] + 1 {
            j += 1;
        }
        if !s.is_empty() {
            s.push(',');
        }
        if j > i {
            s.push_str(&format!("{}-{}", cores[i], cores[j]));
        } else {
            s.push_str(&cores[i].to_string());
        }
        i = j + 1;
    }
    s
}

/// The online cores: `/sys/devices/system/cpu/online`, or `0..available_parallelism`
/// where that file cannot be read (non-Linux, restricted containers).
pub fn online_cores() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_core_list(s.trim()).ok())
        .unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            (0..n).collect()
        })
}

/// Checks every core of `cores` is in `online`; `input` names the list in errors.
pub fn validate_cores(input: &str, cores: &[usize], online: &[usize]) -> Result<(), LcoreError> {
    match cores.iter().find(|c| !online.contains(c)) {
        Some(&core) => Err(LcoreError::NoSuchCore {
            input: input.to_owned(),
            core,
            online: format_core_list(online),
        }),
        None => Ok(()),
    }
}

/// Parses a core list and checks every core exists and is online.
pub fn parse_cores(input: &str) -> Result<Vec<usize>, LcoreError> {
    let cores = parse_core_list(input)?;
    validate_cores(input, &cores, &online_cores())?;
    Ok(cores)
}

/// What an lcore's closure gets: who it is, where it runs, when to stop, where to
/// count.
#[derive(Debug)]
pub struct LcoreCtx {
    /// Lcore number (0..n, the position in the core list).
    pub lcore_id: u32,
    /// The CPU it was meant to run on.
    pub cpu: usize,
    /// True if pinning to `cpu` succeeded.
    pub pinned: bool,
    /// This lcore's counters.
    pub stats: LcoreStats,
    stop: Arc<AtomicBool>,
}

impl LcoreCtx {
    /// A context for running a poll loop outside [`Lcores`] (tests, the main thread).
    pub fn new(lcore_id: u32, cpu: usize, stats: LcoreStats, stop: Arc<AtomicBool>) -> Self {
        LcoreCtx {
            lcore_id,
            cpu,
            pinned: false,
            stats,
            stop,
        }
    }

    /// True once a stop was requested.
    #[inline]
    pub fn should_stop(&self) -> bool {
        // Acquire: pairs with the Release in `request_stop` / `Lcores::stop`, so what
        // the stopper wrote before asking is visible to the lcore's shutdown path.
        self.stop.load(Ordering::Acquire)
    }

    /// Asks every lcore sharing this flag to stop.
    pub fn request_stop(&self) {
        // Release: pairs with the Acquire in `should_stop`.
        self.stop.store(true, Ordering::Release);
    }
}

/// What one poll did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Nothing to do (an empty poll).
    Idle,
    /// Handled `packets` packets of `bytes` bytes in all (0 packets counts as empty).
    Busy {
        /// Packets.
        packets: u32,
        /// Bytes.
        bytes: u64,
    },
    /// Leave the loop now.
    Stop,
}

/// What an idle loop does between empty polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backoff {
    /// Spin without pause (the default, and the only choice on a measured path).
    #[default]
    None,
    /// After `after` consecutive empty polls, yield the CPU on each further one.
    Yield {
        /// Empty polls before yielding.
        after: u32,
    },
    /// After `after` consecutive empty polls, sleep `dur` on each further one.
    Sleep {
        /// Empty polls before sleeping.
        after: u32,
        /// How long.
        dur: Duration,
    },
}

/// A busy-poll loop: runs a poll function until it returns [`Work::Stop`] or the
/// stop flag is seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poller {
    /// Idle behaviour.
    pub backoff: Backoff,
    /// Iterations between two reads of the stop flag (at least 1).
    pub stop_check_every: u32,
}

impl Default for Poller {
    fn default() -> Self {
        Poller {
            backoff: Backoff::None,
            stop_check_every: 64,
        }
    }
}

impl Poller {
    /// Runs `f` until it says [`Work::Stop`] or a stop is requested; records every
    /// poll in `ctx.stats`. Returns the number of polls.
    #[inline]
    pub fn run(&self, ctx: &mut LcoreCtx, mut f: impl FnMut(&mut LcoreCtx) -> Work) -> u64 {
        let every = self.stop_check_every.max(1);
        let mut polls = 0u64;
        let mut idle = 0u32;
        let mut until_check = every;
        loop {
            let (packets, bytes) = match f(ctx) {
                Work::Stop => return polls,
                Work::Idle => (0, 0),
                Work::Busy { packets, bytes } => (packets, bytes),
            };
            ctx.stats.record_poll(packets, bytes);
            polls += 1;
            if packets == 0 {
                idle = idle.saturating_add(1);
                self.idle(idle);
            } else {
                idle = 0;
            }
            until_check -= 1;
            if until_check == 0 {
                until_check = every;
                if ctx.should_stop() {
                    return polls;
                }
            }
        }
    }

    #[inline(always)]
    fn idle(&self, idle: u32) {
        match self.backoff {
            Backoff::None => {}
            Backoff::Yield { after } => {
                if idle > after {
                    std::thread::yield_now();
                } else {
                    core::hint::spin_loop();
                }
            }
            Backoff::Sleep { after, dur } => {
                if idle > after {
                    std::thread::sleep(dur);
                } else {
                    core::hint::spin_loop();
                }
            }
        }
    }
}

/// Runs `f` in a busy-poll loop with the default [`Poller`] (pure spin, stop flag
/// every 64 polls).
#[inline]
pub fn poll_loop(ctx: &mut LcoreCtx, f: impl FnMut(&mut LcoreCtx) -> Work) -> u64 {
    Poller::default().run(ctx, f)
}

/// Sets its flag when dropped (also when the lcore's closure unwinds).
struct DoneGuard(Arc<[AtomicBool]>, usize);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        // Release: pairs with the Acquire in `Lcores::join`; the lcore's work
        // happens-before the joiner sees it done.
        self.0[self.1].store(true, Ordering::Release);
    }
}

/// Running lcores; [`Lcores::join`] collects what their closures returned.
#[derive(Debug)]
pub struct Lcores<R> {
    handles: Vec<(u32, JoinHandle<R>)>,
    done: Arc<[AtomicBool]>,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
}

impl<R: Send + 'static> Lcores<R> {
    /// Starts one thread per core of `cores` (validated against the online cores),
    /// pinned to it, each running `f` with its [`LcoreCtx`]; lcore `i` runs on
    /// `cores[i]` and writes stats block `i` of a fresh heap [`Stats`].
    pub fn launch<F>(cores: &[usize], f: F) -> Result<Self, LcoreError>
    where
        F: Fn(&mut LcoreCtx) -> R + Send + Sync + 'static,
    {
        Self::launch_with_stats(cores, Arc::new(Stats::heap(cores.len())), f)
    }

    /// As [`Lcores::launch`], writing into `stats` (which needs a block per lcore,
    /// e.g. stats over a window area).
    pub fn launch_with_stats<F>(
        cores: &[usize],
        stats: Arc<Stats>,
        f: F,
    ) -> Result<Self, LcoreError>
    where
        F: Fn(&mut LcoreCtx) -> R + Send + Sync + 'static,
    {
        let input = format_core_list(cores);
        if cores.is_empty() {
            return Err(LcoreError::Empty { input });
        }
        validate_cores(&input, cores, &online_cores())?;
        // Claim every block before starting anything, so a failure starts nothing.
        let writers = (0..cores.len())
            .map(|i| stats.writer(i))
            .collect::<Result<Vec<_>, _>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let done: Arc<[AtomicBool]> = (0..cores.len()).map(|_| AtomicBool::new(false)).collect();
        let f = Arc::new(f);
        let mut handles = Vec::with_capacity(cores.len());
        for (i, (cpu, w)) in cores.iter().copied().zip(writers).enumerate() {
            let lcore_id = i as u32;
            let (f, stop_c, done_c) = (f.clone(), stop.clone(), done.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("lcore-{lcore_id}"))
                .spawn(move || {
                    let _done = DoneGuard(done_c, i);
                    let pinned = crate::probe::pin(cpu);
                    let mut ctx = LcoreCtx {
                        lcore_id,
                        cpu,
                        pinned,
                        stats: w,
                        stop: stop_c,
                    };
                    let r = f(&mut ctx);
                    crate::mempool::flush_thread_caches();
                    r
                });
            match spawned {
                Ok(h) => handles.push((lcore_id, h)),
                Err(e) => {
                    // Stop what already runs; it is joined (or detached) by Drop.
                    // Release: pairs with the Acquire in LcoreCtx::should_stop.
                    stop.store(true, Ordering::Release);
                    return Err(LcoreError::Spawn {
                        lcore: lcore_id,
                        why: e.to_string(),
                    });
                }
            }
        }
        Ok(Lcores {
            handles,
            done,
            stop,
            stats,
        })
    }

    /// Number of lcores.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// True if there are none (never, after a successful launch).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Asks every lcore to stop (their loops see it at their next stop check).
    pub fn stop(&self) {
        // Release: pairs with the Acquire in LcoreCtx::should_stop.
        self.stop.store(true, Ordering::Release);
    }

    /// The stats the lcores write.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Waits up to `timeout` for every lcore to return, then collects the results in
    /// lcore order. Lcores still running at the deadline are left running, detached
    /// ([`LcoreError::JoinTimeout`]); a panicked lcore gives [`LcoreError::Panicked`].
    pub fn join(mut self, timeout: Duration) -> Result<Vec<R>, LcoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            // Acquire: pairs with the Release in DoneGuard::drop.
            let pending: Vec<u32> = (0..self.done.len())
                .filter(|&i| !self.done[i].load(Ordering::Acquire))
                .map(|i| i as u32)
                .collect();
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                self.handles.clear();
                return Err(LcoreError::JoinTimeout { pending, timeout });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut out = Vec::with_capacity(self.handles.len());
        for (lcore, h) in self.handles.drain(..) {
            // Every closure has returned (or unwound); join only waits for the
            // thread's exit (thread-local destructors: cache flushes).
            out.push(h.join().map_err(|_| LcoreError::Panicked { lcore })?);
        }
        Ok(out)
    }

    /// [`Lcores::stop`] then [`Lcores::join`].
    pub fn stop_and_join(self, timeout: Duration) -> Result<Vec<R>, LcoreError> {
        self.stop();
        self.join(timeout)
    }
}

impl<R> Drop for Lcores<R> {
    fn drop(&mut self) {
        // Dropped without join: ask the lcores to stop and leave them detached.
        // Release: pairs with the Acquire in LcoreCtx::should_stop.
        self.stop.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mempool::Mempool;

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!(parse_core_list("0-3,6").unwrap(), [0, 1, 2, 3, 6]);
        assert_eq!(parse_core_list(" 1 , 4 - 5 ").unwrap(), [1, 4, 5]);
        assert_eq!(parse_core_list("7").unwrap(), [7]);
        assert_eq!(format_core_list(&[0, 1, 2, 6, 8, 9]), "0-2,6,8-9");
    }

    #[test]
    fn parse_errors_name_the_input() {
        let e = parse_core_list("0-").unwrap_err();
        assert_eq!(
            e,
            LcoreError::BadToken {
                input: "0-".into(),
                token: "0-".into()
            }
        );
        assert!(e.to_string().contains("\"0-\""));
        assert_eq!(
            parse_core_list("5-2").unwrap_err(),
            LcoreError::BackwardRange {
                input: "5-2".into(),
                token: "5-2".into()
            }
        );
        assert_eq!(
            parse_core_list("1,abc").unwrap_err(),
            LcoreError::BadToken {
                input: "1,abc".into(),
                token: "abc".into()
            }
        );
        assert!(matches!(
            parse_core_list("1,,2"),
            Err(LcoreError::BadToken { .. })
        ));
        assert!(matches!(parse_core_list(""), Err(LcoreError::Empty { .. })));
        assert!(matches!(
            parse_core_list("1,0-2"),
            Err(LcoreError::Duplicate { core: 1, .. })
        ));
        assert!(matches!(
            parse_core_list("-3"),
            Err(LcoreError::BadToken { .. })
        ));
    }

    #[test]
    fn missing_core_is_a_typed_error() {
        let e = validate_cores("0,9", &[0, 9], &[0, 1, 2, 3]).unwrap_err();
        assert_eq!(
            e,
            LcoreError::NoSuchCore {
                input: "0,9".into(),
                core: 9,
                online: "0-3".into()
            }
        );
        let huge = "100000";
        assert!(matches!(
            parse_cores(huge),
            Err(LcoreError::NoSuchCore { core: 100000, ref input, .. }) if input == huge
        ));
        let online = online_cores();
        assert!(!online.is_empty());
        assert_eq!(parse_cores(&online[0].to_string()).unwrap(), [online[0]]);
    }

    fn ctx(stats: &Stats, stop: &Arc<AtomicBool>) -> LcoreCtx {
        LcoreCtx::new(0, 0, stats.writer(0).unwrap(), stop.clone())
    }

    #[test]
    fn poll_loop_records_and_stops() {
        let stats = Stats::heap(1);
        let stop = Arc::new(AtomicBool::new(false));
        let mut c = ctx(&stats, &stop);
        let mut n = 0;
        let polls = poll_loop(&mut c, |_| {
            n += 1;
            match n {
                10 => Work::Stop,
                _ if n % 2 == 0 => Work::Busy {
                    packets: 4,
                    bytes: 256,
                },
                _ => Work::Idle,
            }
        });
        assert_eq!(polls, 9);
        let s = stats.snapshot().counters;
        assert_eq!(
            (s.polls, s.empty_polls, s.packets, s.bytes),
            (9, 5, 16, 1024)
        );
        // The stop flag ends the loop at the next check.
        let p = Poller {
            backoff: Backoff::Yield { after: 2 },
            stop_check_every: 8,
        };
        let polls = p.run(&mut c, |c| {
            c.request_stop();
            Work::Idle
        });
        assert_eq!(polls, 8);
        let p = Poller {
            backoff: Backoff::Sleep {
                after: 1,
                dur: Duration::from_micros(10),
            },
            stop_check_every: 0,
        };
        assert_eq!(p.run(&mut c, |_| Work::Idle), 1, "0 means check every poll");
    }

    #[test]
    fn lcores_run_pinned_and_join() {
        let online = online_cores();
        let cores: Vec<usize> = online.iter().copied().take(2).collect();
        let pool = Mempool::heap(256, 256).unwrap();
        let p = pool.clone();
        let lc = Lcores::launch(&cores, move |ctx| {
            let deadline = Instant::now() + Duration::from_secs(10);
            let poller = Poller {
                backoff: Backoff::Yield { after: 0 },
                stop_check_every: 1,
            };
            let mut v = Vec::with_capacity(8);
            poller.run(ctx, |ctx| {
                if Instant::now() > deadline {
                    return Work::Stop;
                }
                if !p.alloc_bulk(&mut v, 8) {
                    ctx.stats.add_drops(1);
                    return Work::Idle;
                }
                crate::mbuf::free_bulk(&mut v);
                Work::Busy {
                    packets: 8,
                    bytes: 8 * 64,
                }
            });
            (ctx.lcore_id, ctx.cpu)
        })
        .unwrap();
        assert_eq!(lc.len(), cores.len());
        let stats = lc.stats().clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.snapshot().counters.packets < 1000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let ids = lc.stop_and_join(Duration::from_secs(10)).unwrap();
        let want: Vec<(u32, usize)> = cores
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u32, *c))
            .collect();
        assert_eq!(ids, want);
        assert!(stats.snapshot().counters.packets >= 1000);
        assert_eq!(
            pool.available(),
            256,
            "the mempool holds every buffer again"
        );
    }

    #[test]
    fn join_reports_timeouts_and_panics() {
        let core = [online_cores()[0]];
        let lc = Lcores::launch(&core, |ctx| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ctx.should_stop() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .unwrap();
        let stop = lc.stop.clone();
        let e = lc.join(Duration::from_millis(20)).unwrap_err();
        assert!(matches!(e, LcoreError::JoinTimeout { ref pending, .. } if pending == &[0]));
        // Release: lets the detached lcore see the stop.
        stop.store(true, Ordering::Release);
        let lc = Lcores::launch(&core, |ctx| {
            if ctx.lcore_id == 0 {
                panic!("lcore test panic");
            }
        })
        .unwrap();
        assert_eq!(
            lc.join(Duration::from_secs(10)).unwrap_err(),
            LcoreError::Panicked { lcore: 0 }
        );
        assert!(matches!(
            Lcores::launch(&[usize::MAX], |_| ()),
            Err(LcoreError::NoSuchCore { .. })
        ));
    }
}
