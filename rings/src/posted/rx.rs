//! The receiving half (runs on B): polls slots in its own memory, writes credits and
//! its consumer position into A's memory.

use super::{
    check_size, credit_entry, Bits, PostedLayout, RxKind, RxMsg, SlotHeader, CACHE_LINE,
    FLAGS_KNOWN, FLAG_INLINE, OFF_BUF, OFF_FLAGS, OFF_LEN,
};
use crate::error::RingError;
use crate::mem::Mem;
use crate::sync::{fence, Ordering};

/// Most slots [`PostedRx::poll`] keeps prefetched ahead of the one it reads (measured
/// on the development machine: 4 slots 26 Mpps, 8 slots 31, 16 slots 32.5, 32 slots 32
/// through `zerohop testpmd`, 64 B packets, before the later receive-path fixes).
const PREFETCH_SLOTS: u32 = 16;

/// Receiving half of a posted ring. `L` is B's rx area (local: slots and buffers
/// arrive here), `R` is A's tx area (remote: B only writes credits and `consumed`).
///
/// Typical burst: [`poll`](Self::poll); hand the messages out in place; then
/// [`release_slots`](Self::release_slots) for the slots the caller is done with
/// (buffered messages can be released at once, their payload is in the buffer) and
/// one [`complete`](Self::complete); [`grant`](Self::grant) buffers back once freed.
pub struct PostedRx<L: Mem, R: Mem> {
    local: L,
    remote: R,
    layout: PostedLayout,
    mask: u32,
    /// Next slot position to poll.
    cursor: u32,
    /// Positions `< released` were released by the caller.
    released: u32,
    /// Last value stored into A's `consumed`.
    consumed_written: u32,
    /// Next credit position to write.
    credit_pos: u32,
    /// Buffers currently credited to A (granted, not yet come back in a message).
    credited: Bits,
    credited_count: u32,
    received: u64,
    inline_received: u64,
    broken: bool,
    /// Slots to keep prefetched ahead: the last non-empty poll's length less one,
    /// at most [`PREFETCH_SLOTS`].
    prefetch_ahead: u32,
}

impl<L: Mem, R: Mem> PostedRx<L, R> {
    /// Attaches the receiving half. Checks that `local` holds the rx area and `remote`
    /// the tx area of `layout`; writes nothing (B's slot ring must be zeroed, or
    /// [`reset`](Self::reset), before A starts sending).
    pub fn new(local: L, remote: R, layout: PostedLayout) -> Result<Self, RingError> {
        check_size(&local, layout.rx_area_size())?;
        check_size(&remote, layout.tx_area_size())?;
        Ok(PostedRx {
            local,
            remote,
            layout,
            mask: layout.slots() - 1,
            cursor: 0,
            released: 0,
            consumed_written: 0,
            credit_pos: 0,
            credited: Bits::new(layout.buffers()),
            credited_count: 0,
            received: 0,
            inline_received: 0,
            broken: false,
            prefetch_ahead: 0,
        })
    }

    /// The layout.
    #[inline]
    pub fn layout(&self) -> &PostedLayout {
        &self.layout
    }
    /// B's rx area (local): read payloads here at [`RxMsg::payload_off`].
    #[inline]
    pub fn local(&self) -> &L {
        &self.local
    }
    /// A's tx area (remote).
    #[inline]
    pub fn remote(&self) -> &R {
        &self.remote
    }
    /// True after a peer violation, until [`reset`](Self::reset).
    #[inline]
    pub fn is_broken(&self) -> bool {
        self.broken
    }
    /// Messages polled so far.
    #[inline]
    pub fn received(&self) -> u64 {
        self.received
    }
    /// Of [`received`](Self::received), how many were inline.
    #[inline]
    pub fn inline_received(&self) -> u64 {
        self.inline_received
    }
    /// Buffers currently credited to A.
    #[inline]
    pub fn credits_outstanding(&self) -> u32 {
        self.credited_count
    }
    /// Slots polled but not yet released by the caller.
    #[inline]
    pub fn unreleased(&self) -> u32 {
        self.cursor.wrapping_sub(self.released)
    }
    /// True if buffer `index` is currently credited to A.
    #[inline]
    pub fn is_credited(&self, index: u32) -> bool {
        index < self.layout.buffers() && self.credited.get(index)
    }

