//! One conformance suite run against every window backend (the iceoryx2
//! `conformance-tests` pattern), plus backend-specific tests.
//!
//! Backends: shm file, huge-page memfd and huge-page file (both fall back to 4 KiB
//! pages on a machine without reserved huge pages), a PCI BAR on a plain file in a
//! fake sysfs tree, and the heap window. Every file a test makes has a unique name
//! (pid + counter) and is removed by a Drop guard, also when the test fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pmd::window::pci::PciError;
use pmd::window::{
    create_spec, init_header, open_header, open_spec, Counted, HeapWindow, HugeInfo, HugeWindow,
    LinkCost, LinkModel, OpenOptions, PciBarWindow, PciDevice, PciOptions, PciSpec, ShmWindow,
    SpecError, Window, WindowError, WindowKind, WindowSpec,
};
use rings::header::{Area, AreaKind, Expect, HeaderParams, OpenError, HEADER_SIZE};
use rings::{Mem, MemError};

// ---- helpers ------------------------------------------------------------------

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique name for this process and call.
fn unique(tag: &str) -> String {
    format!(
        "zh-test-{}-{tag}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn shm_path(tag: &str) -> PathBuf {
    Path::new("/dev/shm").join(unique(tag))
}

/// Removes every listed file or directory tree on drop (also on panic).
#[derive(Default)]
struct Cleanup(Vec<PathBuf>);

impl Cleanup {
    fn add(&mut self, p: impl Into<PathBuf>) -> PathBuf {
        let p = p.into();
        self.0.push(p.clone());
        p
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_dir() && !p.is_symlink() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

// ---- a fake sysfs tree ----------------------------------------------------------

struct FakeDev<'a> {
    addr: &'a str,
    vendor: u16,
    device: u16,
    /// resource lines, one per BAR.
    resource: &'a [&'a str],
    /// (file name, size) of resourceN / resourceN_wc files to create.
    files: &'a [(&'a str, u64)],
}

