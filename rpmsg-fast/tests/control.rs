//! The control plane on rpmsg links (one process, both sides polled from one thread
//! over a /dev/shm window): `VIRTIO_RPMSG_F_NS` offered by the remote (device) and
//! accepted by the host (driver), the name service used only when negotiated, peer
//! loss (heartbeat stop, drop) surfaced as `RpmsgError::PeerLost`, and re-attach.
//! Every wait yields and has a deadline.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rpmsg_fast::wire::VIRTIO_RPMSG_F_NS;
use rpmsg_fast::{
    Addr, ControlEvent, Link, LinkConfig, PeerState, RingMode, Role, RpmsgError, Timing,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn path(tag: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/rpmsg-ctl-{tag}-{}", std::process::id()))
}

fn cfg(p: &PathBuf, mode: RingMode, role: Role, ns: bool) -> LinkConfig {
    let mut c = LinkConfig::new(p, mode, role);
    if !ns {
        c.bus.features &= !(1 << VIRTIO_RPMSG_F_NS);
    }
    c.timing = Timing {
        heartbeat_interval: Duration::from_millis(5),
        peer_timeout: Duration::from_millis(300),
    };
    c
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// Polls both control planes until both are up.
fn handshake(h: &mut Link, r: &mut Link) {
    let dl = deadline();
    while !(h.is_up() && r.is_up()) {
        h.poll_control().unwrap();
        r.poll_control().unwrap();
        assert!(Instant::now() < dl, "handshake timed out");
        std::thread::yield_now();
    }
}

/// Sends one message each way and checks it arrives.
fn exchange(h: &mut Link, r: &mut Link) {
    let he = h.create_endpoint(None, Addr::Dynamic).unwrap();
    let re = r.create_endpoint(None, Addr::Dynamic).unwrap();
    let (ha, ra) = (h.addr(he).unwrap(), r.addr(re).unwrap());
    h.send_deadline(he, ra, b"ping", deadline()).unwrap();
    let m = r.recv_deadline(re, deadline()).unwrap();
    assert_eq!(r.payload(&m), b"ping");
    assert_eq!(m.src(), ha);
    r.release(m).unwrap();
    r.send_deadline(re, ha, b"pong", deadline()).unwrap();
    let m = h.recv_deadline(he, deadline()).unwrap();
    assert_eq!(h.payload(&m), b"pong");
    h.release(m).unwrap();
    h.destroy_endpoint(he).unwrap();
    r.destroy_endpoint(re).unwrap();
}

#[test]
fn ns_negotiated_when_both_want_it() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (mode, tag) in [(RingMode::Posted, "ns-p"), (RingMode::Split, "ns-s")] {
        let p = path(tag);
        let mut h = Link::create(&cfg(&p, mode, Role::Host, true)).unwrap();
        let mut r = Link::attach(&cfg(&p, mode, Role::Remote, true)).unwrap();
        assert_eq!(h.peer_state(), PeerState::Unknown);
        handshake(&mut h, &mut r);
        let f = h.negotiated_features().unwrap();
        assert_ne!(f & (1 << VIRTIO_RPMSG_F_NS), 0, "NS accepted");
        assert_eq!(r.negotiated_features(), Some(f), "both sides agree");
        assert!(h.ns_enabled() && r.ns_enabled());
        // The name service works: the remote announces, the host learns it.
        let svc = r
            .create_endpoint(Some("rpmsg-echo"), Addr::Dynamic)
            .unwrap();
        r.announce(svc).unwrap();
        let dl = deadline();
        while h.lookup("rpmsg-echo").is_none() {
            h.poll().unwrap();
            assert!(Instant::now() < dl);
            std::thread::yield_now();
        }
        assert_eq!(h.lookup("rpmsg-echo"), Some(r.addr(svc).unwrap()));
        exchange(&mut h, &mut r);
        drop(r);
        drop(h);
        assert!(!p.exists(), "window file left behind");
    }
}

#[test]
fn ns_off_when_the_device_does_not_offer_it() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = path("ns-off");
    // The host wants NS, the remote (device) does not offer it.
    let mut h = Link::create(&cfg(&p, RingMode::Posted, Role::Host, true)).unwrap();
    let mut r = Link::attach(&cfg(&p, RingMode::Posted, Role::Remote, false)).unwrap();
    handshake(&mut h, &mut r);
    assert_eq!(
        h.negotiated_features().unwrap() & (1 << VIRTIO_RPMSG_F_NS),
        0
    );
    assert!(!h.ns_enabled() && !r.ns_enabled());
    let e = h.create_endpoint(Some("svc"), Addr::Dynamic).unwrap();
    assert!(matches!(h.announce(e), Err(RpmsgError::NsDisabled)));
    // Data still flows.
    exchange(&mut h, &mut r);
    // And the other way round: the device offers it, the driver does not want it.
    drop(r);
    drop(h);
    let mut h = Link::create(&cfg(&p, RingMode::Posted, Role::Host, false)).unwrap();
    let mut r = Link::attach(&cfg(&p, RingMode::Posted, Role::Remote, true)).unwrap();
    handshake(&mut h, &mut r);
    assert!(!r.ns_enabled(), "NS not accepted by the driver");
    let e = r.create_endpoint(Some("svc"), Addr::Dynamic).unwrap();
    assert!(matches!(r.announce(e), Err(RpmsgError::NsDisabled)));
    drop(r);
    drop(h);
    assert!(!p.exists());
}

