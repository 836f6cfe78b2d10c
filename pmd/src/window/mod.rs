//! Memory windows: the mapped regions a port shares with its peer (GUIDE.md sections
//! 2, 5, 6 and 8).
//!
//! One trait, [`Window`], several backends:
//!
//! | spec                          | backend            | memory                               |
//! |-------------------------------|--------------------|--------------------------------------|
//! | `shm:/dev/shm/NAME` or a path | [`ShmWindow`]      | a file (tmpfs), `MAP_SHARED`         |
//! | `huge:memfd`, `huge:PATH`     | [`HugeWindow`]     | memfd/hugetlbfs, 4 KiB fallback      |
//! | `pci:0000:00:03.0/bar2[,uc]`  | [`PciBarWindow`]   | sysfs `resourceN_wc` / `resourceN`   |
//! | `heap:SIZE`                   | [`HeapWindow`]     | a heap buffer (tests and Miri only)  |
//!
//! ```text
//!   constructor (unsafe inside, once)          everything after (safe, checked)
//!   open/ftruncate/mmap ──► Region::from_raw ──► Window::region() ──► Region::sub(..)
//!                                                    │                    │
//!                                            rings::header          rings (split, packed,
//!                                            (init / open)          posted) over `Mem`
//! ```
//!
//! Only the constructors touch raw memory (through `memmap2`, with a `// SAFETY:`
//! comment at the one `Region::from_raw` call in `map_file`); the rest of the code
//! goes through [`rings::Region`], which is bounds-checked. The [`Region`] keeps the
//! mapping alive (it owns an `Arc` of it), so sub-regions may outlive the window
//! object; dropping the window only removes a file it created.
//!
//! The wrappers in [`instrument`] ([`Counted`], [`LinkModel`]) implement
//! [`rings::Mem`] over any memory and make a PCIe link visible on one host: they
//! count remote reads and writes and can charge a cost per remote read and doorbell.
//!
//! A window file that another process truncates while we have it mapped makes our
//! accesses beyond the new end fault (SIGBUS): the file permissions (0600, owner
//! checks) are what protect against that; see `docs/windows.md`.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use rings::header::{self, Expect, Header, HeaderInfo, HeaderParams};
use rings::mem::Owner;
use rings::Region;

pub mod heap;
pub mod hugepage;
pub mod instrument;
pub mod pci;
pub mod shm;
pub mod spec;

pub use heap::HeapWindow;
pub use hugepage::{HugeInfo, HugeWindow};
pub use instrument::{AccessCounters, AccessSnapshot, Counted, LinkCost, LinkModel};
pub use pci::{PciBarWindow, PciDevice, PciOptions, PciSpec};
pub use shm::ShmWindow;
pub use spec::{create_spec, open_spec, SpecError, WindowSpec};

/// What kind of memory a window got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WindowKind {
    /// A regular file (tmpfs under /dev/shm or elsewhere), normal pages.
    Shm,
    /// An anonymous memfd with normal pages (the huge-page fallback for
    /// `huge:memfd`).
    Memfd,
    /// Huge pages (memfd with `MFD_HUGETLB` or a hugetlbfs file).
    HugePages {
        /// Huge page size in bytes.
        page_size: usize,
    },
    /// A PCI BAR through sysfs.
    PciBar {
        /// Mapped write-combining (`resourceN_wc`) rather than uncached.
        write_combining: bool,
    },
    /// A heap buffer (unit tests and Miri only; not shareable between processes).
    Heap,
}

impl fmt::Display for WindowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowKind::Shm => f.write_str("shm file, 4 KiB pages"),
            WindowKind::Memfd => f.write_str("memfd, 4 KiB pages"),
            WindowKind::HugePages { page_size } => {
                write!(f, "huge pages of {}", human_size(*page_size as u64))
            }
            WindowKind::PciBar {
                write_combining: true,
            } => f.write_str("PCI BAR, write-combining"),
            WindowKind::PciBar {
                write_combining: false,
            } => f.write_str("PCI BAR, uncached"),
            WindowKind::Heap => f.write_str("heap buffer (tests only)"),
        }
    }
}

/// A mapped memory window shared with a peer.
///
/// A port takes the whole [`Window::region`] and carves it with
/// [`Region::sub`] (usually following the areas of the window header); the window
/// object itself only has to live as long as the backing file should.
pub trait Window: Send + Sync + fmt::Debug {
    /// The whole mapped window.
    fn region(&self) -> &Region;

    /// What memory the window got (after any fallback).
    fn kind(&self) -> WindowKind;

