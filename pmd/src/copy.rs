//! The copy engine: one write-combining (non-temporal) copy of a payload into the
//! peer-visible buffer (GUIDE.md section 4).
//!
//! Payload crosses the link at most once. When a transmit path cannot build the payload
//! in place (`alloc_tx` / `send_nocopy`), it copies it into the window with a
//! [`CopyEngine`]. The engine is chosen once, at run time:
//!
//! | [`CopyKind`]  | chosen when                        | copies `>= nt_threshold` bytes with        | fence        |
//! |---------------|------------------------------------|--------------------------------------------|--------------|
//! | `Avx512Nt`    | x86_64 with AVX-512F               | `_mm512_loadu_si512` + `_mm512_stream_si512` | `sfence`   |
//! | `Avx2Nt`      | x86_64 with AVX2 (no AVX-512F)     | `_mm256_loadu_si256` + `_mm256_stream_si256` | `sfence`   |
//! | `Plain`       | x86_64 without AVX2, or forced     | `core::ptr::copy_nonoverlapping`           | Release fence |
//! | `Scalar`      | every other architecture (aarch64) | `core::ptr::copy_nonoverlapping`           | Release fence |
//!
//! Copies shorter than the engine's threshold ([`DEFAULT_NT_THRESHOLD`] unless set)
//! always use plain stores: a non-temporal store only pays off when it replaces whole
//! read-for-ownership line fills, and short copies land in lines the CPU already holds.
//!
//! A non-temporal copy streams whole 64-byte lines; the destination's unaligned head
//! and tail are written with plain stores so every streaming store hits one aligned
//! line:
//!
//! ```text
//!   dst                 64-aligned                               64-aligned      dst+len
//!    |<- head: plain ->|<- 64 B NT ->|<- 64 B NT ->| ... |<- 64 B NT ->|<- tail: plain ->|
//! ```
//!
//! # The fence rule
//! Non-temporal stores are *weakly ordered, even on x86*: they sit in write-combining
//! buffers and may become visible after later ordinary stores. A Release store (or a
//! Release fence) does not order them: on x86 it compiles to a plain `mov`, which only
//! orders ordinary (TSO) stores. So after the last copy of a burst, and before the
//! Release store that publishes the burst's index, call [`CopyEngine::fence`] exactly
//! once (one `sfence`, ~100 ns here; never one per packet):
//!
//! ```text
//!   payload copies (NT) -> descriptors -> engine.fence() -> index.store(Release) -> doorbell
//! ```
//!
//! [`CopyEngine::needs_fence`] is false for engines that never stream, and a
//! [`CopyBurst`] remembers whether any copy of the burst actually streamed, so a burst
//! of small packets skips the `sfence`.
//!
//! # Choosing a path
//! [`CopyEngine::global`] is decided once per process (a `OnceLock`) from the CPU and two
//! environment variables: `ZEROHOP_COPY` = `auto` | `avx512` | `avx2` | `plain` |
//! `scalar` forces a path, and `ZEROHOP_COPY_NT_MIN` = bytes sets the threshold.
//! [`CopyEngine::with_kind`] forces a path programmatically (tests, benchmarks).

use core::fmt;
use core::str::FromStr;
use std::sync::OnceLock;

use rings::{Mem, MemError};

/// Default smallest copy (bytes) that uses non-temporal stores; shorter copies use
/// plain stores. Chosen from `cargo bench -p zerohop-benches --bench copy` (numbers in
/// docs/COPY_ENGINE.md): into cold memory NT stores win from 128 B up (1.5x at 128 B,
/// 2.1x at 1 KiB) and lose at 64 B (0.8x); into a cache-resident 4 MiB buffer pool
/// they lose below 4 KiB (0.3-0.5x at 64-256 B, 0.7-0.8x at 1 KiB). 1 KiB keeps small
/// packets, where the warm-case loss is largest, on plain stores and streams MTU-sized
/// and larger payloads, where the cold-case gain is 1.7-2.8x.
pub const DEFAULT_NT_THRESHOLD: usize = 1024;

