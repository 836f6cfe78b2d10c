//! `zerohop rpmsg-guest`: the RPMsg remote of a Linux guest's own `virtio_rpmsg_bus`
//! (rpmsg-fast's `GuestLink`): creates the guest's RAM file and the control file (the
//! ZHVQ block, or with `--transport rproc` a remoteproc resource table), waits for the
//! guest's `zh_virtio` driver (or for remoteproc to attach through `zh_rproc`), then
//! announces each `--service` through
//! the name service and echoes every message back to its sender, from the service's
//! endpoint. A guest reset (its driver unloaded) drops the bus; the next DRIVER_OK
//! brings it back and the services are announced again.
//!
//! ```text
//!  zerohop rpmsg-guest --ram R --control C        qemu ... -object memory-backend-file,
//!    creates R (guest RAM) and C (ZHVQ block)         id=ram,mem-path=R,size=256M,share=on
//!    "ready" on stderr                                -machine memory-backend=ram
//!    Up: announce services  ───── NS ─────►           -object memory-backend-file,id=c,
//!    echo every message     ◄──── msgs ───►             mem-path=C,size=4K,share=on
//!  SIGTERM / --duration: report (--json)              -device ivshmem-plain,memdev=c
//! ```
//!
//! `.ci/rpmsg-linux` runs it against a guest with the rpmsg sample client and
//! rpmsg_char; docs/RPMSG.md "A Linux peer" has the commands by hand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use pmd::guest::GuestEvent;
use rpmsg_fast::guest::{GuestLink, GuestLinkConfig, Transport};
use rpmsg_fast::{Addr, BusStats, EndpointId, NsAction, RpmsgError};
use serde::Serialize;
use std::sync::mpsc;

use crate::demo::PollMode;

/// Arguments of `zerohop rpmsg-guest`.
#[derive(Args, Debug)]
#[command(
    after_help = "Example (then start QEMU with the two files, see the module docs):
  zerohop rpmsg-guest --ram /dev/shm/vm-ram --control /dev/shm/vm-ctl --json"
)]
pub struct RpmsgGuestArgs {
    /// Guest RAM file to create (QEMU: memory-backend-file,mem-path=FILE,share=on).
    #[arg(long)]
    ram: PathBuf,
    /// Guest RAM in MiB (QEMU's -m; at most 2048).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=2048))]
    ram_mib: u32,
    /// Control file to create (QEMU: the memdev of an ivshmem-plain device).
    #[arg(long)]
    control: PathBuf,
    /// Bytes of the control file (a power of two, 4096 ..= 64 MiB).
    #[arg(long, default_value_t = 4096)]
    control_size: usize,
    /// Entries per virtqueue (a power of two).
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// Ring format to offer: split (what virtio_rpmsg_bus gets from remoteproc), or
    /// packed as well (VIRTIO_F_RING_PACKED; the guest's virtio core decides).
    #[arg(long, value_enum, default_value = "split")]
    ring: GuestRing,
    /// Register block in the control file: zhvq (the guest's zh_virtio), or rproc, a
    /// remoteproc resource table Linux's remoteproc core attaches to (zh_rproc; split
    /// rings only).
    #[arg(long, value_enum, default_value = "zhvq")]
    transport: GuestTransport,
    /// A service to announce, with an echo endpoint behind it (repeatable).
    #[arg(long = "service", default_values_t = ["rpmsg-client-sample".to_string(), "rpmsg-raw".to_string()])]
    services: Vec<String>,
    /// Stop after this many seconds (0: at SIGTERM / SIGINT).
    #[arg(long, default_value_t = 0.0)]
    duration: f64,
    /// How an idle loop waits (yield leaves the core to QEMU).
    #[arg(long, value_enum, default_value = "yield")]
    poll: PollMode,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `--ring`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum GuestRing {
    /// Split virtqueues only.
    Split,
    /// Offer packed virtqueues too.
    Packed,
}

/// `--transport`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum GuestTransport {
    /// The ZHVQ block (zh_virtio).
    #[default]
    Zhvq,
    /// A remoteproc resource table (zh_rproc + remoteproc).
    Rproc,
}

/// One announced service's counters.
#[derive(Serialize, Debug, Default, Clone)]
struct ServiceReport {
    name: String,
    /// Our address (the latest, if the guest came up more than once).
    addr: u32,
    /// Messages received (and echoed unless `echo_failed` counts them).
    messages: u64,
    bytes: u64,
    echo_failed: u64,
}

/// A service the guest announced (Linux `RPMSG_CREATE_DEV_IOCTL` + a driver bound).
#[derive(Serialize, Debug, Default, Clone)]
struct GuestService {
    name: String,
    addr: u32,
    /// NS create / destroy messages seen for it.
    created: u64,
    destroyed: u64,
    /// Greetings sent to it (one per create).
    greeted: u64,
}