    /// One line for logs: kind, size and where it lives.
    fn describe(&self) -> String;

    /// The file behind the window, if it has one a peer can open.
    fn path(&self) -> Option<&Path> {
        None
    }

    /// Size in bytes.
    fn len(&self) -> usize {
        self.region().len()
    }

    /// True if the window has no bytes (never for a constructed window).
    fn is_empty(&self) -> bool {
        self.region().is_empty()
    }

    /// Granularity of the mapping (4096, or the huge page size).
    fn page_size(&self) -> usize {
        page_size()
    }
}

/// Everything a window constructor can report. Messages name the file and say what
/// is wrong.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// A system call on `path` failed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// What we tried ("open", "ftruncate", "fstat", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `create` found a file already there (O_EXCL).
    #[error(
        "{path}: already exists (another window, or a stale one: remove it if no process uses it)"
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// No such file.
    #[error("{path}: no such file (has the peer created the window?)")]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The path is a symbolic link (opened with O_NOFOLLOW).
    #[error("{path}: is a symbolic link; refusing to follow it (give the real path)")]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// The path is not a regular file.
    #[error("{path}: not a regular file")]
    NotRegular {
        /// The path.
        path: PathBuf,
    },
    /// The file belongs to another user.
    #[error("{path}: owned by uid {owner}, not by us (uid {ours}); refusing (allow_foreign(true), or the tool's --allow-foreign, to accept)")]
    ForeignOwner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        ours: u32,
    },
    /// The file is writable by group or others.
    #[error("{path}: mode {mode:04o} is writable by group or others; refusing (chmod 600, or allow_foreign(true) / --allow-foreign)")]
    WritableByOthers {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is smaller than a window can be.
    #[error("{path}: {size} bytes, smaller than the {need} bytes a window needs (truncated or not a window)")]
    TooSmall {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The minimum.
        need: u64,
    },
    /// A size argument is unusable.
    #[error("invalid window size {size}: {why}")]
    InvalidSize {
        /// The size given.
        size: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// mmap failed.
    #[error("{path}: mmap of {len} bytes failed: {source}")]
    Map {
        /// The file.
        path: PathBuf,
        /// Bytes we tried to map.
        len: usize,
        /// The OS error.
        source: io::Error,
    },
    /// The window's header is invalid.
    #[error("{window}: {source}")]
    Header {
        /// The window (describe()).
        window: String,
        /// What is wrong with the header.
        source: header::OpenError,
    },
    /// Writing the window's header failed.
    #[error("{window}: cannot write header: {source}")]
    HeaderInit {
        /// The window (describe()).
        window: String,
        /// Why.
        source: header::InitError,
    },
    /// A PCI BAR problem.
    #[error(transparent)]
    Pci(#[from] pci::PciError),
    /// A window spec could not be parsed.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The operation makes no sense for this backend.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Options for opening an existing window file.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    allow_foreign: bool,
    min_size: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            allow_foreign: false,
            min_size: rings::header::HEADER_SIZE as u64,
        }
    }
}

impl OpenOptions {
    /// Default options: refuse foreign or group/other-writable files, and files
    /// smaller than a window header.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accept a file owned by another user or writable by group/others.
    pub fn allow_foreign(mut self, yes: bool) -> Self {
        self.allow_foreign = yes;
        self
    }

    /// Refuse files smaller than `bytes` (default: one header page).
    pub fn min_size(mut self, bytes: u64) -> Self {
        self.min_size = bytes;
        self
    }
}

/// The system page size (4096 on every platform zerohop targets; asked once).
pub fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no memory-safety preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if n > 0 {
            n as usize
        } else {
            4096
        }
    })
}

/// Rounds `size` up to a multiple of `unit` (a power of two); errors on 0 or overflow.
pub(crate) fn round_size(size: usize, unit: usize) -> Result<usize, WindowError> {
    if size == 0 {
        return Err(WindowError::InvalidSize {
            size: 0,
            why: "a window needs at least one page",
        });
    }
    size.checked_next_multiple_of(unit)
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or(WindowError::InvalidSize {
            size: size as u64,
            why: "too large",
        })
}

/// Formats a byte count as "16 MiB", "4 KiB" or "123 bytes".
pub fn human_size(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (unit, name) in UNITS {
        if n >= unit && n & (unit - 1) == 0 {
            return format!("{} {name}", n / unit);
        }
    }
    format!("{n} bytes")
}

