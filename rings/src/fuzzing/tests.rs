//! Stable replay of the fuzz targets: the seed scenarios, every checked-in corpus
//! file, and random operation sequences (proptest) through the same interpreters.

use std::path::PathBuf;

use proptest::prelude::*;

use super::*;

/// Corpus directory of `target`.
fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn target(name: &str) -> fn(&[u8]) {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .expect("known target")
}

/// Seed inputs: the scenarios of the unit tests (round trips, wrap-around,
/// indirect tables, IN_ORDER batches, event suppression, typical hostile writes),
/// written as operation sequences. `(target, name, bytes)`.
pub(super) fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut v = Vec::new();
    split_device_seeds(&mut v);
    split_driver_seeds(&mut v);
    packed_device_seeds(&mut v);
    packed_driver_seeds(&mut v);
    posted_rx_seeds(&mut v);
    posted_tx_seeds(&mut v);
    window_seeds(&mut v);
    v
}

type Seeds = Vec<(&'static str, &'static str, Vec<u8>)>;

fn split_device_seeds(v: &mut Seeds) {
    use split::{Config, DeviceOp as O};
    let t = "split_device";
    let cfg = |q: u8, f: u8| Config {
        qsize_log: q,
        features: f,
        bufs: 8,
    };
    let d = |i, addr, len, flags, next| O::PeerDesc {
        i,
        addr,
        len,
        flags,
        next,
    };
    let round = vec![
        d(0, 0, 64, 1, 1),
        d(1, 64, 128, 2, 0),
        O::PeerPushAvail { head: 0 },
        O::Pop {},
        O::PushUsed { k: 0, len: 100 },
        O::PublishUsed {},
        O::NeedsNotify {},
        O::Pop {},
    ];
    v.push((t, "round_trip", encode(&cfg(3, 0), &round)));
    let mut wrap = Vec::new();
    for _ in 0..40 {
        wrap.extend([
            d(1, 128, 32, 2, 0),
            O::PeerPushAvail { head: 1 },
            O::Pop {},
            O::PushUsed { k: 0, len: 32 },
            O::PublishUsed {},
        ]);
    }
    v.push((t, "wrap_around", encode(&cfg(1, 0), &wrap)));
    let ind = vec![
        O::PeerTableDesc {
            off: 1024,
            addr: 0,
            len: 64,
            flags: 1,
            next: 1,
        },
        O::PeerTableDesc {
            off: 1040,
            addr: 64,
            len: 64,
            flags: 2,
            next: 0,
        },
        d(2, 1024, 32, 4, 0),
        O::PeerPushAvail { head: 2 },
        O::Pop {},
        O::PushUsed { k: 0, len: 64 },
        O::PublishUsed {},
    ];
    v.push((t, "indirect", encode(&cfg(2, 1), &ind)));
    let lp = vec![
        d(0, 0, 16, 1, 0),
        O::PeerPushAvail { head: 0 },
        O::Pop {},
        O::Pop {},
        O::Reset {},
        d(0, 0, 16, 0, 0),
        O::PeerPushAvail { head: 0 },
        O::Pop {},
    ];
    v.push((t, "loop_then_reset", encode(&cfg(2, 0), &lp)));
    let jump = vec![
        O::PeerAvailIdx { idx: 100 },
        O::Pop {},
        O::PushUsed { k: 0, len: 0 },
    ];
    v.push((t, "index_jump", encode(&cfg(2, 0), &jump)));
    let oob = vec![
        d(0, 4000, 200, 0, 0),
        O::PeerPushAvail { head: 0 },
        O::Pop {},
    ];
    v.push((t, "buffer_out_of_range", encode(&cfg(2, 0), &oob)));
    let ev = vec![
        O::SetAvailNotification { enable: true },
        O::PeerEvent {
            flags: 1,
            used_event: 0,
        },
        d(0, 0, 8, 2, 0),
        O::PeerPushAvail { head: 0 },
        O::Pop {},
        O::PushUsed { k: 0, len: 8 },
        O::PublishUsed {},
        O::NeedsNotify {},
        O::SetAvailNotification { enable: false },
    ];
    v.push((t, "event_idx", encode(&cfg(2, 2), &ev)));
    let ord = vec![
        d(0, 0, 8, 2, 0),
        d(1, 8, 8, 2, 0),
        O::PeerPushAvail { head: 0 },
        O::PeerPushAvail { head: 1 },
        O::Pop {},
        O::Pop {},
        O::PushUsedBatch { k: 1, len: 8 },
        O::PublishUsed {},
    ];
    v.push((t, "in_order_batch", encode(&cfg(2, 4), &ord)));
}

