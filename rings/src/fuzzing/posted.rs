//! Posted ring targets: the receiving half against a hostile sender writing slots
//! and lap tags ([`run_rx`]), and the sending half against a hostile receiver writing
//! credits and `consumed` ([`run_tx`]).

use crate::fuzzing::{check_broken, decode, snapshot, Bytes};
use crate::mem::{Mem, Region};
use crate::posted::{
    credit_entry, PostedLayout, PostedRx, PostedTx, RxKind, RxMsg, TxBuf, FLAG_INLINE,
};
use crate::sync::Ordering;

crate::fuzz_config! {
    /// Geometry of one run.
    pub struct Config {
        /// Slots `1 << (slots_log % 4)`.
        slots_log: u8,
        /// Buffers `buffers % (slots + 1)`.
        buffers: u8,
        /// Slot size `64 << (slot_size % 2)`.
        slot_size: u8,
    }
}

impl Config {
    fn layout(&self) -> PostedLayout {
        let slots = 1u32 << (self.slots_log % 4);
        let buffers = u32::from(self.buffers) % (slots + 1);
        let slot_size = 64u32 << (self.slot_size % 2);
        PostedLayout::new(slots, slot_size, buffers, 128).expect("valid geometry")
    }
}

crate::fuzz_ops! {
    /// Operations on a receiving half; the `Peer*` ones are the hostile sender.
    pub enum RxOp {
        /// Sender writes the header of slot `slot % slots` as given.
        PeerSlot = 0 { slot: u32, seq: u32, len: u32, buf: u32, flags: u16, meta: u16 },
        /// Sender publishes its next position: inline (`len` bytes) or naming buffer
        /// `buf` (raw index), with a correct lap tag.
        PeerSend = 1 { inline: bool, len: u32, buf: u32, meta: u16 },
        /// Sender writes one byte anywhere in the rx area.
        PeerPoke = 2 { off: u32, val: u8 },
        /// Sender moves its own position.
        PeerSetPos = 3 { pos: u32 },
        /// Receiver polls up to `1 + max % 8` messages.
        Poll = 4 { max: u8 },
        /// Receiver releases `n` slots.
        Release = 5 { n: u8 },
        /// Receiver tells the sender how far it released.
        Complete = 6 {},
        /// Receiver grants back the `k`-th buffer it holds (or raw index `k`).
        Grant = 7 { k: u32 },
        /// Receiver grants every buffer not credited yet.
        InitCredits = 8 {},
        /// Both sides reset.
        Reset = 9 {},
    }
}

