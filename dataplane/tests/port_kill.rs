//! kill -9 of either side of a port, mid-stream.
//!
//! The parent creates a /dev/shm window (posted ring) and re-executes this test binary
//! as the peer (`--exact port_kill_child --ignored`), with the window path and the
//! child's role in environment variables. Both sides send packets carrying sequence
//! numbers and check that what they receive is in order with no gaps. Then the parent
//! sends SIGKILL to the child and must:
//! - report the peer lost (we print how long after the kill; we assert only < 1 s),
//! - neither hang nor crash (every wait has a deadline),
//! - re-attach when a second child starts, with traffic flowing again from sequence 0,
//! - and have every buffer back afterwards (no received packet outstanding, and the
//!   new peer has credited every one of its receive buffers to us).
//!
//! Case 1: the child is the frontend; case 2: the child is the backend.
//! Children and the window file are cleaned up by Drop guards, also on panic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dataplane::pmd::window::WindowSpec;
use dataplane::port::{free_rx_bulk, Port, PortConfig, PortError, QueueHandle, Role, RxMbuf};

const ENV_WINDOW: &str = "ZEROHOP_PORT_KILL_WINDOW";
const ENV_ROLE: &str = "ZEROHOP_PORT_KILL_ROLE";
const RING: u32 = 128;
/// Packets per direction before the kill (and again after re-attach).
const PHASE: u64 = 3000;

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

/// Removes the window file on drop (the port removes it too; this covers panics).
struct FileGuard(PathBuf);

impl Drop for FileGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Frontend => "frontend",
        Role::Backend => "backend",
    }
}

fn spawn_child(path: &Path, role: Role) -> ChildGuard {
    let exe = std::env::current_exe().expect("current_exe");
    let child = Command::new(exe)
        .args(["--exact", "port_kill_child", "--ignored", "--nocapture"])
        .env(ENV_WINDOW, path)
        .env(ENV_ROLE, role_name(role))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    ChildGuard(Some(child))
}

/// Sequenced traffic on one queue: 64-byte packets (inline) and 600-byte ones
/// (buffered) alternating, seq in the first 8 bytes.
struct Traffic {
    next_tx: u64,
    next_rx: u64,
    rx: Vec<RxMbuf>,
    pkts: Vec<[u8; 600]>,
}

impl Traffic {
    fn new() -> Traffic {
        Traffic {
            next_tx: 0,
            next_rx: 0,
            rx: Vec::with_capacity(64),
            pkts: vec![[0u8; 600]; 16],
        }
    }

    /// One burst each way. Panics on a sequence gap (in-order lossless link).
    fn step(&mut self, q: &mut QueueHandle) -> Result<(), PortError> {
        for (i, p) in self.pkts.iter_mut().enumerate() {
            p[..8].copy_from_slice(&(self.next_tx + i as u64).to_le_bytes());
        }
        let refs: [&[u8]; 16] = core::array::from_fn(|i| {
            let len = if (self.next_tx + i as u64).is_multiple_of(2) {
                64
            } else {
                600
            };
            &self.pkts[i][..len]
        });
        self.next_tx += q.tx_burst(&refs)? as u64;
        q.rx_burst(&mut self.rx, 32)?;
        for m in &self.rx {
            let mut b = [0u8; 8];
            assert_eq!(m.copy_out(0, &mut b), 8, "short packet");
            let seq = u64::from_le_bytes(b);
            assert_eq!(seq, self.next_rx, "sequence gap or reorder");
            let want = if seq.is_multiple_of(2) { 64 } else { 600 };
            assert_eq!(m.len(), want, "length of packet {seq}");
            self.next_rx += 1;
        }
        q.free(&mut self.rx);
        Ok(())
    }
}