fn split_driver_seeds(v: &mut Seeds) {
    use split::{Config, DriverOp as O};
    let t = "split_driver";
    let cfg = |q: u8, f: u8| Config {
        qsize_log: q,
        features: f,
        bufs: 8,
    };
    let add = |n, w| O::Add {
        n,
        w,
        addr: 0,
        len: 64,
    };
    let round = vec![
        add(1, 1),
        O::Publish {},
        O::NeedsNotify {},
        O::PeerComplete { k: 0, len: 10 },
        O::PollUsed {},
        O::PollUsed {},
    ];
    v.push((t, "round_trip", encode(&cfg(3, 0), &round)));
    let mut wrap = Vec::new();
    for _ in 0..40 {
        wrap.extend([
            add(0, 1),
            O::Publish {},
            O::PeerComplete { k: 0, len: 64 },
            O::PollUsed {},
        ]);
    }
    v.push((t, "wrap_around", encode(&cfg(1, 0), &wrap)));
    let ind = vec![
        O::AddIndirect {
            n: 2,
            w: 1,
            addr: 0,
            len: 64,
            table: 2048,
        },
        O::Publish {},
        O::PeerComplete { k: 0, len: 64 },
        O::PollUsed {},
    ];
    v.push((t, "indirect", encode(&cfg(2, 1), &ind)));
    let bad_id = vec![
        add(0, 1),
        O::Publish {},
        O::PeerPushUsed { id: 3, len: 0 },
        O::PollUsed {},
        O::PollUsed {},
        O::Reset {},
        add(0, 1),
        O::Publish {},
        O::PeerComplete { k: 0, len: 1 },
        O::PollUsed {},
    ];
    v.push((t, "unexpected_id_then_reset", encode(&cfg(2, 0), &bad_id)));
    let big = vec![
        add(0, 1),
        O::Publish {},
        O::PeerPushUsed { id: 0, len: 1000 },
        O::PollUsed {},
    ];
    v.push((t, "used_len_too_large", encode(&cfg(2, 0), &big)));
    let jump = vec![add(0, 1), O::PeerUsedIdx { idx: 500 }, O::PollUsed {}];
    v.push((t, "index_jump", encode(&cfg(2, 0), &jump)));
    let ord = vec![
        add(0, 1),
        add(1, 0),
        add(0, 1),
        O::Publish {},
        O::PeerComplete { k: 2, len: 5 },
        O::PollUsed {},
        O::PollUsed {},
        O::PollUsed {},
        O::PollUsed {},
    ];
    v.push((t, "in_order_batch", encode(&cfg(2, 4), &ord)));
    let ev = vec![
        O::SetUsedNotification { enable: true },
        add(0, 1),
        O::Publish {},
        O::PeerEvent {
            flags: 1,
            avail_event: 0,
        },
        O::NeedsNotify {},
        O::SetUsedNotification { enable: false },
        O::PeerComplete { k: 0, len: 3 },
        O::PollUsed {},
    ];
    v.push((t, "event_idx", encode(&cfg(2, 2), &ev)));
}

