//! Crash and restart: 100 times, kill one side of a live link with SIGKILL at a random
//! moment under load, and restart it.
//!
//! # Set-up
//! The parent (this test) creates six ports up front, one per (ring mode, role):
//! posted / split / packed, with the parent as backend or as frontend. Each cycle picks
//! one at random and re-executes this test binary as the peer (`--exact
//! crash_restart_child --ignored`) attached to that port's window in the other role.
//! The parent always survives; the side that dies is the frontend in about half the
//! cycles and the backend in the other half (the window's creator is always the
//! survivor: a creator that dies takes its window with it, which `Port` does not
//! re-attach to).
//!
//! # The application stream and what "acknowledged" means
//! One logical stream of messages runs parent -> child across all cycles and ports:
//! message `s` carries `s` (8 bytes LE), is 64 bytes (inline) or 600 (buffered), and
//! its payload is a pattern derived from `s`. The receiver (child):
//! 1. checks every packet (length, pattern, and that within one session each packet is
//!    the previous one + 1: no reorder, no gap on the link);
//! 2. *delivers* new messages in order: it writes `ZH D a b` (messages `[a, b)`
//!    delivered) to its stdout pipe, with one `write(2)` that returns before step 3;
//! 3. then sends the cumulative ack `b` back (a 64-byte packet): **a message `s` is
//!    acknowledged once the parent has received an ack `> s`.**
//!
//! The parent's reader thread collects the pipe; bytes written to a pipe before a
//! SIGKILL are still read after it, so the log is the durable delivery record. After a
//! crash the parent resumes sending from its last ack; the restarted receiver is told
//! how many messages the log shows delivered (its durable state), so resent messages
//! that were delivered but not yet acknowledged are recognised and dropped (`ZH R a
//! b`), and the log must tile `[0, delivered)` with no gap and no overlap. Checked:
//! every acknowledged message was delivered exactly once, an ack never runs ahead of
//! the log, and the link itself never lost, reordered or corrupted a packet.
//!
//! # Per cycle
//! spawn child -> handshake -> both sides check the other's buffers are all credited
//! (`alloc_tx` of a full ring: the survivor's pool is whole again after the previous
//! crash on this port) -> traffic for a random 0..40 ms -> SIGKILL -> the survivor
//! keeps polling until it reports the loss (time printed; asserted < 1 s) -> every
//! survivor buffer is back (nothing received or sent outstanding). A final round
//! re-attaches once more to every port and checks its pool.
//!
//! Knobs: `ZEROHOP_CRASH_CYCLES` (default 100), `ZEROHOP_CRASH_SEED`.
//! Children and window files are cleaned up by Drop guards, also on panic.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataplane::pmd::control::Timing;
use dataplane::pmd::window::WindowSpec;
use dataplane::port::{
    free_rx_bulk, LinkChange, Port, PortConfig, PortError, QueueHandle, RingKind, Role, RxMbuf,
};

const ENV_WINDOW: &str = "ZEROHOP_CRASH_WINDOW";
const ENV_ROLE: &str = "ZEROHOP_CRASH_ROLE";
const ENV_RING: &str = "ZEROHOP_CRASH_RING";
const ENV_DELIVERED: &str = "ZEROHOP_CRASH_DELIVERED";
const RING: u32 = 128;
const BURST: usize = 16;
/// Heartbeat every 5 ms, peer lost after 80 ms of silence: loss is reported within
/// about 80-85 ms of the kill (plus scheduling noise), inside the 100 ms goal.
const TIMING: Timing = Timing {
    heartbeat_interval: Duration::from_millis(5),
    peer_timeout: Duration::from_millis(80),
};

static SERIAL: Mutex<()> = Mutex::new(());

/// Kills (SIGKILL) and reaps a child on drop.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: kill has no memory-safety preconditions; the pid is our own
            // unreaped child, so it cannot have been reused.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
    fn still_running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Removes the window files on drop (the ports remove them too; this covers panics).
struct FileGuard(Vec<PathBuf>);

impl Drop for FileGuard {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Frontend => "frontend",
        Role::Backend => "backend",
    }
}

fn ring_name(k: RingKind) -> &'static str {
    match k {
        RingKind::Posted => "posted",
        RingKind::Split => "split",
        RingKind::Packed => "packed",
    }
}

fn other(r: Role) -> Role {
    match r {
        Role::Frontend => Role::Backend,
        Role::Backend => Role::Frontend,
    }
}

