//! The control plane of a link: handshake and liveness state machines over the
//! config block of `rings::control` (GUIDE.md section 5; docs/CONTROL.md).
//!
//! [`Backend`] (the device side) and [`Frontend`] (the driver side) each own one
//! section of the block and only ever *poll* the other's. Both are non-blocking:
//! [`Backend::poll`] / [`Frontend::poll`] do at most a few loads and stores and
//! return one [`Event`], so a PMD's busy-poll loop can call them every N
//! iterations. [`Backend::connect`] / [`Frontend::connect`] wrap them in a yielding
//! loop with a deadline: a peer that never finishes the handshake is an error
//! ([`ControlError::HandshakeTimeout`]), not a hang.
//!
//! ```text
//!  frontend (driver)                                backend (device)
//!  -----------------                                ----------------
//!                                                   gen++, offer: features, queues,
//!                                                   ring mode, device type
//!  gen++, status = 0
//!  sees offer ──► ACKNOWLEDGE | DRIVER
//!  accepted = offered & wanted, peer_gen = B
//!  status |= FEATURES_OK ─────────────────────────► accepted ⊆ offered? queues ok?
//!                                                   yes: FEATURES_OK, peer_gen = F
//!                                                   no:  FAILED + reason, peer_gen = F
//!  sees FEATURES_OK for F ──► status |= DRIVER_OK ─► sees DRIVER_OK:
//!                                                   status |= DRIVER_OK   (link up)
//!  sees DRIVER_OK for F: link up
//! ```
//! (virtio 1.x section 3.1.1 "Device Initialization", with each device-side step an
//! acknowledgement in the backend's own section: on real hardware the endpoint
//! cannot trap BAR writes, so every register is polled and every command has a
//! handshake.)
//!
//! Liveness: each `poll` bumps this side's heartbeat at most every
//! [`Timing::heartbeat_interval`] (10 ms) and watches the peer's. A peer whose
//! counter has not moved for [`Timing::peer_timeout`] (100 ms) is reported once as
//! [`Event::PeerLost`]; the survivor clears its side and waits. A new peer
//! generation is [`Event::PeerRestarted`]; once a peer (new or returning) completes
//! the handshake again the event is [`Event::PeerBack`]. If *we* did not poll for
//! more than half the timeout, the silence is ours, not the peer's: the peer's
//! clock restarts instead of being declared lost.

use std::thread;
use std::time::{Duration, Instant};

use rings::control::{
    check_required, negotiate, next_generation, queue_table, resume_seq, status, BackendView,
    ControlError, ControlLayout, FrontendView, Offer, QueueConfig, RawBackend, RawFrontend,
    RingMode, Side,
};
use rings::Region;

/// Heartbeat and liveness timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Least time between two heartbeat stores (default 10 ms).
    pub heartbeat_interval: Duration,
    /// A peer whose heartbeat has not moved for this long is lost (default 100 ms).
    pub peer_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_interval: Duration::from_millis(10),
            peer_timeout: Duration::from_millis(100),
        }
    }
}

/// What one `poll` saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing changed.
    Idle,
    /// The first handshake completed: the link is up.
    Up {
        /// The peer's generation.
        peer_generation: u64,
        /// The negotiated features.
        features: u64,
    },
    /// A handshake completed again after a loss, restart or reset.
    PeerBack {
        /// The peer's (new) generation.
        peer_generation: u64,
        /// The negotiated features.
        features: u64,
    },
    /// The peer's heartbeat stopped; this side cleared its state and waits.
    PeerLost {
        /// The lost peer's generation.
        peer_generation: u64,
        /// How long its heartbeat had not moved.
        silent_for: Duration,
    },
    /// The peer came back with a new generation (it restarted or reset its side);
    /// the handshake runs again.
    PeerRestarted {
        /// Generation before.
        old: u64,
        /// Generation now.
        new: u64,
    },
    /// The peer asked for a reset (backend: DEVICE_NEEDS_RESET) or dropped the link
    /// state; the handshake runs again.
    ResetRequested,
    /// Backend only: the frontend issued a command; answer with
    /// [`Backend::complete_command`].
    Command {
        /// Command number.
        seq: u32,
        /// Command code.
        cmd: u32,
        /// Argument.
        arg: u64,
    },
    /// Frontend only: the backend acknowledged a command.
    CommandDone {
        /// Command number.
        seq: u32,
        /// Result code.
        result: u32,
    },
}

impl Event {
    /// True for [`Event::Up`] and [`Event::PeerBack`].
    pub fn is_link_up(&self) -> bool {
        matches!(self, Event::Up { .. } | Event::PeerBack { .. })
    }
}

/// The peer as seen through its heartbeat and generation.
#[derive(Debug)]
struct Liveness {
    timing: Timing,
    my_beat: u64,
    last_beat: Option<Instant>,
    last_poll: Option<Instant>,
    baseline: bool,
    peer_gen: u64,
    peer_hb: u64,
    last_change: Option<Instant>,
    current: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum PeerNews {
    None,
    Appeared,
    Restarted { old: u64, new: u64 },
    Lost { silent: Duration },
}

impl Liveness {
    fn new(timing: Timing, my_beat: u64) -> Liveness {
        Liveness {
            timing,
            my_beat,
            last_beat: None,
            last_poll: None,
            baseline: false,
            peer_gen: 0,
            peer_hb: 0,
            last_change: None,
            current: false,
        }
    }

    /// Time for our heartbeat? Returns the new value to store.
    fn beat_due(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last_beat
            .is_none_or(|t| now.saturating_duration_since(t) >= self.timing.heartbeat_interval);
        if due {
            self.last_beat = Some(now);
            self.my_beat = self.my_beat.wrapping_add(1);
            Some(self.my_beat)
        } else {
            None
        }
    }

