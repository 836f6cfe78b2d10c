//! Unit tests: golden bytes, hostile input, the bus over every ring mode in one
//! process (heap windows), the config file.

use std::time::{Duration, Instant};

use pmd::copy::CopyEngine;
use pmd::queue::{Packed, PktHeader, PostedLinkLayout, QueuePair, Side, Split, VirtioLinkLayout};
use pmd::window::HeapWindow;
use rings::posted::PostedLayout;

use crate::config::Config;
use crate::wire::*;
use crate::*;

// ------------------------------------------------------------------ golden bytes ----

/// `struct rpmsg_hdr { __rpmsg32 src; __rpmsg32 dst; __rpmsg32 reserved;
/// __rpmsg16 len; __rpmsg16 flags; u8 data[]; } __packed;` (Linux
/// drivers/rpmsg/virtio_rpmsg_bus.c), little-endian on a virtio 1.0 device.
#[test]
fn golden_rpmsg_hdr() {
    let h = RpmsgHdr::new(0x0000_0401, 0x0000_0035, 0x0028);
    let want: [u8; 16] = [
        0x01, 0x04, 0x00, 0x00, // src = 1025
        0x35, 0x00, 0x00, 0x00, // dst = 53
        0x00, 0x00, 0x00, 0x00, // reserved
        0x28, 0x00, // len = 40
        0x00, 0x00, // flags
    ];
    assert_eq!(h.to_bytes(), want);
    assert_eq!(RpmsgHdr::from_bytes(&want), h);
    let h2 = RpmsgHdr {
        src: 0xa1b2_c3d4,
        dst: 0x0102_0304,
        reserved: 0,
        len: 0xbeef,
        flags: 0x1234,
    };
    assert_eq!(
        h2.to_bytes(),
        [0xd4, 0xc3, 0xb2, 0xa1, 0x04, 0x03, 0x02, 0x01, 0, 0, 0, 0, 0xef, 0xbe, 0x34, 0x12]
    );
}

/// `struct rpmsg_ns_msg { char name[RPMSG_NAME_SIZE]; __rpmsg32 addr;
/// __rpmsg32 flags; } __packed;` (Linux include/linux/rpmsg/ns.h), 40 bytes.
#[test]
fn golden_rpmsg_ns_msg() {
    let m = NsMsg::new("rpmsg-echo", 1024, NsAction::Create).unwrap();
    let mut want = [0u8; 40];
    want[..10].copy_from_slice(b"rpmsg-echo");
    want[32..36].copy_from_slice(&[0x00, 0x04, 0x00, 0x00]); // addr = 1024
    want[36..40].copy_from_slice(&[0x00, 0x00, 0x00, 0x00]); // RPMSG_NS_CREATE
    assert_eq!(m.to_bytes(), want);
    let d = NsMsg::new("rpmsg-echo", 1024, NsAction::Destroy).unwrap();
    want[36] = 0x01; // RPMSG_NS_DESTROY
    assert_eq!(d.to_bytes(), want);
    let back = NsMsg::parse(&want).unwrap();
    assert_eq!(back.name_str().unwrap(), "rpmsg-echo");
    assert_eq!(back.action().unwrap(), NsAction::Destroy);
    assert_eq!(back.addr, 1024);
}

#[test]
fn constants_match_linux() {
    assert_eq!(NS_ADDR, 53);
    assert_eq!(RESERVED_ADDRESSES, 1024);
    assert_eq!(NAME_SIZE, 32);
    assert_eq!(DEFAULT_BUF_SIZE, 512);
    assert_eq!(VIRTIO_RPMSG_F_NS, 0);
    assert_eq!(ADDR_ANY, u32::MAX);
}

// ---------------------------------------------------------------- hostile parse ----