/// Maps `len` bytes of `file` shared and read-write, and wraps the mapping in a
/// [`Region`] that keeps it alive. `path` is for error messages.
pub(crate) fn map_file(file: &File, len: usize, path: &Path) -> Result<Region, WindowError> {
    let map = memmap2::MmapOptions::new()
        .len(len)
        .map_raw(file)
        .map_err(|source| WindowError::Map {
            path: path.to_owned(),
            len,
            source,
        })?;
    let ptr = NonNull::new(map.as_mut_ptr()).ok_or_else(|| WindowError::Map {
        path: path.to_owned(),
        len,
        source: io::Error::other("mmap returned null"),
    })?;
    let owner: Owner = Arc::new(map);
    // SAFETY: `map` is a live MAP_SHARED, PROT_READ|PROT_WRITE mapping of exactly
    // `len` bytes starting at `ptr`; it is unmapped only when the last clone of
    // `owner` drops, and every clone and sub-view of the Region holds one. Nothing
    // creates Rust references into it: all access goes through the Region's atomic
    // and volatile operations. (Accesses past the end of a file that someone else
    // truncated would fault; constructors check the file size and permissions.)
    Ok(unsafe { Region::from_raw(ptr, len, Some(owner)) })
}

/// A file mapping placed between two `PROT_NONE` guard areas (see
/// [`map_file_guarded`]); unmaps the whole reservation on drop.
struct GuardedMap {
    base: NonNull<u8>,
    total: usize,
}

// SAFETY: GuardedMap only owns the address range; it is unmapped once, in Drop, and
// all access to the mapped part goes through the Region's atomic/volatile operations.
unsafe impl Send for GuardedMap {}
// SAFETY: as for Send: GuardedMap exposes no access of its own.
unsafe impl Sync for GuardedMap {}

impl Drop for GuardedMap {
    fn drop(&mut self) {
        // SAFETY: base..base+total is the reservation made in map_file_guarded (guards
        // and the file mapping inside it), owned by this value alone, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.total) };
    }
}

/// Like [`map_file`], but the mapping sits between two inaccessible (`PROT_NONE`)
/// guard areas of `guard` bytes each (a multiple of the page size; the mapping is
/// aligned to it). An access just before or after the window then faults (SIGSEGV)
/// instead of silently reading or writing neighbouring memory: the hostile-peer test
/// relies on this to prove that no peer value makes the rings access outside the
/// window (docs/THREAT_MODEL.md). Used for shm and memfd windows; PCI BARs keep
/// [`map_file`].
pub(crate) fn map_file_guarded(
    file: &File,
    len: usize,
    path: &Path,
    guard: usize,
) -> Result<Region, WindowError> {
    use std::os::fd::AsRawFd;
    let map_err = |source: io::Error| WindowError::Map {
        path: path.to_owned(),
        len,
        source,
    };
    if len == 0 || guard == 0 || !guard.is_multiple_of(page_size()) {
        return map_file(file, len, path);
    }
    // Reserve guard + len (rounded to `guard`) + guard, plus `guard` of slack to
    // align the file mapping to `guard`.
    let body = len.div_ceil(guard).checked_mul(guard);
    let total = body
        .and_then(|b| b.checked_add(3 * guard))
        .ok_or_else(|| map_err(io::Error::other("window size overflows")))?;
    // SAFETY: an anonymous PROT_NONE reservation at an address of the kernel's
    // choosing; it aliases nothing.
    let raw = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(map_err(io::Error::last_os_error()));
    }
    let Some(base) = NonNull::new(raw.cast::<u8>()) else {
        return Err(map_err(io::Error::other("mmap returned null")));
    };
    // From here on the reservation is released on every path by the owner.
    let owner = GuardedMap { base, total };
    let start = (base.as_ptr() as usize + guard).next_multiple_of(guard);
    // SAFETY: MAP_FIXED over `start..start + len`, which lies inside our own
    // reservation (start >= base + guard, start + len <= base + total - guard), so it
    // replaces only pages we own; the file is at least `len` bytes (checked by the
    // callers).
    let got = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            file.as_raw_fd(),
            0,
        )
    };
    if got == libc::MAP_FAILED || got as usize != start {
        return Err(map_err(io::Error::last_os_error()));
    }
    let Some(ptr) = NonNull::new(got.cast::<u8>()) else {
        return Err(map_err(io::Error::other("mmap returned null")));
    };
    let owner: Owner = Arc::new(owner);
    // SAFETY: `ptr..ptr + len` is a live MAP_SHARED, PROT_READ|PROT_WRITE mapping of
    // the file inside the reservation `owner` keeps until the last clone drops; every
    // clone and sub-view of the Region holds one. Nothing creates Rust references
    // into it (see map_file).
    Ok(unsafe { Region::from_raw(ptr, len, Some(owner)) })
}

