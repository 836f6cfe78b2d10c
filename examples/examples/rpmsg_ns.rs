//! The RPMsg name service in two processes: the remote announces "sensor-data" and
//! later withdraws it; the host watches the announcements, binds an endpoint to the
//! name and talks to whatever address the announcement carried.
//!
//! ```text
//! cargo run -p zerohop-examples --example rpmsg_ns
//! ```

use std::time::{Duration, Instant};

use rpmsg_fast::{Addr, Link, LinkConfig, RingMode, Role};

fn remote(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut link = Link::attach_wait(
        &LinkConfig::new(path, RingMode::Posted, Role::Remote),
        Duration::from_secs(10),
    )?;
    let ep = link.create_endpoint(Some("sensor-data"), Addr::Fixed(1100))?;
    link.announce(ep)?;
    let m = link.recv_deadline(ep, Instant::now() + Duration::from_secs(10))?;
    println!(
        "remote: got {:?} from {}",
        String::from_utf8_lossy(link.payload(&m)),
        m.src()
    );
    let src = m.src();
    link.release(m)?;
    link.send(ep, src, b"21.5 C")?;
    link.withdraw(ep)?;
    link.destroy_endpoint(ep)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__remote") {
        return remote(&args[2]);
    }
    let path = format!("/dev/shm/rpmsg-ns-{}", std::process::id());
    let mut link = Link::create(&LinkConfig::new(&path, RingMode::Posted, Role::Host))?;
    link.on_service(|e| {
        println!(
            "host: name service: {:?} {:?} at {}",
            e.action, e.name, e.addr
        )
    });
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["__remote", &path])
        .spawn()?;
    let ep = link.create_endpoint(None, Addr::Dynamic)?;
    link.bind(ep, "sensor-data")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while link.destination(ep)?.is_none() {
        link.poll()?;
        if Instant::now() > deadline {
            return Err("no announcement".into());
        }
        std::thread::yield_now();
    }
    link.send_default(ep, b"read")?;
    let r = link.recv_deadline(ep, Instant::now() + Duration::from_secs(10))?;
    println!(
        "host: reply {:?}",
        String::from_utf8_lossy(link.payload(&r))
    );
    link.release(r)?;
    while link.lookup("sensor-data").is_some() {
        link.poll()?;
        if Instant::now() > deadline {
            return Err("no withdrawal".into());
        }
        std::thread::yield_now();
    }
    println!(
        "host: service withdrawn, endpoint unbound: {:?}",
        link.destination(ep)?
    );
    child.wait()?;
    Ok(())
}
