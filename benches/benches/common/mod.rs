//! The SPSC contenders shared by `spsc` (criterion) and `spsc_ratio` (the interleaved
//! same-placement harness): each moves `items` u64 from a thread pinned to one core to
//! a thread pinned to another, in bursts of [`BURST`], through a ring of [`RING`]
//! slots, and returns the consumer-side time from the start gate to the last item.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use dataplane::probe::pin;

/// Items per burst.
pub const BURST: usize = 32;
/// Ring slots (all contenders).
pub const RING: usize = 1024;
/// A single run that takes longer than this is abandoned (returns `None`).
pub const RUN_DEADLINE: Duration = Duration::from_secs(10);

/// One way of moving items between two cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// zerohop `rings::spsc`, `write_chunk_uninit` / `read_chunk`.
    ZhChunk,
    /// zerohop `rings::spsc`, `push_slice` / `pop_slice`.
    ZhSlice,
    /// rtrb 0.4, `write_chunk_uninit` / `read_chunk`.
    Rtrb,
    /// crossbeam `ArrayQueue`, per-item push/pop in bursts.
    ArrayQueue,
}

impl Contender {
    /// Every contender, in the order the ratio harness interleaves them.
    pub const ALL: [Contender; 4] = [
        Contender::ZhChunk,
        Contender::ZhSlice,
        Contender::Rtrb,
        Contender::ArrayQueue,
    ];

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Contender::ZhChunk => "zerohop chunk",
            Contender::ZhSlice => "zerohop slice",
            Contender::Rtrb => "rtrb chunk",
            Contender::ArrayQueue => "ArrayQueue",
        }
    }

    /// Moves `items` (rounded up to a whole burst) from `cores.0` to `cores.1`.
    pub fn run(self, items: u64, cores: (usize, usize)) -> Option<Duration> {
        let items = items.div_ceil(BURST as u64) * BURST as u64;
        match self {
            Contender::ZhChunk => zh_chunk(items, cores),
            Contender::ZhSlice => zh_slice(items, cores),
            Contender::Rtrb => rtrb_chunk(items, cores),
            Contender::ArrayQueue => array_queue(items, cores),
        }
    }
}

/// Start gate and abort flag shared by the two threads of one run.
struct Gate {
    ready: AtomicUsize,
    go: AtomicBool,
    abort: AtomicBool,
    deadline: Instant,
}

impl Gate {
    fn new() -> Self {
        Gate {
            ready: AtomicUsize::new(0),
            go: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            deadline: Instant::now() + RUN_DEADLINE,
        }
    }