fn packed_device_seeds(v: &mut Seeds) {
    use packed::{Config, DeviceOp as O};
    let t = "packed_device";
    let cfg = |q: u8, f: u8| Config {
        qsize_log: q,
        features: f,
        bufs: 8,
    };
    let push = |n, w| O::PeerPushChain {
        n,
        w,
        addr: 0,
        len: 64,
        id: 0,
        extra: 0,
    };
    let round = vec![
        push(1, 1),
        O::Pop {},
        O::PushUsed {
            k: 0,
            len: 64,
            slots: 0,
        },
        O::PublishUsed {},
        O::NeedsNotify {},
        O::Pop {},
    ];
    v.push((t, "round_trip", encode(&cfg(3, 0), &round)));
    let mut wrap = Vec::new();
    for _ in 0..20 {
        wrap.extend([
            push(1, 1),
            O::Pop {},
            O::PushUsed {
                k: 0,
                len: 1,
                slots: 0,
            },
            O::PublishUsed {},
        ]);
    }
    v.push((t, "wrap_around", encode(&cfg(2, 0), &wrap)));
    let ind = vec![
        O::PeerTableDesc {
            off: 1024,
            addr: 0,
            len: 64,
            id: 0,
            flags: 0,
        },
        O::PeerTableDesc {
            off: 1040,
            addr: 64,
            len: 64,
            id: 0,
            flags: 2,
        },
        O::PeerDesc {
            slot: 0,
            addr: 1024,
            len: 32,
            id: 1,
            flags: 4,
            sel: 1,
        },
        O::Pop {},
        O::PushUsed {
            k: 0,
            len: 64,
            slots: 0,
        },
        O::PublishUsed {},
    ];
    v.push((t, "indirect", encode(&cfg(2, 1), &ind)));
    let bad = vec![
        O::PeerDesc {
            slot: 0,
            addr: 0,
            len: 8,
            id: 0,
            flags: 1,
            sel: 1,
        },
        O::PeerDesc {
            slot: 1,
            addr: 8,
            len: 8,
            id: 0,
            flags: 0,
            sel: 2,
        },
        O::Pop {},
        O::Pop {},
        O::Reset {},
        push(0, 0),
        O::Pop {},
    ];
    v.push((t, "bad_wrap_then_reset", encode(&cfg(2, 0), &bad)));
    let oob = vec![
        O::PeerDesc {
            slot: 0,
            addr: 4090,
            len: 100,
            id: 0,
            flags: 0,
            sel: 1,
        },
        O::Pop {},
    ];
    v.push((t, "buffer_out_of_range", encode(&cfg(2, 0), &oob)));
    let ev = vec![
        O::SetAvailNotification { enable: false },
        O::SetAvailEvent { off: 1, wrap: true },
        O::PeerEvent { word: 2 << 16 | 1 },
        push(0, 1),
        O::Pop {},
        O::PushUsed {
            k: 0,
            len: 1,
            slots: 0,
        },
        O::NeedsNotify {},
    ];
    v.push((t, "event_suppression", encode(&cfg(2, 2), &ev)));
    let ord = vec![
        push(0, 1),
        push(0, 1),
        O::Pop {},
        O::Pop {},
        O::PushUsed {
            k: 1,
            len: 8,
            slots: 2,
        },
        O::PublishUsed {},
    ];
    v.push((t, "in_order_batch", encode(&cfg(2, 4), &ord)));
}

fn packed_driver_seeds(v: &mut Seeds) {
    use packed::{Config, DriverOp as O};
    let t = "packed_driver";
    let cfg = |q: u8, f: u8| Config {
        qsize_log: q,
        features: f,
        bufs: 8,
    };
    let add = |n, w| O::Add {
        n,
        w,
        addr: 0,
        len: 64,
    };
    let done = |k| O::PeerComplete {
        k,
        len: 64,
        write: true,
    };
    let round = vec![
        add(1, 1),
        O::Publish {},
        O::NeedsNotify {},
        done(0),
        O::PollUsed {},
        O::PollUsed {},
    ];
    v.push((t, "round_trip", encode(&cfg(3, 0), &round)));
    let mut wrap = Vec::new();
    for _ in 0..20 {
        wrap.extend([add(1, 1), O::Publish {}, done(0), O::PollUsed {}]);
    }
    v.push((t, "wrap_around", encode(&cfg(2, 0), &wrap)));
    let ind = vec![
        O::AddIndirect {
            n: 2,
            w: 1,
            addr: 0,
            len: 64,
            table: 2048,
        },
        O::Publish {},
        done(0),
        O::PollUsed {},
    ];
    v.push((t, "indirect", encode(&cfg(2, 1), &ind)));
    let bad = vec![
        add(0, 1),
        O::Publish {},
        O::PeerUsed {
            slot: 0,
            id: 9,
            len: 0,
            flags: 0,
            sel: 2,
        },
        O::PollUsed {},
        O::PollUsed {},
        O::Reset {},
        add(0, 1),
        O::Publish {},
        done(0),
        O::PollUsed {},
    ];
    v.push((t, "unexpected_id_then_reset", encode(&cfg(2, 0), &bad)));
    let big = vec![
        add(0, 1),
        O::Publish {},
        O::PeerUsed {
            slot: 0,
            id: 0,
            len: 5000,
            flags: 2,
            sel: 2,
        },
        O::PollUsed {},
    ];
    v.push((t, "used_len_too_large", encode(&cfg(2, 0), &big)));
    let ord = vec![
        add(0, 1),
        add(0, 1),
        add(0, 1),
        O::Publish {},
        done(2),
        O::PollUsed {},
        O::PollUsed {},
        O::PollUsed {},
    ];
    v.push((t, "in_order_batch", encode(&cfg(2, 4), &ord)));
    let ev = vec![
        O::SetUsedNotification {
            mode: 2,
            off: 1,
            wrap: true,
        },
        add(0, 1),
        O::Publish {},
        O::PeerEvent { word: 1 << 16 },
        O::NeedsNotify {},
        O::SetUsedNotification {
            mode: 1,
            off: 0,
            wrap: false,
        },
        done(0),
        O::PollUsed {},
    ];
    v.push((t, "event_suppression", encode(&cfg(2, 2), &ev)));
}

