//! RPMsg echo in two processes: the remote runs an echo service announced as
//! "rpmsg-echo"; the host binds to it by name, sends messages and checks the echoes.
//!
//! ```text
//! cargo run -p zerohop-examples --example rpmsg_echo [posted|split|packed] [count]
//! ```
//!
//! The host (this process) creates the /dev/shm window and re-executes itself as the
//! remote (`__server` argument).

use std::time::{Duration, Instant};

use rpmsg_fast::{Addr, Link, LinkConfig, RingMode, Role, RpmsgError};

fn mode(s: &str) -> RingMode {
    match s {
        "split" => RingMode::Split,
        "packed" => RingMode::Packed,
        _ => RingMode::Posted,
    }
}

fn server(path: &str, m: RingMode) -> Result<(), RpmsgError> {
    let mut link = Link::attach_wait(
        &LinkConfig::new(path, m, Role::Remote),
        Duration::from_secs(10),
    )?;
    let ep = link.create_endpoint(Some("rpmsg-echo"), Addr::Dynamic)?;
    link.announce(ep)?;
    let mut idle = Instant::now();
    // Echo until the host has been quiet for a second.
    while idle.elapsed() < Duration::from_secs(1) {
        let Some(m) = link.recv(ep)? else {
            std::thread::yield_now();
            continue;
        };
        idle = Instant::now();
        // Zero-copy both ways: read the request in place, build the reply in a
        // peer-visible buffer, release the request. (A reply of at most
        // `LinkConfig::inline_payload()` bytes is faster with the copying `send`: it
        // travels inside its ring slot; docs/RPMSG.md.)
        let src = m.src();
        let n = m.len();
        let Some(mut tx) = link.get_tx_buffer()? else {
            // No buffer now: fall back to a copying send with a deadline.
            let data = link.payload(&m).to_vec();
            link.release(m)?;
            link.send(ep, src, &data)?;
            continue;
        };
        tx.payload_mut()[..n].copy_from_slice(link.payload(&m));
        link.release(m)?;
        link.send_nocopy(ep, src, tx, n)?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__server") {
        return Ok(server(&args[2], mode(&args[3]))?);
    }
    let m = mode(args.get(1).map(String::as_str).unwrap_or("posted"));
    let count: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let path = format!("/dev/shm/rpmsg-echo-{}", std::process::id());
    let mut link = Link::create(&LinkConfig::new(&path, m, Role::Host))?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "__server",
            &path,
            args.get(1).map(String::as_str).unwrap_or("posted"),
        ])
        .spawn()?;

    let ep = link.create_endpoint(None, Addr::Dynamic)?;
    link.bind(ep, "rpmsg-echo")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while link.destination(ep)?.is_none() {
        link.poll()?;
        if Instant::now() > deadline {
            return Err("the echo service was never announced".into());
        }
        std::thread::yield_now();
    }
    println!("bound to rpmsg-echo at address {:?}", link.destination(ep)?);
    let start = Instant::now();
    for i in 0..count {
        let msg = i.to_le_bytes();
        link.send_default(ep, &msg)?;
        let r = link.recv_deadline(ep, Instant::now() + Duration::from_secs(10))?;
        assert_eq!(link.payload(&r), &msg, "echo mismatch");
        link.release(r)?;
    }
    let t = start.elapsed();
    println!(
        "{count} round trips over {m:?} in {:.2} s: {:.2} us each",
        t.as_secs_f64(),
        t.as_secs_f64() * 1e6 / count as f64
    );
    child.wait()?;
    Ok(())
}