#[test]
fn hostile_wire_input_is_typed() {
    // len beyond the delivered bytes.
    let mut b = RpmsgHdr::new(1, 2, 100).to_bytes().to_vec();
    b.extend_from_slice(&[0; 10]);
    assert_eq!(
        RpmsgHdr::parse(&b, 512),
        Err(WireError::LenTooLarge { len: 100, room: 10 })
    );
    // len beyond the buffer size.
    let b = RpmsgHdr::new(1, 2, 600).to_bytes();
    assert!(matches!(
        RpmsgHdr::parse(&b, 512),
        Err(WireError::LenTooLarge { .. })
    ));
    assert_eq!(
        RpmsgHdr::parse(&[0; 5], 512),
        Err(WireError::Short { len: 5 })
    );
    // name without NUL.
    let mut m = [b'x'; 40];
    m[32..].fill(0);
    assert_eq!(NsMsg::parse(&m), Err(WireError::NameNotTerminated));
    // bad flags, bad size, empty name.
    let mut m = NsMsg::new("a", 5, NsAction::Create).unwrap().to_bytes();
    m[36] = 7;
    assert_eq!(NsMsg::parse(&m), Err(WireError::NsFlags { flags: 7 }));
    assert_eq!(NsMsg::parse(&m[..39]), Err(WireError::NsSize { len: 39 }));
    assert!(NsMsg::parse(&[0; 40]).is_err());
    assert!(NsMsg::new(&"n".repeat(32), 1, NsAction::Create).is_err());
}

// ---------------------------------------------------- bus over every ring mode ----

#[derive(Clone, Copy, Debug)]
enum Mode {
    Posted,
    Split,
    Packed,
}

const MODES: [Mode; 3] = [Mode::Posted, Mode::Split, Mode::Packed];

/// Host and remote buses over one heap window.
fn pair(mode: Mode, cfg: BusConfig) -> (Rpmsg<LinkQueue>, Rpmsg<LinkQueue>, HeapWindow) {
    let copy = CopyEngine::detect();
    match mode {
        Mode::Posted => {
            let l = PostedLinkLayout::new(PostedLayout::new(64, 128, 64, 512).unwrap(), 1).unwrap();
            let w = HeapWindow::new(l.window_size()).unwrap();
            l.create(&w).unwrap();
            let a = l.open_side_with(&w, Side::A, 0, 0, copy).unwrap();
            let b = l.open_side_with(&w, Side::B, 0, 0, copy).unwrap();
            (
                Rpmsg::new(LinkQueue::Posted(a), cfg.clone()).unwrap(),
                Rpmsg::new(LinkQueue::Posted(b), cfg).unwrap(),
                w,
            )
        }
        Mode::Split | Mode::Packed => {
            let m = if matches!(mode, Mode::Split) {
                pmd::queue::RingMode::Split
            } else {
                pmd::queue::RingMode::Packed
            };
            let l = VirtioLinkLayout::new(m, 64, 512, 1)
                .unwrap()
                .with_header(PktHeader::None);
            let w = HeapWindow::new(l.window_size()).unwrap();
            l.create(&w).unwrap();
            let (a, b) = if matches!(mode, Mode::Split) {
                (
                    LinkQueue::SplitHost(l.open_frontend_with::<Split, _>(&w, 0, 0, copy).unwrap()),
                    LinkQueue::SplitRemote(
                        l.open_backend_with::<Split, _>(&w, 0, 0, copy).unwrap(),
                    ),
                )
            } else {
                (
                    LinkQueue::PackedHost(
                        l.open_frontend_with::<Packed, _>(&w, 0, 0, copy).unwrap(),
                    ),
                    LinkQueue::PackedRemote(
                        l.open_backend_with::<Packed, _>(&w, 0, 0, copy).unwrap(),
                    ),
                )
            };
            (
                Rpmsg::new(a, cfg.clone()).unwrap(),
                Rpmsg::new(b, cfg).unwrap(),
                w,
            )
        }
    }
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

#[test]
fn echo_every_mode_both_ways() {
    for mode in MODES {
        let (mut h, mut r, _w) = pair(mode, BusConfig::default());
        let he = h.create_endpoint(None, Addr::Dynamic).unwrap();
        let re = r.create_endpoint(None, Addr::Fixed(77)).unwrap();
        assert_eq!(h.addr(he).unwrap(), 1024);
        for len in [0usize, 1, 16, 64, 200, 496] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            h.send_deadline(he, 77, &msg, deadline()).unwrap();
            let m = r.recv_deadline(re, deadline()).unwrap();
            assert_eq!(
                (m.src(), m.dst(), r.payload(&m)),
                (1024, 77, &msg[..]),
                "{mode:?}"
            );
            r.release(m).unwrap();
            r.send_deadline(re, 1024, &msg, deadline()).unwrap();
            let mut out = [0u8; 512];
            let got = loop {
                if let Some(x) = h.recv_copy(he, &mut out).unwrap() {
                    break x;
                }
            };
            assert_eq!(got, (77, len));
            assert_eq!(&out[..len], &msg[..]);
        }
        assert!(matches!(
            h.try_send(he, 77, &[0; 497]),
            Err(RpmsgError::TooLarge { len: 497, max: 496 })
        ));
    }
}