fn posted_rx_seeds(v: &mut Seeds) {
    use posted::{Config, RxOp as O};
    let t = "posted_rx";
    let cfg = |s: u8, b: u8| Config {
        slots_log: s,
        buffers: b,
        slot_size: 0,
    };
    let send = |inline, len, buf| O::PeerSend {
        inline,
        len,
        buf,
        meta: 7,
    };
    let round = vec![
        O::InitCredits {},
        send(true, 10, 0),
        send(false, 100, 0),
        O::Poll { max: 7 },
        O::Release { n: 2 },
        O::Complete {},
        O::Grant { k: 0 },
        O::Poll { max: 7 },
    ];
    v.push((t, "round_trip", encode(&cfg(2, 4), &round)));
    let mut wrap = vec![O::InitCredits {}];
    for i in 0..24u32 {
        wrap.extend([
            send(i % 2 == 0, 20, i % 2),
            O::Poll { max: 0 },
            O::Release { n: 1 },
            O::Complete {},
            O::Grant { k: 0 },
        ]);
    }
    v.push((t, "wrap_around", encode(&cfg(1, 2), &wrap)));
    let forged = vec![
        send(false, 10, 1),
        O::Poll { max: 1 },
        O::Poll { max: 1 },
        O::Reset {},
        O::InitCredits {},
        send(false, 10, 1),
        O::Poll { max: 1 },
    ];
    v.push((
        t,
        "uncredited_buffer_then_reset",
        encode(&cfg(2, 4), &forged),
    ));
    let flags = vec![
        O::PeerSlot {
            slot: 0,
            seq: 1,
            len: 4,
            buf: 0,
            flags: 6,
            meta: 0,
        },
        O::Poll { max: 1 },
    ];
    v.push((t, "unknown_flags", encode(&cfg(2, 4), &flags)));
    let long = vec![send(true, 49, 0), O::Poll { max: 1 }];
    v.push((t, "inline_too_long", encode(&cfg(2, 4), &long)));
    let twice = vec![
        O::InitCredits {},
        send(false, 10, 0),
        O::Poll { max: 0 },
        send(false, 10, 0),
        O::Poll { max: 3 },
    ];
    v.push((t, "buffer_delivered_twice", encode(&cfg(2, 4), &twice)));
    let full = vec![
        send(true, 1, 0),
        send(true, 1, 0),
        O::Poll { max: 7 },
        send(true, 1, 0),
        O::Poll { max: 7 },
        O::Release { n: 5 },
        O::Release { n: 2 },
        O::Complete {},
        O::Poll { max: 7 },
        O::PeerSetPos { pos: u32::MAX },
        send(true, 1, 0),
        O::Poll { max: 7 },
    ];
    v.push((t, "ring_full_and_lap_wrap", encode(&cfg(1, 0), &full)));
}

