//! `zerohop pipeline run`: runs a checked config, and the hidden `pipeline peer`
//! generator process it starts for ports with `peer = "generator"`.
//!
//! ```text
//!  zerohop pipeline run (this process)             zerohop pipeline peer (one per port)
//!  main: Port::create / attach, poll_control       Port (the other role)
//!  lcore i: chains  rx -> fwd.. -> tx | ring_out    gen lcore per queue: seq-numbered
//!                   ring_in -> fwd.. -> tx          packets out, returns checked
//!  --duration ends: "stop" -> peer stdin; peer drains, prints one JSON line; lcores stop
//! ```
//!
//! Packets move through local rings as the zero-copy `RxMbuf` itself plus a 12-byte
//! copy of its MAC header ([`Pkt`]): `mac`/`macswap` rewrite that copy, and the `tx`
//! sink writes it and the rest of the payload into a zero-copy transmit buffer (one
//! copy of the payload, on transmit). A queue pair used by two lcores (rx on one, tx
//! on the other) is shared behind a mutex, taken once per burst.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use dataplane::lcore::{Backoff, Lcores, Poller, Work};
use dataplane::pmd::window::WindowSpec;
use dataplane::port::{Port, PortConfig, QueueHandle, RingKind, Role, RxMbuf, TxBuf};
use dataplane::rings::spsc::{self, Consumer, Producer};
use serde::{Deserialize, Serialize};

use super::config::{self, FwdFn, PollKind, StageKind};
use crate::demo::PollMode;
use crate::testpmd::fwd::{PHASE_DRAIN, PHASE_RUN};
use crate::testpmd::gen::{self, GenCfg, GenKind};
use crate::testpmd::{pkt, QueueReport};

/// Burst of every stage.
const BURST: usize = 32;
/// Generated packet size (bytes).
const GEN_SIZE: u32 = 64;

/// `zerohop pipeline run` arguments.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The config file.
    pub file: PathBuf,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// How an idle lcore waits (overrides `[run] poll`; default spin).
    #[arg(long, value_enum)]
    pub poll: Option<PollMode>,
}

/// Hidden `zerohop pipeline peer` arguments (the generator of one port).
#[derive(Args, Debug, Clone)]
pub struct PeerArgs {
    /// Window spec.
    #[arg(long)]
    pub window: String,
    /// split | packed | posted.
    #[arg(long)]
    pub ring: String,
    /// The peer's role: frontend (creates the window) or backend.
    #[arg(long)]
    pub role: String,
    /// Queue pairs.
    #[arg(long)]
    pub queues: u16,
    /// Ring size.
    #[arg(long)]
    pub ring_size: u32,
    /// Buffer size.
    #[arg(long)]
    pub buf_size: u32,
    /// Poll mode.
    #[arg(long, value_enum)]
    pub poll: PollMode,
    /// TSC calibration of the parent.
    #[arg(long)]
    pub ns_per_tick: f64,
    /// Give up after this many seconds without a stop line.
    #[arg(long)]
    pub max_secs: f64,
}

/// A packet on its way through a pipeline: the zero-copy mbuf and the current MAC
/// header (rewritten by `mac`/`macswap`, written on transmit).
pub struct Pkt {
    m: RxMbuf,
    mac: [u8; 12],
}

type SharedQ = Arc<Mutex<QueueHandle>>;
/// A local ring's two halves until the stages take them.
type RingEnds = (Option<Producer<Pkt>>, Option<Consumer<Pkt>>);

enum Source {
    Rx(SharedQ),
    Ring(Consumer<Pkt>),
}

enum Sink {
    Tx(SharedQ),
    Ring(Producer<Pkt>),
    Drop,
}

struct Chain {
    src: Source,
    fns: Vec<FwdFn>,
    sink: Sink,
    pending: VecDeque<Pkt>,
    tmp: Vec<RxMbuf>,
}

/// One lcore's counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LcoreReport {
    /// Lcore index in the config.
    pub lcore: usize,
    /// CPU.
    pub cpu: usize,
    /// Packets received from ports.
    pub rx: u64,
    /// Packets transmitted to ports.
    pub tx: u64,
    /// Packets taken from local rings.
    pub ring_in: u64,
    /// Packets handed to local rings.
    pub ring_out: u64,
    /// Packets counted and dropped by `fwd rxonly`.
    pub rxonly: u64,
    /// Queue errors.
    pub errors: u64,
}

