//! iceoryx2 0.10 publish-subscribe round trip between two processes, 64-byte payload
//! (`[u64; 8]`, `send_copy`), both sides busy-polling `receive`.
//!
//! ```text
//!  parent (core 0)                          peer = `compare --peer iox PREFIX` (core 1)
//!  publisher "zhcmp/<pid>/ping" ---------->  subscriber
//!  subscriber "zhcmp/<pid>/pong" <--------  publisher (echoes the payload)
//!  payload[0] = u64::MAX: stop.  Batches of 1000 round trips are timed and divided.
//! ```
//!
//! Every iceoryx2 file carries the prefix `zhcmp<pid>_` (the config's `global.prefix`),
//! so whatever a killed run leaves in /dev/shm or /tmp/iceoryx2 is removed by name.

use std::time::{Duration, Instant};

use dataplane::probe::pin;
use iceoryx2::prelude::*;

use crate::peer::{on_core, Peer};

type Payload = [u64; 8];
const BATCH: usize = 1000;
const DEADLINE: Duration = Duration::from_secs(5);

fn config(prefix: &str) -> Result<Config, String> {
    let mut c = Config::default();
    c.global.prefix = FileName::new(prefix.as_bytes()).map_err(|e| format!("prefix: {e:?}"))?;
    Ok(c)
}

fn names(prefix: &str) -> (String, String) {
    (format!("{prefix}/ping"), format!("{prefix}/pong"))
}

/// One publish-subscribe service of the round trip.
type Service =
    iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, Payload, ()>;

/// Opens (or creates) the ping and pong services under `prefix`, with error logging
/// only; the node is returned to be kept for as long as the services are used.
fn services(prefix: &str) -> Result<(Node<ipc::Service>, Service, Service), Err> {
    set_log_level(LogLevel::Error);
    let cfg = config(prefix)?;
    let node = NodeBuilder::new().config(&cfg).create::<ipc::Service>()?;
    let (ping, pong) = names(prefix);
    let open = |name: &str| {
        node.service_builder(&name.try_into()?)
            .publish_subscribe::<Payload>()
            .open_or_create()
            .map_err(Err::from)
    };
    let (ping, pong) = (open(&ping)?, open(&pong)?);
    Ok((node, ping, pong))
}

/// The prefix of this process's iceoryx2 files.
pub fn prefix() -> String {
    format!("zhcmp{}_", std::process::id())
}

type Err = Box<dyn std::error::Error>;

/// Median over `batches` batches of the mean round trip (ns).
pub fn round_trip(batches: usize) -> Result<f64, String> {
    let prefix = prefix();
    // The whole parent side on one pinned thread (iceoryx2 ports are not Send).
    let r = on_core(0, || {
        run_parent(&prefix, batches).map_err(|e| e.to_string())
    });
    cleanup(&prefix);
    let means = r?;
    crate::stats::summarize(&means)
        .map(|s| s.median)
        .ok_or_else(|| "iceoryx2: no batch".into())
}

fn run_parent(prefix: &str, batches: usize) -> Result<Vec<f64>, Err> {
    let (_node, ping, pong) = services(prefix)?;
    let publisher = ping.publisher_builder().create()?;
    let subscriber = pong.subscriber_builder().create()?;
    let peer = Peer::spawn(&["--peer".into(), "iox".into(), prefix.into()])?;
    peer.line("READY", Instant::now() + DEADLINE)?;
    let means = (|| -> Result<Vec<f64>, String> {
        let deadline = Instant::now() + DEADLINE;
        let mut seq = 0u64;
        // Until the peer's subscriber is connected, a ping may be lost: resend.
        let mut rt = |retry: bool| -> Result<(), String> {
            seq += 1;
            publisher
                .send_copy([seq; 8])
                .map_err(|e| format!("{e:?}"))?;
            let mut last_send = Instant::now();
            loop {
                match subscriber.receive().map_err(|e| format!("{e:?}"))? {
                    Some(s) if s[0] == seq => return Ok(()),
                    Some(_) => {}
                    None => {
                        if retry && last_send.elapsed() > Duration::from_millis(5) {
                            publisher
                                .send_copy([seq; 8])
                                .map_err(|e| format!("{e:?}"))?;
                            last_send = Instant::now();
                        }
                        if Instant::now() >= deadline {
                            return Err("iceoryx2 round trip: deadline".into());
                        }
                    }
                }
            }
        };
        rt(true)?;
        let mut means = Vec::with_capacity(batches);
        for b in 0..=batches {
            let t = Instant::now();
            for _ in 0..BATCH {
                rt(false)?;
            }
            if b > 0 {
                means.push(t.elapsed().as_nanos() as f64 / BATCH as f64);
            }
        }
        Ok(means)
    })();
    let _ = publisher.send_copy([u64::MAX; 8]);
    peer.finish(Instant::now() + DEADLINE)?;
    Ok(means?)
}

/// The peer: echoes every ping on the pong service until `u64::MAX`.
pub fn peer_main(prefix: &str) -> Result<(), Err> {
    let (_node, ping, pong) = services(prefix)?;
    let subscriber = ping.subscriber_builder().create()?;
    let publisher = pong.publisher_builder().create()?;
    pin(1);
    println!("READY");
    let deadline = Instant::now() + DEADLINE * 4;
    let mut spins = 0u32;
    loop {
        match subscriber.receive()? {
            Some(s) => {
                let v: Payload = *s;
                drop(s);
                if v[0] == u64::MAX {
                    return Ok(());
                }
                publisher.send_copy(v)?;
            }
            None => {
                spins = spins.wrapping_add(1);
                if spins & 0xfff == 0 && Instant::now() >= deadline {
                    return Err("iceoryx2 peer: deadline".into());
                }
            }
        }
    }
}

/// Removes files carrying `prefix` under /dev/shm and iceoryx2's root (/tmp/iceoryx2).
pub fn cleanup(prefix: &str) {
    fn walk(dir: &std::path::Path, prefix: &str, depth: u32) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                if p.is_dir() {
                    let _ = std::fs::remove_dir_all(&p);
                } else {
                    let _ = std::fs::remove_file(&p);
                }
            } else if depth > 0 && p.is_dir() {
                walk(&p, prefix, depth - 1);
            }
        }
    }
    walk(std::path::Path::new("/dev/shm"), prefix, 0);
    walk(std::path::Path::new("/tmp/iceoryx2"), prefix, 4);
    // iceoryx2's empty directories (remove_dir fails, harmlessly, on non-empty ones,
    // e.g. another user's services).
    for d in [
        "/tmp/iceoryx2/nodes",
        "/tmp/iceoryx2/services",
        "/tmp/iceoryx2",
    ] {
        let _ = std::fs::remove_dir(d);
    }
}