/// Environment variable that forces a copy path for [`CopyEngine::global`] /
/// [`CopyEngine::from_env`]: `auto`, `avx512`, `avx2`, `plain` or `scalar`.
pub const ENV_KIND: &str = "ZEROHOP_COPY";

/// Environment variable that sets the non-temporal threshold in bytes.
pub const ENV_NT_MIN: &str = "ZEROHOP_COPY_NT_MIN";

/// Which copy implementation an engine uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CopyKind {
    /// AVX-512F: unaligned 64-byte loads, aligned 64-byte streaming stores.
    Avx512Nt,
    /// AVX2: unaligned 32-byte loads, aligned 32-byte streaming stores (two per line).
    Avx2Nt,
    /// Plain stores (`copy_nonoverlapping`, i.e. the platform `memcpy`) on x86_64.
    Plain,
    /// The portable fallback on CPUs without a non-temporal path of ours
    /// (`copy_nonoverlapping`).
    Scalar,
}

impl CopyKind {
    /// Every kind, fastest first.
    pub const ALL: [CopyKind; 4] = [
        CopyKind::Avx512Nt,
        CopyKind::Avx2Nt,
        CopyKind::Plain,
        CopyKind::Scalar,
    ];

    /// Short name (as accepted by `ZEROHOP_COPY`).
    pub fn name(self) -> &'static str {
        match self {
            CopyKind::Avx512Nt => "avx512",
            CopyKind::Avx2Nt => "avx2",
            CopyKind::Plain => "plain",
            CopyKind::Scalar => "scalar",
        }
    }

    /// True for the kinds that use non-temporal (weakly ordered) stores.
    #[inline]
    pub fn is_nt(self) -> bool {
        matches!(self, CopyKind::Avx512Nt | CopyKind::Avx2Nt)
    }

    /// True if this CPU can run this kind.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            CopyKind::Avx512Nt => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            CopyKind::Avx2Nt => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            CopyKind::Avx512Nt | CopyKind::Avx2Nt => false,
            CopyKind::Plain | CopyKind::Scalar => true,
        }
    }

    /// The best kind this CPU supports.
    pub fn detect() -> CopyKind {
        if cfg!(target_arch = "x86_64") {
            [CopyKind::Avx512Nt, CopyKind::Avx2Nt]
                .into_iter()
                .find(|k| k.supported())
                .unwrap_or(CopyKind::Plain)
        } else {
            CopyKind::Scalar
        }
    }
}

impl fmt::Display for CopyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CopyKind {
    type Err = CopyError;

    fn from_str(s: &str) -> Result<CopyKind, CopyError> {
        CopyKind::ALL
            .into_iter()
            .find(|k| s.eq_ignore_ascii_case(k.name()))
            .ok_or_else(|| CopyError::BadSetting {
                var: ENV_KIND,
                value: s.to_owned(),
            })
    }
}

/// Why an engine could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// The requested path needs a CPU feature this machine lacks.
    #[error("copy path {0} is not supported by this CPU")]
    Unsupported(CopyKind),
    /// An environment setting could not be parsed.
    #[error(
        "{var}={value:?} is not valid (kind: auto|avx512|avx2|plain|scalar; threshold: bytes)"
    )]
    BadSetting {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
}

/// A copy path chosen once, plus its plain/non-temporal threshold.
///
/// `Copy` and two words large: keep one per port or use [`CopyEngine::global`].
/// The `kind` field is private so an engine can only hold a kind its CPU supports
/// (checked in [`CopyEngine::with_kind`]); the SIMD paths rely on that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyEngine {
    kind: CopyKind,
    nt_threshold: usize,
}

impl Default for CopyEngine {
    fn default() -> Self {
        CopyEngine::detect()
    }
}

impl CopyEngine {
    /// The best path this CPU supports, with [`DEFAULT_NT_THRESHOLD`].
    pub fn detect() -> CopyEngine {
        CopyEngine {
            kind: CopyKind::detect(),
            nt_threshold: DEFAULT_NT_THRESHOLD,
        }
    }

