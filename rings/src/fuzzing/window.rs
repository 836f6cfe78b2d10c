//! Window target: the header parser ([`Header::open`]) and the config block
//! readers ([`ControlLayout`]) against a hostile creator / peer that writes any byte
//! of the window.

use crate::control::{
    check_queue_size, ControlLayout, RawBackend, RawFrontend, RawQueue, RingMode, MAX_QUEUE_PAIRS,
};
use crate::fuzzing::decode;
use crate::header::{Area, AreaKind, Expect, Header, HeaderParams, HEADER_SIZE};
use crate::mem::{Mem, Region};
use crate::sync::Ordering;

/// The window: a header page, then the config block.
pub const WINDOW: usize = 2 * HEADER_SIZE;
/// Where the config block lives in the window.
pub const CONTROL_BASE: usize = HEADER_SIZE;

crate::fuzz_config! {
    /// One run: the mapping is `WINDOW + 64 * (extra % 4)` bytes.
    pub struct Config {
        /// Extra mapping bytes past the window (a larger PCI BAR).
        extra: u8,
    }
}

crate::fuzz_ops! {
    /// Operations on a window; `Init` and `Publish*` are a well-behaved creator.
    pub enum Op {
        /// Creator writes a fresh header with `1 + areas % 3` areas.
        Init = 0 { areas: u8, flags: u32 },
        /// Peer writes one byte.
        Poke = 1 { off: u16, val: u8 },
        /// Peer writes an aligned 8-byte word.
        PokeU64 = 2 { off: u16, val: u64 },
        /// Opener validates the header.
        Open = 3 { larger: bool, generation: u64, check_gen: bool },
        /// Backend publishes its section and queue table.
        PublishBackend = 4 { features: u64, queue_pairs: u8, mode: u8, size_log: u8 },
        /// Frontend publishes its section.
        PublishFrontend = 5 { features: u64, queue_pairs: u8, status: u32 },
        /// Reader validates the frontend section.
        ReadFrontend = 6 {},
        /// Reader validates the backend section and queue table.
        ReadOffer = 7 {},
        /// Reader loads both heartbeats and both raw sections.
        ReadRaw = 8 {},
    }
}

/// Runs one input against [`Header::open`] and the [`ControlLayout`] readers.
pub fn run(data: &[u8]) {
    let (cfg, ops) = decode::<Config, Op>(data);
    let mapping = WINDOW + 64 * usize::from(cfg.extra % 4);
    let mem = Region::heap(mapping);
    let ctl = ControlLayout::new(CONTROL_BASE, mapping).expect("block fits");
    let mut fe = RawFrontend::default();
    let mut be = RawBackend::default();
    for op in ops {
        match op {
            Op::Init { areas, flags } => {
                let all = [
                    Area::new(AreaKind::Config, CONTROL_BASE as u64, 1024),
                    Area::new(AreaKind::SplitRing, CONTROL_BASE as u64 + 1024, 1024),
                    Area::new(AreaKind::Buffers, CONTROL_BASE as u64 + 2048, 2048),
                ];
                let params = HeaderParams {
                    window_size: Some(WINDOW as u64),
                    creator_pid: 1,
                    flags,
                    areas: all[..1 + usize::from(areas % 3)].to_vec(),
                };
                Header::init(&mem, &params).expect("valid params");
            }
            Op::Poke { off, val } => {
                let off = usize::from(off) % mapping;
                mem.write_bytes(off, &[val]).expect("in window");
            }
            Op::PokeU64 { off, val } => {
                let off = (usize::from(off) % mapping) & !7;
                mem.store_u64(off, val, Ordering::Relaxed)
                    .expect("in window");
            }
            Op::Open {
                larger,
                generation,
                check_gen,
            } => {
                let expect = Expect {
                    allow_larger_mapping: larger,
                    generation: check_gen.then_some(generation),
                };
                if let Ok(info) = Header::open(&mem, &expect) {
                    check_header(&info, mapping as u64, larger);
                    crate::fuzzing::progress();
                }
            }
            Op::PublishBackend {
                features,
                queue_pairs,
                mode,
                size_log,
            } => {
                be.generation = be.generation.wrapping_add(1).max(1);
                be.status = crate::control::status::FEATURES_OK;
                be.features = features;
                be.queue_pairs = u32::from(queue_pairs % 4);
                be.device_type = 1;
                be.ring_mode = u32::from(mode % 4);
                let mut table = [RawQueue::default(); MAX_QUEUE_PAIRS];
                for q in table.iter_mut().take(be.queue_pairs as usize) {
                    q.tx_size = 1 << (size_log % 16);
                    q.rx_size = 1 << (size_log % 16);
                }
                let _ = ctl.publish_backend(&mem, &mut be, Some(&table));
            }
            Op::PublishFrontend {
                features,
                queue_pairs,
                status,
            } => {
                fe.generation = fe.generation.wrapping_add(1).max(1);
                fe.status = status;
                fe.features = features;
                fe.queue_pairs = u32::from(queue_pairs % 4);
                let _ = ctl.publish_frontend(&mem, &mut fe);
            }
            Op::ReadFrontend {} => {
                if let Ok(Some(v)) = ctl.read_frontend(&mem) {
                    assert!(v.queue_pairs as usize <= MAX_QUEUE_PAIRS);
                }
            }
            Op::ReadOffer {} => {
                if let Ok(Some(o)) = ctl.read_offer(&mem) {
                    assert!(o.queues().len() <= MAX_QUEUE_PAIRS);
                    crate::fuzzing::progress();
                    let mode = o.backend.ring_mode;
                    for (i, q) in o.queues().iter().enumerate() {
                        check_queue_size(i as u32, q.tx_size, mode).expect("validated size");
                        check_queue_size(i as u32, q.rx_size, mode).expect("validated size");
                        if mode == RingMode::Split {
                            assert!(q.tx_size.is_power_of_two() && q.rx_size.is_power_of_two());
                        }
                    }
                }
            }
            Op::ReadRaw {} => {
                let _ = ctl.load_frontend_heartbeat(&mem);
                let _ = ctl.load_backend_heartbeat(&mem);
                let _ = ctl.read_frontend_raw(&mem);
                let _ = ctl.read_backend(&mem);
                let _ = ctl.own_frontend(&mem);
                let _ = ctl.own_backend(&mem);
            }
        }
    }
}

/// A header that opened describes areas inside the window, after the header.
fn check_header(info: &crate::header::HeaderInfo, mapping: u64, larger: bool) {
    assert!(
        info.window_size <= mapping,
        "window larger than the mapping"
    );
    if !larger {
        assert_eq!(info.window_size, mapping);
    }
    let hs = u64::from(info.header_size);
    assert!(hs >= HEADER_SIZE as u64 && hs <= info.window_size);
    assert!(info.areas().len() <= crate::header::MAX_AREAS);
    for a in info.areas() {
        let end = a.offset.checked_add(a.size).expect("area end overflows");
        assert!(a.offset >= hs, "area {a:?} overlaps the header");
        assert!(end <= info.window_size, "area {a:?} outside the window");
        assert!(a.size > 0);
    }
}
