//! Operation-sequence interpreter for fuzzing the RPMsg parsers and the bus's
//! receive path (`rings/fuzz`, target `rpmsg`), and its stable replay.
//!
//! A victim bus and a hostile peer bus share one heap window (posted, split or
//! packed queue pair). The peer sends raw bytes, malformed headers and malformed
//! name-service messages through its (valid) queue pair; the victim polls, receives,
//! releases, creates and destroys endpoints. The wire parsers are also fed raw bytes
//! directly. Invariants checked after every operation:
//!
//! - no panic; the transport under hostile *contents* never breaks;
//! - every received payload lies inside the buffer (`len <= max_payload`) and its
//!   header `len` matches what was delivered;
//! - a parsed header fits the bytes it came from; a parsed name-service message has
//!   a NUL-terminated, non-empty UTF-8 name and a known action.
//!
//! Encoding and replay as in `rings::fuzzing` (seed scenarios in the tests below,
//! written to `rings/fuzz/corpus/rpmsg`). Only compiled for tests and with the
//! `fuzzing` feature; not a stable API.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pmd::copy::CopyEngine;
use pmd::queue::{Packed, PostedLinkLayout, QueuePair, Side, Split, VirtioLinkLayout};
use pmd::window::HeapWindow;
use rings::fuzzing::{decode, Bytes};
use rings::posted::PostedLayout;

use crate::bus::{Addr, BusConfig, EndpointId, Rpmsg, RxBuf};
use crate::link::LinkQueue;
use crate::wire::{NsMsg, RpmsgHdr, HDR_SIZE, NAME_SIZE, NS_ADDR};

rings::fuzz_config! {
    /// One run.
    pub struct Config {
        /// Ring mode `mode % 3`: posted, split, packed.
        mode: u8,
        /// Bit 0: name service off. Bits 1..3: endpoint queue depth `1 + x`.
        knobs: u8,
    }
}

rings::fuzz_ops! {
    /// Operations; the `Peer*` ones are the hostile peer.
    pub enum Op {
        /// Peer sends `bytes` as one message, unframed.
        PeerRaw = 0 { bytes: Bytes },
        /// Peer sends a header to our `dst`-th endpoint (or raw `dst` if none), with
        /// `len` = payload length + `delta` (wrapping), then the payload.
        PeerMsg = 1 { src: u32, dst: u32, delta: u16, flags: u16, payload: Bytes },
        /// Peer sends a name-service message (`size` bytes of it, 40 when 0).
        PeerNs = 2 { name: Bytes, addr: u32, flags: u32, size: u8 },
        /// Peer sends a well-formed message from its endpoint to our `k`-th endpoint.
        PeerSend = 3 { k: u8, payload: Bytes },
        /// Peer polls (takes back its buffers, receives ours).
        PeerPoll = 4 {},
        /// Victim polls.
        Poll = 5 {},
        /// Victim receives on its `k`-th endpoint.
        Recv = 6 { k: u8 },
        /// Victim releases its `k`-th held message.
        Release = 7 { k: u8 },
        /// Victim creates an endpoint (fixed address `addr`, or dynamic).
        CreateEp = 8 { fixed: bool, addr: u32, name: Bytes },
        /// Victim destroys its `k`-th endpoint.
        DestroyEp = 9 { k: u8 },
        /// Victim announces / withdraws its `k`-th endpoint.
        Announce = 10 { k: u8, withdraw: bool },
        /// Victim sends from its `k`-th endpoint without blocking.
        TrySend = 11 { k: u8, dst: u32, payload: Bytes },
        /// Victim looks a service name up.
        Lookup = 12 { name: Bytes },
        /// Victim installs a checking callback on its `k`-th endpoint.
        Callback = 13 { k: u8 },
        /// `RpmsgHdr::parse` on raw bytes with buffer size `max`.
        ParseHdr = 14 { bytes: Bytes, max: u16 },
        /// `NsMsg::parse` on raw bytes.
        ParseNs = 15 { bytes: Bytes },
    }
}