fn posted_tx_seeds(v: &mut Seeds) {
    use posted::{Config, TxOp as O};
    let t = "posted_tx";
    let cfg = |s: u8, b: u8| Config {
        slots_log: s,
        buffers: b,
        slot_size: 0,
    };
    let round = vec![
        O::PeerGrant { index: 0 },
        O::PeerGrant { index: 1 },
        O::PollCredits {},
        O::Alloc {},
        O::Enqueue {
            k: 0,
            len: 100,
            meta: 1,
        },
        O::EnqueueInline {
            payload: Bytes(vec![1; 10]),
            meta: 2,
        },
        O::Send {
            payload: Bytes(vec![2; 100]),
            meta: 3,
        },
        O::Publish {},
        O::PeerConsume { n: 3 },
        O::Alloc {},
        O::Cancel { k: 0 },
    ];
    v.push((t, "round_trip", encode(&cfg(2, 4), &round)));
    let mut wrap = Vec::new();
    for i in 0..24u32 {
        wrap.extend([
            O::PeerGrant { index: i % 2 },
            O::PollCredits {},
            O::Send {
                payload: Bytes(vec![3; 70]),
                meta: 0,
            },
            O::Publish {},
            O::PeerConsume { n: 1 },
        ]);
    }
    v.push((t, "wrap_around", encode(&cfg(1, 2), &wrap)));
    let bad = vec![
        O::PeerGrant { index: 5 },
        O::PollCredits {},
        O::PollCredits {},
        O::Reset {},
        O::PeerGrant { index: 0 },
        O::PollCredits {},
        O::Alloc {},
    ];
    v.push((t, "bad_credit_then_reset", encode(&cfg(2, 4), &bad)));
    let dup = vec![
        O::PeerGrant { index: 1 },
        O::PeerGrant { index: 1 },
        O::PollCredits {},
    ];
    v.push((t, "duplicate_credit", encode(&cfg(2, 4), &dup)));
    let jump = vec![
        O::EnqueueInline {
            payload: Bytes(vec![1]),
            meta: 0,
        },
        O::EnqueueInline {
            payload: Bytes(vec![1]),
            meta: 0,
        },
        O::Publish {},
        O::PeerConsumed { val: 77 },
        O::EnqueueInline {
            payload: Bytes(vec![1]),
            meta: 0,
        },
    ];
    v.push((t, "consumed_jump", encode(&cfg(1, 0), &jump)));
    let raw = vec![
        O::PeerCredit {
            i: 0,
            raw: (1 << 32) | 3,
        },
        O::PollCredits {},
        O::Alloc {},
        O::Enqueue {
            k: 0,
            len: 5000,
            meta: 0,
        },
    ];
    v.push((t, "raw_credit_oversized_enqueue", encode(&cfg(2, 4), &raw)));
}

fn window_seeds(v: &mut Seeds) {
    use window::{Config, Op as O};
    let t = "window";
    let open = O::Open {
        larger: false,
        generation: 1,
        check_gen: false,
    };
    v.push((
        t,
        "init_open",
        encode(
            &Config { extra: 0 },
            &[O::Init { areas: 2, flags: 0 }, open.clone()],
        ),
    ));
    v.push((
        t,
        "larger_mapping",
        encode(
            &Config { extra: 2 },
            &[
                O::Init { areas: 1, flags: 5 },
                O::Open {
                    larger: true,
                    generation: 1,
                    check_gen: true,
                },
                open.clone(),
            ],
        ),
    ));
    v.push((
        t,
        "bad_magic",
        encode(
            &Config { extra: 0 },
            &[
                O::Init { areas: 0, flags: 0 },
                O::Poke { off: 0, val: b'X' },
                open.clone(),
            ],
        ),
    ));
    // Area 0's offset (64 + 8) and size (64 + 16) rewritten.
    v.push((
        t,
        "area_rewritten",
        encode(
            &Config { extra: 0 },
            &[
                O::Init { areas: 2, flags: 0 },
                open.clone(),
                O::PokeU64 { off: 72, val: 16 },
                open.clone(),
                O::Init { areas: 2, flags: 0 },
                O::PokeU64 {
                    off: 80,
                    val: u64::MAX,
                },
                open.clone(),
            ],
        ),
    ));
    v.push((
        t,
        "window_size_rewritten",
        encode(
            &Config { extra: 0 },
            &[
                O::Init { areas: 2, flags: 0 },
                O::PokeU64 {
                    off: 16,
                    val: 1 << 40,
                },
                open,
            ],
        ),
    ));
    v.push((
        t,
        "control_block",
        encode(
            &Config { extra: 0 },
            &[
                O::PublishBackend {
                    features: 1 << 32,
                    queue_pairs: 2,
                    mode: 1,
                    size_log: 8,
                },
                O::ReadOffer {},
                O::PublishFrontend {
                    features: 1 << 32,
                    queue_pairs: 1,
                    status: 7,
                },
                O::ReadFrontend {},
                O::ReadRaw {},
                O::PokeU64 {
                    off: 4096 + 128 + 40,
                    val: 99,
                },
                O::ReadOffer {},
            ],
        ),
    ));
}

