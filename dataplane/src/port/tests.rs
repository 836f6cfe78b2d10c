//! In-process port tests: two ports over one /dev/shm window, one thread each.

use super::*;
use std::path::PathBuf;

fn path(tag: &str) -> PathBuf {
    PathBuf::from(format!(
        "/dev/shm/zh-port-unit-{}-{tag}",
        std::process::id()
    ))
}

fn cfgs(tag: &str) -> (PortConfig, PortConfig) {
    cfgs_ring(tag, RingKind::Posted)
}

fn cfgs_ring(tag: &str, ring: RingKind) -> (PortConfig, PortConfig) {
    let spec = WindowSpec::Shm(path(tag));
    let mut a = PortConfig::new(spec.clone(), Role::Backend);
    a.ring = ring;
    a.ring_size = 64;
    a.queues = 2;
    a.handshake_timeout = Duration::from_secs(20);
    let mut b = PortConfig::new(spec, Role::Frontend);
    b.handshake_timeout = Duration::from_secs(20);
    (a, b)
}

/// Both ports started, side B started on a helper thread.
fn pair(tag: &str) -> (Port, Port) {
    pair_ring(tag, RingKind::Posted)
}

fn pair_ring(tag: &str, ring: RingKind) -> (Port, Port) {
    let (ca, cb) = cfgs_ring(tag, ring);
    let mut a = Port::create(&ca).unwrap();
    let mut b = Port::attach(&cb).unwrap();
    let t = std::thread::spawn(move || {
        b.start().unwrap();
        b
    });
    a.start().unwrap();
    let b = t.join().unwrap();
    (a, b)
}

/// Polls both control planes and `f` until `f` says done (10 s deadline).
fn pump(a: &mut Port, b: &mut Port, mut f: impl FnMut(&mut Port, &mut Port) -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let now = Instant::now();
        a.poll_control(now).unwrap();
        b.poll_control(now).unwrap();
        if f(a, b) {
            return;
        }
        assert!(Instant::now() < end, "deadline");
        std::thread::yield_now();
    }
}

#[test]
fn bad_config_is_refused() {
    let (mut ca, _) = cfgs("badcfg");
    ca.ring = RingKind::Split;
    ca.ring_size = 100_000;
    assert!(Port::create(&ca).is_err());
    ca.ring = RingKind::Posted;
    ca.ring_size = 64;
    ca.queues = 0;
    assert!(matches!(
        Port::create(&ca),
        Err(PortError::InvalidConfig { .. })
    ));
    // One queue pair more than the header's area table holds, per ring mode.
    for ring in [RingKind::Posted, RingKind::Split, RingKind::Packed] {
        ca.ring = ring;
        ca.queues = ring.max_queues() + 1;
        assert!(matches!(
            Port::create(&ca),
            Err(PortError::InvalidConfig { what: "queues", .. })
        ));
    }
    assert_eq!(
        (RingKind::Posted.max_queues(), RingKind::Split.max_queues()),
        (31, 21)
    );
}

#[test]
fn handshake_without_peer_times_out() {
    let (mut ca, _) = cfgs("timeout");
    ca.handshake_timeout = Duration::from_millis(200);
    let mut a = Port::create(&ca).unwrap();
    match a.start() {
        Err(PortError::HandshakeTimeout { waiting_for, .. }) => {
            assert!(!waiting_for.is_empty())
        }
        r => panic!("expected a timeout, got {r:?}"),
    }
    assert!(!a.link_status().up);
}

#[test]
fn traffic_posted() {
    traffic(RingKind::Posted);
}

#[test]
fn traffic_split() {
    traffic(RingKind::Split);
}

#[test]
fn traffic_packed() {
    traffic(RingKind::Packed);
}