/// One port's counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PortReport {
    /// Name.
    pub name: String,
    /// Role of this process.
    pub role: String,
    /// Ring mode.
    pub ring: String,
    /// Window.
    pub window: String,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets transmitted.
    pub tx_packets: u64,
    /// Queue errors during the run (not counting the link going down as the
    /// generator peers leave at the end).
    pub errors: u64,
    /// Generator peer: packets generated.
    pub generated: Option<u64>,
    /// Generator peer: packets that came back.
    pub returned: Option<u64>,
    /// Generator peer: generated - returned.
    pub lost: Option<u64>,
    /// Generator peer: packets with a bad header or payload.
    pub corrupted: Option<u64>,
}

/// The `--json` object.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// The config file.
    pub file: String,
    /// Seconds of traffic.
    pub duration_s: f64,
    /// spin or yield.
    pub poll: String,
    /// Per lcore.
    pub lcores: Vec<LcoreReport>,
    /// Per port.
    pub ports: Vec<PortReport>,
    /// Sum over generator peers.
    pub generated: u64,
    /// Sum over generator peers.
    pub returned: u64,
    /// Sum over generator peers.
    pub lost: u64,
    /// Packets per second returned to the generators.
    pub mpps: f64,
    /// The first error.
    pub error: Option<String>,
}

/// What a peer prints (one JSON line).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PeerOut {
    queues: Vec<QueueReport>,
    error: Option<String>,
}

fn poller(p: PollMode) -> Poller {
    Poller {
        backoff: match p {
            PollMode::Spin => Backoff::None,
            PollMode::Yield => Backoff::Yield { after: 64 },
        },
        stop_check_every: 64,
    }
}

fn port_cfg(
    spec: WindowSpec,
    role: Role,
    ring: RingKind,
    queues: u16,
    ring_size: u32,
    buf_size: u32,
    poll: PollMode,
) -> PortConfig {
    let mut c = PortConfig::new(spec, role);
    c.ring = ring;
    c.queues = queues;
    c.ring_size = ring_size;
    c.buf_size = buf_size;
    c.burst = BURST;
    if poll == PollMode::Yield {
        // A shared machine: a side may be descheduled for a while.
        c.timing.peer_timeout = Duration::from_secs(2);
    }
    c
}