    /// Forces a path (tests, benchmarks); fails if the CPU lacks its feature.
    pub fn with_kind(kind: CopyKind) -> Result<CopyEngine, CopyError> {
        if !kind.supported() {
            return Err(CopyError::Unsupported(kind));
        }
        Ok(CopyEngine {
            kind,
            nt_threshold: DEFAULT_NT_THRESHOLD,
        })
    }

    /// The same engine with another threshold: copies of `bytes` or more stream,
    /// shorter ones use plain stores (`0` streams everything; it has no effect on
    /// `Plain` / `Scalar`).
    pub fn with_threshold(self, bytes: usize) -> CopyEngine {
        CopyEngine {
            nt_threshold: bytes,
            ..self
        }
    }

    /// [`CopyEngine::detect`], overridden by `ZEROHOP_COPY` and `ZEROHOP_COPY_NT_MIN`.
    pub fn from_env() -> Result<CopyEngine, CopyError> {
        let kind = std::env::var(ENV_KIND).ok();
        let min = std::env::var(ENV_NT_MIN).ok();
        CopyEngine::from_settings(kind.as_deref(), min.as_deref())
    }

    /// [`CopyEngine::from_env`] without the environment: `kind` and `nt_min` as the
    /// two variables would hold them (`None` = unset).
    pub fn from_settings(
        kind: Option<&str>,
        nt_min: Option<&str>,
    ) -> Result<CopyEngine, CopyError> {
        let mut e = match kind.map(str::trim) {
            None | Some("") => CopyEngine::detect(),
            Some(k) if k.eq_ignore_ascii_case("auto") => CopyEngine::detect(),
            Some(k) => CopyEngine::with_kind(k.parse()?)?,
        };
        if let Some(v) = nt_min.map(str::trim).filter(|v| !v.is_empty()) {
            let n = v.parse().map_err(|_| CopyError::BadSetting {
                var: ENV_NT_MIN,
                value: v.to_owned(),
            })?;
            e = e.with_threshold(n);
        }
        Ok(e)
    }