/// Split mode puts exactly what Linux virtio_rpmsg_bus puts in a vring: a 512-byte
/// buffer per descriptor whose first 16 bytes are `struct rpmsg_hdr`, the payload
/// right after it, and the descriptor length covering header + payload.
#[test]
fn split_buffers_are_virtio_rpmsg_bus_buffers() {
    use rings::split::SplitLayout;
    use rings::Mem;
    use std::sync::atomic::Ordering;
    let (mut h, mut r, w) = pair(Mode::Split, BusConfig::default());
    let he = h.create_endpoint(None, Addr::Dynamic).unwrap();
    let _re = r.create_endpoint(None, Addr::Fixed(77)).unwrap();
    h.send_deadline(he, 77, b"hello", deadline()).unwrap();
    let l = VirtioLinkLayout::attach(&w).unwrap();
    assert_eq!(l.geometry().header, PktHeader::None);
    assert_eq!(l.geometry().buf_size, 512);
    let a = l.areas(&w, 0).unwrap();
    let sl = SplitLayout::new(64).unwrap();
    let head = a
        .tx_ring
        .load_u16(sl.avail_ring(0), Ordering::Relaxed)
        .unwrap();
    let mut d = [0u8; 16];
    a.tx_ring.read_bytes(sl.desc(head), &mut d).unwrap();
    let addr = u64::from_le_bytes(d[..8].try_into().unwrap()) as usize;
    let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
    assert_eq!((len, addr % 512), (16 + 5, 0));
    let mut buf = [0u8; 21];
    a.data.read_bytes(addr, &mut buf).unwrap();
    #[rustfmt::skip]
    let want = [
        0x00, 0x04, 0x00, 0x00, // src = 1024
        0x4d, 0x00, 0x00, 0x00, // dst = 77
        0x00, 0x00, 0x00, 0x00, // reserved
        0x05, 0x00,             // len = 5
        0x00, 0x00,             // flags
        b'h', b'e', b'l', b'l', b'o',
    ];
    assert_eq!(buf, want);
}

/// `send_burst` with small messages (staged; inline in posted mode) and large ones
/// (written in place into transmit buffers), in every mode: every message arrives
/// intact and in order.
#[test]
fn send_burst_small_and_large_every_mode() {
    for mode in MODES {
        let (mut h, mut r, _w) = pair(mode, BusConfig::default());
        let he = h.create_endpoint(None, Addr::Dynamic).unwrap();
        let re = r.create_endpoint(None, Addr::Fixed(77)).unwrap();
        for len in [8usize, 96, 97, 300, 496] {
            let msgs: Vec<Vec<u8>> = (0..20u8)
                .map(|k| (0..len).map(|i| (i as u8).wrapping_mul(3) ^ k).collect())
                .collect();
            let views: Vec<&[u8]> = msgs.iter().map(|m| &m[..]).collect();
            let mut sent = 0;
            let mut got = 0;
            let end = deadline();
            while got < msgs.len() {
                assert!(Instant::now() < end, "{mode:?} {len}: deadline");
                sent += h.send_burst(he, 77, &views[sent..]).unwrap();
                r.poll().unwrap();
                while let Some(m) = r.try_recv(re).unwrap() {
                    assert_eq!(
                        (m.src(), r.payload(&m)),
                        (1024, &msgs[got][..]),
                        "{mode:?} {len}"
                    );
                    r.release(m).unwrap();
                    got += 1;
                }
                h.poll().unwrap();
            }
        }
    }
}