fn kill_case(child_role: Role) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let parent_role = match child_role {
        Role::Frontend => Role::Backend,
        Role::Backend => Role::Frontend,
    };
    let path = PathBuf::from(format!(
        "/dev/shm/zh-port-kill-{}-{}",
        std::process::id(),
        role_name(child_role)
    ));
    let _file = FileGuard(path.clone());
    let mut cfg = PortConfig::new(WindowSpec::Shm(path.clone()), parent_role);
    cfg.ring_size = RING;
    cfg.handshake_timeout = Duration::from_secs(30);
    let mut port = Port::create(&cfg).expect("create port");
    let mut child = spawn_child(&path, child_role);
    port.start().expect("handshake with the first child");
    let mut q = port.queue(0).expect("queue 0");

    // Phase 1: traffic both ways.
    let mut t = Traffic::new();
    let end = Instant::now() + Duration::from_secs(60);
    while t.next_rx < PHASE || t.next_tx < PHASE {
        assert!(Instant::now() < end, "phase 1 traffic stalled");
        port.poll_control(Instant::now()).expect("control");
        t.step(&mut q).expect("phase 1 burst");
        std::thread::yield_now();
    }
    // Hold a few received packets across the kill.
    let mut held = Vec::with_capacity(64);
    let end = Instant::now() + Duration::from_secs(10);
    while held.len() < 4 {
        assert!(Instant::now() < end, "no packets to hold");
        port.poll_control(Instant::now()).expect("control");
        let before = held.len();
        q.rx_burst(&mut held, 4).expect("rx");
        for m in &held[before..] {
            let mut b = [0u8; 8];
            m.copy_out(0, &mut b);
            assert_eq!(u64::from_le_bytes(b), t.next_rx, "held packet sequence");
            t.next_rx += 1;
        }
        std::thread::yield_now();
    }
    assert!(q.rx_outstanding() >= 4);

    // kill -9 mid-stream.
    let killed = Instant::now();
    child.kill9();
    let end = killed + Duration::from_secs(10);
    let lost_after = loop {
        assert!(Instant::now() < end, "peer loss never reported");
        port.poll_control(Instant::now()).expect("control");
        match t.step(&mut q) {
            Ok(()) => {}
            Err(PortError::PeerLost) => break killed.elapsed(),
            Err(e) => panic!("unexpected error after kill: {e}"),
        }
        std::thread::yield_now();
    };
    println!(
        "{} survivor reported PeerLost {lost_after:?} after kill -9 of the {} child",
        role_name(parent_role),
        role_name(child_role)
    );
    assert!(lost_after < Duration::from_secs(1), "took {lost_after:?}");
    assert!(!port.link_status().up);
    // The held packets are stale now; dropping them touches no ring.
    free_rx_bulk(&mut held);
    assert_eq!(q.rx_outstanding(), 0, "every received buffer is back");
    assert_eq!(q.tx_outstanding(), 0);

    // A new child re-attaches; traffic flows again from sequence 0.
    let mut child2 = spawn_child(&path, child_role);
    let end = Instant::now() + Duration::from_secs(30);
    while !port.link_status().up || !q.link_up() {
        assert!(Instant::now() < end, "the second child never re-attached");
        port.poll_control(Instant::now()).expect("control");
        std::thread::yield_now();
    }
    println!(
        "re-attached: peer generation {}",
        port.link_status().peer_generation
    );
    let mut t = Traffic::new();
    let end = Instant::now() + Duration::from_secs(60);
    while t.next_rx < PHASE || t.next_tx < PHASE {
        assert!(Instant::now() < end, "phase 2 traffic stalled");
        port.poll_control(Instant::now()).expect("control");
        t.step(&mut q).expect("phase 2 burst");
        std::thread::yield_now();
    }

    // Every buffer back: nothing received is held, and the new peer credits all of
    // its receive buffers to us (we can take all of them at once).
    assert_eq!(q.rx_outstanding(), 0);
    let mut bufs = Vec::with_capacity(RING as usize);
    let end = Instant::now() + Duration::from_secs(20);
    while bufs.len() < RING as usize {
        assert!(
            Instant::now() < end,
            "only {} of {RING} peer buffers credited",
            bufs.len()
        );
        port.poll_control(Instant::now()).expect("control");
        let room = RING as usize - bufs.len();
        q.alloc_tx(&mut bufs, room).expect("alloc_tx");
        q.rx_burst(&mut t.rx, 32).expect("rx");
        free_rx_bulk(&mut t.rx);
        std::thread::yield_now();
    }
    assert_eq!(q.tx_outstanding(), RING as usize);
    q.cancel(&mut bufs).expect("cancel");
    assert_eq!(q.tx_outstanding(), 0);
    assert!(child2.still_running(), "the second child failed its checks");
    child2.kill9();
    drop(q);
    drop(port);
    assert!(!path.exists(), "window file removed");
}

#[test]
fn kill9_of_the_frontend_child() {
    kill_case(Role::Frontend);
}

#[test]
fn kill9_of_the_backend_child() {
    kill_case(Role::Backend);
}

/// The child side: runs only when re-executed by the tests above.
#[test]
#[ignore = "run by the kill tests in a child process"]
fn port_kill_child() {
    let (Some(path), Some(role)) = (std::env::var_os(ENV_WINDOW), std::env::var_os(ENV_ROLE))
    else {
        return;
    };
    let role = if role == "backend" {
        Role::Backend
    } else {
        Role::Frontend
    };
    let mut cfg = PortConfig::new(WindowSpec::Shm(path.into()), role);
    cfg.handshake_timeout = Duration::from_secs(30);
    let mut port = Port::attach(&cfg).expect("child: attach");
    port.start().expect("child: handshake");
    let mut q = port.queue(0).expect("child: queue");
    let mut t = Traffic::new();
    // Run until killed (bounded, in case the parent died); a check failure panics,
    // which the parent sees as the child no longer running.
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end {
        if let Err(e) = port.poll_control(Instant::now()) {
            eprintln!("child: control: {e}");
        }
        match t.step(&mut q) {
            Ok(()) => {}
            Err(PortError::PeerLost | PortError::LinkDown(_)) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("child: {e}"),
        }
        std::thread::yield_now();
    }
}