/// Backend -> frontend with copying and zero-copy transmit, then frontend -> backend.
fn traffic(ring: RingKind) {
    let (mut a, mut b) = pair_ring(&format!("traffic-{ring:?}"), ring);
    assert_eq!(b.config().ring, ring);
    assert_eq!(b.queue_count(), 2);
    let mut qa = a.queue(0).unwrap();
    let mut qb = b.queue(0).unwrap();
    assert!(matches!(a.queue(0), Err(PortError::NoQueue(0))));
    let big = [7u8; 1000];
    let mut rx = Vec::with_capacity(64);
    let mut txb = Vec::with_capacity(64);
    let mut got = 0;
    let mut sent = 0;
    pump(&mut a, &mut b, |_, _| {
        if sent < 200 {
            sent += qa.tx_burst(&[b"tiny", &big[..]]).unwrap();
            let n = qa.alloc_tx(&mut txb, 4).unwrap();
            for t in txb.iter_mut() {
                qa.write(t, b"zero-copy").unwrap();
                t.set_meta(9);
            }
            assert_eq!(qa.commit(&mut txb).unwrap(), n);
            sent += n;
        }
        qb.rx_burst(&mut rx, 32).unwrap();
        for m in &rx {
            assert!(matches!(m.data(), b"tiny" | b"zero-copy") || m.data() == &big[..]);
            if m.data() == b"zero-copy" {
                assert_eq!(m.meta(), 9);
            }
        }
        got += rx.len();
        // Alternate the two free paths.
        if got % 2 == 0 {
            qb.free(&mut rx);
        } else {
            free_rx_bulk(&mut rx);
        }
        sent >= 200 && got == sent
    });
    assert_eq!(qb.rx_outstanding(), 0);
    let s = b.stats();
    assert_eq!(s.total.rx_packets, got as u64);
    assert_eq!(s.queues[0].rx_packets, got as u64);
    assert_eq!(a.stats().total.tx_packets, sent as u64);
    b.stats_reset();
    assert_eq!(b.stats().total.rx_packets, 0);
    assert!(a.link_status().up && b.link_status().up);
    // The other direction: frontend -> backend.
    let (mut back_sent, mut back_got) = (0, 0);
    pump(&mut a, &mut b, |_, _| {
        if back_sent < 100 {
            back_sent += qb.tx_burst(&[b"back", &big[..500]]).unwrap();
        }
        qa.rx_burst(&mut rx, 32).unwrap();
        for m in &rx {
            assert!(m.data() == b"back" || m.data() == &big[..500]);
        }
        back_got += rx.len();
        qa.free(&mut rx);
        back_sent >= 100 && back_got == back_sent
    });
    assert_eq!(qa.rx_outstanding(), 0);
}

#[test]
fn stop_resets_queues_reclaims_buffers_and_restarts() {
    let (mut a, mut b) = pair("restart");
    let mut qa = a.queue(0).unwrap();
    let mut qb = b.queue(0).unwrap();
    let mut rx = Vec::with_capacity(64);
    let mut held = Vec::with_capacity(64);
    let big = [1u8; 500];
    // Hold some packets and some zero-copy buffers across the loss.
    pump(&mut a, &mut b, |_, _| {
        let _ = qa.tx_burst(&[&big[..]; 8]).unwrap();
        qb.rx_burst(&mut rx, 32).unwrap();
        held.append(&mut rx);
        held.len() >= 8
    });
    let mut txb = Vec::with_capacity(8);
    assert!(qb.alloc_tx(&mut txb, 4).unwrap() > 0);
    assert!(qb.rx_outstanding() >= 8);
    // B stops: A sees the link go down (the frontend restarted / asked a reset).
    b.stop().unwrap();
    let mut a_down = false;
    pump(&mut a, &mut b, |a, _| {
        let _ = qa.rx_burst(&mut rx, 32);
        a_down |= !a.link_status().up;
        a_down
    });
    // B's handle notices on its next burst and resets: everything is its own again.
    assert!(matches!(
        qb.rx_burst(&mut rx, 32),
        Err(PortError::LinkDown(DownReason::Stopped))
    ));
    assert_eq!(qb.tx_outstanding(), 0);
    assert!(
        qb.write(&mut txb[0], b"x").is_err(),
        "stale zero-copy buffer"
    );
    assert_eq!(qb.commit(&mut txb).unwrap_or(0), 0);
    drop(held); // stale: dropped without touching the rings
    assert_eq!(qb.rx_outstanding(), 0);
    // Start again: the link comes back and traffic flows.
    let t = std::thread::spawn(move || {
        b.start().unwrap();
        (b, qb)
    });
    let end = Instant::now() + Duration::from_secs(20);
    while !a.link_status().up {
        assert!(Instant::now() < end);
        a.poll_control(Instant::now()).unwrap();
        let _ = qa.rx_burst(&mut rx, 32);
        std::thread::yield_now();
    }
    // b.start() needs qb polled; it is on the thread, parked until start returns, so
    // keep A alive until it joins.
    let (mut b, mut qb) = loop {
        a.poll_control(Instant::now()).unwrap();
        if t.is_finished() {
            break t.join().unwrap();
        }
        std::thread::yield_now();
    };
    let mut got = 0;
    pump(&mut a, &mut b, |_, _| {
        let _ = qa.tx_burst(&[&big[..]; 4]);
        if let Ok(n) = qb.rx_burst(&mut rx, 32) {
            got += n;
        }
        qb.free(&mut rx);
        got >= 100
    });
    assert_eq!(a.link_status().ups, 2);
    assert_eq!(a.link_status().downs, 1);
}