/// The `--json` object.
#[derive(Serialize, Debug, Default)]
struct Report {
    duration_s: f64,
    transport: GuestTransport,
    /// Times the guest's driver came up (DRIVER_OK) / reset.
    ups: u64,
    resets: u64,
    /// Negotiated feature bits at the last Up, and the ring format they mean.
    features: u64,
    ring: Option<GuestRing>,
    services: Vec<ServiceReport>,
    /// Services the guest announced to us; each is sent one greeting,
    /// `zerohop greets NAME at ADDR`, from the first `--service` endpoint.
    guest_services: Vec<GuestService>,
    /// The bus's counters, summed over every Up.
    bus: BusStats,
    /// Errors from the transport or the bus (each also printed to stderr).
    errors: u64,
    /// Notifications the guest counted (it needs none: both sides poll).
    guest_kicks: u32,
}

/// Checks the transport every this many loop iterations.
const CONTROL_EVERY: u32 = 256;

pub fn run(a: &RpmsgGuestArgs) -> ExitCode {
    if !(a.duration.is_finite() && a.duration >= 0.0) {
        eprintln!("zerohop rpmsg-guest: --duration must be 0 or more seconds");
        return ExitCode::from(2);
    }
    let mut cfg = GuestLinkConfig::new(&a.ram, a.ram_mib as usize * (1 << 20), &a.control);
    cfg.control_size = a.control_size;
    cfg.queue_size = a.queue_size;
    cfg.packed = a.ring == GuestRing::Packed;
    cfg.transport = match a.transport {
        GuestTransport::Zhvq => Transport::Zhvq,
        GuestTransport::Rproc => Transport::Rproc,
    };
    // Every message the guest sends holds one of its `queue_size` transmit buffers
    // until we release it: a queue that deep never drops an echo.
    cfg.bus.rx_queue_depth = usize::from(a.queue_size);
    // An echo waits at most this long for a free guest buffer.
    cfg.bus.send_timeout = Duration::from_secs(1);
    // Bad settings and files that exist already: refused before anything runs.
    let link = match GuestLink::create(&cfg) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("zerohop rpmsg-guest: {e}");
            return ExitCode::from(2);
        }
    };
    match serve(a, link) {
        Ok(r) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).expect("report serialises")
                );
            } else {
                print_human(&r);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zerohop rpmsg-guest: {e}");
            ExitCode::from(1)
        }
    }
}