/// Maps an `io::Error` from opening `path` to the matching typed error.
pub(crate) fn open_error(path: &Path, op: &'static str, e: io::Error) -> WindowError {
    let path = path.to_owned();
    match e.raw_os_error() {
        Some(libc::EEXIST) => WindowError::Exists { path },
        Some(libc::ENOENT) => WindowError::NotFound { path },
        Some(libc::ELOOP) => WindowError::Symlink { path },
        Some(libc::EISDIR) => WindowError::NotRegular { path },
        _ => WindowError::Io {
            op,
            path,
            source: e,
        },
    }
}

/// Checks an opened window file: a regular file, at least `opts.min_size` bytes,
/// owned by us and not writable by group/others (unless `allow_foreign`). Returns
/// its size.
pub(crate) fn check_file(
    file: &File,
    path: &Path,
    opts: &OpenOptions,
    check_mode: bool,
) -> Result<u64, WindowError> {
    use std::os::unix::fs::MetadataExt;
    let md = file.metadata().map_err(|source| WindowError::Io {
        op: "fstat",
        path: path.to_owned(),
        source,
    })?;
    if !md.file_type().is_file() {
        return Err(WindowError::NotRegular {
            path: path.to_owned(),
        });
    }
    if !opts.allow_foreign {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let ours = unsafe { libc::geteuid() };
        if md.uid() != ours {
            return Err(WindowError::ForeignOwner {
                path: path.to_owned(),
                owner: md.uid(),
                ours,
            });
        }
        if check_mode && md.mode() & 0o022 != 0 {
            return Err(WindowError::WritableByOthers {
                path: path.to_owned(),
                mode: md.mode() & 0o7777,
            });
        }
    }
    if md.len() < opts.min_size {
        return Err(WindowError::TooSmall {
            path: path.to_owned(),
            size: md.len(),
            need: opts.min_size,
        });
    }
    Ok(md.len())
}

/// Writes a fresh header into `w` (the creator side; `creator_pid` is filled in).
pub fn init_header(w: &dyn Window, params: &HeaderParams) -> Result<HeaderInfo, WindowError> {
    let mut p = params.clone();
    if p.creator_pid == 0 {
        p.creator_pid = std::process::id();
    }
    Header::init(w.region(), &p).map_err(|source| WindowError::HeaderInit {
        window: w.describe(),
        source,
    })
}

/// Reads and validates the header of `w` (the peer side); errors name the window.
pub fn open_header(w: &dyn Window, expect: &Expect) -> Result<HeaderInfo, WindowError> {
    Header::open(w.region(), expect).map_err(|source| WindowError::Header {
        window: w.describe(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_and_print() {
        assert_eq!(round_size(1, 4096).unwrap(), 4096);
        assert_eq!(round_size(8192, 4096).unwrap(), 8192);
        assert!(round_size(0, 4096).is_err());
        assert!(round_size(usize::MAX, 4096).is_err());
        assert_eq!(human_size(2 << 20), "2 MiB");
        assert_eq!(human_size(4096), "4 KiB");
        assert_eq!(human_size(100), "100 bytes");
    }

    /// The protection of the mapping that contains `addr`, from /proc/self/maps.
    fn prot_at(addr: usize) -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        maps.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            let (range, perms) = (it.next()?, it.next()?);
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            (a <= addr && addr < b).then(|| perms.to_owned())
        })
    }

    #[test]
    fn shm_windows_have_guard_pages() {
        let path = std::env::temp_dir().join(format!("zh-guard-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let w = ShmWindow::create(&path, 3 * 4096).unwrap();
        let r = w.region();
        let (start, end) = (r.addr(), r.addr() + r.len());
        assert!(prot_at(start).unwrap().starts_with("rw"));
        assert!(prot_at(end - 1).unwrap().starts_with("rw"));
        assert_eq!(prot_at(start - 1).as_deref(), Some("---p"));
        assert_eq!(prot_at(end).as_deref(), Some("---p"));
        let peer = ShmWindow::open(&path, &OpenOptions::new()).unwrap();
        let p = peer.region();
        assert_eq!(prot_at(p.addr() - 1).as_deref(), Some("---p"));
        assert_eq!(prot_at(p.addr() + p.len()).as_deref(), Some("---p"));
        drop(peer);
        drop(w);
        assert!(!path.exists());
    }
}