#[test]
fn silent_peer_is_lost_then_comes_back() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = path("lost");
    let mut h = Link::create(&cfg(&p, RingMode::Posted, Role::Host, true)).unwrap();
    let mut r = Link::attach(&cfg(&p, RingMode::Posted, Role::Remote, true)).unwrap();
    handshake(&mut h, &mut r);
    exchange(&mut h, &mut r);
    // The remote stops polling its control plane: the host loses it.
    let he = h.create_endpoint(None, Addr::Fixed(100)).unwrap();
    let dl = deadline();
    loop {
        if let ControlEvent::PeerLost { .. } = h.poll_control().unwrap() {
            break;
        }
        assert!(Instant::now() < dl, "peer never declared lost");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(h.peer_state(), PeerState::Lost);
    assert!(matches!(
        h.try_send(he, 200, b"x"),
        Err(RpmsgError::PeerLost)
    ));
    assert!(matches!(h.send(he, 200, b"x"), Err(RpmsgError::PeerLost)));
    assert!(matches!(h.get_tx_buffer(), Err(RpmsgError::PeerLost)));
    // The remote resumes: both re-run the handshake, and data flows again.
    handshake(&mut h, &mut r);
    h.destroy_endpoint(he).unwrap();
    exchange(&mut h, &mut r);
    drop(r);
    drop(h);
    assert!(!p.exists());
}

#[test]
fn dropped_remote_is_lost_and_a_new_one_reattaches() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (mode, tag) in [(RingMode::Posted, "re-p"), (RingMode::Split, "re-s")] {
        let p = path(tag);
        let mut h = Link::create(&cfg(&p, mode, Role::Host, true)).unwrap();
        let mut r = Link::attach(&cfg(&p, mode, Role::Remote, true)).unwrap();
        handshake(&mut h, &mut r);
        exchange(&mut h, &mut r);
        let gen = r.generation();
        drop(r);
        let dl = deadline();
        while h.peer_state() != PeerState::Lost {
            h.poll_control().unwrap();
            assert!(Instant::now() < dl, "drop not noticed");
            std::thread::sleep(Duration::from_millis(1));
        }
        let e = h.create_endpoint(None, Addr::Fixed(7)).unwrap();
        assert!(matches!(h.try_send(e, 8, b"x"), Err(RpmsgError::PeerLost)));
        h.destroy_endpoint(e).unwrap();
        // A new remote attaches to the same window.
        let mut r = Link::attach(&cfg(&p, mode, Role::Remote, true)).unwrap();
        assert!(r.generation() > gen);
        handshake(&mut h, &mut r);
        exchange(&mut h, &mut r);
        drop(r);
        drop(h);
        assert!(!p.exists());
    }
}
