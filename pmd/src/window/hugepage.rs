//! [`HugeWindow`]: a window on huge pages, with a fallback to normal pages.
//!
//! Two sources of huge pages, both shareable with another process:
//!
//! - `huge:memfd`: `memfd_create(MFD_HUGETLB)`. The fd stays open in the window; a
//!   peer (a child, or any process allowed to ptrace-read us) opens
//!   `/proc/<pid>/fd/<n>` ([`HugeWindow::proc_path`], [`HugeWindow::open_proc_fd`]).
//! - `huge:/dev/hugepages/NAME`: a file on a hugetlbfs mount, created 0600 with
//!   O_EXCL like a shm window.
//!
//! # The fallback rule
//! Before mapping, the free pages of the default huge page size are read from
//! `/sys/kernel/mm/hugepages/hugepages-<kB>kB/free_hugepages`. When there are not
//! enough (the common case: `nr_hugepages=0`), when the path is not on hugetlbfs,
//! or when the mapping fails with ENOMEM, the window falls back to normal pages (a
//! plain memfd, or a regular file: the same path if it is not on hugetlbfs, else
//! `/dev/shm/NAME`) and prints exactly one line on stderr, e.g.
//!
//! ```text
//! zerohop: no free 2 MiB huge pages (nr_hugepages=0, free_hugepages=0, window needs 2); using 4 KiB pages for window huge:memfd:rx0
//! ```
//!
//! [`Window::kind`] and [`Window::describe`] say what the window got. The size is
//! rounded up to the huge page size either way, so both sides compute the same
//! layout whatever they got.
//!
//! # Why not the `hugepage-rs` crate
//! `hugepage-rs` (0.1) is an allocator: it maps `MAP_PRIVATE | MAP_ANONYMOUS |
//! MAP_HUGETLB` memory, which no other process can attach to, it has no fallback
//! (allocation simply fails with no reserved pages), and it panics if
//! `/proc/meminfo` has no `Hugepagesize:` line. A window needs shared, nameable
//! memory, so this module uses `memfd_create` / hugetlbfs files directly.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rings::Region;

use super::shm::{create_excl, open_rw_nofollow};
use super::{check_file, human_size, map_file, map_file_guarded, page_size, round_size};
use super::{OpenOptions, Window, WindowError, WindowKind};

/// `statfs.f_type` of a hugetlbfs mount.
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;
/// Where the fallback for a hugetlbfs path goes.
const FALLBACK_DIR: &str = "/dev/shm";

/// The huge page pool of the default huge page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HugeInfo {
    /// Default huge page size in bytes (2 MiB on x86-64).
    pub page_size: usize,
    /// Pages reserved (`nr_hugepages`).
    pub nr: u64,
    /// Pages free (`free_hugepages`).
    pub free: u64,
}

impl HugeInfo {
    /// Reads the pool from `/proc/meminfo` and `/sys/kernel/mm/hugepages`; anything
    /// unreadable counts as 0 pages (and 2 MiB pages).
    pub fn probe() -> HugeInfo {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let page_size = parse_meminfo_hugepagesize(&meminfo).unwrap_or(2 << 20);
        let dir = PathBuf::from(format!(
            "/sys/kernel/mm/hugepages/hugepages-{}kB",
            page_size / 1024
        ));
        HugeInfo {
            page_size,
            nr: read_count(&dir.join("nr_hugepages")),
            free: read_count(&dir.join("free_hugepages")),
        }
    }

    /// True if `len` bytes fit in the free pages.
    pub fn fits(&self, len: usize) -> bool {
        let pages = (len as u64).div_ceil(self.page_size.max(1) as u64);
        pages <= self.free
    }

    fn why_not(&self, len: usize) -> String {
        let what = if self.free == 0 {
            "no free"
        } else {
            "not enough free"
        };
        format!(
            "{what} {} huge pages (nr_hugepages={}, free_hugepages={}, window needs {})",
            human_size(self.page_size as u64),
            self.nr,
            self.free,
            (len as u64).div_ceil(self.page_size.max(1) as u64)
        )
    }
}

