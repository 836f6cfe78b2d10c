//! Two real processes over a /dev/shm window: 1 million messages each way across 8
//! endpoints per side, sequence-numbered per endpoint: no loss, per-endpoint order
//! kept, no drops, the window file removed afterwards. Posted, split and packed modes.
//!
//! The parent test is the host (creates the window); it re-executes this test binary
//! as the remote (`--exact two_process_child --ignored`), passing the window path and
//! mode in environment variables. Every wait yields and has a deadline.
//!
//! Messages per direction: `RPMSG_TP_MSGS` (default 1 million).

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rpmsg_fast::{Addr, BusConfig, EndpointId, Link, LinkConfig, RingMode, Role, RpmsgError};

static SERIAL: Mutex<()> = Mutex::new(());
const ENDPOINTS: u32 = 8;
const DEADLINE: Duration = Duration::from_secs(300);
const ENV_WINDOW: &str = "RPMSG_TP_WINDOW";
const ENV_MODE: &str = "RPMSG_TP_MODE";
const ENV_COUNT: &str = "RPMSG_TP_MSGS";

fn count() -> u64 {
    std::env::var(ENV_COUNT)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

fn config(path: &std::path::Path, mode: RingMode, role: Role) -> LinkConfig {
    let mut c = LinkConfig::new(path, mode, role);
    c.bus = BusConfig {
        // Deeper than the ring: a burst can never overflow an endpoint queue.
        rx_queue_depth: 512,
        ..BusConfig::default()
    };
    c
}

/// Sends `count` messages round-robin over `ENDPOINTS` endpoints (to the peer's
/// endpoint of the same index) while receiving as many; checks per-endpoint order.
fn run(link: &mut Link, local_base: u32, peer_base: u32, count: u64) {
    let eps: Vec<EndpointId> = (0..ENDPOINTS)
        .map(|i| {
            link.create_endpoint(None, Addr::Fixed(local_base + i))
                .unwrap()
        })
        .collect();
    let mut next_tx = vec![0u64; ENDPOINTS as usize];
    let mut next_rx = vec![0u64; ENDPOINTS as usize];
    let (mut sent, mut got) = (0u64, 0u64);
    let start = Instant::now();
    let mut buf = [0u8; 64];
    while sent < count || got < count {
        assert!(
            start.elapsed() < DEADLINE,
            "deadline: sent {sent} got {got}"
        );
        let mut progress = false;
        // Send a few.
        for _ in 0..16 {
            if sent >= count {
                break;
            }
            let i = (sent % ENDPOINTS as u64) as usize;
            let seq = next_tx[i];
            let len = 8 + (seq % 57) as usize; // 8..=64 bytes
            buf[..8].copy_from_slice(&seq.to_le_bytes());
            buf[8..len].fill(i as u8);
            match link.try_send(eps[i], peer_base + i as u32, &buf[..len]) {
                Ok(()) => {
                    next_tx[i] += 1;
                    sent += 1;
                    progress = true;
                }
                Err(RpmsgError::WouldBlock) => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        // Receive what is there.
        if link.poll().unwrap() > 0 {
            progress = true;
        }
        for (i, &ep) in eps.iter().enumerate() {
            while let Some(m) = link.try_recv(ep).unwrap() {
                let d = link.payload(&m);
                let seq = u64::from_le_bytes(d[..8].try_into().unwrap());
                assert_eq!(seq, next_rx[i], "endpoint {i}: order");
                assert_eq!(d.len(), 8 + (seq % 57) as usize, "endpoint {i}: length");
                assert!(
                    d[8..].iter().all(|&b| b == i as u8),
                    "endpoint {i}: payload"
                );
                assert_eq!(m.src(), peer_base + i as u32);
                next_rx[i] += 1;
                got += 1;
                link.release(m).unwrap();
            }
        }
        if !progress {
            std::thread::yield_now();
        }
    }
    let s = link.stats();
    assert_eq!(
        (s.dropped_full, s.bad_header, s.unknown_dst),
        (0, 0, 0),
        "{s:?}"
    );
    println!(
        "{:?}: {count} messages each way over {ENDPOINTS} endpoints in {:.2} s",
        link.config().role,
        start.elapsed().as_secs_f64()
    );
}

struct ChildGuard(Option<Child>);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn two_processes(mode: RingMode, tag: &str) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let path = PathBuf::from(format!("/dev/shm/rpmsg-tp-{tag}-{}", std::process::id()));
    let count = count();
    let mut link = Link::create(&config(&path, mode, Role::Host)).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "two_process_child", "--ignored", "--nocapture"])
        .env(ENV_WINDOW, &path)
        .env(ENV_MODE, tag)
        .env(ENV_COUNT, count.to_string())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(Some(child));
    run(&mut link, 100, 200, count);
    let start = Instant::now();
    let ok = loop {
        let c = guard.0.as_mut().unwrap();
        if let Some(st) = c.try_wait().unwrap() {
            guard.0 = None;
            break st.success();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "child did not exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(ok, "child failed");
    drop(link);
    assert!(!path.exists(), "window file left behind");
}

#[test]
fn two_process_posted() {
    two_processes(RingMode::Posted, "posted");
}

#[test]
fn two_process_split() {
    two_processes(RingMode::Split, "split");
}

/// The remote process; does nothing unless started by a parent test.
#[test]
#[ignore = "started by the two-process tests"]
fn two_process_child() {
    let (Ok(path), Ok(tag)) = (std::env::var(ENV_WINDOW), std::env::var(ENV_MODE)) else {
        return;
    };
    let mode = match tag.as_str() {
        "split" => RingMode::Split,
        "packed" => RingMode::Packed,
        _ => RingMode::Posted,
    };
    let cfg = config(std::path::Path::new(&path), mode, Role::Remote);
    let mut link = Link::attach_wait(&cfg, Duration::from_secs(10)).unwrap();
    run(&mut link, 200, 100, count());
}

#[test]
fn two_process_packed() {
    two_processes(RingMode::Packed, "packed");
}