    /// Feeds one observation of the peer (its generation from a validated copy, or
    /// the last known one if the copy was torn, and its heartbeat).
    fn observe(&mut self, now: Instant, gen: u64, hb: u64) -> PeerNews {
        let stalled = self
            .last_poll
            .is_some_and(|p| now.saturating_duration_since(p) > self.timing.peer_timeout / 2);
        self.last_poll = Some(now);
        if !self.baseline {
            // A section left by a dead peer must not count as alive: wait for a move.
            self.baseline = true;
            self.peer_gen = gen;
            self.peer_hb = hb;
            self.last_change = Some(now);
            return PeerNews::None;
        }
        if stalled {
            // We were away (descheduled, or not polled): do not blame the peer.
            self.last_change = Some(now);
        }
        if gen != self.peer_gen {
            let old = self.peer_gen;
            let was = self.current;
            self.peer_gen = gen;
            self.peer_hb = hb;
            self.last_change = Some(now);
            self.current = gen != 0;
            return match (was, self.current) {
                (true, true) => PeerNews::Restarted { old, new: gen },
                (false, true) => PeerNews::Appeared,
                _ => PeerNews::None,
            };
        }
        if hb != self.peer_hb {
            self.peer_hb = hb;
            self.last_change = Some(now);
            if !self.current && gen != 0 {
                self.current = true;
                return PeerNews::Appeared;
            }
        }
        if self.current {
            let silent = self
                .last_change
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            if silent >= self.timing.peer_timeout {
                self.current = false;
                return PeerNews::Lost { silent };
            }
        }
        PeerNews::None
    }
}

/// The two controllers, for the shared blocking connect loop.
trait Controller {
    const SIDE: Side;
    fn poll_once(&mut self, now: Instant) -> Result<Event, ControlError>;
    fn waiting(&self) -> &'static str;
}

/// Polls `c` with a yielding wait until it returns a link-up event, an error, or the
/// deadline passes.
fn connect_loop<C: Controller>(c: &mut C, deadline: Instant) -> Result<Event, ControlError> {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let now = Instant::now();
        let ev = c.poll_once(now)?;
        if ev.is_link_up() {
            return Ok(ev);
        }
        if now >= deadline {
            return Err(ControlError::HandshakeTimeout {
                side: C::SIDE,
                waiting_for: c.waiting(),
                waited_ms: now.saturating_duration_since(start).as_millis() as u64,
            });
        }
        spins = spins.wrapping_add(1);
        // Yield to the peer (tests share two cores); now and then sleep a little so
        // a waiting connect does not burn a whole core.
        if spins.is_multiple_of(64) {
            thread::sleep(Duration::from_micros(100));
        } else {
            thread::yield_now();
        }
    }
}

// ---- backend --------------------------------------------------------------------

/// What the backend offers.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// virtio device id (non-zero; 1 = network).
    pub device_type: u32,
    /// Offered feature bits.
    pub features: u64,
    /// Ring layout of every queue.
    pub ring_mode: RingMode,
    /// One entry per queue pair (1..=64).
    pub queues: Vec<QueueConfig>,
    /// Heartbeat and timeout.
    pub timing: Timing,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            device_type: 1,
            features: rings::features::VIRTIO_F_VERSION_1,
            ring_mode: RingMode::Posted,
            queues: vec![QueueConfig::symmetric(256)],
            timing: Timing::default(),
        }
    }
}

/// Where the backend's handshake stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendState {
    /// Offer published; waiting for a frontend's FEATURES_OK.
    WaitFeatures,
    /// Features acknowledged; waiting for DRIVER_OK.
    FeaturesOk,
    /// Link up.
    Up,
    /// FAILED set for the current frontend generation; waiting for it to restart.
    Failed,
}

/// The device side of a link's control plane.
#[derive(Debug)]
pub struct Backend {
    mem: Region,
    layout: ControlLayout,
    me: RawBackend,
    state: BackendState,
    live: Liveness,
    bound: u64,
    accepted: u64,
    last_cmd: u32,
    ever_up: bool,
}

impl Backend {
    /// Takes the backend section of the block at the start of `mem` (the Config
    /// area), bumps its generation and publishes the offer.
    pub fn new(mem: Region, cfg: &BackendConfig) -> Result<Backend, ControlError> {
        let layout = ControlLayout::new(0, mem.len())?;
        if cfg.device_type == 0 {
            return Err(ControlError::InvalidConfig {
                what: "device_type",
                why: "0 is reserved",
            });
        }
        for (i, q) in cfg.queues.iter().enumerate() {
            rings::control::check_queue_size(i as u32, q.tx_size, cfg.ring_mode)?;
            rings::control::check_queue_size(i as u32, q.rx_size, cfg.ring_mode)?;
        }
        let table = queue_table(&cfg.queues)?;
        // A previous instance may have left counters: continue them, so the peer sees
        // a new generation and a fresh (even) seq.
        let old = layout.own_backend(&mem)?;
        let mut me = RawBackend {
            seq: resume_seq(old.seq),
            generation: next_generation(old.generation),
            heartbeat: old.heartbeat,
            features: cfg.features,
            queue_pairs: cfg.queues.len() as u32,
            device_type: cfg.device_type,
            ring_mode: cfg.ring_mode as u32,
            ..Default::default()
        };
        layout.publish_backend(&mem, &mut me, Some(&table))?;
        Ok(Backend {
            live: Liveness::new(cfg.timing, me.heartbeat),
            mem,
            layout,
            me,
            state: BackendState::WaitFeatures,
            bound: 0,
            accepted: 0,
            last_cmd: 0,
            ever_up: false,
        })
    }

