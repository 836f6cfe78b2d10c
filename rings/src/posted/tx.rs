//! The sending half (runs on A): reads credits and `consumed` from its own memory,
//! writes payload, slot bodies and lap tags into B's memory.

use super::{
    check_size, Bits, PostedLayout, TxBuf, FLAG_INLINE, OFF_BUF, OFF_FLAGS, OFF_LEN,
    SLOT_HEADER_SIZE,
};
use crate::error::RingError;
use crate::mem::Mem;
use crate::sync::{fence, Ordering};

/// Sending half of a posted ring. `L` is A's tx area (local: credits and `consumed`
/// arrive here), `R` is B's rx area (remote: A only writes it).
///
/// Typical burst: [`poll_credits`](Self::poll_credits) once, then
/// [`send`](Self::send) / [`alloc`](Self::alloc) + [`enqueue`](Self::enqueue) /
/// [`enqueue_inline`](Self::enqueue_inline) per message, then one
/// [`publish`](Self::publish).
pub struct PostedTx<L: Mem, R: Mem> {
    local: L,
    remote: R,
    layout: PostedLayout,
    mask: u32,
    /// Next slot position to fill.
    head: u32,
    /// Positions `< published` carry their lap tag.
    published: u32,
    /// Slots reserved by outstanding [`TxBuf`]s (they take positions from `head` on).
    reserved: u32,
    /// Cached copy of B's `consumed` (validated: never behind itself or past `published`).
    consumed: u32,
    /// Next credit position to read.
    credit_pos: u32,
    /// Buffers credited to us and not yet enqueued (cached or allocated).
    held: Bits,
    held_count: u32,
    /// Ring of credited buffer indices not yet allocated (capacity `buffers`).
    cache: Box<[u32]>,
    cache_head: u32,
    cache_len: u32,
    pending_inline: u64,
    sent: u64,
    inline_sent: u64,
    /// `published` at the previous [`needs_notify`](Self::needs_notify).
    notify_old: u32,
    broken: bool,
}

impl<L: Mem, R: Mem> PostedTx<L, R> {
    /// Attaches the sending half. Checks that `local` holds the tx area and `remote`
    /// the rx area of `layout`; writes nothing (A's tx area must be zeroed, or
    /// [`reset`](Self::reset), before B grants credits).
    pub fn new(local: L, remote: R, layout: PostedLayout) -> Result<Self, RingError> {
        check_size(&local, layout.tx_area_size())?;
        check_size(&remote, layout.rx_area_size())?;
        Ok(PostedTx {
            local,
            remote,
            layout,
            mask: layout.slots() - 1,
            head: 0,
            published: 0,
            reserved: 0,
            consumed: 0,
            credit_pos: 0,
            held: Bits::new(layout.buffers()),
            held_count: 0,
            cache: vec![0u32; layout.buffers() as usize].into_boxed_slice(),
            cache_head: 0,
            cache_len: 0,
            pending_inline: 0,
            sent: 0,
            inline_sent: 0,
            notify_old: 0,
            broken: false,
        })
    }

    /// The layout.
    #[inline]
    pub fn layout(&self) -> &PostedLayout {
        &self.layout
    }
    /// A's tx area (local).
    #[inline]
    pub fn local(&self) -> &L {
        &self.local
    }
    /// B's rx area (remote): build zero-copy payloads here at [`TxBuf::offset`].
    #[inline]
    pub fn remote(&self) -> &R {
        &self.remote
    }
    /// True after a peer violation, until [`reset`](Self::reset).
    #[inline]
    pub fn is_broken(&self) -> bool {
        self.broken
    }
    /// Messages published so far.
    #[inline]
    pub fn sent(&self) -> u64 {
        self.sent
    }
    /// Of [`sent`](Self::sent), how many were inline.
    #[inline]
    pub fn inline_sent(&self) -> u64 {
        self.inline_sent
    }
    /// Credits cached and ready for [`alloc`](Self::alloc).
    #[inline]
    pub fn credits_held(&self) -> u32 {
        self.cache_len
    }
    /// Free slots according to the cached `consumed` (may be lower than the truth; it
    /// is refreshed when a send finds the ring full).
    #[inline]
    pub fn slots_free(&self) -> u32 {
        self.layout.slots() - self.in_use()
    }

    /// Slots written, reserved or not yet released by B, per the cached `consumed`.
    #[inline]
    fn in_use(&self) -> u32 {
        self.head
            .wrapping_add(self.reserved)
            .wrapping_sub(self.consumed)
    }