#[test]
fn zero_copy_send_and_held_receive() {
    for mode in MODES {
        let (mut h, mut r, _w) = pair(mode, BusConfig::default());
        let he = h.create_endpoint(None, Addr::Fixed(2000)).unwrap();
        let re = r.create_endpoint(None, Addr::Fixed(3000)).unwrap();
        for i in 0..8u8 {
            let mut b = h.get_tx_buffer().unwrap().unwrap();
            assert_eq!(b.capacity(), 496);
            b.payload_mut()[..100].fill(i);
            h.send_nocopy(he, 3000, b, 100).unwrap();
        }
        // Hold all eight, read them out of order, release in reverse.
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(r.recv_deadline(re, deadline()).unwrap());
        }
        for (i, m) in held.iter().enumerate() {
            assert_eq!(r.payload(m), &[i as u8; 100][..], "{mode:?}");
        }
        while let Some(m) = held.pop() {
            r.release(m).unwrap(); // consumes: `m` cannot be used again
        }
        // A cancelled buffer goes back.
        let b = h.get_tx_buffer().unwrap().unwrap();
        h.cancel_tx(b).unwrap();
        // Buffers keep flowing after the release (no leak): more than the ring holds.
        for i in 0..300u32 {
            h.send_deadline(he, 3000, &i.to_le_bytes(), deadline())
                .unwrap();
            let m = r.recv_deadline(re, deadline()).unwrap();
            assert_eq!(r.payload(&m), &i.to_le_bytes());
            r.release(m).unwrap();
        }
    }
}

#[test]
fn name_service_announce_bind_withdraw() {
    for mode in MODES {
        let (mut h, mut r, _w) = pair(mode, BusConfig::default());
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let ev = events.clone();
        h.on_service(move |e| {
            ev.lock()
                .unwrap()
                .push((e.name.to_owned(), e.addr, e.action))
        });
        let client = h.create_endpoint(None, Addr::Dynamic).unwrap();
        h.bind(client, "rpmsg-echo").unwrap();
        assert!(matches!(
            h.send_default(client, b"x"),
            Err(RpmsgError::NoDestination)
        ));
        let svc = r
            .create_endpoint(Some("rpmsg-echo"), Addr::Dynamic)
            .unwrap();
        let svc_addr = r.addr(svc).unwrap();
        r.announce(svc).unwrap();
        let t = deadline();
        while h.lookup("rpmsg-echo").is_none() {
            h.poll().unwrap();
            assert!(Instant::now() < t);
        }
        assert_eq!(h.lookup("rpmsg-echo"), Some(svc_addr));
        assert_eq!(h.destination(client).unwrap(), Some(svc_addr));
        h.send_default(client, b"hello").unwrap();
        let m = r.recv_deadline(svc, deadline()).unwrap();
        assert_eq!(r.payload(&m), b"hello");
        r.release(m).unwrap();
        r.destroy_endpoint(svc).unwrap(); // withdraws
        while h.lookup("rpmsg-echo").is_some() {
            h.poll().unwrap();
            assert!(Instant::now() < t);
        }
        assert_eq!(h.destination(client).unwrap(), None);
        assert_eq!(
            *events.lock().unwrap(),
            vec![
                ("rpmsg-echo".to_owned(), svc_addr, NsAction::Create),
                ("rpmsg-echo".to_owned(), svc_addr, NsAction::Destroy)
            ]
        );
        assert!(matches!(r.addr(svc), Err(RpmsgError::NoEndpoint)));
    }
}

/// Raw bytes through the queue pair, as a hostile peer would send them.
fn raw(q: &mut Rpmsg<LinkQueue>, bytes: &[u8]) {
    assert_eq!(q.queue_mut().tx_burst(&[bytes], 0).unwrap(), 1);
}