fn parse_meminfo_hugepagesize(s: &str) -> Option<usize> {
    let rest = s.lines().find_map(|l| l.strip_prefix("Hugepagesize:"))?;
    let mut it = rest.split_whitespace();
    let n: usize = it.next()?.parse().ok()?;
    let mult = match it.next() {
        Some("kB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    n.checked_mul(mult).filter(|v| v.is_power_of_two())
}

fn read_count(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// `statfs().f_type` of the file system holding `path` (None if it cannot be read).
fn fs_type(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = core::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated string and `buf` is writable storage
    // for one statfs struct, which the call fills on success.
    let rc = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it initialised `buf`.
    let st = unsafe { buf.assume_init() };
    // f_type is i32/u32/i64 depending on the target; the magic is a 32-bit value.
    Some(st.f_type as u64 & 0xffff_ffff)
}

fn fd_fs_type(fd: BorrowedFd<'_>) -> Option<u64> {
    let mut buf = core::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `fd` is an open descriptor and `buf` is writable storage for one
    // statfs struct.
    let rc = unsafe { libc::fstatfs(fd.as_raw_fd(), buf.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: fstatfs returned 0, so it initialised `buf`.
    let st = unsafe { buf.assume_init() };
    Some(st.f_type as u64 & 0xffff_ffff)
}

fn memfd(name: &str, flags: libc::c_uint) -> Result<File, WindowError> {
    let what = PathBuf::from(format!("memfd:{name}"));
    let c = CString::new(name).map_err(|_| WindowError::Io {
        op: "memfd_create",
        path: what.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "name contains NUL"),
    })?;
    // SAFETY: `c` is a valid NUL-terminated string; memfd_create has no other
    // preconditions.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(WindowError::Io {
            op: "memfd_create",
            path: what,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn set_len(file: &File, len: usize, path: &Path) -> Result<(), WindowError> {
    file.set_len(len as u64).map_err(|source| WindowError::Io {
        op: "ftruncate",
        path: path.to_owned(),
        source,
    })
}

fn is_enomem(e: &WindowError) -> bool {
    matches!(e, WindowError::Map { source, .. } if source.raw_os_error() == Some(libc::ENOMEM))
}

fn log_fallback(why: &str, spec: &str) {
    eprintln!(
        "zerohop: {why}; using {} pages for window {spec}",
        human_size(page_size() as u64)
    );
}

/// A window on huge pages, or on normal pages after a fallback.
#[derive(Debug)]
pub struct HugeWindow {
    region: Region,
    kind: WindowKind,
    spec: String,
    /// The file a peer opens: a hugetlbfs/fallback file, or `/proc/<pid>/fd/<n>`.
    path: PathBuf,
    /// The memfd, kept open so `path` stays valid.
    memfd: Option<File>,
    remove_on_drop: bool,
    fallback: Option<String>,
}

impl HugeWindow {
    /// A memfd window of `size` bytes rounded up to the huge page size; huge pages
    /// when free ones are reserved, else normal pages (one log line).
    pub fn memfd(name: &str, size: usize) -> Result<HugeWindow, WindowError> {
        Self::memfd_with(name, size, HugeInfo::probe())
    }

    /// As [`HugeWindow::memfd`], with the huge page pool given (tests force the
    /// fallback with `free: 0`).
    pub fn memfd_with(name: &str, size: usize, info: HugeInfo) -> Result<HugeWindow, WindowError> {
        let len = round_size(size, info.page_size)?;
        let spec = format!("huge:memfd:{name}");
        let why = if info.fits(len) {
            match Self::map_memfd(name, len, libc::MFD_HUGETLB) {
                Ok((file, region)) => {
                    return Ok(Self::memfd_window(
                        file,
                        region,
                        spec,
                        WindowKind::HugePages {
                            page_size: info.page_size,
                        },
                        None,
                    ))
                }
                Err(e) if is_enomem(&e) => format!(
                    "mmap of {} huge pages failed with ENOMEM",
                    human_size(info.page_size as u64)
                ),
                Err(WindowError::Io {
                    op: "memfd_create",
                    source,
                    ..
                }) => format!("memfd_create(MFD_HUGETLB) failed: {source}"),
                Err(e) => return Err(e),
            }
        } else {
            info.why_not(len)
        };
        log_fallback(&why, &spec);
        let (file, region) = Self::map_memfd(name, len, 0)?;
        Ok(Self::memfd_window(
            file,
            region,
            spec,
            WindowKind::Memfd,
            Some(why),
        ))
    }

    fn map_memfd(
        name: &str,
        len: usize,
        extra: libc::c_uint,
    ) -> Result<(File, Region), WindowError> {
        let file = memfd(name, libc::MFD_CLOEXEC | extra)?;
        let what = PathBuf::from(format!("memfd:{name}"));
        set_len(&file, len, &what)?;
        // Normal pages get PROT_NONE guards around them (see map_file_guarded); huge
        // pages are mapped plainly (a guard would cost a whole huge page each side).
        let region = if extra & libc::MFD_HUGETLB == 0 {
            map_file_guarded(&file, len, &what, page_size())?
        } else {
            map_file(&file, len, &what)?
        };
        Ok((file, region))
    }

    fn memfd_window(
        file: File,
        region: Region,
        spec: String,
        kind: WindowKind,
        fallback: Option<String>,
    ) -> HugeWindow {
        let path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            file.as_raw_fd()
        ));
        HugeWindow {
            region,
            kind,
            spec,
            path,
            memfd: Some(file),
            remove_on_drop: false,
            fallback,
        }
    }

    /// Creates a window file at `path` (O_EXCL, 0600) of `size` bytes rounded up to
    /// the huge page size. On hugetlbfs with enough free pages it gets huge pages;
    /// otherwise it falls back (see the module doc) with one log line. The file is
    /// removed on drop unless [`HugeWindow::keep`] is called.
    pub fn create(path: impl AsRef<Path>, size: usize) -> Result<HugeWindow, WindowError> {
        Self::create_with(path, size, HugeInfo::probe())
    }

    /// As [`HugeWindow::create`], with the huge page pool given.
    pub fn create_with(
        path: impl AsRef<Path>,
        size: usize,
        info: HugeInfo,
    ) -> Result<HugeWindow, WindowError> {
        let path = path.as_ref();
        let len = round_size(size, info.page_size)?;
        let spec = format!("huge:{}", path.display());
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let on_hugetlbfs = fs_type(&dir) == Some(HUGETLBFS_MAGIC);
        let why = if !on_hugetlbfs {
            format!("{} is not a hugetlbfs mount", dir.display())
        } else if !info.fits(len) {
            info.why_not(len)
        } else {
            let file = create_excl(path)?;
            let mut w = HugeWindow {
                region: Region::heap(0),
                kind: WindowKind::HugePages {
                    page_size: info.page_size,
                },
                spec: spec.clone(),
                path: path.to_owned(),
                memfd: None,
                remove_on_drop: true, // removes the file if the mapping fails
                fallback: None,
            };
            set_len(&file, len, path)?;
            match map_file(&file, len, path) {
                Ok(r) => {
                    w.region = r;
                    return Ok(w);
                }
                Err(e) if is_enomem(&e) => {
                    drop(w);
                    format!(
                        "mmap of {} huge pages failed with ENOMEM",
                        human_size(info.page_size as u64)
                    )
                }
                Err(e) => return Err(e),
            }
        };
        // Fallback: a regular file at the same path if that is not hugetlbfs (it
        // cannot hold normal pages), else under /dev/shm with the same name.
        let target = if on_hugetlbfs {
            let name = path.file_name().ok_or(WindowError::NotRegular {
                path: path.to_owned(),
            })?;
            Path::new(FALLBACK_DIR).join(name)
        } else {
            path.to_owned()
        };
        log_fallback(&format!("{why} (file {})", target.display()), &spec);
        let file = create_excl(&target)?;
        let mut w = HugeWindow {
            region: Region::heap(0),
            kind: WindowKind::Shm,
            spec,
            path: target.clone(),
            memfd: None,
            remove_on_drop: true,
            fallback: Some(why),
        };
        set_len(&file, len, &target)?;
        w.region = map_file_guarded(&file, len, &target, page_size())?;
        Ok(w)
    }

    /// Opens a window file made by [`HugeWindow::create`]: `path`, or its fallback
    /// `/dev/shm/NAME` when `path` does not exist and that does. Same checks as
    /// [`super::ShmWindow::open`] (O_NOFOLLOW, owner, mode, size).
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<HugeWindow, WindowError> {
        let asked = path.as_ref();
        let spec = format!("huge:{}", asked.display());
        let mut path = asked.to_owned();
        if !path.exists() {
            if let Some(name) = asked.file_name() {
                let alt = Path::new(FALLBACK_DIR).join(name);
                if alt.exists()
                    && fs_type(asked.parent().unwrap_or(Path::new("."))) == Some(HUGETLBFS_MAGIC)
                {
                    path = alt;
                }
            }
        }
        let file = open_rw_nofollow(&path)?;
        let size = check_file(&file, &path, opts, true)?;
        Self::finish_open(file, size, path, spec)
    }

    /// Opens a memfd window of another process (or our own) through
    /// `/proc/<pid>/fd/<n>`. That path is a magic link, so unlike every other open
    /// it is followed (only paths under `/proc/` are accepted); the owner is checked,
    /// the mode is not (a memfd is 0777, and reaching it through /proc already
    /// needs ptrace read access to its owner).
    pub fn open_proc_fd(
        path: impl AsRef<Path>,
        opts: &OpenOptions,
    ) -> Result<HugeWindow, WindowError> {
        let path = path.as_ref();
        if !path.starts_with("/proc/") {
            return Err(WindowError::Unsupported(
                "open_proc_fd takes a /proc/<pid>/fd/<n> path",
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| super::open_error(path, "open", e))?;
        let size = check_file(&file, path, opts, false)?;
        Self::finish_open(
            file,
            size,
            path.to_owned(),
            format!("huge:{}", path.display()),
        )
    }

    fn finish_open(
        file: File,
        size: u64,
        path: PathBuf,
        spec: String,
    ) -> Result<HugeWindow, WindowError> {
        let len = usize::try_from(size).map_err(|_| WindowError::InvalidSize {
            size,
            why: "larger than the address space",
        })?;
        let region = map_file(&file, len, &path)?;
        let kind = if fd_fs_type(file.as_fd()) == Some(HUGETLBFS_MAGIC) {
            WindowKind::HugePages {
                page_size: HugeInfo::probe().page_size,
            }
        } else if path.starts_with("/proc/") {
            WindowKind::Memfd
        } else {
            WindowKind::Shm
        };
        Ok(HugeWindow {
            region,
            kind,
            spec,
            path,
            memfd: None,
            remove_on_drop: false,
            fallback: None,
        })
    }

    /// Keeps a created file when the window drops.
    pub fn keep(mut self) -> Self {
        self.remove_on_drop = false;
        self
    }

    /// True if the window got huge pages.
    pub fn is_huge(&self) -> bool {
        matches!(self.kind, WindowKind::HugePages { .. })
    }

    /// Why the window fell back to normal pages, if it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The memfd, for passing to a child (clear FD_CLOEXEC first if it execs).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.memfd.as_ref().map(|f| f.as_fd())
    }

    /// `/proc/<pid>/fd/<n>` of the memfd (what a peer passes to
    /// [`HugeWindow::open_proc_fd`]).
    pub fn proc_path(&self) -> Option<&Path> {
        self.memfd.as_ref().map(|_| self.path.as_path())
    }
}

impl Drop for HugeWindow {
    fn drop(&mut self) {
        if self.remove_on_drop {
            // The mapping outlives the name; a failure has nobody to report to.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Window for HugeWindow {
    fn region(&self) -> &Region {
        &self.region
    }

    fn kind(&self) -> WindowKind {
        self.kind
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "{} ({}, {}, {})",
            self.spec,
            human_size(self.region.len() as u64),
            self.kind,
            self.path.display()
        );
        if let Some(why) = &self.fallback {
            s.push_str(&format!("; fell back: {why}"));
        }
        s
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn page_size(&self) -> usize {
        match self.kind {
            WindowKind::HugePages { page_size } => page_size,
            _ => page_size(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parsing() {
        assert_eq!(
            parse_meminfo_hugepagesize("MemTotal: 1 kB\nHugepagesize:    2048 kB\n"),
            Some(2 << 20)
        );
        assert_eq!(
            parse_meminfo_hugepagesize("Hugepagesize: 1048576 kB"),
            Some(1 << 30)
        );
        assert_eq!(parse_meminfo_hugepagesize("Hugepagesize: x kB"), None);
        assert_eq!(parse_meminfo_hugepagesize("Hugepagesize: 3 kB"), None);
        assert_eq!(parse_meminfo_hugepagesize(""), None);
    }

    #[test]
    fn fits_and_reason() {
        let info = HugeInfo {
            page_size: 2 << 20,
            nr: 0,
            free: 0,
        };
        assert!(!info.fits(2 << 20));
        assert_eq!(
            info.why_not(2 << 20),
            "no free 2 MiB huge pages (nr_hugepages=0, free_hugepages=0, window needs 1)"
        );
        let info = HugeInfo {
            page_size: 2 << 20,
            nr: 4,
            free: 2,
        };
        assert!(info.fits(4 << 20));
        assert!(!info.fits((4 << 20) + 1));
        assert_eq!(
            info.why_not(6 << 20),
            "not enough free 2 MiB huge pages (nr_hugepages=4, free_hugepages=2, window needs 3)"
        );
    }
}