/// xorshift64*: enough randomness for kill moments, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn msg_len(seq: u64) -> usize {
    if seq.is_multiple_of(2) {
        64
    } else {
        600
    }
}

fn pattern(seq: u64, i: usize) -> u8 {
    (seq as u8).wrapping_mul(31).wrapping_add(i as u8)
}

fn fill(buf: &mut [u8], seq: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in buf.iter_mut().enumerate().skip(8) {
        *b = pattern(seq, i);
    }
}

/// What the child's pipe said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rec {
    /// Both pools checked: how many of the survivor's buffers were credited.
    Pool(u64),
    /// Messages `[a, b)` delivered.
    Delivered(u64, u64),
    /// Messages `[a, b)` received again and dropped (already delivered).
    Resent(u64, u64),
    /// A check failed.
    Error,
}

fn parse(line: &str) -> Option<Rec> {
    let rest = &line[line.find("ZH ")? + 3..];
    let mut it = rest.split_whitespace();
    let tag = it.next()?;
    let mut num = || it.next().and_then(|v| v.parse::<u64>().ok());
    Some(match tag {
        "P" => Rec::Pool(num()?),
        "D" => Rec::Delivered(num()?, num()?),
        "R" => Rec::Resent(num()?, num()?),
        _ => Rec::Error,
    })
}

/// A running child and the thread reading its pipe.
struct Peer {
    child: ChildGuard,
    reader: Option<JoinHandle<Vec<Rec>>>,
}

impl Peer {
    fn spawn(path: &Path, role: Role, ring: RingKind, delivered: u64) -> Peer {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .args(["--exact", "crash_restart_child", "--ignored", "--nocapture"])
            .env(ENV_WINDOW, path)
            .env(ENV_ROLE, role_name(role))
            .env(ENV_RING, ring_name(ring))
            .env(ENV_DELIVERED, delivered.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let out = child.stdout.take().expect("child stdout");
        let reader = std::thread::spawn(move || {
            let mut recs = Vec::new();
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(r) = parse(&line) {
                    if r == Rec::Error {
                        eprintln!("child: {line}");
                    }
                    recs.push(r);
                }
            }
            recs
        });
        Peer {
            child: ChildGuard(Some(child)),
            reader: Some(reader),
        }
    }

    /// Kills the child (if still running) and returns everything it wrote.
    fn finish(mut self) -> Vec<Rec> {
        self.child.kill9();
        self.reader
            .take()
            .map(|r| r.join().expect("reader thread"))
            .unwrap_or_default()
    }
}

/// One port the parent keeps for the whole test.
struct Slot {
    ring: RingKind,
    child_role: Role,
    path: PathBuf,
    port: Port,
    q: QueueHandle,
    attaches: u32,
}

/// The parent's side of the stream.
struct Sender {
    /// Next message to send.
    next_tx: u64,
    /// Highest cumulative ack received (messages below it are acknowledged).
    acked: u64,
    /// Messages sent in all (resends included).
    sent: u64,
    rx: Vec<RxMbuf>,
    bufs: Vec<[u8; 600]>,
}

impl Sender {
    /// One burst each way; `Err` is the link going down.
    fn step(&mut self, q: &mut QueueHandle) -> Result<(), PortError> {
        for (i, b) in self.bufs.iter_mut().enumerate() {
            fill(b, self.next_tx + i as u64);
        }
        let base = self.next_tx;
        let refs: [&[u8]; BURST] =
            core::array::from_fn(|i| &self.bufs[i][..msg_len(base + i as u64)]);
        let n = q.tx_burst(&refs)? as u64;
        self.next_tx += n;
        self.sent += n;
        let r = q.rx_burst(&mut self.rx, 32);
        for m in &self.rx {
            let mut b = [0u8; 8];
            assert_eq!(m.copy_out(0, &mut b), 8, "short ack");
            let ack = u64::from_le_bytes(b);
            assert!(
                ack <= self.next_tx,
                "ack {ack} for messages never sent (next {})",
                self.next_tx
            );
            self.acked = self.acked.max(ack);
        }
        q.free(&mut self.rx);
        r.map(|_| ())
    }
}

fn control(port: &mut Port) -> Result<LinkChange, PortError> {
    port.poll_control(Instant::now())
}