#[test]
fn hostile_messages_are_counted_drops() {
    for mode in MODES {
        let (mut h, mut r, _w) = pair(mode, BusConfig::default());
        let re = r.create_endpoint(None, Addr::Fixed(1500)).unwrap();
        // len past the delivered bytes.
        let mut b = RpmsgHdr::new(9, 1500, 300).to_bytes().to_vec();
        b.extend_from_slice(&[1; 20]);
        raw(&mut h, &b);
        // shorter than a header.
        raw(&mut h, &[1, 2, 3]);
        // unknown destination.
        raw(&mut h, &RpmsgHdr::new(9, 4242, 0).to_bytes());
        // name service: no NUL; destroy of an unknown name; wrong size.
        let mut ns = RpmsgHdr::new(9, NS_ADDR, 40).to_bytes().to_vec();
        ns.extend_from_slice(&[b'z'; 40]);
        raw(&mut h, &ns);
        let mut ns = RpmsgHdr::new(9, NS_ADDR, 40).to_bytes().to_vec();
        ns.extend_from_slice(
            &NsMsg::new("ghost", 9, NsAction::Destroy)
                .unwrap()
                .to_bytes(),
        );
        raw(&mut h, &ns);
        let mut ns = RpmsgHdr::new(9, NS_ADDR, 3).to_bytes().to_vec();
        ns.extend_from_slice(&[0; 3]);
        raw(&mut h, &ns);
        // and one good message after all of it.
        h.queue_mut(); // (same queue)
        let he = h.create_endpoint(None, Addr::Fixed(9)).unwrap();
        h.send_deadline(he, 1500, b"ok", deadline()).unwrap();
        let m = r.recv_deadline(re, deadline()).unwrap();
        assert_eq!(r.payload(&m), b"ok");
        r.release(m).unwrap();
        let s = r.stats();
        assert_eq!(s.bad_header, 2, "{mode:?} {s:?}");
        assert_eq!(s.unknown_dst, 1, "{mode:?}");
        assert_eq!(s.ns_errors, 3, "{mode:?}");
        assert!(!r.queue().is_broken());
    }
}

