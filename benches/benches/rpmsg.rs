//! rpmsg-fast in two processes pinned to cores 0 and 1 (harness = false):
//!
//! - round-trip latency of 64-byte messages (p50 / p99 / p999), next to the same-run
//!   one-cache-line floor ([`dataplane::probe::placement_probe`], run before the peer
//!   starts and after it exits; a moved placement voids the run);
//! - one-way messages/s and MB/s of payload for payloads of 16..496 bytes.
//!
//! ```text
//! cargo bench -p zerohop-benches --bench rpmsg            # posted and split
//! RPMSG_BENCH_MODES=posted RPMSG_BENCH_MSGS=20000000 cargo bench -p zerohop-benches --bench rpmsg
//! ```
//!
//! The loops are `rpmsg_fast::bench` (shared with `zerohop rpmsg-bench`, which has
//! more options and `--json`). The parent is the host (creates the window); it
//! re-executes this binary as the remote (`RPMSG_BENCH_PEER` set). Targets (issue 5):
//! posted 496-byte one-way >= 9.3 M msg/s; 64-byte round trip p50 <= 1.3x the floor.

use std::time::{Duration, Instant};

use dataplane::probe::{changed, pin, placement_probe};
use rpmsg_fast::bench::{self, Limit, Poll};
use rpmsg_fast::{Link, LinkConfig, RingMode, Role, RpmsgError};

const SIZES: [usize; 6] = [16, 64, 128, 256, 400, 496];
const DEADLINE: Duration = Duration::from_secs(120);

fn mode_of(s: &str) -> RingMode {
    match s {
        "split" => RingMode::Split,
        "packed" => RingMode::Packed,
        _ => RingMode::Posted,
    }
}

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

/// The remote: echoes on ECHO; counts on SINK.
fn peer(path: &str, mode: RingMode) -> Result<(), RpmsgError> {
    pin(1);
    let mut link = Link::attach_wait(
        &LinkConfig::new(path, mode, Role::Remote),
        Duration::from_secs(10),
    )?;
    link.connect(Instant::now() + Duration::from_secs(10))?;
    bench::run_peer(&mut link, Poll::Spin, DEADLINE * 4)
}

fn pct(v: &[u64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p) as usize] as f64
}

fn host(mode: RingMode, tag: &str) -> Result<(), Box<dyn std::error::Error>> {
    let msgs = env_u64("RPMSG_BENCH_MSGS", 5_000_000);
    let rts = env_u64("RPMSG_BENCH_RTS", 200_000);
    let before = placement_probe((0, 1), 2000);
    let path = format!("/dev/shm/rpmsg-bench-{}-{tag}", std::process::id());
    let mut link = Link::create(&LinkConfig::new(&path, mode, Role::Host))?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .env("RPMSG_BENCH_PEER", &path)
        .env("RPMSG_BENCH_MODE", tag)
        .spawn()?;
    pin(0);
    link.connect(Instant::now() + Duration::from_secs(10))?;
    let ep = bench::client(&mut link)?;

    let mut lat = Vec::with_capacity(rts as usize);
    bench::round_trips(
        &mut link,
        ep,
        64,
        1000,
        Limit::Count(rts),
        Poll::Spin,
        DEADLINE,
        |ns| lat.push(ns),
    )?;
    lat.sort_unstable();

    let mut rows = Vec::new();
    for size in SIZES {
        let r = bench::one_way(
            &mut link,
            ep,
            size,
            Limit::Count(msgs),
            Poll::Spin,
            DEADLINE,
        )?;
        assert_eq!(r.received, msgs, "messages lost");
        rows.push((size, r.msgs_per_s() / 1e6, r.mb_per_s()));
    }
    bench::finish(&mut link, ep, Poll::Spin, DEADLINE)?;
    let ok = child.wait()?.success();
    drop(link);
    let after = placement_probe((0, 1), 2000);

    let floor = before.median_ns.min(after.median_ns);
    let p50 = pct(&lat, 0.5);
    println!("rpmsg-fast {tag}: floor (one-cache-line round trip) before {:.0} ns ({}), after {:.0} ns ({}){}",
        before.median_ns, before.placement, after.median_ns, after.placement,
        if changed(&before, &after) { "  PLACEMENT CHANGED: run void" } else { "" });
    println!(
        "  64 B round trip ({rts}): p50 {:.0} ns ({:.2}x floor), p99 {:.0} ns, p999 {:.0} ns",
        p50,
        p50 / floor,
        pct(&lat, 0.99),
        pct(&lat, 0.999)
    );
    for (size, mmsg, mb) in rows {
        println!("  one-way {size:>3} B payload: {mmsg:6.2} M msg/s  {mb:8.1} MB/s");
    }
    assert!(ok, "peer failed");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(path) = std::env::var("RPMSG_BENCH_PEER") {
        let mode = mode_of(&std::env::var("RPMSG_BENCH_MODE").unwrap_or_default());
        return Ok(peer(&path, mode)?);
    }
    // `cargo test --benches` runs bench binaries without --bench: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let modes = std::env::var("RPMSG_BENCH_MODES").unwrap_or_else(|_| "posted,split".into());
    for tag in modes.split(',') {
        host(mode_of(tag), tag)?;
    }
    Ok(())
}