    #[inline(always)]
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, RingError>,
    ) -> Result<T, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        let r = f(self);
        if let Err(e) = &r {
            if e.is_peer_violation() {
                self.broken = true;
            }
        }
        r
    }

    /// Polls up to `out.len()` messages (local loads only). Stops at the first slot
    /// whose lap tag does not match (not ready), and never looks more than `slots`
    /// positions past what the caller released. Each returned message is validated;
    /// its payload is read in place at [`RxMsg::payload_off`] in the local area.
    ///
    /// Errors (queue broken; messages polled earlier in this call are dropped):
    /// unknown flags, an inline length over the inline capacity, a buffer index
    /// `>= buffers`, a buffer not currently credited to A (never credited, or
    /// delivered twice), a length over `buf_size`.
    pub fn poll(&mut self, out: &mut [RxMsg]) -> Result<usize, RingError> {
        self.guarded(|s| {
            let slots = s.layout.slots();
            // Slots this call may look at, and how many of them were prefetched.
            let max = (out.len() as u32).min(slots - s.cursor.wrapping_sub(s.released));
            let mut fetched = 0u32;
            let mut n = 0;
            while n < out.len() && s.cursor.wrapping_sub(s.released) < slots {
                let p = s.cursor;
                let slot = p & s.mask;
                let off = s.layout.slot_off(slot);
                // Acquire (P2): pairs with the Release store of this lap tag in
                // PostedTx::publish (P1); the slot body and payload are visible after it.
                let seq = s.local.load_u32(off, Ordering::Acquire)?;
                if seq != p.wrapping_add(1) {
                    break;
                }
                // The sender is publishing: keep the lines of this slot and the next
                // `prefetch_ahead` on their way, so their misses overlap instead of
                // following one another. Local lines only, and only once a slot was ready (an idle
                // ring is never prefetched, so the sender is not raced for lines it
                // is about to write).
                while fetched < max && fetched <= n as u32 + s.prefetch_ahead {
                    s.prefetch_slot(p.wrapping_add(fetched - n as u32));
                    fetched += 1;
                }
                // One fetch of the rest of the header (same access sizes as the
                // writer's); validate the copy, then use only the copy.
                // Relaxed (three loads): ordered after the Acquire above (P2).
                let len = s.local.load_u32(off + OFF_LEN, Ordering::Relaxed)?;
                let buf = s.local.load_u32(off + OFF_BUF, Ordering::Relaxed)?;
                let fm = s
                    .local
                    .load_u32(off + OFF_FLAGS, Ordering::Relaxed)?
                    .to_ne_bytes();
                let h = SlotHeader {
                    seq,
                    len,
                    buf,
                    flags: u16::from_ne_bytes([fm[0], fm[1]]),
                    meta: u16::from_ne_bytes([fm[2], fm[3]]),
                };
                out[n] = s.validate(slot, off, &h)?;
                n += 1;
                s.cursor = p.wrapping_add(1);
            }
            s.received += n as u64;
            // As deep as the last burst was long: a stream keeps PREFETCH_SLOTS on
            // their way, a ping-pong (one slot at a time) prefetches only the rest of
            // the slot it reads, not lines the sender has yet to write.
            if n > 0 {
                s.prefetch_ahead = (n as u32 - 1).min(PREFETCH_SLOTS);
            }
            Ok(n)
        })
    }

    /// Prefetches every line of the slot at position `p` (its later lines hold the
    /// inline payload the caller reads next).
    #[inline(always)]
    fn prefetch_slot(&self, p: u32) {
        let off = self.layout.slot_off(p & self.mask);
        for line in (0..self.layout.slot_size() as usize).step_by(CACHE_LINE as usize) {
            self.local.prefetch(off + line);
        }
    }

    /// Validates one fetched header; takes the buffer back from A's credits.
    fn validate(&mut self, slot: u32, off: usize, h: &SlotHeader) -> Result<RxMsg, RingError> {
        if h.flags & !FLAGS_KNOWN != 0 {
            return Err(RingError::BadSlot {
                slot,
                why: "unknown flag bits",
            });
        }
        if h.flags & FLAG_INLINE != 0 {
            if h.len > self.layout.inline_capacity() {
                return Err(RingError::BadSlot {
                    slot,
                    why: "inline length exceeds the slot capacity",
                });
            }
            self.inline_received += 1;
            return Ok(RxMsg {
                kind: RxKind::Inline { slot_off: off },
                len: h.len,
                meta: h.meta,
            });
        }
        let index = h.buf;
        if index >= self.layout.buffers() {
            return Err(RingError::DescIndexOutOfRange {
                index,
                size: self.layout.buffers(),
            });
        }
        if !self.credited.get(index) {
            return Err(RingError::BadSlot {
                slot,
                why: "buffer is not credited to the sender (forged or delivered twice)",
            });
        }
        if h.len > self.layout.buf_size() {
            return Err(RingError::BadSlot {
                slot,
                why: "length exceeds the buffer size",
            });
        }
        self.credited.set(index, false);
        self.credited_count -= 1;
        // The caller's next step is usually a look at the packet's first bytes.
        self.local.prefetch(self.layout.buf_off(index));
        Ok(RxMsg {
            kind: RxKind::Buffer {
                index,
                off: self.layout.buf_off(index),
            },
            len: h.len,
            meta: h.meta,
        })
    }

    /// Marks the next `n` polled slots (in poll order) as done: inline payload in them
    /// may be overwritten once [`complete`](Self::complete) tells A. Asking for more
    /// than [`unreleased`](Self::unreleased) is an [`RingError::InvalidRequest`].
    pub fn release_slots(&mut self, n: u32) -> Result<(), RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        if n > self.unreleased() {
            return Err(RingError::InvalidRequest(
                "releasing more slots than were polled",
            ));
        }
        self.released = self.released.wrapping_add(n);
        Ok(())
    }

    /// Tells A how far the slot ring was released: at most one Release store into A's
    /// memory per call (none if nothing changed). Call once per burst.
    pub fn complete(&mut self) -> Result<(), RingError> {
        self.guarded(|s| {
            if s.released != s.consumed_written {
                // Release (K1): our reads of the released slots happen before A
                // overwrites them; pairs with the Acquire load of `consumed` in
                // PostedTx's slot_available (K2).
                s.remote
                    .store_u32(s.layout.consumed_off(), s.released, Ordering::Release)?;
                s.consumed_written = s.released;
            }
            Ok(())
        })
    }

    /// Grants buffers to A as credits: one 8-byte Release store per credit into A's
    /// memory. An index `>= buffers`, a buffer already credited, or the same index
    /// twice in `indices` is an [`RingError::InvalidRequest`] (our own bug), and then
    /// nothing is granted.
    pub fn grant(&mut self, indices: &[u32]) -> Result<(), RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        let buffers = self.layout.buffers();
        for (k, &i) in indices.iter().enumerate() {
            if i >= buffers || self.credited.get(i) {
                // Roll back the marks of this call.
                for &j in &indices[..k] {
                    self.credited.set(j, false);
                }
                return Err(RingError::InvalidRequest(
                    "granting a buffer out of range or already credited",
                ));
            }
            self.credited.set(i, true);
        }
        self.guarded(|s| {
            for &i in indices {
                s.write_credit(i)?;
            }
            Ok(())
        })
    }

    /// Writes one credit entry (the buffer is already marked credited).
    #[inline]
    fn write_credit(&mut self, index: u32) -> Result<(), RingError> {
        let off = self.layout.credit_off(self.credit_pos & self.mask);
        // Release (C1): publishes the credit (and orders our last reads of the buffer
        // before A's next writes into it); pairs with the Acquire in
        // PostedTx::poll_credits (C2). The entry at this position held credit
        // `credit_pos - slots`, which A already read (module docs, "Flow control").
        self.remote
            .store_u64(off, credit_entry(self.credit_pos, index), Ordering::Release)?;
        self.credit_pos = self.credit_pos.wrapping_add(1);
        self.credited_count += 1;
        Ok(())
    }

    /// Grants every buffer that is not credited yet (at start-up: all of them).
    pub fn init_credits(&mut self) -> Result<(), RingError> {
        self.guarded(|s| {
            for i in 0..s.layout.buffers() {
                if !s.credited.get(i) {
                    s.credited.set(i, true);
                    s.write_credit(i)?;
                }
            }
            Ok(())
        })
    }

    /// Asks A to ring our doorbell when it publishes the next position we would poll
    /// (`enable`), or stops asking. Returns true when that slot is already published:
    /// poll again instead of sleeping.
    ///
    /// Enabling is the slow path before sleeping, so it may afford the one remote
    /// load posted mode ever makes: after the store of `wake` into A's memory it reads
    /// the word back, which on PCIe flushes the posted write to A before we re-check
    /// our own slot (a read completion is ordered behind earlier posted writes); on
    /// one host it is a cheap load.
    pub fn set_notification(&mut self, enable: bool) -> Result<bool, RingError> {
        self.guarded(|s| {
            let off = s.layout.wake_off();
            if !enable {
                // Relaxed: a hint for A; a late disable only costs a spurious doorbell.
                s.remote.store_u32(off, 0, Ordering::Relaxed)?;
                return Ok(false);
            }
            // Relaxed: ordered before the re-check below by W2.
            s.remote
                .store_u32(off, s.cursor.wrapping_add(1), Ordering::Relaxed)?;
            // Relaxed: a read-back that only flushes the store above across a link;
            // its value is not used.
            let _ = s.remote.load_u32(off, Ordering::Relaxed)?;
            // SeqCst fence (W2): orders the `wake` store before the re-check of the
            // slot; pairs with W1 in PostedTx::needs_notify: either A sees our
            // request or we see its slot.
            fence(Ordering::SeqCst);
            let slot = s.layout.slot_off(s.cursor & s.mask);
            // Relaxed: a peek at the lap tag (only compared; poll re-reads the slot
            // with Acquire before using anything in it).
            let seq = s.local.load_u32(slot, Ordering::Relaxed)?;
            Ok(seq == s.cursor.wrapping_add(1))
        })
    }

    /// Forgets all local state and zeroes the lap tags of the local slot ring.
    /// Coordinate with the peer: A resets too before either side resumes.
    pub fn reset(&mut self) -> Result<(), RingError> {
        for i in 0..self.layout.slots() {
            // Relaxed: reset runs while the peer is quiescent (control-plane handshake).
            self.local
                .store_u32(self.layout.slot_off(i), 0, Ordering::Relaxed)?;
        }
        self.cursor = 0;
        self.released = 0;
        self.consumed_written = 0;
        self.credit_pos = 0;
        self.credited.clear_all();
        self.credited_count = 0;
        self.received = 0;
        self.inline_received = 0;
        self.prefetch_ahead = 0;
        self.broken = false;
        Ok(())
    }
}