/// Polls until the link is up and the child reported its pool check; meanwhile
/// checks that the survivor can take every one of the child's buffers.
fn attach(slot: &mut Slot, peer: &mut Peer, tx: &mut Sender) {
    let end = Instant::now() + Duration::from_secs(20);
    while !(slot.port.link_status().up && slot.q.link_up()) {
        assert!(
            Instant::now() < end,
            "{}: child never attached",
            slot.path.display()
        );
        assert!(peer.child.still_running(), "child exited before attaching");
        control(&mut slot.port).expect("control while attaching");
        let _ = slot.q.rx_burst(&mut tx.rx, 32);
        free_rx_bulk(&mut tx.rx);
        std::thread::yield_now();
    }
    slot.attaches += 1;
    // Our side of the pool check: every one of the new peer's buffers credited.
    let mut bufs = Vec::with_capacity(RING as usize);
    let end = Instant::now() + Duration::from_secs(20);
    while bufs.len() < RING as usize {
        assert!(
            Instant::now() < end,
            "only {} of {RING} peer buffers credited",
            bufs.len()
        );
        control(&mut slot.port).expect("control");
        let room = RING as usize - bufs.len();
        slot.q.alloc_tx(&mut bufs, room).expect("alloc_tx");
        let _ = slot.q.rx_burst(&mut tx.rx, 32);
        free_rx_bulk(&mut tx.rx);
        std::thread::yield_now();
    }
    assert_eq!(slot.q.tx_outstanding(), RING as usize);
    slot.q.cancel(&mut bufs).expect("cancel");
    assert_eq!(slot.q.tx_outstanding(), 0);
    tx.next_tx = tx.acked;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn crash_and_restart_100_times() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cycles: usize = std::env::var("ZEROHOP_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let seed: u64 = std::env::var("ZEROHOP_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("crash_restart: {cycles} cycles, ZEROHOP_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let t0 = Instant::now();

    let pid = std::process::id();
    let mut paths = Vec::new();
    let mut slots = Vec::new();
    for ring in [RingKind::Posted, RingKind::Split, RingKind::Packed] {
        for child_role in [Role::Frontend, Role::Backend] {
            let path = PathBuf::from(format!(
                "/dev/shm/zh-crash-{pid}-{}-{}",
                ring_name(ring),
                role_name(child_role)
            ));
            paths.push(path.clone());
            let mut cfg = PortConfig::new(WindowSpec::Shm(path.clone()), other(child_role));
            cfg.ring = ring;
            cfg.ring_size = RING;
            cfg.timing = TIMING;
            // `start` runs one handshake step and returns; the rest happens in
            // poll_control once a child attaches.
            cfg.handshake_timeout = Duration::ZERO;
            let mut port = Port::create(&cfg).expect("create port");
            let q = port.queue(0).expect("queue 0");
            slots.push(Slot {
                ring,
                child_role,
                path,
                port,
                q,
                attaches: 0,
            });
        }
    }
    let _files = FileGuard(paths.clone());
    for s in &mut slots {
        match s.port.start() {
            Ok(()) | Err(PortError::HandshakeTimeout { .. }) => {}
            Err(e) => panic!("start: {e}"),
        }
    }

    let mut tx = Sender {
        next_tx: 0,
        acked: 0,
        sent: 0,
        rx: Vec::with_capacity(64),
        bufs: vec![[0u8; 600]; BURST],
    };
    // The durable delivery log, in the order the children wrote it.
    let mut delivered = 0u64;
    let mut resent = 0u64;
    let mut detect = Vec::with_capacity(cycles);
    let mut by_role = [0u32; 2];
    let mut spurious = 0u32;

    fn absorb(recs: Vec<Rec>, delivered: &mut u64, resent: &mut u64, want_pool: bool) {
        let mut pool = None;
        for r in recs {
            match r {
                Rec::Pool(n) => pool = Some(n),
                Rec::Delivered(a, b) => {
                    assert_eq!(a, *delivered, "delivery log gap or overlap at {a}");
                    assert!(b > a);
                    *delivered = b;
                }
                Rec::Resent(a, b) => {
                    assert!(b <= *delivered, "resent [{a}, {b}) was never delivered");
                    *resent += b - a;
                }
                Rec::Error => panic!("the child reported a failed check"),
            }
        }
        if want_pool {
            assert_eq!(pool, Some(RING as u64), "survivor's buffers credited");
        }
    }

    for cycle in 0..cycles {
        let si = rng.below(slots.len() as u64) as usize;
        let slot = &mut slots[si];
        by_role[(slot.child_role == Role::Backend) as usize] += 1;
        let mut peer = Peer::spawn(&slot.path, slot.child_role, slot.ring, delivered);
        attach(slot, &mut peer, &mut tx);

        // Traffic for a random moment, then SIGKILL.
        let run_for = Duration::from_micros(rng.below(40_000));
        let end = Instant::now() + run_for;
        let hard = Instant::now() + Duration::from_secs(20);
        let first = tx.sent;
        loop {
            assert!(Instant::now() < hard, "traffic stalled");
            let r = control(&mut slot.port).and_then(|_| tx.step(&mut slot.q));
            match r {
                Ok(()) => {}
                // A heartbeat missed under heavy machine load (not a kill): the link
                // re-handshakes with the same child; counted and reported.
                Err(PortError::PeerLost | PortError::LinkDown(_)) => {
                    spurious += 1;
                    eprintln!("cycle {cycle}: link went down before the kill; re-attaching");
                    attach(slot, &mut peer, &mut tx);
                }
                Err(e) => panic!("cycle {cycle}: burst under load: {e}"),
            }
            if Instant::now() >= end && tx.sent > first {
                break;
            }
            std::thread::yield_now();
        }
        let acked_before = tx.acked;
        let killed = Instant::now();
        peer.child.kill9();
        let end = killed + Duration::from_secs(10);
        let took = loop {
            assert!(
                Instant::now() < end,
                "cycle {cycle}: peer loss never reported"
            );
            match control(&mut slot.port) {
                Ok(LinkChange::Down(_)) => break killed.elapsed(),
                Ok(_) => {}
                Err(e) => panic!("cycle {cycle}: control after kill: {e}"),
            }
            match tx.step(&mut slot.q) {
                Ok(()) => {}
                Err(PortError::PeerLost | PortError::LinkDown(_)) => break killed.elapsed(),
                Err(e) => panic!("cycle {cycle}: unexpected error after kill: {e}"),
            }
            std::thread::yield_now();
        };
        assert!(
            took < Duration::from_secs(1),
            "cycle {cycle}: loss noticed after {took:?}"
        );
        assert!(!slot.port.link_status().up);
        // Apply the reset on the handle; nothing of ours may stay outstanding.
        let _ = slot.q.rx_burst(&mut tx.rx, 32);
        free_rx_bulk(&mut tx.rx);
        assert_eq!(slot.q.rx_outstanding(), 0, "cycle {cycle}: rx buffers back");
        assert_eq!(slot.q.tx_outstanding(), 0, "cycle {cycle}: tx buffers back");
        detect.push(took);

        let recs = peer.finish();
        absorb(recs, &mut delivered, &mut resent, true);
        // Every message acknowledged before the crash is in the log (ack => delivered).
        assert!(
            tx.acked <= delivered && acked_before <= delivered,
            "cycle {cycle}: acked {} but only {delivered} delivered",
            tx.acked
        );
    }

    // Final round: every port re-attaches once more, with its pool whole.
    for slot in &mut slots {
        let mut peer = Peer::spawn(&slot.path, slot.child_role, slot.ring, delivered);
        attach(slot, &mut peer, &mut tx);
        let hard = Instant::now() + Duration::from_secs(20);
        let goal = tx.acked + 100;
        while tx.acked < goal {
            assert!(Instant::now() < hard, "final traffic stalled");
            control(&mut slot.port).expect("control");
            tx.step(&mut slot.q).expect("final burst");
            std::thread::yield_now();
        }
        assert!(peer.child.still_running(), "final child failed a check");
        absorb(peer.finish(), &mut delivered, &mut resent, true);
        assert!(tx.acked <= delivered);
        control(&mut slot.port).ok();
    }

    let mut sorted = detect.clone();
    sorted.sort();
    let within = sorted
        .iter()
        .filter(|d| **d <= Duration::from_millis(100))
        .count();
    println!(
        "crash_restart: {cycles} kills ({} of a frontend child, {} of a backend child), \
         {:.1} s in all",
        by_role[0],
        by_role[1],
        t0.elapsed().as_secs_f64()
    );
    println!(
        "  loss noticed after: min {:?} median {:?} p95 {:?} max {:?}; {within}/{cycles} within 100 ms",
        sorted[0],
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.95),
        sorted[sorted.len() - 1]
    );
    println!(
        "  stream: {} sends, {delivered} delivered exactly once, {} acknowledged, \
         {resent} resent after a crash and dropped as already delivered; \
         {spurious} link losses without a kill",
        tx.sent, tx.acked
    );
    for s in &slots {
        println!(
            "  {} port, {} child: {} attaches, link ups {}, downs {}",
            ring_name(s.ring),
            role_name(s.child_role),
            s.attaches,
            s.port.link_status().ups,
            s.port.link_status().downs
        );
    }
    drop(slots);
    for p in &paths {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

/// The child side: runs only when re-executed by the test above.
#[test]
#[ignore = "run by crash_and_restart_100_times in a child process"]
fn crash_restart_child() {
    let (Some(path), Some(role), Some(ring), Some(delivered)) = (
        std::env::var_os(ENV_WINDOW),
        std::env::var(ENV_ROLE).ok(),
        std::env::var(ENV_RING).ok(),
        std::env::var(ENV_DELIVERED).ok(),
    ) else {
        return;
    };
    let role = if role == "backend" {
        Role::Backend
    } else {
        Role::Frontend
    };
    let ring = match ring.as_str() {
        "split" => RingKind::Split,
        "packed" => RingKind::Packed,
        _ => RingKind::Posted,
    };
    let mut next: u64 = delivered.parse().expect("delivered count");
    let mut out = std::io::stdout();
    let mut say = |s: String| {
        // One write(2) per record: it is in the pipe before we go on.
        out.write_all(s.as_bytes()).expect("pipe");
        out.flush().expect("pipe");
    };
    say("\n".into());
    let mut cfg = PortConfig::new(WindowSpec::Shm(path.into()), role);
    cfg.ring = ring;
    cfg.timing = TIMING;
    cfg.handshake_timeout = Duration::from_secs(20);
    let mut port = Port::attach(&cfg).expect("child: attach");
    port.start().expect("child: handshake");
    let mut q = port.queue(0).expect("child: queue");
    let mut rx = Vec::with_capacity(64);

    // Pool check: every one of the survivor's receive buffers is credited to us.
    let mut bufs = Vec::with_capacity(RING as usize);
    let end = Instant::now() + Duration::from_secs(20);
    while bufs.len() < RING as usize && Instant::now() < end {
        let _ = port.poll_control(Instant::now());
        let room = RING as usize - bufs.len();
        if q.alloc_tx(&mut bufs, room).is_err() {
            break;
        }
        std::thread::yield_now();
    }
    let got = bufs.len();
    let _ = q.cancel(&mut bufs);
    say(format!("ZH P {got}\n"));

    // Receive, check, deliver, ack; until killed (bounded in case the parent died).
    let mut prev: Option<u64> = None;
    let mut acked_sent = next;
    let mut b = [0u8; 600];
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        let _ = port.poll_control(Instant::now());
        match q.rx_burst(&mut rx, 32) {
            Ok(_) => {}
            Err(PortError::PeerLost | PortError::LinkDown(_)) => {
                // The parent resumes from its last ack on the next session.
                prev = None;
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(e) => {
                say(format!("ZH E rx {e}\n"));
                return;
            }
        }
        let first_new = next;
        let (mut dup_a, mut dup_b) = (u64::MAX, 0u64);
        for m in &rx {
            let n = m.copy_out(0, &mut b);
            if n < 8 {
                say(format!("ZH E short {n}\n"));
                return;
            }
            let seq = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
            if n != msg_len(seq) || (8..n).any(|i| b[i] != pattern(seq, i)) {
                say(format!("ZH E corrupt {seq} len {n}\n"));
                return;
            }
            if let Some(p) = prev {
                if seq != p + 1 {
                    say(format!("ZH E order {seq} after {p}\n"));
                    return;
                }
            }
            prev = Some(seq);
            if seq < next {
                dup_a = dup_a.min(seq);
                dup_b = dup_b.max(seq + 1);
            } else if seq == next {
                next += 1;
            } else {
                say(format!("ZH E gap {seq} expected {next}\n"));
                return;
            }
        }
        q.free(&mut rx);
        if dup_b > 0 {
            say(format!("ZH R {dup_a} {dup_b}\n"));
        }
        if next > first_new {
            say(format!("ZH D {first_new} {next}\n"));
        }
        if next > acked_sent {
            let ack = next.to_le_bytes();
            let mut pkt = [0u8; 64];
            pkt[..8].copy_from_slice(&ack);
            if let Ok(1) = q.tx_burst(&[&pkt[..]]) {
                acked_sent = next;
            }
        }
        std::thread::yield_now();
    }
}