    /// This backend's generation.
    pub fn generation(&self) -> u64 {
        self.me.generation
    }

    /// The frontend generation the handshake is bound to (0 = none).
    pub fn peer_generation(&self) -> u64 {
        self.bound
    }

    /// Handshake state.
    pub fn state(&self) -> BackendState {
        self.state
    }

    /// Features the current frontend accepted (valid once up).
    pub fn features(&self) -> u64 {
        self.accepted
    }

    /// True while the link is up.
    pub fn is_up(&self) -> bool {
        self.state == BackendState::Up
    }

    fn publish(&mut self) -> Result<(), ControlError> {
        self.layout.publish_backend(&self.mem, &mut self.me, None)
    }

    /// Clears the handshake (status 0) and waits for a frontend.
    fn clear(&mut self) -> Result<(), ControlError> {
        self.state = BackendState::WaitFeatures;
        self.bound = 0;
        self.accepted = 0;
        if self.me.status != 0 || self.me.peer_generation != 0 || self.me.reason != 0 {
            self.me.status = 0;
            self.me.reason = 0;
            self.me.peer_generation = 0;
            self.publish()?;
        }
        Ok(())
    }

    fn fail(&mut self, e: ControlError, fe_gen: u64) -> Result<Event, ControlError> {
        self.state = BackendState::Failed;
        self.bound = fe_gen;
        self.me.status = status::FAILED;
        self.me.reason = e.reason_code();
        self.me.peer_generation = fe_gen;
        self.publish()?;
        Err(e)
    }

    /// Asks the frontend to reset (sets DEVICE_NEEDS_RESET); both sides then run the
    /// handshake again once the frontend restarts its side.
    pub fn request_reset(&mut self) -> Result<(), ControlError> {
        self.state = BackendState::WaitFeatures;
        self.accepted = 0;
        self.bound = 0;
        self.me.status = status::DEVICE_NEEDS_RESET;
        self.me.reason = 0;
        self.me.peer_generation = 0;
        self.publish()
    }

    /// Acknowledges command `seq` with `result`.
    pub fn complete_command(&mut self, seq: u32, result: u32) -> Result<(), ControlError> {
        self.me.ack_seq = seq;
        self.me.result = result;
        self.publish()
    }

    /// One step of the state machine (never blocks).
    pub fn poll(&mut self, now: Instant) -> Result<Event, ControlError> {
        if let Some(v) = self.live.beat_due(now) {
            self.me.heartbeat = v;
            self.layout.store_backend_heartbeat(&self.mem, v)?;
        }
        let hb = self.layout.load_frontend_heartbeat(&self.mem)?;
        let raw = self.layout.read_frontend_raw(&self.mem)?;
        let gen = raw.map_or(self.live.peer_gen, |r| r.generation);
        match self.live.observe(now, gen, hb) {
            PeerNews::Lost { silent } => {
                let peer_generation = self.live.peer_gen;
                self.clear()?;
                return Ok(Event::PeerLost {
                    peer_generation,
                    silent_for: silent,
                });
            }
            PeerNews::Restarted { old, new } => {
                self.clear()?;
                return Ok(Event::PeerRestarted { old, new });
            }
            PeerNews::Appeared => {
                if self.bound != gen {
                    self.clear()?;
                }
            }
            PeerNews::None => {}
        }
        let Some(raw) = raw else {
            return Ok(Event::Idle); // torn copy: next poll
        };
        if !self.live.current || raw.generation == 0 {
            return Ok(Event::Idle);
        }
        if self.state == BackendState::Failed {
            return Ok(Event::Idle); // until the frontend restarts (new generation)
        }
        let fe = match FrontendView::validate(&raw) {
            Ok(v) => v,
            Err(e) => return self.fail(e, raw.generation),
        };
        self.step(&fe)
    }

    fn step(&mut self, fe: &FrontendView) -> Result<Event, ControlError> {
        match self.state {
            BackendState::WaitFeatures => {
                let ready = fe.status & status::FEATURES_OK != 0
                    && fe.status & status::FAILED == 0
                    && fe.peer_generation == self.me.generation
                    && self.me.status & status::DEVICE_NEEDS_RESET == 0;
                if !ready {
                    return Ok(Event::Idle);
                }
                if let Err(e) = fe.check_against(self.me.features, self.me.queue_pairs) {
                    return self.fail(e, fe.generation);
                }
                self.bound = fe.generation;
                self.accepted = fe.features;
                self.last_cmd = fe.cmd_seq;
                self.me.ack_seq = fe.cmd_seq;
                self.me.status = status::FEATURES_OK;
                self.me.reason = 0;
                self.me.peer_generation = fe.generation;
                self.publish()?;
                self.state = BackendState::FeaturesOk;
                Ok(Event::Idle)
            }
            BackendState::FeaturesOk => {
                if fe.status & status::FEATURES_OK == 0 || fe.status & status::FAILED != 0 {
                    self.clear()?;
                    return Ok(Event::ResetRequested);
                }
                if fe.status & status::DRIVER_OK == 0 {
                    return Ok(Event::Idle);
                }
                self.me.status = status::FEATURES_OK | status::DRIVER_OK;
                self.publish()?;
                self.state = BackendState::Up;
                let (peer_generation, features) = (self.bound, self.accepted);
                let first = !self.ever_up;
                self.ever_up = true;
                Ok(if first {
                    Event::Up {
                        peer_generation,
                        features,
                    }
                } else {
                    Event::PeerBack {
                        peer_generation,
                        features,
                    }
                })
            }
            BackendState::Up => {
                let need = status::FEATURES_OK | status::DRIVER_OK;
                if fe.status & need != need || fe.status & status::FAILED != 0 {
                    self.clear()?;
                    return Ok(Event::ResetRequested);
                }
                if fe.cmd_seq != self.last_cmd {
                    self.last_cmd = fe.cmd_seq;
                    return Ok(Event::Command {
                        seq: fe.cmd_seq,
                        cmd: fe.cmd,
                        arg: fe.cmd_arg,
                    });
                }
                Ok(Event::Idle)
            }
            BackendState::Failed => Ok(Event::Idle),
        }
    }