    /// The process-wide engine, decided on first use: [`CopyEngine::from_env`], or
    /// [`CopyEngine::detect`] if the environment asks for something invalid or
    /// unsupported (a tool that must not silently fall back calls `from_env` itself).
    pub fn global() -> &'static CopyEngine {
        static ENGINE: OnceLock<CopyEngine> = OnceLock::new();
        ENGINE.get_or_init(|| CopyEngine::from_env().unwrap_or_else(|_| CopyEngine::detect()))
    }

    /// The chosen path.
    #[inline]
    pub fn kind(&self) -> CopyKind {
        self.kind
    }

    /// Smallest copy that uses non-temporal stores.
    #[inline]
    pub fn nt_threshold(&self) -> usize {
        self.nt_threshold
    }

    /// One line for logs and benchmark output, e.g.
    /// `avx512 (non-temporal stores for copies >= 1024 B, plain below; sfence per burst)`.
    pub fn describe(&self) -> String {
        self.to_string()
    }

    /// True if copies made by this engine can be non-temporal, i.e. a burst must end
    /// with [`CopyEngine::fence`] before its index is published.
    #[inline]
    pub fn needs_fence(&self) -> bool {
        self.kind.is_nt()
    }

    /// True if a copy of `len` bytes uses non-temporal stores.
    #[inline]
    pub fn streams(&self, len: usize) -> bool {
        self.kind.is_nt() && len >= self.nt_threshold
    }

    /// Copies `src` into `mem` at `off..off + src.len()` and reports the bytes with
    /// [`Mem::note_write`]. Out-of-range destinations fail with [`MemError`] and touch
    /// nothing. The copy may be non-temporal: see [`CopyEngine::fence`].
    ///
    /// `src` must not be a view of the same range of `mem` (it cannot be, unless
    /// someone built a Rust slice over shared memory, which zerohop never does).
    #[inline]
    pub fn copy_to<M: Mem + ?Sized>(
        &self,
        mem: &M,
        off: usize,
        src: &[u8],
    ) -> Result<(), MemError> {
        let dst = mem.range_ptr(off, src.len())?;
        // SAFETY: `range_ptr` checked that `off..off + src.len()` lies in `mem` and
        // returned a pointer valid for writes of that many bytes while `mem` lives
        // (`Mem`'s implementation contract); `src` is a slice of ordinary memory,
        // valid for reads of `src.len()` bytes, and does not overlap shared memory.
        unsafe { self.copy_nonoverlapping_nt(dst.as_ptr(), src.as_ptr(), src.len()) };
        mem.note_write(src.len());
        Ok(())
    }

    /// Copies `len` bytes from `src` to `dst` with this engine's path (non-temporal if
    /// `len >= nt_threshold` and the kind streams). For callers that already hold a
    /// checked pointer (from [`Mem::range_ptr`]); they report the bytes themselves.
    ///
    /// # Safety
    /// `src` must be valid for reads and `dst` for writes of `len` bytes, and the two
    /// ranges must not overlap. No alignment is required.
    #[inline]
    pub unsafe fn copy_nonoverlapping_nt(&self, dst: *mut u8, src: *const u8, len: usize) {
        if !self.streams(len) {
            // SAFETY: the caller guarantees both ranges are valid and disjoint.
            unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
            return;
        }
        match self.kind {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an engine holds Avx512Nt only if `with_kind` / `detect` saw
            // AVX-512F on this CPU (the field is private); the pointer contract is
            // the caller's, passed on unchanged.
            CopyKind::Avx512Nt => unsafe { x86::copy_avx512_nt(dst, src, len) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, with AVX2 checked at construction.
            CopyKind::Avx2Nt => unsafe { x86::copy_avx2_nt(dst, src, len) },
            // SAFETY: unreachable in practice (`streams` is false for plain kinds, and
            // NT kinds cannot be built off x86_64); a plain copy is correct anyway.
            _ => unsafe { core::ptr::copy_nonoverlapping(src, dst, len) },
        }
    }

    /// Orders this engine's earlier non-temporal stores before any later store: ONE
    /// `sfence` per burst on the NT paths, called after the burst's last copy and
    /// before the Release store that publishes its index (a Release store or fence
    /// alone does not order non-temporal stores, even on x86). On the plain paths, and
    /// on every other architecture, it is `fence(Release)`.
    #[inline]
    pub fn fence(&self) {
        #[cfg(target_arch = "x86_64")]
        if self.kind.is_nt() {
            // sfence: drains the write-combining buffers, so the burst's streamed
            // payload is globally visible before the caller's next store (the index
            // publish, whose Release pairs with the consumer's Acquire load).
            x86::sfence();
            return;
        }
        // Release: orders the burst's plain payload stores before the index store that
        // follows; pairs with the consumer's Acquire load of that index.
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
    }

    /// Starts a burst that remembers whether any of its copies streamed, so it can
    /// skip the `sfence` when none did.
    #[inline]
    pub fn burst(&self) -> CopyBurst<'_> {
        CopyBurst {
            engine: self,
            streamed: false,
        }
    }
}

impl fmt::Display for CopyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            CopyKind::Avx512Nt | CopyKind::Avx2Nt => write!(
                f,
                "{} (non-temporal stores for copies >= {} B, plain below; sfence per burst)",
                self.kind, self.nt_threshold
            ),
            CopyKind::Plain => write!(f, "plain (memcpy; no sfence needed)"),
            CopyKind::Scalar => write!(f, "scalar (portable memcpy fallback; no sfence needed)"),
        }
    }
}

/// The copies of one burst: like the engine's methods, plus a record of whether any
/// copy streamed. End the burst with [`CopyBurst::finish`] before publishing its index.
#[derive(Debug)]
pub struct CopyBurst<'e> {
    engine: &'e CopyEngine,
    streamed: bool,
}