    /// Pins the thread, checks in, and waits for the start signal.
    fn enter(&self, core: usize) -> bool {
        pin(core);
        // Release/Acquire: plain start handshake (no data rides on it).
        self.ready.fetch_add(1, Ordering::AcqRel);
        // Acquire: pairs with the Release store of `go` in `two_threads` (start signal).
        while !self.go.load(Ordering::Acquire) {
            if Instant::now() >= self.deadline {
                // Relaxed: "stop" only.
                self.abort.store(true, Ordering::Relaxed);
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    /// Called while the ring is full/empty. Returns true if the run must stop.
    #[inline]
    fn wait(&self, spins: &mut u32) -> bool {
        *spins = spins.wrapping_add(1);
        if *spins & 0x3fff == 0 {
            // Relaxed: "stop" only.
            if self.abort.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
                // Relaxed: "stop" only.
                self.abort.store(true, Ordering::Relaxed);
                return true;
            }
        }
        core::hint::spin_loop();
        false
    }
}

/// Runs `prod` on `cores.0` and `cons` on `cores.1`; the consumer's time counts.
fn two_threads(
    cores: (usize, usize),
    prod: impl FnOnce(&Gate) + Send,
    cons: impl FnOnce(&Gate) -> u64 + Send,
    items: u64,
) -> Option<Duration> {
    let gate = Gate::new();
    let elapsed = std::thread::scope(|s| {
        let g = &gate;
        let p = s.spawn(move || {
            if g.enter(cores.0) {
                prod(g)
            }
        });
        let c = s.spawn(move || {
            if !g.enter(cores.1) {
                return None;
            }
            let t0 = Instant::now();
            let sum = cons(g);
            let dt = t0.elapsed();
            // Relaxed: "stop" only.
            if g.abort.load(Ordering::Relaxed) {
                return None;
            }
            assert_eq!(sum, items * (items - 1) / 2, "items lost or reordered");
            Some(dt)
        });
        // Acquire: pairs with the AcqRel check-in in `Gate::enter`.
        while gate.ready.load(Ordering::Acquire) < 2 {
            if Instant::now() >= gate.deadline {
                // Relaxed: "stop" only.
                gate.abort.store(true, Ordering::Relaxed);
                break;
            }
            std::thread::yield_now();
        }
        // Release: the start signal; pairs with the Acquire wait in `Gate::enter`.
        gate.go.store(true, Ordering::Release);
        let r = c.join().unwrap_or(None);
        let _ = p.join();
        r
    });
    elapsed
}

fn zh_chunk(items: u64, cores: (usize, usize)) -> Option<Duration> {
    let (mut tx, mut rx) = rings::spsc::channel::<u64>(RING).expect("ring");
    two_threads(
        cores,
        move |g| {
            let (mut next, mut spins) = (0u64, 0u32);
            while next < items {
                match tx.write_chunk_uninit(BURST) {
                    Ok(mut w) => {
                        let (a, b) = w.as_mut_slices();
                        for (i, s) in a.iter_mut().chain(b.iter_mut()).enumerate() {
                            s.write(next + i as u64);
                        }
                        // SAFETY: every slot of the chunk was written above.
                        unsafe { w.commit_all() };
                        next += BURST as u64;
                    }
                    Err(_) => {
                        if g.wait(&mut spins) {
                            return;
                        }
                    }
                }
            }
        },
        move |g| {
            let (mut got, mut sum, mut spins) = (0u64, 0u64, 0u32);
            while got < items {
                match rx.read_chunk(BURST) {
                    Ok(r) => {
                        let (a, b) = r.as_slices();
                        for v in a.iter().chain(b) {
                            sum = sum.wrapping_add(*v);
                        }
                        r.commit_all();
                        got += BURST as u64;
                    }
                    Err(_) => {
                        if g.wait(&mut spins) {
                            break;
                        }
                    }
                }
            }
            black_box(sum)
        },
        items,
    )
}

fn zh_slice(items: u64, cores: (usize, usize)) -> Option<Duration> {
    let (mut tx, mut rx) = rings::spsc::channel::<u64>(RING).expect("ring");
    two_threads(
        cores,
        move |g| {
            let (mut next, mut spins) = (0u64, 0u32);
            let mut buf = [0u64; BURST];
            while next < items {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = next + i as u64;
                }
                let mut off = 0;
                while off < BURST {
                    let k = tx.push_slice(&buf[off..]);
                    off += k;
                    if k == 0 && g.wait(&mut spins) {
                        return;
                    }
                }
                next += BURST as u64;
            }
        },
        move |g| {
            let (mut got, mut sum, mut spins) = (0u64, 0u64, 0u32);
            let mut buf = [0u64; BURST];
            while got < items {
                let k = rx.pop_slice(&mut buf);
                for v in &buf[..k] {
                    sum = sum.wrapping_add(*v);
                }
                got += k as u64;
                if k == 0 && g.wait(&mut spins) {
                    break;
                }
            }
            black_box(sum)
        },
        items,
    )
}

fn rtrb_chunk(items: u64, cores: (usize, usize)) -> Option<Duration> {
    let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(RING);
    two_threads(
        cores,
        move |g| {
            let (mut next, mut spins) = (0u64, 0u32);
            while next < items {
                match tx.write_chunk_uninit(BURST) {
                    Ok(mut w) => {
                        let (a, b) = w.as_mut_slices();
                        for (i, s) in a.iter_mut().chain(b.iter_mut()).enumerate() {
                            s.write(next + i as u64);
                        }
                        // SAFETY: every slot of the chunk was written above.
                        unsafe { w.commit_all() };
                        next += BURST as u64;
                    }
                    Err(_) => {
                        if g.wait(&mut spins) {
                            return;
                        }
                    }
                }
            }
        },
        move |g| {
            let (mut got, mut sum, mut spins) = (0u64, 0u64, 0u32);
            while got < items {
                match rx.read_chunk(BURST) {
                    Ok(r) => {
                        let (a, b) = r.as_slices();
                        for v in a.iter().chain(b) {
                            sum = sum.wrapping_add(*v);
                        }
                        r.commit_all();
                        got += BURST as u64;
                    }
                    Err(_) => {
                        if g.wait(&mut spins) {
                            break;
                        }
                    }
                }
            }
            black_box(sum)
        },
        items,
    )
}

fn array_queue(items: u64, cores: (usize, usize)) -> Option<Duration> {
    let q = ArrayQueue::<u64>::new(RING);
    let q = &q;
    two_threads(
        cores,
        move |g| {
            let (mut next, mut spins) = (0u64, 0u32);
            while next < items {
                for i in 0..BURST as u64 {
                    while q.push(next + i).is_err() {
                        if g.wait(&mut spins) {
                            return;
                        }
                    }
                }
                next += BURST as u64;
            }
        },
        move |g| {
            let (mut got, mut sum, mut spins) = (0u64, 0u64, 0u32);
            while got < items {
                let mut k = 0;
                while k < BURST {
                    match q.pop() {
                        Some(v) => {
                            sum = sum.wrapping_add(v);
                            k += 1;
                        }
                        None => break,
                    }
                }
                got += k as u64;
                if k == 0 && g.wait(&mut spins) {
                    break;
                }
            }
            black_box(sum)
        },
        items,
    )
}