#[test]
fn flooded_endpoint_drops_others_still_receive() {
    for mode in MODES {
        let cfg = BusConfig {
            rx_queue_depth: 8,
            ..BusConfig::default()
        };
        let (mut h, mut r, _w) = pair(mode, cfg);
        let flood_src = h.create_endpoint(None, Addr::Fixed(10)).unwrap();
        let good_src = h.create_endpoint(None, Addr::Fixed(11)).unwrap();
        let flooded = r.create_endpoint(None, Addr::Fixed(20)).unwrap();
        let good = r.create_endpoint(None, Addr::Fixed(21)).unwrap();
        let mut got = 0u32;
        // Small (inline in posted mode) and large (buffered) floods.
        for (i, size) in (0..1000u32).zip([8usize, 300].into_iter().cycle()) {
            let t = deadline();
            loop {
                match h.try_send(flood_src, 20, &vec![0xee; size]) {
                    Ok(()) => break,
                    Err(RpmsgError::WouldBlock) => {
                        r.poll().unwrap();
                        assert!(Instant::now() < t, "{mode:?}: flood stalled the link");
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            h.send_deadline(good_src, 21, &i.to_le_bytes(), deadline())
                .unwrap();
            // The good endpoint reads; the flooded one never does.
            while let Some(m) = r.recv(good).unwrap() {
                assert_eq!(r.payload(&m), &got.to_le_bytes(), "{mode:?}: order");
                got += 1;
                r.release(m).unwrap();
            }
        }
        let t = deadline();
        while got < 1000 {
            if let Some(m) = r.recv(good).unwrap() {
                assert_eq!(r.payload(&m), &got.to_le_bytes());
                got += 1;
                r.release(m).unwrap();
            }
            assert!(Instant::now() < t);
        }
        let fs = r.endpoint_stats(flooded).unwrap();
        assert_eq!(r.pending(flooded).unwrap(), 8);
        assert_eq!(fs.rx + fs.dropped_full, 1000, "{mode:?} {fs:?}");
        assert_eq!(r.endpoint_stats(good).unwrap().dropped_full, 0);
        // Destroying the flooded endpoint frees what it held.
        r.destroy_endpoint(flooded).unwrap();
    }
}

#[test]
fn callbacks_and_addresses() {
    let (mut h, mut r, _w) = pair(Mode::Posted, BusConfig::default());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let re = r.create_endpoint(None, Addr::Fixed(5)).unwrap();
    r.set_callback(re, move |m| {
        s2.lock().unwrap().push((m.src, m.data.to_vec()))
    })
    .unwrap();
    let he = h.create_endpoint(None, Addr::Dynamic).unwrap();
    h.send(he, 5, b"cb").unwrap();
    let t = deadline();
    while seen.lock().unwrap().is_empty() {
        r.poll().unwrap();
        assert!(Instant::now() < t);
    }
    assert_eq!(seen.lock().unwrap()[0], (1024, b"cb".to_vec()));
    // Address rules.
    assert!(matches!(
        r.create_endpoint(None, Addr::Fixed(5)),
        Err(RpmsgError::AddrInUse { addr: 5 })
    ));
    assert!(matches!(
        r.create_endpoint(None, Addr::Fixed(53)),
        Err(RpmsgError::AddrInUse { .. })
    ));
    let d1 = r.create_endpoint(None, Addr::Dynamic).unwrap();
    let d2 = r.create_endpoint(None, Addr::Dynamic).unwrap();
    assert_eq!((r.addr(d1).unwrap(), r.addr(d2).unwrap()), (1024, 1025));
    r.destroy_endpoint(d1).unwrap();
    assert!(matches!(
        r.try_send(d1, 1, b""),
        Err(RpmsgError::NoEndpoint)
    ));
    // Name service off: announce refused.
    let (mut h2, _r2, _w2) = pair(
        Mode::Posted,
        BusConfig {
            features: 0,
            ..BusConfig::default()
        },
    );
    let e = h2.create_endpoint(Some("svc"), Addr::Dynamic).unwrap();
    assert!(matches!(h2.announce(e), Err(RpmsgError::NsDisabled)));
}

#[test]
fn try_send_never_blocks() {
    let (mut h, _r, _w) = pair(Mode::Posted, BusConfig::default());
    let he = h.create_endpoint(None, Addr::Dynamic).unwrap();
    let mut sent = 0;
    loop {
        match h.try_send(he, 99, &[0; 200]) {
            Ok(()) => sent += 1,
            Err(RpmsgError::WouldBlock) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(sent <= 1000);
    }
    assert!(sent > 0);
    let t0 = Instant::now();
    let r = h.send_deadline(he, 99, &[0; 200], t0 + Duration::from_millis(50));
    assert!(matches!(r, Err(RpmsgError::Timeout)));
}

// ------------------------------------------------------------------------ config ----

#[test]
fn config_parses() {
    let c = Config::parse(
        r#"
[[link]]
name = "l0"
window = "/dev/shm/x"
mode = "split"
role = "remote"
host_to_remote_buf = 1024
ring_size = 128
name_service = true

[[endpoint]]
link = "l0"
name = "rpmsg-echo"
addr = "dynamic"
announce = true

[[endpoint]]
link = "l0"
addr = 1030
bind = "peer-svc"
"#,
    )
    .unwrap();
    assert_eq!(c.links[0].config.mode, RingMode::Split);
    assert_eq!(c.links[0].config.role, Role::Remote);
    assert_eq!(c.links[0].config.host_to_remote_buf, 1024);
    assert_eq!(c.links[0].config.remote_to_host_buf, 512);
    assert_eq!(c.endpoints[0].addr, Addr::Dynamic);
    assert_eq!(c.endpoints[1].addr, Addr::Fixed(1030));
    assert_eq!(c.endpoints[1].bind.as_deref(), Some("peer-svc"));
}

#[test]
fn config_errors_name_the_line() {
    let base = "[[link]]\nname = \"l0\"\nwindow = \"/w\"\nmode = \"posted\"\nrole = \"host\"\n";
    let cases = [
        (
            format!("{base}[[endpoint]]\nlink = \"nope\"\naddr = 1\n"),
            7,
            "unknown link",
        ),
        (
            format!("{base}[[endpoint]]\nlink = \"l0\"\naddr = 53\n"),
            8,
            "name service",
        ),
        (
            format!("{base}[[endpoint]]\nlink = \"l0\"\naddr = \"auto\"\n"),
            8,
            "dynamic",
        ),
        (format!("{base}ring_size = 100\n"), 6, "power of two"),
        (base.replace("posted", "fast"), 4, ""),
        (format!("{base}colour = 1\n"), 6, "colour"),
        (
            format!(
                "{base}[[endpoint]]\nlink = \"l0\"\naddr = 2\nname = \"{}\"\n",
                "n".repeat(40)
            ),
            9,
            "31 bytes",
        ),
        ("[[link]\n".to_owned(), 1, ""),
    ];
    for (text, line, what) in cases {
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.line, line, "{e} in\n{text}");
        assert!(e.msg.contains(what), "{e}");
    }
}

#[test]
fn config_guests() {
    let c = Config::parse(
        r#"
[[guest]]
name = "vm0"
ram = "/dev/shm/vm0-ram"
ram_mib = 512
control = "/dev/shm/vm0-ctl"
queue_size = 64
packed = true

[[endpoint]]
link = "vm0"
name = "rpmsg-raw"
addr = 1030
announce = true
"#,
    )
    .unwrap();
    let g = &c.guests[0];
    assert_eq!(g.name, "vm0");
    assert_eq!(g.config.ram_size, 512 << 20);
    assert_eq!((g.config.queue_size, g.config.packed), (64, true));
    assert_eq!(g.config.control_size, 4096);
    assert_eq!(g.config.bus.rx_queue_depth, 64);
    assert_eq!(c.endpoints[0].link, "vm0");
    assert_eq!(g.config.transport, crate::guest::Transport::Zhvq);

    let base = "[[guest]]\nname = \"vm0\"\nram = \"r\"\nram_mib = 256\ncontrol = \"c\"\n";
    let c = Config::parse(&format!("{base}transport = \"rproc\"\n")).unwrap();
    assert_eq!(c.guests[0].config.transport, crate::guest::Transport::Rproc);
    let cases = [
        (format!("{base}transport = \"mmio\"\n"), 6, "not \"zhvq\""),
        (
            format!("{base}packed = true\ntransport = \"rproc\"\n"),
            7,
            "split rings",
        ),
        (format!("{base}queue_size = 100\n"), 6, "power of two"),
        (format!("{base}control_size = 1000\n"), 6, "control_size"),
        (base.replace("256", "0"), 4, "ram_mib 0"),
        (
            format!("{base}[[link]]\nname = \"vm0\"\nwindow = \"w\"\nmode = \"posted\"\nrole = \"host\"\n"),
            2, // links are read first: the guest is the duplicate
            "duplicate link",
        ),
        (
            format!("{base}name_service = false\n[[endpoint]]\nlink = \"vm0\"\nname = \"x\"\naddr = 2\nannounce = true\n"),
            7,
            "name_service is off",
        ),
        (format!("{base}ring_size = 8\n"), 6, "ring_size"),
    ];
    for (text, line, what) in cases {
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.line, line, "{e} in\n{text}");
        assert!(e.msg.contains(what), "{e}");
    }
}

#[test]
fn inline_payload_follows_mode_and_slot_size() {
    use crate::link::{LinkConfig, RingMode, Role};
    let mut c = LinkConfig::new("/dev/shm/unused", RingMode::Posted, Role::Host);
    // 128-byte slots: 16 bytes of slot header, 16 of rpmsg header.
    assert_eq!(c.slot_size, 128);
    assert_eq!(c.inline_payload(), 96);
    c.slot_size = 64;
    assert_eq!(c.inline_payload(), 32);
    c.mode = RingMode::Split;
    assert_eq!(c.inline_payload(), 0);
}