/// Victim and peer buses over one heap window (kept alive alongside).
fn pair(mode: u8, cfg: BusConfig) -> (Rpmsg<LinkQueue>, Rpmsg<LinkQueue>, HeapWindow) {
    let copy = CopyEngine::detect();
    match mode % 3 {
        0 => {
            let pl = PostedLayout::new(16, 128, 16, 512).expect("valid posted layout");
            let l = PostedLinkLayout::new(pl, 1).expect("valid link layout");
            let w = HeapWindow::new(l.window_size()).expect("heap window");
            l.create(&w).expect("create");
            let a = l.open_side_with(&w, Side::A, 0, 0, copy).expect("side A");
            let b = l.open_side_with(&w, Side::B, 0, 0, copy).expect("side B");
            (
                Rpmsg::new(LinkQueue::Posted(b), cfg.clone()).expect("bus"),
                Rpmsg::new(LinkQueue::Posted(a), cfg).expect("bus"),
                w,
            )
        }
        m => {
            let rm = if m == 1 {
                pmd::queue::RingMode::Split
            } else {
                pmd::queue::RingMode::Packed
            };
            let l = VirtioLinkLayout::new(rm, 16, 576, 1).expect("valid link layout");
            let w = HeapWindow::new(l.window_size()).expect("heap window");
            l.create(&w).expect("create");
            let (host, remote) = if m == 1 {
                (
                    LinkQueue::SplitHost(
                        l.open_frontend_with::<Split, _>(&w, 0, 0, copy)
                            .expect("fe"),
                    ),
                    LinkQueue::SplitRemote(
                        l.open_backend_with::<Split, _>(&w, 0, 0, copy).expect("be"),
                    ),
                )
            } else {
                (
                    LinkQueue::PackedHost(
                        l.open_frontend_with::<Packed, _>(&w, 0, 0, copy)
                            .expect("fe"),
                    ),
                    LinkQueue::PackedRemote(
                        l.open_backend_with::<Packed, _>(&w, 0, 0, copy)
                            .expect("be"),
                    ),
                )
            };
            (
                Rpmsg::new(remote, cfg.clone()).expect("bus"),
                Rpmsg::new(host, cfg).expect("bus"),
                w,
            )
        }
    }
}

fn name_of(b: &Bytes) -> String {
    String::from_utf8_lossy(&b.0[..b.0.len().min(NAME_SIZE + 2)]).into_owned()
}

fn nth<T: Copy>(v: &[T], k: u8) -> Option<T> {
    (!v.is_empty()).then(|| v[usize::from(k) % v.len()])
}

/// Runs one input against the RPMsg parsers and bus.
pub fn run(data: &[u8]) {
    run_counting(data);
}

