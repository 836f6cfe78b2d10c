//! Operation-sequence interpreters for coverage-guided fuzzing (`rings/fuzz/`) and
//! their stable replay (the corpus replay and property tests below).
//!
//! Each target turns a byte string into a short configuration plus a sequence of
//! operations, and runs them against heap-backed [`Region`](crate::mem::Region)s:
//! a hostile peer writes whatever the operations say into the memory it shares with
//! the half under test, and the half under test polls, pops, pushes and resets. After
//! every operation the interpreter checks the invariants of GUIDE.md section 8:
//!
//! - no panic, no endless loop (each operation is bounded by the ring size);
//! - everything handed out (chains, buffers, messages, credits) lies inside the
//!   region or pool it names;
//! - a peer violation marks the half broken, and a broken half refuses work until
//!   `reset`;
//! - the half writes only the parts of the memory it owns.
//!
//! ```text
//!  fuzz input:  | config bytes | op | op | op | ...        (decoding is total:
//!  op:          | tag % COUNT | field | field | ...        missing bytes read as 0)
//! ```
//!
//! The byte encoding is our own rather than `arbitrary`'s so that it has an inverse
//! ([`Ops::encode`]): the seed corpus is written from the unit-test scenarios
//! (`cargo test -p rings --lib fuzzing::write_seed_corpus -- --ignored`), which needs
//! op sequences turned back into bytes.
//!
//! Only compiled for tests and with the `fuzzing` feature; not a stable API.

pub mod packed;
pub mod posted;
pub mod split;
pub mod window;

#[cfg(all(test, not(loom)))]
mod tests;

/// Upper bound on the operations one input runs (keeps one run short).
pub const MAX_OPS: usize = 2048;

/// A target's entry point: runs one fuzz input.
pub type Target = fn(&[u8]);

/// Every target: its corpus directory name and its entry point.
pub const TARGETS: &[(&str, Target)] = &[
    ("split_device", split::run_device),
    ("split_driver", split::run_driver),
    ("packed_device", packed::run_device),
    ("packed_driver", packed::run_driver),
    ("posted_rx", posted::run_rx),
    ("posted_tx", posted::run_tx),
    ("window", window::run),
];

/// A reader over fuzz input that never fails: past the end every value is zero.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }
    /// True when every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    /// `n` bytes (zero-padded past the end).
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.u8();
        }
        out
    }
}