#[test]
fn seeds_run_clean() {
    for (t, name, bytes) in seeds() {
        let before = progress_count();
        target(t)(&bytes);
        // Every scenario gets at least one thing through before (or instead of)
        // its hostile step, except the ones that are hostile from the first op.
        let hostile_only = matches!(
            name,
            "index_jump"
                | "buffer_out_of_range"
                | "unknown_flags"
                | "inline_too_long"
                | "bad_magic"
                | "window_size_rewritten"
                | "consumed_jump"
                | "duplicate_credit"
                | "used_len_too_large"
        );
        if !hostile_only {
            assert!(
                progress_count() > before,
                "{t}/{name}: the scenario consumed nothing"
            );
        }
    }
}

#[test]
fn seeds_round_trip_through_the_encoding() {
    // Decoding a seed and encoding it again gives the same bytes (the encoding is
    // the inverse of the decoding for every seed).
    fn rt<C: Field, O: Ops>(bytes: &[u8]) {
        let (c, ops) = decode::<C, O>(bytes);
        assert_eq!(encode(&c, &ops), bytes);
    }
    for (t, _, b) in seeds() {
        match t {
            "split_device" => rt::<split::Config, split::DeviceOp>(&b),
            "split_driver" => rt::<split::Config, split::DriverOp>(&b),
            "packed_device" => rt::<packed::Config, packed::DeviceOp>(&b),
            "packed_driver" => rt::<packed::Config, packed::DriverOp>(&b),
            "posted_rx" => rt::<posted::Config, posted::RxOp>(&b),
            "posted_tx" => rt::<posted::Config, posted::TxOp>(&b),
            "window" => rt::<window::Config, window::Op>(&b),
            other => panic!("no round trip for {other}"),
        }
    }
}

/// Replays every checked-in corpus file (seeds and what the fuzz runs kept).
#[test]
fn corpus_replays_clean() {
    let mut files = 0;
    for (name, run) in TARGETS {
        let Ok(dir) = std::fs::read_dir(corpus_dir(name)) else {
            continue;
        };
        for e in dir {
            let path = e.expect("readable dir").path();
            let bytes = std::fs::read(&path).expect("readable corpus file");
            run(&bytes);
            files += 1;
        }
    }
    eprintln!("replayed {files} corpus files");
}

/// Writes the seeds into `rings/fuzz/corpus/<target>/seed-<name>`:
/// `cargo test -p rings --lib fuzzing::tests::write_seed_corpus -- --ignored`.
#[test]
#[ignore = "writes files; run by hand to refresh the seed corpus"]
fn write_seed_corpus() {
    for (t, name, bytes) in seeds() {
        let dir = corpus_dir(t);
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random bytes are random operation sequences for every target.
    #[test]
    fn random_op_sequences(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        for (_, run) in TARGETS {
            run(&data);
        }
    }

    /// Seeds with random bytes spliced in (what a mutating fuzzer does first).
    #[test]
    fn mutated_seeds(pick in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(),
                     junk in proptest::collection::vec(any::<u8>(), 1..24)) {
        let s = seeds();
        let (t, _, mut bytes) = s[pick.index(s.len())].clone();
        let i = at.index(bytes.len() + 1);
        bytes.splice(i..i, junk);
        target(t)(&bytes);
    }
}