    /// What the handshake waits for (for messages).
    pub fn waiting_for(&self) -> &'static str {
        match self.state {
            BackendState::WaitFeatures if !self.live.current => {
                "waiting for a live frontend (no heartbeat seen)"
            }
            BackendState::WaitFeatures => "waiting for the frontend's FEATURES_OK",
            BackendState::FeaturesOk => "waiting for the frontend's DRIVER_OK",
            BackendState::Up => "up",
            BackendState::Failed => "failed, waiting for the frontend to restart",
        }
    }

    /// Polls until the link is up (or back), yielding between polls; gives up at
    /// `deadline` with [`ControlError::HandshakeTimeout`].
    pub fn connect(&mut self, deadline: Instant) -> Result<Event, ControlError> {
        connect_loop(self, deadline)
    }
}

impl Controller for Backend {
    const SIDE: Side = Side::Backend;
    fn poll_once(&mut self, now: Instant) -> Result<Event, ControlError> {
        self.poll(now)
    }
    fn waiting(&self) -> &'static str {
        self.waiting_for()
    }
}

// ---- frontend -------------------------------------------------------------------

/// What the frontend wants.
#[derive(Clone, Debug)]
pub struct FrontendConfig {
    /// Features it can use (it accepts `offered & wanted`).
    pub wanted: u64,
    /// Features it cannot work without (missing ones fail the handshake).
    pub required: u64,
    /// Queue pairs it wants (0 = all offered; more than offered is clamped).
    pub queue_pairs: u32,
    /// Heartbeat and timeout.
    pub timing: Timing,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            wanted: u64::MAX,
            required: 0,
            queue_pairs: 0,
            timing: Timing::default(),
        }
    }
}

/// Where the frontend's handshake stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendState {
    /// Waiting for a live backend's offer.
    WaitOffer,
    /// FEATURES_OK set; waiting for the backend's acknowledgement.
    FeaturesSent,
    /// DRIVER_OK set; waiting for the backend's acknowledgement.
    DriverOkSent,
    /// Link up.
    Up,
    /// Failed; [`Frontend::reset`] starts over.
    Failed,
}

/// The driver side of a link's control plane.
#[derive(Debug)]
pub struct Frontend {
    mem: Region,
    layout: ControlLayout,
    cfg: FrontendConfig,
    me: RawFrontend,
    state: FrontendState,
    live: Liveness,
    offer: Option<Offer>,
    pending: Option<u32>,
    ever_up: bool,
}

impl Frontend {
    /// Takes the frontend section of the block at the start of `mem` (the Config
    /// area) and starts a new generation.
    pub fn new(mem: Region, cfg: &FrontendConfig) -> Result<Frontend, ControlError> {
        let layout = ControlLayout::new(0, mem.len())?;
        let old = layout.own_frontend(&mem)?;
        let me = RawFrontend {
            seq: resume_seq(old.seq),
            generation: old.generation,
            heartbeat: old.heartbeat,
            cmd_seq: old.cmd_seq,
            ..Default::default()
        };
        let mut f = Frontend {
            live: Liveness::new(cfg.timing, me.heartbeat),
            mem,
            layout,
            cfg: cfg.clone(),
            me,
            state: FrontendState::WaitOffer,
            offer: None,
            pending: None,
            ever_up: false,
        };
        f.restart()?;
        Ok(f)
    }

    /// This frontend's generation.
    pub fn generation(&self) -> u64 {
        self.me.generation
    }

    /// Handshake state.
    pub fn state(&self) -> FrontendState {
        self.state
    }

    /// True while the link is up.
    pub fn is_up(&self) -> bool {
        self.state == FrontendState::Up
    }

    /// The backend's offer the current handshake answers (device type, features,
    /// ring mode, queues).
    pub fn offer(&self) -> Option<&Offer> {
        self.offer.as_ref()
    }

    /// Features accepted in the current handshake.
    pub fn features(&self) -> u64 {
        self.me.features
    }

    /// Queue pairs in use.
    pub fn queue_pairs(&self) -> u32 {
        self.me.queue_pairs
    }

    fn publish(&mut self) -> Result<(), ControlError> {
        self.layout.publish_frontend(&self.mem, &mut self.me)
    }

    /// Starts the handshake over with a new generation (virtio's reset: status 0).
    fn restart(&mut self) -> Result<(), ControlError> {
        self.me.generation = next_generation(self.me.generation);
        self.me.status = 0;
        self.me.reason = 0;
        self.me.features = 0;
        self.me.queue_pairs = 0;
        self.me.peer_generation = 0;
        self.state = FrontendState::WaitOffer;
        self.offer = None;
        self.pending = None;
        self.publish()
    }

    /// Resets this side (new generation, status 0): the backend notices and both
    /// run the handshake again. Also the way out of [`FrontendState::Failed`].
    pub fn reset(&mut self) -> Result<(), ControlError> {
        self.restart()
    }