fn serve(a: &RpmsgGuestArgs, mut link: GuestLink) -> Result<Report, RpmsgError> {
    crate::stop::install();
    eprintln!(
        "zerohop rpmsg-guest: ready: guest RAM {} ({} MiB), control {}; waiting for the guest's {}",
        a.ram.display(),
        a.ram_mib,
        a.control.display(),
        match a.transport {
            GuestTransport::Zhvq => "zh_virtio driver",
            GuestTransport::Rproc => "remoteproc to attach (zh_rproc)",
        }
    );
    let start = Instant::now();
    let end = (a.duration > 0.0).then(|| start + Duration::from_secs_f64(a.duration));
    let mut r = Report {
        transport: a.transport,
        services: a
            .services
            .iter()
            .map(|n| ServiceReport {
                name: n.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut eps: Vec<EndpointId> = Vec::new();
    // Name-service events from the bus's callback (it runs inside `poll`).
    let (ns_tx, ns_rx) = mpsc::channel::<(String, u32, NsAction)>();
    let mut buf = [0u8; 512];
    let mut tick = 0u32;
    let mut empty = 0u32;
    let mut broken_reported = false;
    while !crate::stop::requested() && end.is_none_or(|e| Instant::now() < e) {
        tick = tick.wrapping_add(1);
        if tick.is_multiple_of(CONTROL_EVERY) || link.bus().is_none() {
            match link.poll_control() {
                Ok(GuestEvent::Up { features }) => {
                    r.ups += 1;
                    r.features = features;
                    r.ring = Some(
                        if features & dataplane::rings::features::VIRTIO_F_RING_PACKED != 0 {
                            GuestRing::Packed
                        } else {
                            GuestRing::Split
                        },
                    );
                    broken_reported = false;
                    eps = announce(&mut link, &mut r)?;
                    let tx = ns_tx.clone();
                    if let Some(bus) = link.bus() {
                        bus.on_service(move |ev| {
                            let _ = tx.send((ev.name.to_string(), ev.addr, ev.action));
                        });
                    }
                }
                Ok(GuestEvent::Reset) => {
                    r.resets += 1;
                    eps.clear();
                    eprintln!("zerohop rpmsg-guest: guest reset the device; waiting for it again");
                }
                Ok(GuestEvent::Idle) => {}
                Err(e) => {
                    r.errors += 1;
                    eprintln!("zerohop rpmsg-guest: {e} (waiting for the guest to reset)");
                }
            }
        }
        let Some(bus) = link.bus() else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let mut busy = match bus.poll() {
            Ok(n) => n > 0,
            Err(e) => {
                // A ring violation breaks the queue until the guest resets it; say so once.
                if !broken_reported {
                    r.errors += 1;
                    broken_reported = true;
                    eprintln!("zerohop rpmsg-guest: {e} (waiting for the guest to reset)");
                }
                false
            }
        };
        while let Ok((name, addr, action)) = ns_rx.try_recv() {
            busy = true;
            greet(bus, eps.first().copied(), &mut r, name, addr, action);
        }
        for (i, &ep) in eps.iter().enumerate() {
            while let Some(m) = bus.try_recv(ep)? {
                busy = true;
                let (src, n) = {
                    let p = bus.payload(&m);
                    let n = p.len().min(buf.len());
                    buf[..n].copy_from_slice(&p[..n]);
                    (m.src(), n)
                };
                bus.release(m)?;
                let s = &mut r.services[i];
                s.messages += 1;
                s.bytes += n as u64;
                // `send`: waits up to the bus's send timeout (1 s, set in `run`), and
                // reads no clock unless the guest has no free buffer.
                if let Err(e) = bus.send(ep, src, &buf[..n]) {
                    if s.echo_failed == 0 {
                        eprintln!("zerohop rpmsg-guest: echo to {src} failed: {e}");
                    }
                    s.echo_failed += 1;
                }
            }
        }
        if busy {
            empty = 0;
        } else {
            empty += 1;
            match a.poll {
                PollMode::Spin => core::hint::spin_loop(),
                PollMode::Yield if empty > 64 => std::thread::yield_now(),
                PollMode::Yield => {}
            }
        }
    }
    r.bus = link.bus_stats();
    r.guest_kicks = link.device().kicks().unwrap_or(0);
    r.duration_s = start.elapsed().as_secs_f64();
    Ok(r)
}

/// Records a guest announcement; a create gets one greeting from endpoint `from`.
fn greet(
    bus: &mut rpmsg_fast::Rpmsg<rpmsg_fast::guest::GuestQueue>,
    from: Option<EndpointId>,
    r: &mut Report,
    name: String,
    addr: u32,
    action: NsAction,
) {
    eprintln!("zerohop rpmsg-guest: the guest announced {name:?} at address {addr} ({action:?})");
    let i = match r
        .guest_services
        .iter()
        .position(|g| g.name == name && g.addr == addr)
    {
        Some(i) => i,
        None => {
            r.guest_services.push(GuestService {
                name,
                addr,
                ..Default::default()
            });
            r.guest_services.len() - 1
        }
    };
    let g = &mut r.guest_services[i];
    match action {
        NsAction::Destroy => g.destroyed += 1,
        NsAction::Create => {
            g.created += 1;
            let text = format!("zerohop greets {} at {}", g.name, g.addr);
            let sent = from.map(|ep| {
                bus.send_deadline(
                    ep,
                    addr,
                    text.as_bytes(),
                    Instant::now() + Duration::from_secs(1),
                )
            });
            match sent {
                Some(Ok(())) => g.greeted += 1,
                Some(Err(e)) => {
                    r.errors += 1;
                    eprintln!("zerohop rpmsg-guest: greeting {addr} failed: {e}");
                }
                None => {}
            }
        }
    }
}

/// Creates one echo endpoint per service on the fresh bus and announces it.
fn announce(link: &mut GuestLink, r: &mut Report) -> Result<Vec<EndpointId>, RpmsgError> {
    let bus = link.bus().ok_or(RpmsgError::PeerLost)?;
    let mut eps = Vec::with_capacity(r.services.len());
    for s in r.services.iter_mut() {
        let ep = bus.create_endpoint(Some(&s.name), Addr::Dynamic)?;
        bus.announce(ep)?;
        s.addr = bus.addr(ep)?;
        eps.push(ep);
        eprintln!(
            "zerohop rpmsg-guest: guest up; announced {:?} at address {}",
            s.name, s.addr
        );
    }
    Ok(eps)
}

fn print_human(r: &Report) {
    println!(
        "rpmsg-guest: {:.1} s, {:?} transport, guest up {} time(s), reset {} time(s), features {:#x} ({:?} rings)",
        r.duration_s, r.transport, r.ups, r.resets, r.features, r.ring
    );
    for s in &r.services {
        println!(
            "  {:<24} addr {:<6} {:>10} messages {:>12} bytes echoed ({} failed)",
            s.name, s.addr, s.messages, s.bytes, s.echo_failed
        );
    }
    for g in &r.guest_services {
        println!(
            "  guest service {:<16} addr {:<6} created {} destroyed {} greeted {}",
            g.name, g.addr, g.created, g.destroyed, g.greeted
        );
    }
    let b = &r.bus;
    println!(
        "  bus: rx {} tx {}, dropped: bad header {} unknown destination {} queue full {}; errors {}, guest kicks {}",
        b.rx, b.tx, b.bad_header, b.unknown_dst, b.dropped_full, r.errors, r.guest_kicks
    );
}