    /// Runs `f` unless broken; a peer violation marks the half broken.
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

    /// Reads the credits B granted since the last call (all local loads) and caches
    /// them. Returns the credits available for [`alloc`](Self::alloc).
    ///
    /// Errors (queue broken): a credit naming a buffer `>= buffers` or a buffer that
    /// is already held ([`RingError::BadCredit`]), more credits than buffers
    /// ([`RingError::TooManyCredits`]).
    pub fn poll_credits(&mut self) -> Result<usize, RingError> {
        self.guarded(|s| {
            let buffers = s.layout.buffers();
            // Terminates: every accepted credit sets one of `buffers` held bits; after
            // `buffers` of them the next valid-looking entry is an error.
            loop {
                let off = s.layout.credit_off(s.credit_pos & s.mask);
                // Acquire (C2): pairs with the Release store of this entry in
                // PostedRx::grant (C1); B's last reads of the buffer happen before our
                // writes into it.
                let e = s.local.load_u64(off, Ordering::Acquire)?;
                if (e >> 32) as u32 != s.credit_pos.wrapping_add(1) {
                    break;
                }
                let index = e as u32;
                if index >= buffers {
                    return Err(RingError::BadCredit {
                        offset: s.layout.buf_off_u64(index),
                    });
                }
                if s.held_count >= buffers {
                    return Err(RingError::TooManyCredits {
                        granted: s.held_count + 1,
                        limit: buffers,
                    });
                }
                if s.held.get(index) {
                    return Err(RingError::BadCredit {
                        offset: s.layout.buf_off_u64(index),
                    });
                }
                s.held.set(index, true);
                s.held_count += 1;
                s.push_cache(index);
                s.credit_pos = s.credit_pos.wrapping_add(1);
            }
            Ok(s.cache_len as usize)
        })
    }

    /// Appends to the credit cache. Cannot overflow: `cache_len <= held_count <= buffers`.
    #[inline]
    fn push_cache(&mut self, index: u32) {
        let cap = self.cache.len() as u32;
        if self.cache_len < cap {
            let i = (self.cache_head + self.cache_len) % cap;
            self.cache[i as usize] = index;
            self.cache_len += 1;
        }
    }

    #[inline]
    fn pop_cache(&mut self) -> Option<u32> {
        if self.cache_len == 0 {
            return None;
        }
        let index = self.cache[self.cache_head as usize];
        self.cache_head = (self.cache_head + 1) % self.cache.len() as u32;
        self.cache_len -= 1;
        Some(index)
    }

    /// True if one more slot can be taken; re-reads `consumed` (a local load) only
    /// when the cached copy says the ring is full.
    fn slot_available(&mut self) -> Result<bool, RingError> {
        if self.in_use() < self.layout.slots() {
            return Ok(true);
        }
        // Acquire (K2): pairs with the Release store of `consumed` in
        // PostedRx::complete (K1): B's reads of the released slots happen before we
        // overwrite them.
        let c = self
            .local
            .load_u32(self.layout.consumed_off(), Ordering::Acquire)?;
        // B may only move `consumed` forward, and not past what we published.
        if c.wrapping_sub(self.consumed) > self.published.wrapping_sub(self.consumed) {
            return Err(RingError::IndexJump {
                what: "consumed",
                old: self.consumed,
                new: c,
                size: self.layout.slots(),
            });
        }
        self.consumed = c;
        Ok(self.in_use() < self.layout.slots())
    }

    /// Takes a held credit and reserves a slot for it, for a zero-copy send. `None`
    /// when no credit is cached (call [`poll_credits`](Self::poll_credits)) or the
    /// slot ring is full. Only A's own memory is read.
    pub fn alloc(&mut self) -> Result<Option<TxBuf>, RingError> {
        self.guarded(|s| {
            if s.cache_len == 0 || !s.slot_available()? {
                return Ok(None);
            }
            let Some(index) = s.pop_cache() else {
                return Ok(None);
            };
            s.reserved += 1;
            Ok(Some(TxBuf {
                index,
                offset: s.layout.buf_off(index),
                capacity: s.layout.buf_size(),
            }))
        })
    }

    /// Gives an unused [`TxBuf`] back (its credit returns to the cache, its slot
    /// reservation is dropped).
    pub fn cancel(&mut self, buf: TxBuf) -> Result<(), RingError> {
        self.check_live(&buf)?;
        self.reserved -= 1;
        self.push_cache(buf.index);
        Ok(())
    }