/// Runs one input against [`PostedRx`].
pub fn run_rx(data: &[u8]) {
    let (cfg, ops) = decode::<Config, RxOp>(data);
    let layout = cfg.layout();
    let local = Region::heap(layout.rx_area_size());
    let remote = Region::heap(layout.tx_area_size());
    let mut rx = PostedRx::new(local.clone(), remote.clone(), layout).expect("fits");
    let mut out = [RxMsg::default(); 8];
    let mut held: Vec<u32> = Vec::new();
    let mut peer_pos = 0u32;
    let slots = layout.slots();
    for op in ops {
        let before = snapshot(&local, 0, local.len());
        let was_broken = rx.is_broken();
        let mut rx_op = true;
        match op {
            RxOp::PeerSlot {
                slot,
                seq,
                len,
                buf,
                flags,
                meta,
            } => {
                rx_op = false;
                write_slot(&local, &layout, slot % slots, seq, len, buf, flags, meta);
            }
            RxOp::PeerSend {
                inline,
                len,
                buf,
                meta,
            } => {
                rx_op = false;
                let (len, flags) = if inline {
                    (len % (layout.inline_capacity() + 2), FLAG_INLINE)
                } else {
                    (len % (layout.buf_size() + 2), 0)
                };
                let buf = buf % (layout.buffers() + 2);
                let seq = peer_pos.wrapping_add(1);
                write_slot(
                    &local,
                    &layout,
                    peer_pos % slots,
                    seq,
                    len,
                    buf,
                    flags,
                    meta,
                );
                peer_pos = seq;
            }
            RxOp::PeerPoke { off, val } => {
                rx_op = false;
                let off = off as usize % local.len();
                local.write_bytes(off, &[val]).expect("in area");
            }
            RxOp::PeerSetPos { pos } => {
                rx_op = false;
                peer_pos = pos;
            }
            RxOp::Poll { max } => {
                let max = 1 + usize::from(max % 8);
                let r = rx.poll(&mut out[..max]);
                check_broken(was_broken, &r, rx.is_broken());
                if let Ok(got) = r {
                    assert!(got <= max);
                    for m in &out[..got] {
                        crate::fuzzing::progress();
                        check_msg(m, &layout);
                        if let RxKind::Buffer { index, .. } = m.kind {
                            assert!(!rx.is_credited(index), "delivered buffer still credited");
                            assert!(!held.contains(&index), "buffer {index} delivered twice");
                            held.push(index);
                        }
                    }
                }
                assert!(rx.unreleased() <= slots, "more than `slots` unreleased");
            }
            RxOp::Release { n } => {
                let _ = rx.release_slots(u32::from(n));
            }
            RxOp::Complete {} => {
                let _ = rx.complete();
            }
            RxOp::Grant { k } => {
                let idx = if held.is_empty() {
                    k
                } else {
                    held.remove(k as usize % held.len())
                };
                let _ = rx.grant(&[idx]);
            }
            RxOp::InitCredits {} => {
                // Grants every buffer not credited, including the ones we hold.
                if rx.init_credits().is_ok() {
                    held.clear();
                }
            }
            RxOp::Reset {} => {
                rx_op = false;
                remote
                    .write_bytes(0, &vec![0u8; remote.len()])
                    .expect("whole area");
                if rx.reset().is_ok() {
                    held.clear();
                    peer_pos = 0;
                    assert!(!rx.is_broken());
                }
            }
        }
        assert!(
            rx.credits_outstanding() <= layout.buffers(),
            "credits outstanding"
        );
        if rx_op {
            assert!(
                before == snapshot(&local, 0, local.len()),
                "the receiver wrote its own (sender-written) area"
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write_slot(
    mem: &Region,
    layout: &PostedLayout,
    slot: u32,
    seq: u32,
    len: u32,
    buf: u32,
    flags: u16,
    meta: u16,
) {
    let off = layout.slot_off(slot);
    mem.store_u32(off + 4, len, Ordering::Relaxed)
        .expect("in area");
    mem.store_u32(off + 8, buf, Ordering::Relaxed)
        .expect("in area");
    let fm = u32::from(flags) | u32::from(meta) << 16;
    mem.store_u32(off + 12, fm, Ordering::Relaxed)
        .expect("in area");
    mem.store_u32(off, seq, Ordering::Release).expect("in area");
}

/// A received message lies inside the slot or buffer it names.
fn check_msg(m: &RxMsg, layout: &PostedLayout) {
    let end = m.payload_off() + m.len as usize;
    match m.kind {
        RxKind::Inline { slot_off } => {
            assert!(
                slot_off < layout.buf_area_off(),
                "inline slot outside the slot ring"
            );
            assert_eq!(slot_off % layout.slot_size() as usize, 0);
            assert!(
                m.len <= layout.inline_capacity(),
                "inline len over capacity"
            );
            assert!(end <= slot_off + layout.slot_size() as usize);
        }
        RxKind::Buffer { index, off } => {
            assert!(index < layout.buffers(), "buffer index out of range");
            assert_eq!(off, layout.buf_off(index));
            assert!(m.len <= layout.buf_size(), "buffer len over buf_size");
            assert!(end <= layout.rx_area_size());
        }
    }
}

crate::fuzz_ops! {
    /// Operations on a sending half; the `Peer*` ones are the hostile receiver.
    pub enum TxOp {
        /// Receiver writes credit entry `i % slots` as given.
        PeerCredit = 0 { i: u32, raw: u64 },
        /// Receiver grants buffer `index % (buffers + 2)` at its next credit position.
        PeerGrant = 1 { index: u32 },
        /// Receiver stores `consumed`.
        PeerConsumed = 2 { val: u32 },
        /// Receiver releases `n` more slots (well-behaved, capped at what was sent).
        PeerConsume = 3 { n: u8 },
        /// Receiver writes one byte anywhere in the tx area.
        PeerPoke = 4 { off: u32, val: u8 },
        /// Sender reads credits.
        PollCredits = 5 {},
        /// Sender allocates a buffer.
        Alloc = 6 {},
        /// Sender enqueues the `k`-th allocated buffer with `len` bytes.
        Enqueue = 7 { k: u8, len: u32, meta: u16 },
        /// Sender cancels the `k`-th allocated buffer.
        Cancel = 8 { k: u8 },
        /// Sender enqueues an inline message.
        EnqueueInline = 9 { payload: Bytes, meta: u16 },
        /// Sender sends (inline or through a buffer).
        Send = 10 { payload: Bytes, meta: u16 },
        /// Sender publishes.
        Publish = 11 {},
        /// Both sides reset.
        Reset = 12 {},
    }
}

/// Runs one input against [`PostedTx`].
pub fn run_tx(data: &[u8]) {
    let (cfg, ops) = decode::<Config, TxOp>(data);
    let layout = cfg.layout();
    let local = Region::heap(layout.tx_area_size());
    let remote = Region::heap(layout.rx_area_size());
    let mut tx = PostedTx::new(local.clone(), remote.clone(), layout).expect("fits");
    let mut bufs: Vec<TxBuf> = Vec::new();
    let (mut credit_pos, mut consumed, mut published) = (0u32, 0u32, 0u32);
    let slots = layout.slots();
    for op in ops {
        let before = snapshot(&local, 0, local.len());
        let was_broken = tx.is_broken();
        let mut tx_op = true;
        match op {
            TxOp::PeerCredit { i, raw } => {
                tx_op = false;
                local
                    .store_u64(layout.credit_off(i % slots), raw, Ordering::Release)
                    .expect("in area");
            }
            TxOp::PeerGrant { index } => {
                tx_op = false;
                let index = index % (layout.buffers() + 2);
                local
                    .store_u64(
                        layout.credit_off(credit_pos % slots),
                        credit_entry(credit_pos, index),
                        Ordering::Release,
                    )
                    .expect("in area");
                credit_pos = credit_pos.wrapping_add(1);
            }
            TxOp::PeerConsumed { val } => {
                tx_op = false;
                local
                    .store_u32(layout.consumed_off(), val, Ordering::Release)
                    .expect("in area");
            }
            TxOp::PeerConsume { n } => {
                tx_op = false;
                let room = published.wrapping_sub(consumed);
                consumed = consumed.wrapping_add(u32::from(n).min(room));
                local
                    .store_u32(layout.consumed_off(), consumed, Ordering::Release)
                    .expect("in area");
            }
            TxOp::PeerPoke { off, val } => {
                tx_op = false;
                let off = off as usize % local.len();
                local.write_bytes(off, &[val]).expect("in area");
            }
            TxOp::PollCredits {} => {
                let r = tx.poll_credits();
                check_broken(was_broken, &r, tx.is_broken());
                if let Ok(c) = r {
                    assert!(
                        c <= layout.buffers() as usize,
                        "more credits cached than buffers"
                    );
                }
            }
            TxOp::Alloc {} => {
                let r = tx.alloc();
                check_broken(was_broken, &r, tx.is_broken());
                if let Ok(Some(b)) = r {
                    assert!(
                        b.index() < layout.buffers(),
                        "credit for a buffer out of range"
                    );
                    assert_eq!(b.offset(), layout.buf_off(b.index()));
                    assert!(b.offset() + b.capacity() as usize <= layout.rx_area_size());
                    assert!(
                        bufs.iter().all(|o| o.index() != b.index()),
                        "buffer {} allocated twice",
                        b.index()
                    );
                    bufs.push(b);
                    crate::fuzzing::progress();
                }
            }
            TxOp::Enqueue { k, len, meta } => {
                if !bufs.is_empty() {
                    let b = bufs.remove(usize::from(k) % bufs.len());
                    let _ = tx.enqueue(b, len, meta);
                }
            }
            TxOp::Cancel { k } => {
                if !bufs.is_empty() {
                    let b = bufs.remove(usize::from(k) % bufs.len());
                    let _ = tx.cancel(b);
                }
            }
            TxOp::EnqueueInline { payload, meta } => {
                let _ = tx.enqueue_inline(&payload.0, meta);
            }
            TxOp::Send { payload, meta } => {
                if let Ok(true) = tx.send(&payload.0, meta) {
                    crate::fuzzing::progress();
                }
            }
            TxOp::Publish {} => {
                if let Ok(k) = tx.publish() {
                    published = published.wrapping_add(k as u32);
                }
            }
            TxOp::Reset {} => {
                tx_op = false;
                remote
                    .write_bytes(0, &vec![0u8; remote.len()])
                    .expect("whole area");
                if tx.reset().is_ok() {
                    bufs.clear();
                    (credit_pos, consumed, published) = (0, 0, 0);
                    assert!(!tx.is_broken());
                }
            }
        }
        assert!(tx.credits_held() <= layout.buffers(), "credits held");
        assert!(tx.slots_free() <= slots, "slots free");
        if tx_op {
            assert!(
                before == snapshot(&local, 0, local.len()),
                "the sender wrote its own (receiver-written) area"
            );
        }
    }
}