    fn fail(&mut self, e: ControlError) -> Result<Event, ControlError> {
        self.state = FrontendState::Failed;
        self.me.status |= status::FAILED;
        self.me.reason = e.reason_code();
        self.publish()?;
        Err(e)
    }

    /// Sends command `cmd` with `arg`; the backend sees [`Event::Command`] and its
    /// acknowledgement comes back as [`Event::CommandDone`]. One at a time.
    pub fn send_command(&mut self, cmd: u32, arg: u64) -> Result<u32, ControlError> {
        if self.state != FrontendState::Up {
            return Err(ControlError::NotUp);
        }
        if let Some(seq) = self.pending {
            return Err(ControlError::CommandPending { seq });
        }
        let seq = self.me.cmd_seq.wrapping_add(1);
        self.me.cmd_seq = seq;
        self.me.cmd = cmd;
        self.me.cmd_arg = arg;
        self.publish()?;
        self.pending = Some(seq);
        Ok(seq)
    }

    /// One step of the state machine (never blocks).
    pub fn poll(&mut self, now: Instant) -> Result<Event, ControlError> {
        if let Some(v) = self.live.beat_due(now) {
            self.me.heartbeat = v;
            self.layout.store_frontend_heartbeat(&self.mem, v)?;
        }
        let hb = self.layout.load_backend_heartbeat(&self.mem)?;
        let raw = self.layout.read_backend_raw(&self.mem)?;
        let gen = raw.map_or(self.live.peer_gen, |r| r.generation);
        match self.live.observe(now, gen, hb) {
            PeerNews::Lost { silent } => {
                let peer_generation = self.live.peer_gen;
                self.restart()?;
                return Ok(Event::PeerLost {
                    peer_generation,
                    silent_for: silent,
                });
            }
            PeerNews::Restarted { old, new } => {
                self.restart()?;
                return Ok(Event::PeerRestarted { old, new });
            }
            PeerNews::Appeared => {
                if self.state != FrontendState::WaitOffer
                    && self.me.peer_generation != gen
                    && self.state != FrontendState::Failed
                {
                    self.restart()?;
                }
            }
            PeerNews::None => {}
        }
        let Some(raw) = raw else {
            return Ok(Event::Idle);
        };
        if !self.live.current || raw.generation == 0 || self.state == FrontendState::Failed {
            return Ok(Event::Idle);
        }
        let be = match BackendView::validate(&raw) {
            Ok(v) => v,
            Err(e) if self.state == FrontendState::WaitOffer => return Err(e),
            Err(e) => return self.fail(e),
        };
        self.step(&be)
    }

    fn step(&mut self, be: &BackendView) -> Result<Event, ControlError> {
        let mine = be.peer_generation == self.me.generation;
        if be.status & status::DEVICE_NEEDS_RESET != 0 {
            if self.state == FrontendState::WaitOffer {
                return Ok(Event::Idle); // the backend clears it when it sees our new generation
            }
            self.restart()?;
            return Ok(Event::ResetRequested);
        }
        match self.state {
            FrontendState::WaitOffer => {
                // A FAILED or binding left for an older generation of ours: the
                // backend clears it once it notices our generation changed.
                if be.status != 0 && !mine {
                    return Ok(Event::Idle);
                }
                let Some(offer) = self.layout.read_offer(&self.mem)? else {
                    return Ok(Event::Idle);
                };
                if offer.backend.generation != be.generation {
                    return Ok(Event::Idle);
                }
                self.offer = Some(offer);
                // virtio 3.1.1 steps 2-3: ACKNOWLEDGE, DRIVER.
                self.me.status = status::ACKNOWLEDGE | status::DRIVER;
                self.publish()?;
                if let Err(e) = check_required(offer.backend.features, self.cfg.required) {
                    return self.fail(e);
                }
                // Steps 4-5: write the accepted subset, set FEATURES_OK.
                let offered_qp = offer.backend.queue_pairs;
                let qp = match self.cfg.queue_pairs {
                    0 => offered_qp,
                    n => n.min(offered_qp),
                };
                self.me.features = negotiate(offer.backend.features, self.cfg.wanted);
                self.me.queue_pairs = qp;
                self.me.peer_generation = be.generation;
                self.me.status |= status::FEATURES_OK;
                self.publish()?;
                self.state = FrontendState::FeaturesSent;
                Ok(Event::Idle)
            }
            FrontendState::FeaturesSent => {
                if !mine {
                    return Ok(Event::Idle);
                }
                if be.status & status::FAILED != 0 {
                    let reason = be.reason;
                    return self.fail(ControlError::PeerFailed {
                        side: Side::Backend,
                        reason,
                    });
                }
                if be.status & status::FEATURES_OK == 0 {
                    return Ok(Event::Idle);
                }
                // Step 6 done (the backend kept FEATURES_OK for us); step 8: DRIVER_OK.
                self.me.status |= status::DRIVER_OK;
                self.publish()?;
                self.state = FrontendState::DriverOkSent;
                Ok(Event::Idle)
            }
            FrontendState::DriverOkSent => {
                if !mine {
                    // The backend had acknowledged us and dropped the binding since
                    // (it lost us, or reset): start over.
                    self.restart()?;
                    return Ok(Event::ResetRequested);
                }
                if be.status & status::FAILED != 0 {
                    let reason = be.reason;
                    return self.fail(ControlError::PeerFailed {
                        side: Side::Backend,
                        reason,
                    });
                }
                if be.status & status::DRIVER_OK == 0 {
                    return Ok(Event::Idle);
                }
                self.state = FrontendState::Up;
                let first = !self.ever_up;
                self.ever_up = true;
                let (peer_generation, features) = (be.generation, self.me.features);
                Ok(if first {
                    Event::Up {
                        peer_generation,
                        features,
                    }
                } else {
                    Event::PeerBack {
                        peer_generation,
                        features,
                    }
                })
            }
            FrontendState::Up => {
                let need = status::FEATURES_OK | status::DRIVER_OK;
                if !mine || be.status & need != need || be.status & status::FAILED != 0 {
                    // The backend cleared the link (it lost us, or reset): start over.
                    self.restart()?;
                    return Ok(Event::ResetRequested);
                }
                if let Some(seq) = self.pending {
                    if be.ack_seq == seq {
                        self.pending = None;
                        return Ok(Event::CommandDone {
                            seq,
                            result: be.result,
                        });
                    }
                }
                Ok(Event::Idle)
            }
            FrontendState::Failed => Ok(Event::Idle),
        }
    }