impl CopyBurst<'_> {
    /// [`CopyEngine::copy_to`], remembering whether it streamed.
    #[inline]
    pub fn copy_to<M: Mem + ?Sized>(
        &mut self,
        mem: &M,
        off: usize,
        src: &[u8],
    ) -> Result<(), MemError> {
        self.engine.copy_to(mem, off, src)?;
        self.streamed |= self.engine.streams(src.len());
        Ok(())
    }

    /// [`CopyEngine::copy_nonoverlapping_nt`], remembering whether it streamed.
    ///
    /// # Safety
    /// As for [`CopyEngine::copy_nonoverlapping_nt`].
    #[inline]
    pub unsafe fn copy_nonoverlapping_nt(&mut self, dst: *mut u8, src: *const u8, len: usize) {
        // SAFETY: the caller upholds the same contract.
        unsafe { self.engine.copy_nonoverlapping_nt(dst, src, len) };
        self.streamed |= self.engine.streams(len);
    }

    /// True if a copy of this burst streamed, so [`CopyBurst::finish`] will `sfence`.
    #[inline]
    pub fn needs_fence(&self) -> bool {
        self.streamed
    }

    /// Ends the burst: [`CopyEngine::fence`] if any copy streamed, else a Release
    /// fence (free on x86). Call before the Release store that publishes the index.
    #[inline]
    pub fn finish(self) {
        if self.streamed {
            self.engine.fence();
        } else {
            // Release: orders the burst's plain stores before the index store that
            // follows; pairs with the consumer's Acquire load of that index.
            core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
        }
    }
}