/// [`run`], returning how many messages the victim received.
fn run_counting(data: &[u8]) -> usize {
    let mut received = 0;
    let (cfg, ops) = decode::<Config, Op>(data);
    let bus_cfg = BusConfig {
        features: if cfg.knobs & 1 != 0 { 0 } else { 1 },
        rx_queue_depth: 1 + usize::from((cfg.knobs >> 1) & 7),
        max_endpoints: 8,
        max_services: 8,
        // announce / withdraw never wait for a buffer (a run must stay short).
        send_timeout: std::time::Duration::ZERO,
        ..BusConfig::default()
    };
    let max_payload_bytes = bus_cfg.rx_buf_size - HDR_SIZE;
    let (mut v, mut p, _w) = pair(cfg.mode, bus_cfg);
    let peer_ep = p
        .create_endpoint(None, Addr::Fixed(9))
        .expect("peer endpoint");
    let mut eps: Vec<EndpointId> = Vec::new();
    let mut held: Vec<RxBuf> = Vec::new();
    let cb_bad = Arc::new(AtomicUsize::new(0));
    for op in ops {
        match op {
            Op::PeerRaw { bytes } => {
                let _ = p.queue_mut().tx_burst(&[&bytes.0], 0);
            }
            Op::PeerMsg {
                src,
                dst,
                delta,
                flags,
                payload,
            } => {
                let dst = match nth(&eps, dst as u8).and_then(|e| v.addr(e).ok()) {
                    Some(a) if dst & 0x100 == 0 => a,
                    _ => dst,
                };
                let len = (payload.0.len() as u16).wrapping_add(delta);
                let mut h = RpmsgHdr::new(src, dst, len);
                h.flags = flags;
                let mut b = h.to_bytes().to_vec();
                b.extend_from_slice(&payload.0);
                let _ = p.queue_mut().tx_burst(&[&b], 0);
            }
            Op::PeerNs {
                name,
                addr,
                flags,
                size,
            } => {
                let mut m = [0u8; 40];
                let n = name.0.len().min(NAME_SIZE);
                m[..n].copy_from_slice(&name.0[..n]);
                m[32..36].copy_from_slice(&addr.to_le_bytes());
                m[36..40].copy_from_slice(&flags.to_le_bytes());
                let size = if size == 0 {
                    40
                } else {
                    usize::from(size) % 48
                };
                let mut body = m.to_vec();
                body.resize(size, 0);
                let mut b = RpmsgHdr::new(9, NS_ADDR, size as u16).to_bytes().to_vec();
                b.extend_from_slice(&body);
                let _ = p.queue_mut().tx_burst(&[&b], 0);
            }
            Op::PeerSend { k, payload } => {
                let dst = nth(&eps, k).and_then(|e| v.addr(e).ok()).unwrap_or(1024);
                let _ = p.try_send(peer_ep, dst, &payload.0);
            }
            Op::PeerPoll {} => {
                let _ = p.poll();
            }
            Op::Poll {} => {
                let _ = v.poll();
            }
            Op::Recv { k } => {
                if let Some(e) = nth(&eps, k) {
                    if let Ok(Some(m)) = v.recv(e) {
                        let data = v.payload(&m);
                        assert_eq!(data.len(), m.len(), "payload length");
                        assert!(m.len() <= max_payload_bytes, "payload over the buffer");
                        assert_eq!(
                            Some(m.dst()),
                            v.addr(e).ok(),
                            "delivered to the wrong endpoint"
                        );
                        held.push(m);
                        received += 1;
                    }
                }
            }
            Op::Release { k } => {
                if !held.is_empty() {
                    let m = held.remove(usize::from(k) % held.len());
                    let _ = v.release(m);
                }
            }
            Op::CreateEp { fixed, addr, name } => {
                let a = if fixed {
                    Addr::Fixed(addr % 2048)
                } else {
                    Addr::Dynamic
                };
                let name = (!name.0.is_empty()).then(|| name_of(&name));
                if let Ok(e) = v.create_endpoint(name.as_deref(), a) {
                    eps.push(e);
                }
            }
            Op::DestroyEp { k } => {
                if !eps.is_empty() {
                    let e = eps.remove(usize::from(k) % eps.len());
                    // Messages held for it stay valid handles until released.
                    let _ = v.destroy_endpoint(e);
                }
            }
            Op::Announce { k, withdraw } => {
                if let Some(e) = nth(&eps, k) {
                    let _ = if withdraw {
                        v.withdraw(e)
                    } else {
                        v.announce(e)
                    };
                }
            }
            Op::TrySend { k, dst, payload } => {
                if let Some(e) = nth(&eps, k) {
                    let _ = v.try_send(e, dst, &payload.0);
                }
            }
            Op::Lookup { name } => {
                let _ = v.lookup(&name_of(&name));
            }
            Op::Callback { k } => {
                if let Some(e) = nth(&eps, k) {
                    let bad = cb_bad.clone();
                    let _ = v.set_callback(e, move |m| {
                        if m.data.len() > max_payload_bytes {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            }
            Op::ParseHdr { bytes, max } => {
                if let Ok(h) = RpmsgHdr::parse(&bytes.0, usize::from(max)) {
                    let need = HDR_SIZE + usize::from(h.len);
                    assert!(need <= bytes.0.len() && need <= usize::from(max));
                    assert_eq!(h.to_bytes()[..], bytes.0[..HDR_SIZE]);
                }
            }
            Op::ParseNs { bytes } => {
                if let Ok(m) = NsMsg::parse(&bytes.0) {
                    let name = m.name_str().expect("parsed name");
                    assert!(!name.is_empty() && name.len() < NAME_SIZE);
                    assert!(!name.contains('\0'));
                    assert!(m.action().is_ok());
                }
            }
        }
        assert!(
            !v.queue().is_broken(),
            "hostile contents broke the victim's queue"
        );
        assert!(!p.queue().is_broken(), "the peer's queue broke");
        assert_eq!(
            cb_bad.load(Ordering::Relaxed),
            0,
            "callback saw an oversized payload"
        );
    }
    for m in held {
        let _ = v.release(m);
    }
    received
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use proptest::prelude::*;
    use rings::fuzzing::{encode, Bytes};

    use super::*;

    fn corpus_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rings/fuzz/corpus/rpmsg")
    }

    /// The scenarios of the bus unit tests (echo, name service, hostile messages,
    /// flooded endpoint) as operation sequences, per ring mode.
    fn seeds() -> Vec<(String, Vec<u8>)> {
        let b = |s: &[u8]| Bytes(s.to_vec());
        let mut v = Vec::new();
        for mode in 0..3u8 {
            let cfg = Config { mode, knobs: 0 };
            let echo = vec![
                Op::CreateEp {
                    fixed: true,
                    addr: 1500,
                    name: b(b"rpmsg-echo"),
                },
                Op::Announce {
                    k: 0,
                    withdraw: false,
                },
                Op::PeerPoll {},
                Op::PeerSend {
                    k: 0,
                    payload: b(b"hello"),
                },
                Op::Recv { k: 0 },
                Op::TrySend {
                    k: 0,
                    dst: 9,
                    payload: b(b"hello"),
                },
                Op::Release { k: 0 },
                Op::PeerPoll {},
                Op::Announce {
                    k: 0,
                    withdraw: true,
                },
                Op::PeerPoll {},
            ];
            v.push((format!("seed-echo-{mode}"), encode(&cfg, &echo)));
            let mut hostile = vec![
                Op::CreateEp {
                    fixed: true,
                    addr: 1500,
                    name: b(b""),
                },
                Op::PeerMsg {
                    src: 9,
                    dst: 0,
                    delta: 280,
                    flags: 0,
                    payload: b(&[1; 20]),
                },
                Op::PeerRaw {
                    bytes: b(&[1, 2, 3]),
                },
                Op::PeerMsg {
                    src: 9,
                    dst: 4242 | 0x100,
                    delta: 0,
                    flags: 0,
                    payload: b(b""),
                },
                Op::PeerNs {
                    name: b(&[b'z'; 32]),
                    addr: 9,
                    flags: 0,
                    size: 0,
                },
                Op::PeerNs {
                    name: b(b"ghost"),
                    addr: 9,
                    flags: 1,
                    size: 0,
                },
                Op::PeerNs {
                    name: b(b"x"),
                    addr: 9,
                    flags: 0,
                    size: 3,
                },
                Op::PeerNs {
                    name: b(b"svc"),
                    addr: 77,
                    flags: 0,
                    size: 0,
                },
                Op::Poll {},
                Op::Lookup { name: b(b"svc") },
                Op::PeerSend {
                    k: 0,
                    payload: b(b"ok"),
                },
                Op::Recv { k: 0 },
                Op::Release { k: 0 },
            ];
            v.push((format!("seed-hostile-{mode}"), encode(&cfg, &hostile)));
            hostile.clear();
            let flood_cfg = Config {
                mode,
                knobs: 1 << 1,
            };
            let mut flood = vec![
                Op::CreateEp {
                    fixed: false,
                    addr: 0,
                    name: b(b""),
                },
                Op::CreateEp {
                    fixed: false,
                    addr: 0,
                    name: b(b""),
                },
                Op::Callback { k: 1 },
            ];
            for i in 0..6u8 {
                flood.push(Op::PeerSend {
                    k: i % 2,
                    payload: b(&[i; 100]),
                });
                flood.push(Op::PeerPoll {});
            }
            flood.extend([
                Op::Poll {},
                Op::Recv { k: 0 },
                Op::Recv { k: 0 },
                Op::DestroyEp { k: 0 },
            ]);
            v.push((format!("seed-flood-{mode}"), encode(&flood_cfg, &flood)));
        }
        let parse = vec![
            Op::ParseHdr {
                bytes: b(&RpmsgHdr::new(1, 2, 3).to_bytes()),
                max: 512,
            },
            Op::ParseNs {
                bytes: b(&NsMsg::new("a", 5, crate::wire::NsAction::Create)
                    .expect("valid")
                    .to_bytes()),
            },
        ];
        v.push(("seed-parsers".into(), encode(&Config::default(), &parse)));
        v
    }

    #[test]
    fn seeds_run_clean() {
        for (name, bytes) in seeds() {
            let got = run_counting(&bytes);
            if !name.starts_with("seed-parsers") {
                assert!(got >= 1, "{name}: the scenario received nothing");
            }
        }
    }

    /// Replays every checked-in corpus file of the `rpmsg` target.
    #[test]
    fn corpus_replays_clean() {
        let Ok(dir) = std::fs::read_dir(corpus_dir()) else {
            return;
        };
        for e in dir {
            let bytes = std::fs::read(e.expect("readable dir").path()).expect("readable");
            run(&bytes);
        }
    }

    /// `cargo test -p rpmsg-fast --lib fuzzing::tests::write_seed_corpus -- --ignored`
    #[test]
    #[ignore = "writes files; run by hand to refresh the seed corpus"]
    fn write_seed_corpus() {
        std::fs::create_dir_all(corpus_dir()).expect("create corpus dir");
        for (name, bytes) in seeds() {
            std::fs::write(corpus_dir().join(name), bytes).expect("write seed");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn random_op_sequences(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            run(&data);
        }
    }
}