    /// What the handshake waits for (for messages).
    pub fn waiting_for(&self) -> &'static str {
        match self.state {
            FrontendState::WaitOffer if !self.live.current => {
                "waiting for a live backend (no heartbeat seen)"
            }
            FrontendState::WaitOffer => "waiting for the backend's offer",
            FrontendState::FeaturesSent => "waiting for the backend to acknowledge FEATURES_OK",
            FrontendState::DriverOkSent => "waiting for the backend to acknowledge DRIVER_OK",
            FrontendState::Up => "up",
            FrontendState::Failed => "failed (reset to retry)",
        }
    }

    /// Polls until the link is up (or back), yielding between polls; gives up at
    /// `deadline` with [`ControlError::HandshakeTimeout`].
    pub fn connect(&mut self, deadline: Instant) -> Result<Event, ControlError> {
        connect_loop(self, deadline)
    }
}

impl Controller for Frontend {
    const SIDE: Side = Side::Frontend;
    fn poll_once(&mut self, now: Instant) -> Result<Event, ControlError> {
        self.poll(now)
    }
    fn waiting(&self) -> &'static str {
        self.waiting_for()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rings::control::{reason, ControlLayout, BLOCK_SIZE};
    use rings::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const OFFERED: u64 = VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_IN_ORDER;

    fn region() -> Region {
        Region::heap(4096)
    }

    fn bcfg() -> BackendConfig {
        BackendConfig {
            device_type: 1,
            features: OFFERED,
            ring_mode: RingMode::Split,
            queues: vec![QueueConfig::symmetric(256), QueueConfig::symmetric(512)],
            timing: Timing::default(),
        }
    }