    fn check_live(&self, buf: &TxBuf) -> Result<(), RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        if self.reserved == 0 || !self.held.get(buf.index) {
            return Err(RingError::InvalidRequest(
                "TxBuf is not live (reset since alloc?)",
            ));
        }
        Ok(())
    }

    /// Enqueues a zero-copy message whose `len` payload bytes the caller already
    /// wrote into `buf`. Writes the slot body (not its lap tag) into the reserved slot;
    /// [`publish`](Self::publish) makes it visible. `len > capacity` is an
    /// [`RingError::InvalidRequest`] (the buffer goes back to the cache).
    pub fn enqueue(&mut self, buf: TxBuf, len: u32, meta: u16) -> Result<(), RingError> {
        self.check_live(&buf)?;
        if len > buf.capacity {
            self.cancel(buf)?;
            return Err(RingError::InvalidRequest("len exceeds the buffer capacity"));
        }
        self.guarded(|s| {
            s.write_body(len, buf.index, 0, meta)?;
            s.reserved -= 1;
            s.held.set(buf.index, false);
            s.held_count -= 1;
            Ok(())
        })
    }

    /// Writes the body of the slot at `head` (everything but `seq`) and advances `head`.
    ///
    /// Three relaxed 32-bit stores (`len`, `buf`, `flags | meta`): as cheap as a
    /// memcpy on real hardware, and the same access size B reads them with.
    #[inline]
    fn write_body(&mut self, len: u32, buf: u32, flags: u16, meta: u16) -> Result<(), RingError> {
        let off = self.layout.slot_off(self.head & self.mask);
        let f = flags.to_ne_bytes();
        let m = meta.to_ne_bytes();
        let flags_meta = u32::from_ne_bytes([f[0], f[1], m[0], m[1]]);
        // Relaxed (three stores): ordered before the lap tag by publish's fence (P1).
        self.remote
            .store_u32(off + OFF_LEN, len, Ordering::Relaxed)?;
        self.remote
            .store_u32(off + OFF_BUF, buf, Ordering::Relaxed)?;
        self.remote
            .store_u32(off + OFF_FLAGS, flags_meta, Ordering::Relaxed)?;
        self.head = self.head.wrapping_add(1);
        Ok(())
    }

    /// Enqueues `payload` inline in the next slot (no credit used). Returns `false`
    /// when the slot ring is full (back-pressure); a payload longer than
    /// [`PostedLayout::inline_capacity`] is an [`RingError::InvalidRequest`].
    pub fn enqueue_inline(&mut self, payload: &[u8], meta: u16) -> Result<bool, RingError> {
        self.guarded(|s| {
            if payload.len() > s.layout.inline_capacity() as usize {
                return Err(RingError::InvalidRequest(
                    "payload exceeds the inline capacity",
                ));
            }
            if !s.slot_available()? {
                return Ok(false);
            }
            // The reserved slots come first, but they are only reserved, not placed:
            // any enqueue takes the next position, so this slot is `head`.
            let off = s.layout.slot_off(s.head & s.mask) + SLOT_HEADER_SIZE as usize;
            s.remote.write_bytes(off, payload)?;
            s.write_body(payload.len() as u32, 0, FLAG_INLINE, meta)?;
            s.pending_inline += 1;
            Ok(true)
        })
    }

    /// Copying send: inline if it fits in a slot, else into a credited buffer.
    /// Returns `false` when out of credits or slots (back-pressure, not an error).
    /// A payload that can never fit (over `buf_size`, or over the inline capacity on a
    /// ring without buffers) is an [`RingError::InvalidRequest`].
    pub fn send(&mut self, payload: &[u8], meta: u16) -> Result<bool, RingError> {
        if payload.len() <= self.layout.inline_capacity() as usize {
            return self.enqueue_inline(payload, meta);
        }
        if payload.len() > self.layout.buf_size() as usize || self.layout.buffers() == 0 {
            return Err(RingError::InvalidRequest(
                "payload exceeds the buffer size (or the inline capacity of an inline-only ring)",
            ));
        }
        let Some(buf) = self.alloc()? else {
            return Ok(false);
        };
        if let Err(e) = self.remote.write_bytes(buf.offset, payload) {
            // Unreachable with a validated layout; keep the credit anyway.
            self.cancel(buf)?;
            return Err(e.into());
        }
        self.enqueue(buf, payload.len() as u32, meta)?;
        Ok(true)
    }

    /// Publishes every slot enqueued since the last call: one `fence(Release)`, then
    /// each slot's lap tag with a Release store. Returns how many were published.
    ///
    /// A caller that wrote payload with non-temporal / write-combining stores must
    /// issue one `sfence` (x86) before calling this: the ring's fence orders ordinary
    /// stores only as far as the language model goes, not WC buffers on every CPU.
    pub fn publish(&mut self) -> Result<usize, RingError> {
        self.guarded(|s| {
            let n = s.head.wrapping_sub(s.published);
            if n == 0 {
                return Ok(0);
            }
            // Release fence (P1), once per burst: payload -> slot bodies -> fence -> lap
            // tags, so the order holds on weakly ordered CPUs too. Pairs with the
            // Acquire load of `seq` in PostedRx::poll (P2).
            fence(Ordering::Release);
            let mut p = s.published;
            while p != s.head {
                let off = s.layout.slot_off(p & s.mask);
                // Release (P1): publishes slot p (and its payload) to PostedRx::poll's
                // Acquire load of this word (P2).
                s.remote
                    .store_u32(off, p.wrapping_add(1), Ordering::Release)?;
                p = p.wrapping_add(1);
            }
            s.published = s.head;
            s.sent += n as u64;
            s.inline_sent += s.pending_inline;
            s.pending_inline = 0;
            Ok(n as usize)
        })
    }

    /// Hint ([`Mem::demote`]): moves every line of the last `n` published slots
    /// out of this core's private caches, so that B's misses on them are served by
    /// the shared cache instead of by a snoop of this core (an inline message is
    /// then as fast to take as one line). Costs the sender time per line: for a
    /// side that waits for B anyway, not for a streaming burst. Reads nothing.
    pub fn demote_published(&self, n: u32) {
        let lines = self.layout.slot_size().div_ceil(64) as usize;
        let mut p = self.published.wrapping_sub(n.min(self.mask + 1));
        while p != self.published {
            let off = self.layout.slot_off(p & self.mask);
            for l in 0..lines {
                self.remote.demote(off + 64 * l);
            }
            p = p.wrapping_add(1);
        }
    }

    /// Did B ask to be woken for a position published since the previous call? Call
    /// after [`publish`](Self::publish) when B may sleep (a doorbell is configured);
    /// on `true` ring B's doorbell once. Reads only local memory: B's `wake` word
    /// (a hostile hint: any value is safe, it only decides a doorbell).
    pub fn needs_notify(&mut self) -> Result<bool, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        // SeqCst fence (W1): orders the lap-tag stores of publish before the load of
        // `wake`; pairs with W2 in PostedRx::set_notification, so either B's re-check
        // sees our slot or we see its request (the virtio_mb of
        // virtqueue_kick_prepare).
        fence(Ordering::SeqCst);
        // Relaxed: ordered by W1; one fetch.
        let wake = self
            .local
            .load_u32(self.layout.wake_off(), Ordering::Relaxed)?;
        let (old, new) = (self.notify_old, self.published);
        self.notify_old = new;
        // Notify iff B waits for a position in [old, new) (virtio 1.x 2.7.10's
        // vring_need_event on 32-bit positions).
        let event = wake.wrapping_sub(1);
        Ok(wake != 0 && new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old))
    }

    /// Forgets all local state and zeroes the local tx area (credit ring,
    /// `consumed` and `wake`). Coordinate with the peer: B resets too before either
    /// side resumes.
    pub fn reset(&mut self) -> Result<(), RingError> {
        let slots = self.layout.slots();
        for i in 0..slots {
            // Relaxed: reset runs while the peer is quiescent (control-plane handshake).
            self.local
                .store_u64(self.layout.credit_off(i), 0, Ordering::Relaxed)?;
        }
        // Relaxed: as above.
        self.local
            .store_u32(self.layout.consumed_off(), 0, Ordering::Relaxed)?;
        // Relaxed: as above.
        self.local
            .store_u32(self.layout.wake_off(), 0, Ordering::Relaxed)?;
        self.notify_old = 0;
        self.head = 0;
        self.published = 0;
        self.reserved = 0;
        self.consumed = 0;
        self.credit_pos = 0;
        self.held.clear_all();
        self.held_count = 0;
        self.cache_head = 0;
        self.cache_len = 0;
        self.pending_inline = 0;
        self.broken = false;
        Ok(())
    }
}