/// [`CopyEngine::copy_nonoverlapping_nt`] with the process-wide engine
/// ([`CopyEngine::global`]). Finish the burst with `CopyEngine::global().fence()`.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and the ranges
/// must not overlap.
#[inline]
pub unsafe fn copy_nonoverlapping_nt(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller's contract is the engine method's contract.
    unsafe { CopyEngine::global().copy_nonoverlapping_nt(dst, src, len) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::{
        __m256i, __m512i, _mm256_loadu_si256, _mm256_stream_si256, _mm512_loadu_si512,
        _mm512_stream_si512, _mm_sfence,
    };

    /// Cache-line size the non-temporal paths align their streaming stores to.
    const LINE: usize = 64;

    /// One `sfence`.
    #[inline(always)]
    #[allow(unused_unsafe)] // `_mm_sfence` is a safe fn on newer compilers (SSE is baseline)
    pub(super) fn sfence() {
        // SAFETY: SSE is part of the x86_64 baseline, so `sfence` exists on every
        // x86_64 CPU; it has no memory operands.
        unsafe { _mm_sfence() };
    }

    /// Bytes from `dst` to the next 64-byte boundary (0 if aligned).
    #[inline(always)]
    fn head_len(dst: *mut u8) -> usize {
        (LINE - (dst as usize & (LINE - 1))) & (LINE - 1)
    }

    /// AVX-512 non-temporal copy: plain head, streamed 64-byte lines, plain tail.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; `src` is valid for reads and `dst` for writes of
    /// `len` bytes; the ranges do not overlap.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn copy_avx512_nt(dst: *mut u8, src: *const u8, len: usize) {
        let head = head_len(dst);
        if len < head + LINE {
            // Not even one whole aligned line: nothing to stream.
            // SAFETY: the caller's contract (valid, disjoint ranges of `len` bytes).
            unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
            return;
        }
        // SAFETY: head < len, so both head ranges lie inside the caller's ranges; after
        // it `d` is 64-byte aligned and `d..d + n`, `s..s + n` are the rest of them.
        let (mut d, mut s, mut n) = unsafe {
            core::ptr::copy_nonoverlapping(src, dst, head);
            (dst.add(head), src.add(head), len - head)
        };
        while n >= 4 * LINE {
            // SAFETY: n >= 256, so the four 64-byte loads read inside `s..s + n` and
            // the four stores write inside `d..d + n`; `d` is 64-byte aligned, as
            // `_mm512_stream_si512` requires; AVX-512F is available (caller).
            unsafe {
                let a = _mm512_loadu_si512(s.cast::<__m512i>());
                let b = _mm512_loadu_si512(s.add(LINE).cast::<__m512i>());
                let c = _mm512_loadu_si512(s.add(2 * LINE).cast::<__m512i>());
                let e = _mm512_loadu_si512(s.add(3 * LINE).cast::<__m512i>());
                _mm512_stream_si512(d.cast::<__m512i>(), a);
                _mm512_stream_si512(d.add(LINE).cast::<__m512i>(), b);
                _mm512_stream_si512(d.add(2 * LINE).cast::<__m512i>(), c);
                _mm512_stream_si512(d.add(3 * LINE).cast::<__m512i>(), e);
                d = d.add(4 * LINE);
                s = s.add(4 * LINE);
            }
            n -= 4 * LINE;
        }
        while n >= LINE {
            // SAFETY: n >= 64: one load and one aligned streaming store inside the
            // remaining ranges; AVX-512F is available (caller).
            unsafe {
                let a = _mm512_loadu_si512(s.cast::<__m512i>());
                _mm512_stream_si512(d.cast::<__m512i>(), a);
                d = d.add(LINE);
                s = s.add(LINE);
            }
            n -= LINE;
        }
        // SAFETY: the last n < 64 bytes of the caller's ranges.
        unsafe { core::ptr::copy_nonoverlapping(s, d, n) };
    }

    /// AVX2 non-temporal copy: plain head, streamed 64-byte lines (two 32-byte
    /// streaming stores each), plain tail.
    ///
    /// # Safety
    /// The CPU supports AVX2; `src` is valid for reads and `dst` for writes of `len`
    /// bytes; the ranges do not overlap.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn copy_avx2_nt(dst: *mut u8, src: *const u8, len: usize) {
        const HALF: usize = LINE / 2;
        let head = head_len(dst);
        if len < head + LINE {
            // SAFETY: the caller's contract (valid, disjoint ranges of `len` bytes).
            unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
            return;
        }
        // SAFETY: as in `copy_avx512_nt`: the head lies inside both ranges, and `d`
        // is 64-byte aligned afterwards.
        let (mut d, mut s, mut n) = unsafe {
            core::ptr::copy_nonoverlapping(src, dst, head);
            (dst.add(head), src.add(head), len - head)
        };
        while n >= 2 * LINE {
            // SAFETY: n >= 128: four 32-byte loads and stores inside the remaining
            // ranges; `d` is 64-byte (so 32-byte) aligned, as `_mm256_stream_si256`
            // requires; AVX2 is available (caller).
            unsafe {
                let a = _mm256_loadu_si256(s.cast::<__m256i>());
                let b = _mm256_loadu_si256(s.add(HALF).cast::<__m256i>());
                let c = _mm256_loadu_si256(s.add(2 * HALF).cast::<__m256i>());
                let e = _mm256_loadu_si256(s.add(3 * HALF).cast::<__m256i>());
                _mm256_stream_si256(d.cast::<__m256i>(), a);
                _mm256_stream_si256(d.add(HALF).cast::<__m256i>(), b);
                _mm256_stream_si256(d.add(2 * HALF).cast::<__m256i>(), c);
                _mm256_stream_si256(d.add(3 * HALF).cast::<__m256i>(), e);
                d = d.add(2 * LINE);
                s = s.add(2 * LINE);
            }
            n -= 2 * LINE;
        }
        if n >= LINE {
            // SAFETY: n >= 64: two loads and two aligned streaming stores inside the
            // remaining ranges; AVX2 is available (caller).
            unsafe {
                let a = _mm256_loadu_si256(s.cast::<__m256i>());
                let b = _mm256_loadu_si256(s.add(HALF).cast::<__m256i>());
                _mm256_stream_si256(d.cast::<__m256i>(), a);
                _mm256_stream_si256(d.add(HALF).cast::<__m256i>(), b);
                d = d.add(LINE);
                s = s.add(LINE);
            }
            n -= LINE;
        }
        // SAFETY: the last n < 64 bytes of the caller's ranges.
        unsafe { core::ptr::copy_nonoverlapping(s, d, n) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Counted;
    use proptest::prelude::*;
    use rings::Region;

    /// Guard bytes checked on each side of every destination range.
    const GUARD: usize = 64;
    const GUARD_BYTE: u8 = 0xA5;

    /// Engines for every supported kind: streaming everything (threshold 0) and with
    /// the default threshold.
    fn engines() -> Vec<CopyEngine> {
        let mut v = Vec::new();
        for k in CopyKind::ALL {
            if let Ok(e) = CopyEngine::with_kind(k) {
                v.push(e.with_threshold(0));
                if k.is_nt() {
                    v.push(e);
                }
            }
        }
        v
    }

    fn pattern(len: usize, seed: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(131).wrapping_add(seed * 7 + 1) % 251) as u8)
            .collect()
    }

    /// Copies `src[src_off..src_off + len]` to `region` at `GUARD + dst_mis` and checks
    /// the range and `GUARD` bytes each side.
    fn check_copy(
        e: &CopyEngine,
        region: &Region,
        src: &[u8],
        src_off: usize,
        len: usize,
        dst_mis: usize,
    ) {
        let off = GUARD + dst_mis;
        let want = &src[src_off..src_off + len];
        // Guards, and a destination that differs from the source in every byte.
        let mut before = vec![GUARD_BYTE; GUARD + len + GUARD];
        for (b, s) in before[GUARD..GUARD + len].iter_mut().zip(want) {
            *b = !*s;
        }
        region.write_bytes(off - GUARD, &before).unwrap();
        e.copy_to(region, off, want).unwrap();
        e.fence();
        let mut after = vec![0u8; GUARD + len + GUARD];
        region.read_bytes(off - GUARD, &mut after).unwrap();
        let ctx = format!("{e:?} len {len} dst_mis {dst_mis} src_off {src_off}");
        assert!(
            after[..GUARD].iter().all(|&b| b == GUARD_BYTE),
            "head guard: {ctx}"
        );
        assert!(
            after[GUARD + len..].iter().all(|&b| b == GUARD_BYTE),
            "tail guard: {ctx}"
        );
        assert!(after[GUARD..GUARD + len] == *want, "payload: {ctx}");
    }

    #[test]
    fn every_path_copies_small_lengths_at_every_misalignment() {
        let region = Region::heap(GUARD + 64 + 300 + GUARD);
        assert_eq!(region.addr() % 64, 0);
        let src = pattern(300 + 64, 1);
        for e in engines() {
            for src_off in [0, 1, 7, 33] {
                for dst_mis in 0..64 {
                    for len in 0..=300 {
                        check_copy(&e, &region, &src, src_off, len, dst_mis);
                    }
                }
            }
        }
    }

    #[test]
    fn every_path_copies_large_lengths_at_every_misalignment() {
        let max = 64 * 1024 + 7;
        let region = Region::heap(GUARD + 64 + max + GUARD);
        let src = pattern(max + 64, 2);
        for e in engines() {
            for len in [4096, 4096 + 63, max] {
                for src_off in [0, 3, 32] {
                    for dst_mis in 0..64 {
                        check_copy(&e, &region, &src, src_off, len, dst_mis);
                    }
                }
            }
        }
    }

    #[test]
    fn out_of_bounds_destination_is_an_error_and_writes_nothing() {
        let region = Region::heap(256);
        let counted = Counted::new(region.clone());
        for e in engines() {
            assert_eq!(
                e.copy_to(&counted, 250, &[1u8; 7]),
                Err(MemError::OutOfBounds {
                    offset: 250,
                    len: 7,
                    size: 256
                })
            );
            assert!(e.copy_to(&counted, usize::MAX, &[1u8; 2]).is_err());
            assert!(e.copy_to(&counted, 0, &[1u8; 257]).is_err());
            // An empty copy at the very end is in bounds.
            e.copy_to(&counted, 256, &[]).unwrap();
        }
        let mut all = [0u8; 256];
        region.read_bytes(0, &mut all).unwrap();
        assert!(all.iter().all(|&b| b == 0));
        assert_eq!(counted.snapshot().bytes_written, 0);
    }

    #[test]
    fn counted_window_sees_the_bytes() {
        let counted = Counted::new(Region::heap(8192));
        let src = pattern(5000, 3);
        let mut total = 0u64;
        for e in engines() {
            let mut b = e.burst();
            b.copy_to(&counted, 1, &src[..100]).unwrap();
            b.copy_to(&counted, 200, &src).unwrap();
            assert_eq!(b.needs_fence(), e.streams(100) || e.streams(5000));
            b.finish();
            total += 5100;
            assert_eq!(counted.snapshot().bytes_written, total);
        }
        let mut out = vec![0u8; 5000];
        counted.inner().read_bytes(200, &mut out).unwrap();
        assert_eq!(out, src);
    }

    #[test]
    fn fence_flags_and_descriptions() {
        for e in engines() {
            assert_eq!(e.needs_fence(), e.kind().is_nt());
            assert!(e.describe().starts_with(e.kind().name()));
            e.fence(); // callable on every path
        }
        let plain = CopyEngine::with_kind(CopyKind::Plain).unwrap();
        assert!(!plain.needs_fence() && !plain.streams(1 << 20));
        let nt = CopyEngine::detect().with_threshold(256);
        assert!(!nt.streams(255));
        assert_eq!(nt.streams(256), nt.kind().is_nt());
        assert!(CopyEngine::global().kind().supported());
    }

    #[test]
    fn detection_and_settings() {
        let best = CopyKind::detect();
        assert!(best.supported());
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(
                CopyKind::Avx512Nt.supported(),
                std::arch::is_x86_feature_detected!("avx512f")
            );
            assert_ne!(best, CopyKind::Scalar);
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(best, CopyKind::Scalar);

        assert_eq!(
            CopyEngine::from_settings(None, None).unwrap(),
            CopyEngine::detect()
        );
        assert_eq!(
            CopyEngine::from_settings(Some("auto"), Some("")).unwrap(),
            CopyEngine::detect()
        );
        let e = CopyEngine::from_settings(Some("PLAIN"), Some("4096")).unwrap();
        assert_eq!((e.kind(), e.nt_threshold()), (CopyKind::Plain, 4096));
        assert!(matches!(
            CopyEngine::from_settings(Some("sse9"), None),
            Err(CopyError::BadSetting { var: ENV_KIND, .. })
        ));
        assert!(matches!(
            CopyEngine::from_settings(None, Some("1k")),
            Err(CopyError::BadSetting {
                var: ENV_NT_MIN,
                ..
            })
        ));
        for k in CopyKind::ALL {
            assert_eq!(k.name().parse::<CopyKind>().unwrap(), k);
            match CopyEngine::with_kind(k) {
                Ok(e) => assert_eq!(e.kind(), k),
                Err(err) => assert_eq!(err, CopyError::Unsupported(k)),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn prop_copy_matches_source(
            len in 0usize..9000,
            dst_mis in 0usize..128,
            src_off in 0usize..64,
            kind in 0usize..4,
            threshold in prop_oneof![Just(0usize), Just(DEFAULT_NT_THRESHOLD), 0usize..2048],
        ) {
            let Ok(e) = CopyEngine::with_kind(CopyKind::ALL[kind]) else {
                return Ok(());
            };
            let e = e.with_threshold(threshold);
            let region = Region::heap(GUARD + 128 + 9000 + GUARD);
            let src = pattern(9000 + 64, len);
            check_copy(&e, &region, &src, src_off, len, dst_mis);
        }
    }
}