    fn fcfg() -> FrontendConfig {
        FrontendConfig {
            wanted: VIRTIO_F_VERSION_1 | VIRTIO_F_IN_ORDER | (1 << 40),
            required: VIRTIO_F_VERSION_1,
            queue_pairs: 0,
            timing: Timing::default(),
        }
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    /// Polls both sides in turn (one thread) until both report link up.
    fn pump(be: &mut Backend, fe: &mut Frontend) -> (Event, Event) {
        let end = deadline();
        let (mut b, mut f) = (None, None);
        while b.is_none() || f.is_none() {
            assert!(Instant::now() < end, "handshake did not finish");
            let now = Instant::now();
            let e = be.poll(now).unwrap();
            if e.is_link_up() {
                b = Some(e);
            }
            let e = fe.poll(now).unwrap();
            if e.is_link_up() {
                f = Some(e);
            }
            thread::yield_now();
        }
        (b.unwrap(), f.unwrap())
    }

    /// Runs `connect` on both sides in two threads; each keeps polling until both
    /// are up, so neither sees the other go silent.
    fn threaded_handshake(backend_first: bool) {
        let r = region();
        let done_b = Arc::new(AtomicBool::new(false));
        let done_f = Arc::new(AtomicBool::new(false));
        let spawn_b = {
            let (r, done_b, done_f) = (r.clone(), done_b.clone(), done_f.clone());
            move || {
                thread::spawn(move || {
                    let mut be = Backend::new(r, &bcfg()).unwrap();
                    let ev = be.connect(deadline()).unwrap();
                    done_b.store(true, Ordering::Release);
                    let end = deadline();
                    while !done_f.load(Ordering::Acquire) && Instant::now() < end {
                        be.poll(Instant::now()).unwrap();
                        thread::yield_now();
                    }
                    (ev, be.features(), be.peer_generation())
                })
            }
        };
        let spawn_f = {
            let (r, done_b, done_f) = (r.clone(), done_b.clone(), done_f.clone());
            move || {
                thread::spawn(move || {
                    let mut fe = Frontend::new(r, &fcfg()).unwrap();
                    let ev = fe.connect(deadline()).unwrap();
                    done_f.store(true, Ordering::Release);
                    let end = deadline();
                    while !done_b.load(Ordering::Acquire) && Instant::now() < end {
                        fe.poll(Instant::now()).unwrap();
                        thread::yield_now();
                    }
                    let offer = *fe.offer().unwrap();
                    (ev, fe.features(), fe.generation(), offer)
                })
            }
        };
        let (hb, hf) = if backend_first {
            let hb = spawn_b();
            thread::sleep(Duration::from_millis(20));
            (hb, spawn_f())
        } else {
            let hf = spawn_f();
            thread::sleep(Duration::from_millis(20));
            (spawn_b(), hf)
        };
        let (bev, bfeat, bpeer) = hb.join().unwrap();
        let (fev, ffeat, fgen, offer) = hf.join().unwrap();
        assert!(matches!(bev, Event::Up { .. }), "{bev:?}");
        assert!(matches!(fev, Event::Up { .. }), "{fev:?}");
        assert_eq!(bfeat, VIRTIO_F_VERSION_1 | VIRTIO_F_IN_ORDER);
        assert_eq!(ffeat, bfeat);
        assert_eq!(bpeer, fgen);
        assert_eq!(offer.backend.ring_mode, RingMode::Split);
        assert_eq!(offer.queues().len(), 2);
        assert_eq!(offer.queues()[1], QueueConfig::symmetric(512));
    }

    #[test]
    fn handshake_backend_first() {
        threaded_handshake(true);
    }

    #[test]
    fn handshake_frontend_first() {
        threaded_handshake(false);
    }

    #[test]
    fn area_too_small_and_bad_config() {
        assert!(matches!(
            Backend::new(Region::heap(512), &bcfg()),
            Err(ControlError::AreaTooSmall { .. })
        ));
        let mut c = bcfg();
        c.queues = vec![QueueConfig::symmetric(100)];
        assert!(matches!(
            Backend::new(region(), &c),
            Err(ControlError::QueueSize { .. })
        ));
        c.queues = vec![];
        assert!(matches!(
            Backend::new(region(), &c),
            Err(ControlError::QueueCount { .. })
        ));
        let mut c = bcfg();
        c.device_type = 0;
        assert!(Backend::new(region(), &c).is_err());
    }

    /// A buggy frontend (raw writes) accepts a feature that was not offered: the
    /// backend sets FAILED with the reason and reports a typed error; a proper
    /// frontend started afterwards gets the link up.
    #[test]
    fn unoffered_feature_fails_the_backend() {
        let r = region();
        let l = ControlLayout::new(0, r.len()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hostile = {
            let (r, stop) = (r.clone(), stop.clone());
            thread::spawn(move || {
                let end = deadline();
                let mut sec = RawFrontend::default();
                let mut hb = 0u64;
                while !stop.load(Ordering::Acquire) && Instant::now() < end {
                    if let Ok(Some(b)) = l.read_backend(&r) {
                        if b.generation != 0 && sec.generation == 0 {
                            sec.generation = 1;
                            sec.status = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
                            sec.features = OFFERED | (1 << 50);
                            sec.queue_pairs = 1;
                            sec.peer_generation = b.generation;
                            l.publish_frontend(&r, &mut sec).unwrap();
                        }
                    }
                    hb += 1;
                    l.store_frontend_heartbeat(&r, hb).unwrap();
                    sec.heartbeat = hb;
                    thread::sleep(Duration::from_millis(1));
                }
            })
        };
        let mut be = Backend::new(r.clone(), &bcfg()).unwrap();
        let err = be.connect(deadline()).unwrap_err();
        stop.store(true, Ordering::Release);
        hostile.join().unwrap();
        assert_eq!(
            err,
            ControlError::FeaturesNotOffered {
                accepted: OFFERED | (1 << 50),
                offered: OFFERED,
                extra: 1 << 50
            }
        );
        assert_eq!(be.state(), BackendState::Failed);
        let raw = l.read_backend_raw(&r).unwrap().unwrap();
        assert_eq!(raw.status, status::FAILED);
        assert_eq!(raw.reason, reason::FEATURES_NOT_OFFERED);
        assert_eq!(raw.peer_generation, 1);

        // A well-behaved frontend on the same block: new generation, link up.
        let mut fe = Frontend::new(r, &fcfg()).unwrap();
        assert_eq!(fe.generation(), 2);
        let (b, f) = pump(&mut be, &mut fe);
        assert!(b.is_link_up() && f.is_link_up(), "{b:?} {f:?}");
    }

    #[test]
    fn frontend_missing_required_feature_fails() {
        let r = region();
        let mut be = Backend::new(r.clone(), &bcfg()).unwrap();
        let mut c = fcfg();
        c.required = 1 << 45;
        let mut fe = Frontend::new(r, &c).unwrap();
        let end = deadline();
        let err = loop {
            assert!(Instant::now() < end);
            be.poll(Instant::now()).unwrap();
            match fe.poll(Instant::now()) {
                Ok(_) => thread::yield_now(),
                Err(e) => break e,
            }
        };
        assert_eq!(
            err,
            ControlError::MissingFeatures {
                offered: OFFERED,
                missing: 1 << 45
            }
        );
        assert_eq!(fe.state(), FrontendState::Failed);
    }

    /// No frontend at all, and a frontend that stops after ACKNOWLEDGE|DRIVER: the
    /// backend's connect fails at its deadline with a message saying what it
    /// waited for.
    #[test]
    fn connect_gives_up_at_deadline() {
        let r = region();
        let mut be = Backend::new(r.clone(), &bcfg()).unwrap();
        let err = be
            .connect(Instant::now() + Duration::from_millis(200))
            .unwrap_err();
        assert!(
            matches!(
                err,
                ControlError::HandshakeTimeout {
                    side: Side::Backend,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("backend") && msg.contains("frontend"), "{msg}");

        // A frontend that beats but never sets FEATURES_OK.
        let l = ControlLayout::new(0, r.len()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stuck = {
            let (r, stop) = (r.clone(), stop.clone());
            thread::spawn(move || {
                let mut sec = RawFrontend {
                    generation: 7,
                    status: status::ACKNOWLEDGE | status::DRIVER,
                    ..Default::default()
                };
                l.publish_frontend(&r, &mut sec).unwrap();
                let end = deadline();
                let mut hb = 0;
                while !stop.load(Ordering::Acquire) && Instant::now() < end {
                    hb += 1;
                    l.store_frontend_heartbeat(&r, hb).unwrap();
                    thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let err = be
            .connect(Instant::now() + Duration::from_millis(300))
            .unwrap_err();
        stop.store(true, Ordering::Release);
        stuck.join().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("FEATURES_OK"), "{msg}");
    }

    #[test]
    fn heartbeat_loss_is_reported() {
        let r = region();
        let mut be = Backend::new(r.clone(), &bcfg()).unwrap();
        let mut fe = Frontend::new(r, &fcfg()).unwrap();
        pump(&mut be, &mut fe);
        let fe_gen = fe.generation();
        drop(fe); // stops polling: its heartbeat freezes
        let stopped = Instant::now();
        let end = stopped + Duration::from_secs(5);
        let ev = loop {
            assert!(Instant::now() < end, "PeerLost not reported");
            match be.poll(Instant::now()).unwrap() {
                Event::Idle => thread::sleep(Duration::from_millis(1)),
                e => break e,
            }
        };
        let took = stopped.elapsed();
        assert!(
            matches!(ev, Event::PeerLost { peer_generation, .. } if peer_generation == fe_gen),
            "{ev:?}"
        );
        assert!(took < Duration::from_secs(1), "took {took:?}");
        assert_eq!(be.state(), BackendState::WaitFeatures);
        assert_eq!(be.peer_generation(), 0);
    }

    #[test]
    fn frontend_notices_backend_loss_and_its_return() {
        let r = region();
        let mut be = Backend::new(r.clone(), &bcfg()).unwrap();
        let mut fe = Frontend::new(r.clone(), &fcfg()).unwrap();
        pump(&mut be, &mut fe);
        let old_gen = be.generation();
        drop(be);
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < end, "PeerLost not reported");
            match fe.poll(Instant::now()).unwrap() {
                Event::PeerLost { .. } => break,
                Event::Idle => thread::sleep(Duration::from_millis(1)),
                e => panic!("unexpected {e:?}"),
            }
        }
        let mut be = Backend::new(r, &bcfg()).unwrap();
        assert!(be.generation() > old_gen);
        let (b, f) = pump(&mut be, &mut fe);
        assert!(matches!(b, Event::Up { .. }), "{b:?}");
        assert!(
            matches!(f, Event::PeerBack { peer_generation, .. } if peer_generation == be.generation()),
            "{f:?}"
        );
    }

    #[test]
    fn restart_is_detected_by_generation() {
        let r = region();
        let mut be = Backend::new(r.clone(), &bcfg()).unwrap();
        let mut fe = Frontend::new(r.clone(), &fcfg()).unwrap();
        pump(&mut be, &mut fe);
        let old = fe.generation();
        drop(fe);
        let mut fe = Frontend::new(r, &fcfg()).unwrap();
        let new = fe.generation();
        assert!(new > old);
        let ev = be.poll(Instant::now()).unwrap();
        assert_eq!(ev, Event::PeerRestarted { old, new });
        let (b, _) = pump(&mut be, &mut fe);
        assert!(
            matches!(b, Event::PeerBack { peer_generation, .. } if peer_generation == new),
            "{b:?}"
        );
    }

    #[test]
    fn backend_reset_request_reruns_the_handshake() {
        let r = region();
        let mut be = Backend::new(r.clone(), &bcfg()).unwrap();
        let mut fe = Frontend::new(r, &fcfg()).unwrap();
        pump(&mut be, &mut fe);
        let g = fe.generation();
        be.request_reset().unwrap();
        assert_eq!(fe.poll(Instant::now()).unwrap(), Event::ResetRequested);
        assert!(fe.generation() > g);
        let (b, f) = pump(&mut be, &mut fe);
        assert!(matches!(b, Event::PeerBack { .. }), "{b:?}");
        assert!(matches!(f, Event::PeerBack { .. }), "{f:?}");

        // A frontend reset: the backend sees the new generation and both come back.
        fe.reset().unwrap();
        assert!(matches!(
            be.poll(Instant::now()).unwrap(),
            Event::PeerRestarted { .. }
        ));
        let (b, f) = pump(&mut be, &mut fe);
        assert!(b.is_link_up() && f.is_link_up());
    }

    #[test]
    fn commands_are_acknowledged() {
        let r = region();
        let mut be = Backend::new(r.clone(), &bcfg()).unwrap();
        let mut fe = Frontend::new(r, &fcfg()).unwrap();
        pump(&mut be, &mut fe);
        let seq = fe.send_command(7, 42).unwrap();
        assert_eq!(
            fe.send_command(8, 0),
            Err(ControlError::CommandPending { seq })
        );
        assert_eq!(
            be.poll(Instant::now()).unwrap(),
            Event::Command {
                seq,
                cmd: 7,
                arg: 42
            }
        );
        assert_eq!(be.poll(Instant::now()).unwrap(), Event::Idle);
        be.complete_command(seq, 99).unwrap();
        assert_eq!(
            fe.poll(Instant::now()).unwrap(),
            Event::CommandDone { seq, result: 99 }
        );
        assert!(fe.send_command(8, 0).is_ok());
    }

    #[test]
    fn a_stalled_poller_does_not_blame_its_peer() {
        let r = region();
        let mut be = Backend::new(r.clone(), &bcfg()).unwrap();
        let mut fe = Frontend::new(r, &fcfg()).unwrap();
        pump(&mut be, &mut fe);
        // Neither side polls for 300 ms (both descheduled): on resuming, each sees
        // a frozen peer counter but knows the silence was its own.
        let later = Instant::now() + Duration::from_millis(300);
        assert_eq!(be.poll(later).unwrap(), Event::Idle);
        assert_eq!(fe.poll(later).unwrap(), Event::Idle);
        assert!(be.is_up() && fe.is_up());
    }

    #[test]
    fn block_fits_default_area() {
        const { assert!(BLOCK_SIZE <= 4096) };
    }
}