/// A value with a fixed byte encoding in fuzz input.
pub trait Field: Sized {
    /// Decodes one value.
    fn get(r: &mut Input<'_>) -> Self;
    /// Appends its encoding.
    fn put(&self, out: &mut Vec<u8>);
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl Field for $t {
            fn get(r: &mut Input<'_>) -> Self {
                <$t>::from_le_bytes(r.bytes())
            }
            fn put(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
int_field!(u8, u16, u32, u64);

impl Field for bool {
    fn get(r: &mut Input<'_>) -> Self {
        r.u8() & 1 != 0
    }
    fn put(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

/// Up to 255 raw bytes (a length byte, then the bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Field for Bytes {
    fn get(r: &mut Input<'_>) -> Self {
        let n = r.u8();
        Bytes((0..n).map(|_| r.u8()).collect())
    }
    fn put(&self, out: &mut Vec<u8>) {
        let n = self.0.len().min(255);
        out.push(n as u8);
        out.extend_from_slice(&self.0[..n]);
    }
}

/// An operation enum with a byte encoding.
pub trait Ops: Sized {
    /// Decodes one operation.
    fn decode(r: &mut Input<'_>) -> Self;
    /// Appends its encoding.
    fn encode(&self, out: &mut Vec<u8>);
}

/// Declares an operation enum (every variant has braces, possibly empty, and an
/// explicit tag `0..COUNT` in order) and its [`Ops`] encoding.
#[macro_export]
#[doc(hidden)]
macro_rules! fuzz_ops {
    (
        $(#[$m:meta])*
        pub enum $name:ident {
            $( $(#[$vm:meta])* $var:ident = $tag:literal { $($f:ident : $t:ty),* $(,)? } ),* $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum $name {
            $( $(#[$vm])* $var { $(#[allow(missing_docs)] $f: $t),* } ),*
        }

        impl $crate::fuzzing::Ops for $name {
            fn decode(r: &mut $crate::fuzzing::Input<'_>) -> Self {
                const COUNT: u8 = [$($tag),*].len() as u8;
                let tag = r.u8() % COUNT;
                $(
                    if tag == $tag {
                        return $name::$var { $($f: <$t as $crate::fuzzing::Field>::get(r)),* };
                    }
                )*
                // Tags are 0..COUNT in order, so this is only reached if the list
                // is misnumbered; decode as the first variant rather than panic.
                Self::first(r)
            }
            fn encode(&self, out: &mut Vec<u8>) {
                match self {
                    $(
                        $name::$var { $($f),* } => {
                            out.push($tag);
                            $( $crate::fuzzing::Field::put($f, out); )*
                        }
                    )*
                }
            }
        }

        impl $name {
            #[allow(unreachable_code, unused_variables)]
            fn first(r: &mut $crate::fuzzing::Input<'_>) -> Self {
                $( return $name::$var { $($f: <$t as $crate::fuzzing::Field>::get(r)),* }; )*
            }
        }
    };
}

/// Decodes a configuration `C` and then operations until the input is used up (at
/// most [`MAX_OPS`]).
pub fn decode<C: Field, O: Ops>(data: &[u8]) -> (C, Vec<O>) {
    let mut r = Input::new(data);
    let cfg = C::get(&mut r);
    let mut ops = Vec::new();
    while !r.is_empty() && ops.len() < MAX_OPS {
        ops.push(O::decode(&mut r));
    }
    (cfg, ops)
}

/// Encodes a configuration and operations (the inverse of [`decode`]).
pub fn encode<C: Field, O: Ops>(cfg: &C, ops: &[O]) -> Vec<u8> {
    let mut out = Vec::new();
    cfg.put(&mut out);
    for o in ops {
        o.encode(&mut out);
    }
    out
}

/// Checks the broken-queue rule after one call: a peer violation must leave the
/// half broken, and a half that was broken must refuse the call.
#[track_caller]
pub(crate) fn check_broken<T: core::fmt::Debug>(
    was_broken: bool,
    res: &Result<T, crate::RingError>,
    is_broken: bool,
) {
    match res {
        Ok(v) => assert!(!was_broken, "a broken half accepted a call: {v:?}"),
        Err(e) => {
            if e.is_peer_violation() && !matches!(e, crate::RingError::Mem(_)) {
                assert!(
                    is_broken,
                    "peer violation {e:?} did not mark the half broken"
                );
            }
            if was_broken {
                assert!(is_broken, "the broken mark was cleared without a reset");
            }
        }
    }
}

std::thread_local! {
    static PROGRESS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// Counts one successful consume (a chain popped, a used buffer or message polled,
/// a credit taken, a header opened): the seed tests check their scenarios get that far.
pub(crate) fn progress() {
    PROGRESS.with(|p| p.set(p.get() + 1));
}

/// Successful consumes so far on this thread.
pub fn progress_count() -> u64 {
    PROGRESS.with(|p| p.get())
}

/// Snapshot of `len` bytes at `off` of `mem` (for "wrote only its own part").
pub(crate) fn snapshot<M: crate::Mem>(mem: &M, off: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_bytes(off, &mut v)
        .expect("snapshot range inside the region");
    v
}

/// Declares a configuration struct and its [`Field`] encoding.
#[macro_export]
#[doc(hidden)]
macro_rules! fuzz_config {
    (
        $(#[$m:meta])*
        pub struct $name:ident { $( $(#[$fm:meta])* $f:ident : $t:ty ),* $(,)? }
    ) => {
        $(#[$m])*
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct $name { $( $(#[$fm])* pub $f: $t ),* }

        impl $crate::fuzzing::Field for $name {
            fn get(r: &mut $crate::fuzzing::Input<'_>) -> Self {
                $name { $($f: <$t as $crate::fuzzing::Field>::get(r)),* }
            }
            fn put(&self, out: &mut Vec<u8>) {
                $( $crate::fuzzing::Field::put(&self.$f, out); )*
            }
        }
    };
}