/// Attaches, retrying for up to 10 s while the creator is still setting the window up
/// (`PortError::is_not_ready`); a bad window fails at once.
fn attach_retry(cfg: &PortConfig, alive: &mut dyn FnMut() -> bool) -> Result<Port, String> {
    let t0 = Instant::now();
    loop {
        match Port::attach(cfg) {
            Ok(p) => return Ok(p),
            Err(e) if t0.elapsed() > Duration::from_secs(10) || !e.is_not_ready() || !alive() => {
                return Err(format!("attach: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Kills and reaps a peer on every exit path.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct PeerProc {
    port: usize,
    guard: ChildGuard,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

fn spawn_peer(
    port: usize,
    p: &config::Port,
    poll: PollMode,
    ns_per_tick: f64,
    max_secs: f64,
) -> Result<PeerProc, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding own binary: {e}"))?;
    let role = match p.role.get_ref() {
        config::Role::Frontend => "backend",
        config::Role::Backend => "frontend",
    };
    let mut child = Command::new(exe)
        .args(["pipeline", "peer", "--window", p.window.get_ref()])
        .args(["--ring", &p.ring.get_ref().to_string(), "--role", role])
        .args(["--queues", &p.queues.get_ref().to_string()])
        .args(["--ring-size", &p.ring_size.get_ref().to_string()])
        .args(["--buf-size", &p.buf_size.get_ref().to_string()])
        .args([
            "--poll",
            if poll == PollMode::Spin {
                "spin"
            } else {
                "yield"
            },
        ])
        .args(["--ns-per-tick", &ns_per_tick.to_string()])
        .args(["--max-secs", &max_secs.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawning the generator peer: {e}"))?;
    let stdin = child.stdin.take();
    let out = child.stdout.take().ok_or("peer has no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(PeerProc {
        port,
        guard: ChildGuard(Some(child)),
        stdin,
        lines: rx,
    })
}

fn lock(q: &SharedQ) -> std::sync::MutexGuard<'_, QueueHandle> {
    // A poisoned lock means another lcore panicked; the handle itself is intact.
    q.lock().unwrap_or_else(|e| e.into_inner())
}

fn apply(f: FwdFn, mac: &mut [u8; 12]) {
    match f {
        FwdFn::Io | FwdFn::Rxonly => {}
        FwdFn::Macswap => {
            let (d, s) = mac.split_at_mut(6);
            d.swap_with_slice(s);
        }
        FwdFn::Mac => {
            mac[..6].copy_from_slice(&pkt::GEN_SRC);
            mac[6..].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xfe]);
        }
    }
}

impl Chain {
    /// One poll: fill from the source when nothing is pending, apply the fwd
    /// functions, hand what the sink takes. Returns packets moved.
    /// `txbufs` is the lcore's (not `Send`, so made on the lcore) scratch vector.
    fn poll(&mut self, r: &mut LcoreReport, txbufs: &mut Vec<TxBuf>) -> u32 {
        let mut moved = 0u32;
        if self.pending.is_empty() {
            match &mut self.src {
                Source::Rx(q) => {
                    let res = lock(q).rx_burst(&mut self.tmp, BURST);
                    match res {
                        Ok(n) => r.rx += n as u64,
                        Err(_) => r.errors += 1,
                    }
                    for m in self.tmp.drain(..) {
                        let mut mac = [0u8; 12];
                        m.copy_out(0, &mut mac);
                        self.pending.push_back(Pkt { m, mac });
                    }
                }
                Source::Ring(c) => {
                    while self.pending.len() < BURST {
                        match c.pop() {
                            Some(p) => {
                                r.ring_in += 1;
                                self.pending.push_back(p);
                            }
                            None => break,
                        }
                    }
                }
            }
            moved = self.pending.len() as u32;
            for &f in &self.fns {
                if f == FwdFn::Rxonly {
                    r.rxonly += self.pending.len() as u64;
                    self.pending.clear();
                    break;
                }
                for p in self.pending.iter_mut() {
                    apply(f, &mut p.mac);
                }
            }
        }
        if self.pending.is_empty() {
            return moved;
        }
        match &mut self.sink {
            Sink::Drop => self.pending.clear(),
            Sink::Ring(prod) => {
                while let Some(p) = self.pending.pop_front() {
                    if let Err(p) = prod.push(p) {
                        self.pending.push_front(p);
                        break;
                    }
                    r.ring_out += 1;
                }
            }
            Sink::Tx(q) => {
                let mut q = lock(q);
                txbufs.clear();
                let want = self.pending.len().min(q.burst());
                match q.alloc_tx(txbufs, want) {
                    Ok(got) => {
                        let pend = self.pending.make_contiguous();
                        for (b, p) in txbufs.iter_mut().zip(&pend[..got]) {
                            let d = p.m.data();
                            let w = if d.len() >= 12 {
                                q.write(b, &p.mac).and_then(|()| q.write(b, &d[12..]))
                            } else {
                                q.write(b, d)
                            };
                            if w.is_err() {
                                r.errors += 1;
                            }
                        }
                        match q.commit(txbufs) {
                            Ok(s) => r.tx += s as u64,
                            Err(_) => r.errors += 1,
                        }
                        // The sent packets' receive buffers go back now.
                        self.pending.drain(..got);
                    }
                    Err(_) => r.errors += 1,
                }
            }
        }
        moved
    }
}

/// Polls every port's control plane until `until` or `done()`.
fn tend(ports: &mut [Port], until: Instant, mut done: impl FnMut() -> bool) -> Option<String> {
    let mut err = None;
    while Instant::now() < until && !done() {
        for p in ports.iter_mut() {
            if let Err(e) = p.poll_control(Instant::now()) {
                err.get_or_insert_with(|| format!("control plane: {e}"));
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    err
}

type Slots<T> = Arc<Mutex<Vec<Option<T>>>>;

/// Runs `zerohop pipeline run`.
pub fn run(a: &RunArgs) -> ExitCode {
    let online = dataplane::lcore::online_cores();
    let checked = match config::load(&a.file, &online) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zerohop pipeline run: {e}");
            return ExitCode::from(2);
        }
    };
    if !a.duration.is_finite() || a.duration < 0.0 {
        eprintln!("zerohop pipeline run: --duration must be 0 or more seconds");
        return ExitCode::from(2);
    }
    match execute(a, &checked) {
        Ok(r) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print_report(&r);
            }
            if r.error.is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("zerohop pipeline run: {e}");
            ExitCode::from(1)
        }
    }
}

fn print_report(r: &RunReport) {
    println!("{}: ran {:.1} s ({} poll)", r.file, r.duration_s, r.poll);
    for l in &r.lcores {
        println!(
            "  lcore {} (cpu {}): rx {}  tx {}  ring_in {}  ring_out {}  rxonly {}  errors {}",
            l.lcore, l.cpu, l.rx, l.tx, l.ring_in, l.ring_out, l.rxonly, l.errors
        );
    }
    for p in &r.ports {
        print!(
            "  port {} ({} {}, {}): rx {}  tx {}  errors {}",
            p.name, p.ring, p.role, p.window, p.rx_packets, p.tx_packets, p.errors
        );
        if let (Some(g), Some(b), Some(l)) = (p.generated, p.returned, p.lost) {
            print!("  | generator: generated {g}  returned {b}  lost {l}");
        }
        println!();
    }
    println!(
        "  total: generated {}  returned {}  lost {}  ({:.3} Mpps returned)",
        r.generated, r.returned, r.lost, r.mpps
    );
    if let Some(e) = &r.error {
        println!("  error: {e}");
    }
}

fn execute(a: &RunArgs, checked: &config::Checked) -> Result<RunReport, String> {
    let cfg = &checked.config;
    let poll = a.poll.unwrap_or(
        match cfg
            .run
            .as_ref()
            .and_then(|r| r.poll.as_ref())
            .map(|p| *p.get_ref())
        {
            Some(PollKind::Yield) => PollMode::Yield,
            _ => PollMode::Spin,
        },
    );
    let ns_per_tick = pkt::calibrate();
    let max_secs = a.duration + 60.0;
    // Ports: frontends create, generator peers start, backends attach.
    let mut peers: Vec<PeerProc> = Vec::new();
    let mut ports: Vec<Option<Port>> = Vec::new();
    let mut pcfgs = Vec::new();
    for p in &cfg.port {
        let p = p.get_ref();
        let spec: WindowSpec = p
            .window
            .get_ref()
            .parse()
            .map_err(|e| format!("port {}: window: {e}", p.name.get_ref()))?;
        let role = match p.role.get_ref() {
            config::Role::Frontend => Role::Frontend,
            config::Role::Backend => Role::Backend,
        };
        pcfgs.push(port_cfg(
            spec,
            role,
            p.ring.get_ref().kind(),
            *p.queues.get_ref() as u16,
            *p.ring_size.get_ref(),
            *p.buf_size.get_ref(),
            poll,
        ));
    }
    for (i, p) in cfg.port.iter().enumerate() {
        let p = p.get_ref();
        let port = if pcfgs[i].role == Role::Frontend {
            Some(
                Port::create(&pcfgs[i])
                    .map_err(|e| format!("port {}: create: {e}", p.name.get_ref()))?,
            )
        } else {
            None
        };
        ports.push(port);
        if p.peer.is_some() {
            peers.push(spawn_peer(i, p, poll, ns_per_tick, max_secs)?);
        }
    }
    for (i, p) in cfg.port.iter().enumerate() {
        if ports[i].is_none() {
            // A generator peer that exited (it could not create the window) ends
            // the wait.
            let mut alive = || {
                peers.iter_mut().filter(|x| x.port == i).all(|x| {
                    x.guard
                        .0
                        .as_mut()
                        .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
                })
            };
            let port = attach_retry(&pcfgs[i], &mut alive).map_err(|e| {
                let why = peers
                    .iter()
                    .filter(|x| x.port == i)
                    .filter_map(|x| x.lines.recv_timeout(Duration::from_millis(200)).ok())
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("port {}: {e} {why}", p.get_ref().name.get_ref())
            })?;
            ports[i] = Some(port);
        }
    }
    let mut ports: Vec<Port> = ports.into_iter().flatten().collect();
    for (i, port) in ports.iter_mut().enumerate() {
        port.start().map_err(|e| {
            format!(
                "port {}: link start: {e}",
                cfg.port[i].get_ref().name.get_ref()
            )
        })?;
    }
    // Queue handles used by stages.
    let names: HashMap<&str, usize> = cfg
        .port
        .iter()
        .enumerate()
        .map(|(i, p)| (p.get_ref().name.get_ref().as_str(), i))
        .collect();
    let mut queues: HashMap<(usize, u16), SharedQ> = HashMap::new();
    let mut rings: HashMap<&str, RingEnds> = HashMap::new();
    for r in &cfg.ring {
        let r = r.get_ref();
        let (p, c) = spsc::channel::<Pkt>(*r.size.get_ref() as usize)
            .map_err(|e| format!("ring {}: {e}", r.name.get_ref()))?;
        rings.insert(r.name.get_ref().as_str(), (Some(p), Some(c)));
    }
    let mut per_lcore: Vec<Option<Vec<Chain>>> = Vec::new();
    let mut cpus = Vec::new();
    for l in &cfg.lcore {
        let l = l.get_ref();
        cpus.push(*l.cpu.get_ref());
        let mut chains = Vec::new();
        let mut cur: Option<(Source, Vec<FwdFn>)> = None;
        for st in l.stages.get_ref() {
            let st = st.get_ref();
            let mut q = |st: &config::Stage| -> Result<SharedQ, String> {
                let pname = st.port.as_ref().map(|p| p.get_ref().as_str()).unwrap_or("");
                let pi = *names.get(pname).ok_or("unknown port")?;
                let qi = st.queue.as_ref().map_or(0, |q| *q.get_ref()) as u16;
                if let Some(h) = queues.get(&(pi, qi)) {
                    return Ok(h.clone());
                }
                let h = ports[pi]
                    .queue(qi)
                    .map_err(|e| format!("port {pname} queue {qi}: {e}"))?;
                let h = Arc::new(Mutex::new(h));
                queues.insert((pi, qi), h.clone());
                Ok(h)
            };
            let ring_name = st.ring.as_ref().map(|r| r.get_ref().as_str()).unwrap_or("");
            let mut end = |src: Source, fns: Vec<FwdFn>, sink: Sink| {
                chains.push(Chain {
                    src,
                    fns,
                    sink,
                    pending: VecDeque::with_capacity(BURST),
                    tmp: Vec::with_capacity(BURST),
                });
            };
            match *st.kind.get_ref() {
                StageKind::Rx => cur = Some((Source::Rx(q(st)?), Vec::new())),
                StageKind::RingIn => {
                    let c = rings
                        .get_mut(ring_name)
                        .and_then(|r| r.1.take())
                        .ok_or("ring consumer missing")?;
                    cur = Some((Source::Ring(c), Vec::new()));
                }
                StageKind::Fwd => {
                    let f = st.func.as_ref().map_or(FwdFn::Io, |f| *f.get_ref());
                    if let Some((_, fns)) = cur.as_mut() {
                        fns.push(f);
                    }
                    if f == FwdFn::Rxonly {
                        if let Some((s, fns)) = cur.take() {
                            end(s, fns, Sink::Drop);
                        }
                    }
                }
                StageKind::Tx => {
                    let h = q(st)?;
                    if let Some((s, fns)) = cur.take() {
                        end(s, fns, Sink::Tx(h));
                    }
                }
                StageKind::RingOut => {
                    let p = rings
                        .get_mut(ring_name)
                        .and_then(|r| r.0.take())
                        .ok_or("ring producer missing")?;
                    if let Some((s, fns)) = cur.take() {
                        end(s, fns, Sink::Ring(p));
                    }
                }
            }
        }
        per_lcore.push(Some(chains));
    }
    drop(queues);
    let slots: Slots<Vec<Chain>> = Arc::new(Mutex::new(per_lcore));
    let s2 = slots.clone();
    let pl = poller(poll);
    let cpus2 = cpus.clone();
    // Set once the generators are told to stop: they leave (their ports' reset takes
    // the link down), so queue errors from then on are the expected teardown.
    let stopping = Arc::new(AtomicBool::new(false));
    let stopping2 = stopping.clone();
    let lcores = Lcores::launch(&cpus, move |ctx| {
        let i = ctx.lcore_id as usize;
        let mut r = LcoreReport {
            lcore: i,
            cpu: cpus2.get(i).copied().unwrap_or(0),
            ..Default::default()
        };
        let Some(mut chains) = s2.lock().ok().and_then(|mut v| v.get_mut(i)?.take()) else {
            return r;
        };
        let mut txbufs = Vec::with_capacity(BURST);
        let mut errors_in_run = 0;
        pl.run(ctx, |_| {
            let mut n = 0;
            for c in chains.iter_mut() {
                n += c.poll(&mut r, &mut txbufs);
            }
            // Relaxed: a run-control flag; nothing is read on the strength of it.
            if !stopping2.load(Ordering::Relaxed) {
                errors_in_run = r.errors;
            }
            if n > 0 {
                Work::Busy {
                    packets: n,
                    bytes: 0,
                }
            } else {
                Work::Idle
            }
        });
        r.errors = errors_in_run;
        r
    })
    .map_err(|e| format!("lcores: {e}"))?;

    let start = Instant::now();
    let mut error = tend(
        &mut ports,
        start + Duration::from_secs_f64(a.duration),
        || false,
    );
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    // Stop the generators; keep forwarding while they drain and report.
    // Queue errors up to here: later ones are the link going down as peers leave.
    let errors_in_run: Vec<u64> = ports.iter().map(|p| p.stats().total.errors).collect();
    // Relaxed: see `stopping`.
    stopping.store(true, Ordering::Relaxed);
    for p in peers.iter_mut() {
        if let Some(mut s) = p.stdin.take() {
            let _ = writeln!(s, "stop");
            let _ = s.flush();
        }
    }
    let mut outs: Vec<Option<PeerOut>> = peers.iter().map(|_| None).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && outs.iter().any(Option::is_none) {
        for (o, p) in outs.iter_mut().zip(&peers) {
            if o.is_none() {
                if let Ok(l) = p.lines.try_recv() {
                    *o = Some(serde_json::from_str(&l).unwrap_or_else(|e| PeerOut {
                        queues: Vec::new(),
                        error: Some(format!("bad peer report: {e}")),
                    }));
                }
            }
        }
        let _ = tend(
            &mut ports,
            Instant::now() + Duration::from_millis(2),
            || false,
        );
    }
    let lcore_reports = lcores
        .stop_and_join(Duration::from_secs(5))
        .map_err(|e| format!("lcores: {e}"))?;
    let mut report = RunReport {
        file: checked.file.display().to_string(),
        duration_s: secs,
        poll: if poll == PollMode::Spin {
            "spin"
        } else {
            "yield"
        }
        .into(),
        lcores: lcore_reports,
        ..Default::default()
    };
    for (i, port) in ports.iter().enumerate() {
        let p = cfg.port[i].get_ref();
        let s = port.stats();
        let mut pr = PortReport {
            name: p.name.get_ref().clone(),
            role: p.role.get_ref().to_string(),
            ring: p.ring.get_ref().to_string(),
            window: p.window.get_ref().clone(),
            rx_packets: s.total.rx_packets,
            tx_packets: s.total.tx_packets,
            errors: errors_in_run.get(i).copied().unwrap_or(0),
            ..Default::default()
        };
        if let Some(k) = peers.iter().position(|x| x.port == i) {
            match &outs[k] {
                Some(o) => {
                    let g: u64 = o.queues.iter().map(|q| q.sent).sum();
                    let b: u64 = o.queues.iter().map(|q| q.received).sum();
                    let c: u64 = o.queues.iter().map(|q| q.corrupted).sum();
                    pr.generated = Some(g);
                    pr.returned = Some(b);
                    pr.lost = Some(g.saturating_sub(b));
                    pr.corrupted = Some(c);
                    report.generated += g;
                    report.returned += b;
                    report.lost += g.saturating_sub(b);
                    if let Some(e) = &o.error {
                        error.get_or_insert_with(|| format!("port {} generator: {e}", pr.name));
                    }
                }
                None => {
                    error.get_or_insert_with(|| {
                        format!("port {}: the generator peer sent no report", pr.name)
                    });
                }
            }
        }
        report.ports.push(pr);
    }
    report.mpps = report.returned as f64 / secs / 1e6;
    // Our ports go (creators remove their windows); then the peers exit.
    drop(ports);
    for p in peers.iter_mut() {
        if let Some(mut c) = p.guard.0.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    report.error = error;
    Ok(report)
}

/// Runs the hidden `zerohop pipeline peer`: prints one JSON line.
pub fn run_peer(a: &PeerArgs) -> ExitCode {
    let out = peer(a).unwrap_or_else(|e| PeerOut {
        queues: Vec::new(),
        error: Some(e),
    });
    println!("{}", serde_json::to_string(&out).unwrap_or_default());
    ExitCode::SUCCESS
}

fn peer(a: &PeerArgs) -> Result<PeerOut, String> {
    let spec: WindowSpec = a.window.parse().map_err(|e| format!("window: {e}"))?;
    let ring = match a.ring.as_str() {
        "split" => RingKind::Split,
        "packed" => RingKind::Packed,
        _ => RingKind::Posted,
    };
    let role = if a.role == "frontend" {
        Role::Frontend
    } else {
        Role::Backend
    };
    let cfg = port_cfg(spec, role, ring, a.queues, a.ring_size, a.buf_size, a.poll);
    let mut port = if role == Role::Frontend {
        Port::create(&cfg).map_err(|e| format!("create: {e}"))?
    } else {
        attach_retry(&cfg, &mut || true)?
    };
    port.start().map_err(|e| format!("link start: {e}"))?;
    let nq = port.queue_count() as usize;
    let handles: Slots<QueueHandle> = Arc::new(Mutex::new(
        (0..nq as u16).map(|q| port.queue(q).ok()).collect(),
    ));
    let online = dataplane::lcore::online_cores();
    let cores: Vec<usize> = (0..nq).map(|q| online[q % online.len().max(1)]).collect();
    let phase = Arc::new(AtomicU32::new(PHASE_RUN));
    // 0: round trips need no count from us; the generator stops once its returns are in.
    let expected: Arc<[AtomicU64]> = (0..nq).map(|_| AtomicU64::new(0)).collect();
    let quiet: Arc<[AtomicBool]> = (0..nq).map(|_| AtomicBool::new(false)).collect();
    let gcfg = GenCfg {
        kind: GenKind::RoundTrip,
        size: GEN_SIZE as usize,
        burst: BURST,
        window: u64::from(port.config().ring_size),
        ns_per_tick: a.ns_per_tick,
        limit: u64::MAX,
    };
    let pl = poller(a.poll);
    let (h2, p2, e2, q2) = (
        handles.clone(),
        phase.clone(),
        expected.clone(),
        quiet.clone(),
    );
    let lcores = Lcores::launch(&cores, move |ctx| {
        let i = ctx.lcore_id as usize;
        let stats = dataplane::stats::Stats::heap(1);
        let w = stats.writer(0).ok();
        let q = h2.lock().ok().and_then(|mut v| v.get_mut(i)?.take());
        match (q, w) {
            (Some(q), Some(w)) => gen::run(ctx, &pl, q, &w, &gcfg, &p2, &e2[i], &q2[i]),
            _ => gen::GenResult::failed("queue handle missing", &gcfg),
        }
    })
    .map_err(|e| format!("lcores: {e}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(line);
    });
    let mut ports = [port];
    let mut error = tend(
        &mut ports,
        Instant::now() + Duration::from_secs_f64(a.max_secs.max(0.0)),
        || rx.try_recv().is_ok(),
    );
    // Relaxed: run control (see testpmd::fwd::FwdCtx::running).
    phase.store(PHASE_DRAIN, Ordering::Relaxed);
    let all_quiet = || quiet.iter().all(|x| x.load(Ordering::Relaxed));
    let _ = tend(
        &mut ports,
        Instant::now() + Duration::from_secs(3),
        all_quiet,
    );
    let gens = lcores
        .stop_and_join(Duration::from_secs(5))
        .map_err(|e| format!("lcores: {e}"))?;
    let mut queues = Vec::new();
    for g in &gens {
        if error.is_none() {
            error = g.error.clone();
        }
        queues.push(g.report());
    }
    Ok(PeerOut { queues, error })
}
