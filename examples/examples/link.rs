//! One link between two processes over a /dev/shm window.
//!
//! ```text
//! cargo run --release -p zerohop-examples --example link
//! ```
//!
//! The program creates the window and plays the backend; it starts a second copy of
//! itself (`link --peer PATH`) that attaches as the frontend. The backend sends
//! bursts of 64-byte packets, the frontend receives them in place (zero copy) and
//! frees them; both print what they did.

use std::process::Command;
use std::time::{Duration, Instant};

use dataplane::pmd::window::WindowSpec;
use dataplane::{Port, PortConfig, PortError, Role};

/// Packets to send.
const COUNT: u64 = 5_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "--peer" {
        return receiver(&args[2]);
    }
    sender()
}

/// The backend: creates the window, starts the peer, sends COUNT packets.
fn sender() -> Result<(), Box<dyn std::error::Error>> {
    let path = format!("/dev/shm/zerohop-link-example-{}", std::process::id());

    // 1. Create the window and lay out the link (1 queue pair, posted ring).
    let cfg = PortConfig::new(WindowSpec::Shm(path.clone().into()), Role::Backend);
    let mut port = Port::create(&cfg)?; // removes the file when dropped

    // 2. Start the peer process: this same program with --peer.
    let mut peer = Command::new(std::env::current_exe()?)
        .args(["--peer", &path])
        .spawn()?;

    // 3. Handshake (gives up after 10 s if the peer never shows up).
    port.start()?;
    let mut queue = port.queue(0)?;
    println!("sender: link up over {}", port.window().describe());

    // 4. Send bursts of 32 packets; each carries its sequence number.
    let mut pkts = [[0u8; 64]; 32];
    let mut sent = 0u64;
    let mut loops = 0u64;
    let t0 = Instant::now();
    while sent < COUNT {
        // Every 64 loops, run the control plane (heartbeats, peer loss).
        loops += 1;
        if loops.is_multiple_of(64) {
            port.poll_control(Instant::now())?;
        }
        for (i, p) in pkts.iter_mut().enumerate() {
            p[..8].copy_from_slice(&(sent + i as u64).to_le_bytes());
        }
        let burst: [&[u8]; 32] = core::array::from_fn(|i| &pkts[i][..]);
        let n = (COUNT - sent).min(32) as usize;
        // tx_burst copies once into the peer's memory; fewer than asked = ring full.
        sent += queue.tx_burst(&burst[..n])? as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "sender: {sent} packets in {secs:.2} s ({:.1} Mpps)",
        sent as f64 / secs / 1e6
    );

    // 5. Keep the link alive until the peer has everything and exits.
    let end = Instant::now() + Duration::from_secs(30);
    while peer.try_wait()?.is_none() && Instant::now() < end {
        port.poll_control(Instant::now())?;
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = peer.kill();
    peer.wait()?;
    Ok(())
}

/// The frontend: attaches to the window and receives COUNT packets.
fn receiver(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = PortConfig::new(WindowSpec::Shm(path.into()), Role::Frontend);
    let mut port = Port::attach(&cfg)?;
    port.start()?;
    let mut queue = port.queue(0)?;

    let mut rx = Vec::with_capacity(32); // received packets (zero-copy views)
    let mut got = 0u64;
    let mut polls = 0u64;
    let t0 = Instant::now();
    while got < COUNT {
        polls += 1;
        if polls.is_multiple_of(64) {
            port.poll_control(Instant::now())?;
        }
        match queue.rx_burst(&mut rx, 32) {
            Ok(_) => {}
            Err(PortError::PeerLost) => return Err("the sender went away".into()),
            Err(e) => return Err(e.into()),
        }
        for m in &rx {
            // Read values out of shared memory once, then check them.
            let mut seq = [0u8; 8];
            m.copy_out(0, &mut seq);
            assert_eq!(u64::from_le_bytes(seq), got, "packets arrive in order");
            got += 1;
        }
        // Give the buffers back to the sender (one batch per burst).
        queue.free(&mut rx);
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "receiver: {got} packets in {secs:.2} s ({:.1} Mpps), all in order",
        got as f64 / secs / 1e6
    );
    let s = port.stats();
    println!(
        "receiver: port stats: {} packets, {} bytes",
        s.total.rx_packets, s.total.rx_bytes
    );
    Ok(())
}