fn fake_sysfs(guard: &mut Cleanup, devs: &[FakeDev<'_>]) -> PathBuf {
    let root = guard.add(std::env::temp_dir().join(unique("sysfs")));
    for d in devs {
        let dir = root.join(d.addr);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vendor"), format!("0x{:04x}\n", d.vendor)).unwrap();
        std::fs::write(dir.join("device"), format!("0x{:04x}\n", d.device)).unwrap();
        let mut res = d.resource.join("\n");
        res.push('\n');
        std::fs::write(dir.join("resource"), res).unwrap();
        for (name, size) in d.files {
            let f = std::fs::File::create(dir.join(name)).unwrap();
            f.set_len(*size).unwrap();
        }
    }
    root
}

const BAR_1M: &str = "0x00000000fe000000 0x00000000fe0fffff 0x000000000014220c";

fn one_dev_sysfs(guard: &mut Cleanup) -> PathBuf {
    fake_sysfs(
        guard,
        &[FakeDev {
            addr: "0000:00:03.0",
            vendor: 0x1af4,
            device: 0x1110,
            resource: &[
                "0x0000000000000000 0x0000000000000000 0x0000000000000000",
                "0x000000000000c000 0x000000000000c0ff 0x0000000000040101",
                BAR_1M,
                "0x00000000fd000000 0x00000000fd0fffff 0x0000000000040200",
                "0x00000000fc000000 0x00000000fc0fefff 0x0000000000040200",
                "0x00000000fb000000 0x00000000fb0fffff 0x0000000000000000",
            ],
            files: &[
                ("resource2", 1 << 20),
                ("resource2_wc", 1 << 20),
                ("resource3", 4096),
            ],
        }],
    )
}

// ---- the backends -----------------------------------------------------------------

/// What happens to a window's file when the window drops.
#[derive(PartialEq, Eq, Debug)]
enum OnDrop {
    /// The file it created is removed.
    Removed,
    /// The file stays (a PCI resource file).
    Kept,
    /// No name to check (heap; a memfd's /proc path dies with the fd, and fd numbers
    /// are reused by concurrent tests, so it is not checked).
    Unchecked,
}

/// A window backend under test.
trait Backend {
    /// Creates a window of at least `size` bytes and a second, independent mapping
    /// of the same memory.
    fn pair(size: usize, guard: &mut Cleanup) -> (Box<dyn Window>, Box<dyn Window>);
    /// Whether `kind` is what this backend may give.
    fn kind_ok(kind: WindowKind) -> bool;
    /// What dropping the created window does to its file.
    const ON_DROP: OnDrop;
}

struct Shm;
impl Backend for Shm {
    fn pair(size: usize, guard: &mut Cleanup) -> (Box<dyn Window>, Box<dyn Window>) {
        let p = guard.add(shm_path("shm"));
        let a = ShmWindow::create(&p, size).unwrap();
        let b = ShmWindow::open(&p, &OpenOptions::new()).unwrap();
        (Box::new(a), Box::new(b))
    }
    fn kind_ok(kind: WindowKind) -> bool {
        kind == WindowKind::Shm
    }
    const ON_DROP: OnDrop = OnDrop::Removed;
}

struct HugeMemfd;
impl Backend for HugeMemfd {
    fn pair(size: usize, _guard: &mut Cleanup) -> (Box<dyn Window>, Box<dyn Window>) {
        let a = HugeWindow::memfd(&unique("memfd"), size).unwrap();
        let p = a.proc_path().unwrap().to_owned();
        let b = HugeWindow::open_proc_fd(&p, &OpenOptions::new()).unwrap();
        (Box::new(a), Box::new(b))
    }
    fn kind_ok(kind: WindowKind) -> bool {
        matches!(kind, WindowKind::Memfd | WindowKind::HugePages { .. })
    }
    const ON_DROP: OnDrop = OnDrop::Unchecked;
}

struct HugeFile;
impl Backend for HugeFile {
    fn pair(size: usize, guard: &mut Cleanup) -> (Box<dyn Window>, Box<dyn Window>) {
        // /dev/shm is tmpfs, not hugetlbfs: the window falls back to a regular file at
        // the same path.
        let p = guard.add(shm_path("hugefile"));
        let a = HugeWindow::create(&p, size).unwrap();
        let b = HugeWindow::open(&p, &OpenOptions::new()).unwrap();
        (Box::new(a), Box::new(b))
    }
    fn kind_ok(kind: WindowKind) -> bool {
        matches!(kind, WindowKind::Shm | WindowKind::HugePages { .. })
    }
    const ON_DROP: OnDrop = OnDrop::Removed;
}

struct PciOnFile;
impl Backend for PciOnFile {
    fn pair(size: usize, guard: &mut Cleanup) -> (Box<dyn Window>, Box<dyn Window>) {
        let root = one_dev_sysfs(guard);
        let spec: PciSpec = "pci:0000:00:03.0/bar2".parse().unwrap();
        let opts = PciOptions {
            sysfs_root: root,
            size: Some(size),
        };
        let a = PciBarWindow::open(&spec, &opts).unwrap();
        let b = PciBarWindow::open(&spec, &opts).unwrap();
        (Box::new(a), Box::new(b))
    }
    fn kind_ok(kind: WindowKind) -> bool {
        kind == WindowKind::PciBar {
            write_combining: true,
        }
    }
    const ON_DROP: OnDrop = OnDrop::Kept;
}

struct Heap;
impl Backend for Heap {
    fn pair(size: usize, _guard: &mut Cleanup) -> (Box<dyn Window>, Box<dyn Window>) {
        let a = HeapWindow::new(size).unwrap();
        let b = a.share();
        (Box::new(a), Box::new(b))
    }
    fn kind_ok(kind: WindowKind) -> bool {
        kind == WindowKind::Heap
    }
    const ON_DROP: OnDrop = OnDrop::Unchecked;
}

// ---- the generic suite --------------------------------------------------------------

const SIZE: usize = 64 << 10;

fn size_and_alignment<B: Backend>() {
    let mut g = Cleanup::default();
    let (a, b) = B::pair(SIZE, &mut g);
    assert!(a.len() >= SIZE, "{}", a.describe());
    assert_eq!(a.len(), b.len());
    assert_eq!(a.len() % a.page_size(), 0);
    assert_eq!(a.region().addr() % 4096, 0, "mapping not page aligned");
    assert!(!a.is_empty());
    assert!(B::kind_ok(a.kind()), "{:?}", a.kind());
    assert!(!a.describe().is_empty());
    // Size rounding: one byte asks for one page (or one huge page).
    let (c, _d) = B::pair(1, &mut g);
    assert!(!c.is_empty() && c.len() % 4096 == 0, "{}", c.len());
}

fn header_across_mappings<B: Backend>() {
    let mut g = Cleanup::default();
    let (a, b) = B::pair(SIZE, &mut g);
    let msg = open_header(&*b, &Expect::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not initialised"), "{msg}");
    let params = HeaderParams {
        areas: vec![
            Area::new(AreaKind::Config, HEADER_SIZE as u64, 4096),
            Area::new(AreaKind::Buffers, 2 * HEADER_SIZE as u64, 8192),
        ],
        ..HeaderParams::default()
    };
    let made = init_header(&*a, &params).unwrap();
    assert_eq!(made.creator_pid, std::process::id());
    let seen = open_header(&*b, &Expect::default()).unwrap();
    assert_eq!(made, seen);
    assert_eq!(seen.window_size, b.len() as u64);
    assert_eq!(seen.find(AreaKind::Buffers).unwrap().size, 8192);
    // Re-creating through the other mapping bumps the generation.
    let again = init_header(&*b, &params).unwrap();
    assert_eq!(again.generation, made.generation + 1);
    assert_eq!(
        open_header(&*a, &Expect::default()).unwrap().generation,
        again.generation
    );
}

fn atomics_across_mappings<B: Backend>() {
    let mut g = Cleanup::default();
    let (a, b) = B::pair(SIZE, &mut g);
    let (ra, rb) = (a.region().clone(), b.region().clone());
    ra.store_u64(8192, 0xfeed_f00d, std::sync::atomic::Ordering::Release)
        .unwrap();
    assert_eq!(
        rb.load_u64(8192, std::sync::atomic::Ordering::Acquire)
            .unwrap(),
        0xfeed_f00d
    );
    rb.write_bytes(100, b"hello").unwrap();
    let mut buf = [0u8; 5];
    ra.read_bytes(100, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");

    // Message passing across the two mappings from another thread: payload, then a
    // Release flag; the reader waits (with a deadline) on an Acquire load.
    let writer = std::thread::spawn(move || {
        for i in 1..=100u64 {
            ra.store_u64(
                4096 + 8 * (i as usize % 64),
                i,
                std::sync::atomic::Ordering::Relaxed,
            )
            .unwrap();
            ra.store_u64(0x3000, i, std::sync::atomic::Ordering::Release)
                .unwrap();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let flag = rb
            .load_u64(0x3000, std::sync::atomic::Ordering::Acquire)
            .unwrap();
        if flag > 0 {
            let v = rb
                .load_u64(
                    4096 + 8 * (flag as usize % 64),
                    std::sync::atomic::Ordering::Relaxed,
                )
                .unwrap();
            assert!(v >= flag, "payload {v} older than flag {flag}");
        }
        if flag == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "writer did not finish");
        std::thread::yield_now();
    }
    writer.join().unwrap();
}

fn bounds_errors<B: Backend>() {
    let mut g = Cleanup::default();
    let (a, _b) = B::pair(SIZE, &mut g);
    let r = a.region();
    let n = r.len();
    assert!(matches!(
        r.load_u64(n - 4, std::sync::atomic::Ordering::Relaxed),
        Err(MemError::OutOfBounds { .. })
    ));
    assert!(matches!(
        r.load_u32(2, std::sync::atomic::Ordering::Relaxed),
        Err(MemError::Misaligned { .. })
    ));
    assert!(r.write_bytes(n, &[1]).is_err());
    assert!(r.sub(n, 1).is_err());
    let s = r.sub(n - 4096, 4096).unwrap();
    assert!(s
        .store_u64(4096, 1, std::sync::atomic::Ordering::Relaxed)
        .is_err());
    s.store_u64(4088, 7, std::sync::atomic::Ordering::Relaxed)
        .unwrap();
    assert_eq!(
        r.load_u64(n - 8, std::sync::atomic::Ordering::Relaxed)
            .unwrap(),
        7
    );
}

fn drop_cleans_up<B: Backend>() {
    let mut g = Cleanup::default();
    let (a, b) = B::pair(SIZE, &mut g);
    let path = a.path().map(Path::to_owned);
    let region = a.region().clone();
    drop(b);
    drop(a);
    // The region (a clone) keeps the mapping alive after the window is gone.
    region
        .store_u32(0, 1, std::sync::atomic::Ordering::Relaxed)
        .unwrap();
    if let Some(p) = path {
        match B::ON_DROP {
            OnDrop::Removed => assert!(!p.exists(), "{} exists after drop", p.display()),
            OnDrop::Kept => assert!(p.exists(), "{} removed by drop", p.display()),
            OnDrop::Unchecked => {}
        }
    }
}

macro_rules! conformance {
    ($name:ident, $backend:ty) => {
        mod $name {
            #[test]
            fn size_and_alignment() {
                super::size_and_alignment::<$backend>();
            }
            #[test]
            fn header_across_mappings() {
                super::header_across_mappings::<$backend>();
            }
            #[test]
            fn atomics_across_mappings() {
                super::atomics_across_mappings::<$backend>();
            }
            #[test]
            fn bounds_errors() {
                super::bounds_errors::<$backend>();
            }
            #[test]
            fn drop_cleans_up() {
                super::drop_cleans_up::<$backend>();
            }
        }
    };
}

conformance!(shm, super::Shm);
conformance!(huge_memfd, super::HugeMemfd);
conformance!(huge_file, super::HugeFile);
conformance!(pci_on_file, super::PciOnFile);
conformance!(heap, super::Heap);

// ---- shm specifics --------------------------------------------------------------------

#[test]
fn shm_create_is_exclusive_and_0600() {
    let mut g = Cleanup::default();
    let p = g.add(shm_path("excl"));
    let w = ShmWindow::create(&p, 4096).unwrap();
    assert!(w.created());
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let e = ShmWindow::create(&p, 4096).unwrap_err();
    assert!(matches!(e, WindowError::Exists { .. }), "{e}");
    assert!(e.to_string().contains(&*p.to_string_lossy()), "{e}");
    // A failed create must not remove the existing file.
    assert!(p.exists());
    assert!(matches!(
        ShmWindow::create(shm_path("zero"), 0),
        Err(WindowError::InvalidSize { .. })
    ));
}

#[test]
fn shm_keep_leaves_the_file() {
    let mut g = Cleanup::default();
    let p = g.add(shm_path("keep"));
    drop(ShmWindow::create(&p, 4096).unwrap().keep());
    assert!(p.exists());
    let mut w = ShmWindow::open(&p, &OpenOptions::new()).unwrap();
    assert!(!w.created());
    w.set_remove_on_drop(true);
    drop(w);
    assert!(!p.exists());
}

#[test]
fn shm_open_refuses_symlink() {
    let mut g = Cleanup::default();
    let target = g.add(shm_path("target"));
    let _w = ShmWindow::create(&target, 4096).unwrap();
    let link = g.add(shm_path("link"));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = ShmWindow::open(&link, &OpenOptions::new()).unwrap_err();
    assert!(matches!(e, WindowError::Symlink { .. }), "{e}");
    assert!(e.to_string().contains("symbolic link"));
    // create through a dangling or live symlink is refused too (O_EXCL).
    assert!(ShmWindow::create(&link, 4096).is_err());
}

#[test]
fn shm_open_refuses_world_writable() {
    let mut g = Cleanup::default();
    let p = g.add(shm_path("ww"));
    let _w = ShmWindow::create(&p, 4096).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = ShmWindow::open(&p, &OpenOptions::new()).unwrap_err();
    assert!(
        matches!(e, WindowError::WritableByOthers { mode: 0o666, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("0666"), "{e}");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o620)).unwrap();
    assert!(ShmWindow::open(&p, &OpenOptions::new()).is_err());
    assert!(ShmWindow::open(&p, &OpenOptions::new().allow_foreign(true)).is_ok());
}

#[test]
fn shm_open_refuses_foreign_owner() {
    if !is_root() {
        println!("note: not root, skipping the foreign-owner test (needs chown)");
        return;
    }
    let mut g = Cleanup::default();
    let p = g.add(shm_path("foreign"));
    let _w = ShmWindow::create(&p, 4096).unwrap();
    std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    let e = ShmWindow::open(&p, &OpenOptions::new()).unwrap_err();
    assert!(
        matches!(e, WindowError::ForeignOwner { owner: 65534, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("uid 65534"), "{e}");
    assert!(ShmWindow::open(&p, &OpenOptions::new().allow_foreign(true)).is_ok());
}

#[test]
fn shm_open_refuses_truncated_and_missing() {
    let mut g = Cleanup::default();
    let p = g.add(shm_path("trunc"));
    let w = ShmWindow::create(&p, 4096).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(100)
        .unwrap();
    let e = ShmWindow::open(&p, &OpenOptions::new()).unwrap_err();
    assert!(
        matches!(
            e,
            WindowError::TooSmall {
                size: 100,
                need: 4096,
                ..
            }
        ),
        "{e}"
    );
    drop(w);
    let e = ShmWindow::open(&p, &OpenOptions::new()).unwrap_err();
    assert!(matches!(e, WindowError::NotFound { .. }), "{e}");
    let e = ShmWindow::open("/dev/shm", &OpenOptions::new()).unwrap_err();
    assert!(
        matches!(e, WindowError::Io { .. } | WindowError::NotRegular { .. }),
        "{e}"
    );
}

fn shm_pair(g: &mut Cleanup) -> (ShmWindow, ShmWindow) {
    let p = g.add(shm_path("hdr"));
    let a = ShmWindow::create(&p, 4 * 4096).unwrap();
    init_header(&a, &HeaderParams::default()).unwrap();
    let b = ShmWindow::open(&p, &OpenOptions::new()).unwrap();
    (a, b)
}

fn header_err(w: &dyn Window) -> OpenError {
    match open_header(w, &Expect::default()) {
        Err(WindowError::Header { window, source }) => {
            assert!(window.contains("/dev/shm/zh-test-"), "{window}");
            source
        }
        other => panic!("expected a header error, got {other:?}"),
    }
}

#[test]
fn header_errors_through_a_window() {
    let mut g = Cleanup::default();
    let (a, b) = shm_pair(&mut g);
    a.region().write_bytes(0, b"GARBAGE!").unwrap();
    assert!(matches!(header_err(&b), OpenError::BadMagic { .. }));

    let (a, b) = shm_pair(&mut g);
    a.region()
        .store_u32(8, 7 << 16, std::sync::atomic::Ordering::Relaxed)
        .unwrap();
    assert_eq!(
        header_err(&b),
        OpenError::VersionMismatch {
            found: 7 << 16,
            expected: rings::header::VERSION
        }
    );

    let (a, b) = shm_pair(&mut g);
    a.region()
        .store_u64(
            rings::header::INIT_STAMP_OFFSET,
            0,
            std::sync::atomic::Ordering::Relaxed,
        )
        .unwrap();
    assert_eq!(header_err(&b), OpenError::NotInitialized);
    let msg = open_header(&b, &Expect::default()).unwrap_err().to_string();
    assert!(
        msg.contains("not initialised") && msg.contains("/dev/shm/"),
        "{msg}"
    );
}

// ---- huge page specifics ----------------------------------------------------------------

#[test]
fn huge_memfd_falls_back_without_pages() {
    let none = HugeInfo {
        page_size: 2 << 20,
        nr: 0,
        free: 0,
    };
    let w = HugeWindow::memfd_with(&unique("fb"), 100, none).unwrap();
    assert_eq!(w.kind(), WindowKind::Memfd);
    assert!(!w.is_huge());
    assert_eq!(w.len(), 2 << 20, "rounded up to the huge page size");
    let why = w.fallback_reason().unwrap();
    assert!(why.contains("no free 2 MiB huge pages"), "{why}");
    assert!(w.describe().contains("fell back"), "{}", w.describe());
    assert!(w.fd().is_some());
    assert_eq!(w.page_size(), 4096);
    // The machine's real pool (0 reserved here) gives the same result.
    let real = HugeWindow::memfd(&unique("real"), 4096).unwrap();
    if HugeInfo::probe().free == 0 {
        assert_eq!(real.kind(), WindowKind::Memfd);
    }
}

#[test]
fn huge_file_falls_back_off_hugetlbfs() {
    let mut g = Cleanup::default();
    let p = g.add(shm_path("hf"));
    let w = HugeWindow::create(&p, 4096).unwrap();
    assert_eq!(w.kind(), WindowKind::Shm);
    assert!(w
        .fallback_reason()
        .unwrap()
        .contains("not a hugetlbfs mount"));
    assert_eq!(w.path(), Some(p.as_path()));
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    assert!(matches!(
        HugeWindow::create(&p, 4096),
        Err(WindowError::Exists { .. })
    ));
}

#[test]
fn huge_proc_fd_only_under_proc() {
    assert!(matches!(
        HugeWindow::open_proc_fd("/dev/shm/x", &OpenOptions::new()),
        Err(WindowError::Unsupported(_))
    ));
}

// ---- PCI specifics ----------------------------------------------------------------------

fn pci_open(root: &Path, spec: &str, size: Option<usize>) -> Result<PciBarWindow, PciError> {
    PciBarWindow::open(
        &spec.parse().unwrap(),
        &PciOptions {
            sysfs_root: root.to_owned(),
            size,
        },
    )
}

#[test]
fn pci_maps_whole_bar_and_finds_by_id() {
    let mut g = Cleanup::default();
    let root = one_dev_sysfs(&mut g);
    let w = pci_open(&root, "pci:0000:00:03.0/bar2", None).unwrap();
    assert_eq!(w.len(), 1 << 20);
    assert_eq!(w.bar().size, 1 << 20);
    assert_eq!(w.bar().start, 0xfe00_0000);
    assert!(w.path().unwrap().ends_with("resource2_wc"));
    assert!(w.describe().contains("1 MiB"), "{}", w.describe());
    let w = pci_open(&root, "pci:1af4:1110/bar2,uc", Some(8192)).unwrap();
    assert_eq!(w.address(), "0000:00:03.0");
    assert_eq!(w.len(), 8192);
    assert!(w.path().unwrap().ends_with("resource2"));
    assert_eq!(
        w.kind(),
        WindowKind::PciBar {
            write_combining: false
        }
    );
}

#[test]
fn pci_errors() {
    let mut g = Cleanup::default();
    let root = one_dev_sysfs(&mut g);
    let err = |spec: &str, size| pci_open(&root, spec, size).unwrap_err();

    let e = err("pci:0000:00:04.0/bar2", None);
    assert!(matches!(e, PciError::NoSuchDevice { .. }), "{e}");
    assert!(e.to_string().contains("0000:00:04.0"), "{e}");
    assert!(matches!(
        err("pci:8086:1234/bar2", None),
        PciError::NoSuchDevice { .. }
    ));
    let e = err("pci:0000:00:03.0/bar0", None);
    assert!(matches!(e, PciError::SizeZero { bar: 0, .. }), "{e}");
    let e = err("pci:0000:00:03.0/bar1", None);
    assert!(matches!(e, PciError::IoBar { bar: 1, .. }), "{e}");
    assert!(e.to_string().contains("I/O port"), "{e}");
    let e = err("pci:0000:00:03.0/bar4,uc", None);
    assert!(
        matches!(e, PciError::NotPowerOfTwo { size: 0xff000, .. }),
        "{e}"
    );
    let e = err("pci:0000:00:03.0/bar5,uc", None);
    assert!(matches!(e, PciError::NotMemory { bar: 5, .. }), "{e}");
    let e = err("pci:0000:00:03.0/bar2", Some(2 << 20));
    assert!(
        matches!(
            e,
            PciError::TooSmall {
                size: 0x100000,
                requested: 0x200000,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("1 MiB"), "{e}");
    let e = err("pci:0000:00:03.0/bar3", None);
    assert!(matches!(e, PciError::WcMissing { .. }), "{e}");
    assert!(e.to_string().contains(",uc"), "{e}");
    // bar3 uncached: the plain file is 4096 bytes, shorter than the 1 MiB BAR.
    let e = err("pci:0000:00:03.0/bar3,uc", None);
    assert!(
        matches!(
            e,
            PciError::FileShorter {
                file_size: 4096,
                ..
            }
        ),
        "{e}"
    );
    assert!(pci_open(&root, "pci:0000:00:03.0/bar3,uc", Some(4096)).is_ok());
}

#[test]
fn pci_resource_file_problems() {
    let mut g = Cleanup::default();
    let root = fake_sysfs(
        &mut g,
        &[
            FakeDev {
                addr: "0000:01:00.0",
                vendor: 0x10ee,
                device: 0x9038,
                resource: &["0x1000 0x1fff", BAR_1M],
                files: &[("resource1", 1 << 20)],
            },
            FakeDev {
                addr: "0000:02:00.0",
                vendor: 0x10ee,
                device: 0x9038,
                resource: &["nonsense 0x1 0x200"],
                files: &[],
            },
        ],
    );
    let err = |spec: &str| pci_open(&root, spec, None).unwrap_err();
    let e = err("pci:0000:01:00.0/bar0");
    assert!(matches!(e, PciError::BadResourceLine { bar: 0, .. }), "{e}");
    let e = err("pci:0000:02:00.0/bar0");
    assert!(matches!(e, PciError::BadResourceLine { .. }), "{e}");
    let e = err("pci:0000:01:00.0/bar3");
    assert!(
        matches!(
            e,
            PciError::NoSuchBar {
                bar: 3,
                lines: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = err("pci:10ee:9038/bar1");
    match &e {
        PciError::AmbiguousDevice { matches, .. } => {
            assert_eq!(matches, &["0000:01:00.0", "0000:02:00.0"])
        }
        other => panic!("{other}"),
    }
    // Resource file for a device dir that lacks one.
    std::fs::remove_file(root.join("0000:02:00.0/resource")).unwrap();
    assert!(matches!(
        err("pci:0000:02:00.0/bar0"),
        PciError::Read { .. }
    ));
    assert!(pci_open(&root, "pci:0000:01:00.0/bar1,uc", None).is_ok());
}

#[test]
fn pci_permission_denied() {
    if is_root() {
        println!("note: running as root, file permissions do not stop us; skipping EACCES test");
        return;
    }
    let mut g = Cleanup::default();
    let root = one_dev_sysfs(&mut g);
    let f = root.join("0000:00:03.0/resource2_wc");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
    let e = pci_open(&root, "pci:0000:00:03.0/bar2", None).unwrap_err();
    assert!(matches!(e, PciError::PermissionDenied { .. }), "{e}");
    assert!(e.to_string().contains("root"), "{e}");
}

// ---- specs -----------------------------------------------------------------------------

#[test]
fn spec_parsing() {
    let ok = |s: &str| s.parse::<WindowSpec>().unwrap();
    assert_eq!(ok("shm:/dev/shm/zh"), WindowSpec::Shm("/dev/shm/zh".into()));
    assert_eq!(ok("/dev/shm/zh"), WindowSpec::Shm("/dev/shm/zh".into()));
    assert_eq!(ok("./win"), WindowSpec::Shm("./win".into()));
    assert_eq!(ok("huge:memfd"), WindowSpec::HugeMemfd("zerohop".into()));
    assert_eq!(ok("huge:memfd:rx0"), WindowSpec::HugeMemfd("rx0".into()));
    assert_eq!(
        ok("huge:/dev/hugepages/zh"),
        WindowSpec::HugeFile("/dev/hugepages/zh".into())
    );
    assert_eq!(
        ok("pci:1af4:1110/bar2"),
        WindowSpec::Pci(PciSpec {
            device: PciDevice::Id {
                vendor: 0x1af4,
                device: 0x1110
            },
            bar: 2,
            write_combining: true
        })
    );
    assert_eq!(ok("heap:64K"), WindowSpec::Heap(64 << 10));
    for s in [
        "shm:/a",
        "huge:memfd:x",
        "huge:/a",
        "pci:0000:00:03.0/bar2,uc",
        "heap:4096",
    ] {
        assert_eq!(ok(s).to_string(), s);
    }

    let err = |s: &str| s.parse::<WindowSpec>().unwrap_err();
    assert_eq!(err(""), SpecError::Empty);
    assert!(matches!(err("nfs:/x"), SpecError::UnknownScheme { .. }));
    assert!(matches!(err("shm:"), SpecError::Missing { .. }));
    assert!(matches!(
        err("shm:relative"),
        SpecError::RelativePath { .. }
    ));
    assert!(matches!(err("relative"), SpecError::RelativePath { .. }));
    assert!(matches!(err("huge:"), SpecError::Missing { .. }));
    assert!(matches!(err("huge:memfd:"), SpecError::Missing { .. }));
    assert!(matches!(err("heap:"), SpecError::Missing { .. }));
    assert!(matches!(err("heap:12Q"), SpecError::BadSize { .. }));
    assert!(matches!(err("heap:0"), SpecError::BadSize { .. }));
    let e = err("pci:0000:00:03.0/bar9");
    assert!(matches!(e, SpecError::Pci { .. }));
    assert!(e.to_string().contains("BAR index"), "{e}");
    assert!(err("nfs:/x")
        .to_string()
        .contains("expected shm, huge, pci or heap"));
}

#[test]
fn create_and_open_by_spec() {
    let mut g = Cleanup::default();
    let p = g.add(shm_path("spec"));
    let spec: WindowSpec = format!("shm:{}", p.display()).parse().unwrap();
    let a = create_spec(&spec, 8192).unwrap();
    let b = open_spec(&spec, &OpenOptions::new()).unwrap();
    a.region()
        .store_u32(0, 42, std::sync::atomic::Ordering::Release)
        .unwrap();
    assert_eq!(
        b.region()
            .load_u32(0, std::sync::atomic::Ordering::Acquire)
            .unwrap(),
        42
    );

    let h = create_spec(&"heap:16K".parse().unwrap(), 0).unwrap();
    assert_eq!(h.len(), 16 << 10);
    assert!(matches!(
        open_spec(&"heap:16K".parse().unwrap(), &OpenOptions::new()),
        Err(WindowError::Unsupported(_))
    ));
    assert!(matches!(
        open_spec(&"huge:memfd".parse().unwrap(), &OpenOptions::new()),
        Err(WindowError::Unsupported(_))
    ));

    let m = create_spec(
        &format!("huge:memfd:{}", unique("m")).parse().unwrap(),
        4096,
    )
    .unwrap();
    let proc_spec: WindowSpec = format!("huge:{}", m.path().unwrap().display())
        .parse()
        .unwrap();
    let m2 = open_spec(&proc_spec, &OpenOptions::new()).unwrap();
    m.region()
        .store_u64(64, 9, std::sync::atomic::Ordering::Release)
        .unwrap();
    assert_eq!(
        m2.region()
            .load_u64(64, std::sync::atomic::Ordering::Acquire)
            .unwrap(),
        9
    );
}

// ---- instrumentation over a real window --------------------------------------------------

#[test]
fn counted_and_link_model_count_exactly() {
    let mut g = Cleanup::default();
    let (a, _b) = Shm::pair(SIZE, &mut g);
    let c = Counted::new(a.region().clone());
    for i in 0..3 {
        c.load_u64(8 * i, std::sync::atomic::Ordering::Acquire)
            .unwrap();
    }
    let s = c.snapshot();
    assert_eq!((s.reads, s.bytes_read, s.writes), (3, 24, 0));
    c.write_bytes(4096, &[0xab; 100]).unwrap();
    assert_eq!(c.snapshot().bytes_written, 100);

    let lm = LinkModel::new(
        a.region().clone(),
        LinkCost {
            read: Duration::from_micros(1),
            ..LinkCost::default()
        },
    );
    let t = Instant::now();
    for _ in 0..3 {
        lm.load_u32(0, std::sync::atomic::Ordering::Acquire)
            .unwrap();
    }
    // Each read was charged (no upper bound asserted: timing varies on a busy host).
    assert!(t.elapsed() >= Duration::from_micros(3));
    lm.doorbell();
    lm.doorbell();
    let s = lm.snapshot();
    assert_eq!((s.reads, s.writes, s.doorbells), (3, 0, 2));
    // A LinkModel can share counters with a Counted (one set per direction).
    let shared = LinkModel::with_counters(
        a.region().clone(),
        LinkCost::default(),
        c.counters().clone(),
    );
    shared
        .store_u32(0, 1, std::sync::atomic::Ordering::Release)
        .unwrap();
    assert_eq!(c.snapshot().writes, 2);
}
