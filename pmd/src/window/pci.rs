//! [`PciBarWindow`]: a PCI BAR mapped through sysfs (real RC<->EP or NTB hardware).
//!
//! Spec syntax (what users type on a board):
//!
//! ```text
//!   pci:0000:00:03.0/bar2       BAR 2 of that device, write-combining (resource2_wc)
//!   pci:00:03.0/bar2,uc         domain 0000 implied; uncached (resource2)
//!   pci:1af4:1110/bar2          the one device with vendor 1af4, device 1110
//! ```
//!
//! The BAR size comes from the device's `resource` file: one line per resource,
//! `0x<start> 0x<end> 0x<flags>`; size = end - start + 1. Only memory BARs
//! (`IORESOURCE_MEM`) of non-zero, power-of-two size can be mapped. The file mapped
//! is `resourceN_wc` (the kernel creates it only for prefetchable BARs) or
//! `resourceN`; the mapping code is the same for a real sysfs file and a plain file,
//! which is how the tests run it (the sysfs root is configurable).
//!
//! Every successful mapping prints one line on stderr naming the file and the BAR
//! size read from `resource`:
//!
//! ```text
//! zerohop: pci: mapped /sys/bus/pci/devices/0000:00:03.0/resource2_wc (16 MiB of BAR2 of 0000:00:03.0, 16 MiB BAR: 0xfe000000-0xfeffffff flags 0x14220c, write-combining)
//! ```

use std::fmt;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rings::Region;

use super::{human_size, map_file, Window, WindowError, WindowKind};

/// `IORESOURCE_IO`: an I/O port BAR.
pub const IORESOURCE_IO: u64 = 0x100;
/// `IORESOURCE_MEM`: a memory BAR.
pub const IORESOURCE_MEM: u64 = 0x200;
/// `IORESOURCE_PREFETCH`: a prefetchable memory BAR (WC mapping possible).
pub const IORESOURCE_PREFETCH: u64 = 0x2000;
/// Default sysfs root.
pub const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// Which device a spec names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PciDevice {
    /// A bus address, `dddd:bb:dd.f` (always stored with the domain).
    Addr(String),
    /// The one device with this vendor and device id.
    Id {
        /// Vendor id.
        vendor: u16,
        /// Device id.
        device: u16,
    },
}

impl fmt::Display for PciDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PciDevice::Addr(a) => f.write_str(a),
            PciDevice::Id { vendor, device } => write!(f, "{vendor:04x}:{device:04x}"),
        }
    }
}

/// A parsed `pci:` spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciSpec {
    /// The device.
    pub device: PciDevice,
    /// BAR index, 0..=5.
    pub bar: u8,
    /// Map `resourceN_wc` (default) rather than `resourceN` (`,uc`).
    pub write_combining: bool,
}

impl fmt::Display for PciSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pci:{}/bar{}", self.device, self.bar)?;
        if !self.write_combining {
            f.write_str(",uc")?;
        }
        Ok(())
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_addr(s: &str) -> Option<String> {
    // dddd:bb:dd.f or bb:dd.f
    let parts: Vec<&str> = s.split(':').collect();
    let (dom, bus, rest) = match parts.as_slice() {
        [d, b, r] => (*d, *b, *r),
        [b, r] => ("0000", *b, *r),
        _ => return None,
    };
    let (dev, func) = rest.split_once('.')?;
    let ok = is_hex(dom, 4)
        && is_hex(bus, 2)
        && is_hex(dev, 2)
        && func.len() == 1
        && matches!(func.as_bytes()[0], b'0'..=b'7');
    ok.then(|| format!("{dom}:{bus}:{dev}.{func}").to_ascii_lowercase())
}

impl FromStr for PciSpec {
    type Err = PciError;

    /// Parses `[pci:]DEVICE/barN[,wc|,uc]`.
    fn from_str(s: &str) -> Result<Self, PciError> {
        let bad = |why: &'static str| PciError::BadSpec {
            spec: s.to_owned(),
            why,
        };
        let body = s.strip_prefix("pci:").unwrap_or(s);
        let (dev, rest) = body
            .rsplit_once('/')
            .ok_or(bad("expected DEVICE/barN, e.g. pci:0000:00:03.0/bar2"))?;
        let mut opts = rest.split(',');
        let bar = opts
            .next()
            .and_then(|b| b.strip_prefix("bar"))
            .ok_or(bad("expected barN after the device, e.g. /bar2"))?;
        let bar: u8 = match bar.parse() {
            Ok(n) if n <= 5 => n,
            _ => return Err(bad("BAR index must be 0..5")),
        };
        let mut write_combining = true;
        for o in opts {
            match o {
                "wc" => write_combining = true,
                "uc" => write_combining = false,
                _ => return Err(bad("unknown option (expected ,wc or ,uc)")),
            }
        }
        let device = if let Some((v, d)) = dev
            .split_once(':')
            .filter(|(v, d)| is_hex(v, 4) && is_hex(d, 4) && !dev.contains('.'))
        {
            PciDevice::Id {
                vendor: u16::from_str_radix(v, 16).map_err(|_| bad("bad vendor id"))?,
                device: u16::from_str_radix(d, 16).map_err(|_| bad("bad device id"))?,
            }
        } else {
            PciDevice::Addr(parse_addr(dev).ok_or(bad(
                "device must be an address dddd:bb:dd.f or an id vvvv:dddd (hex)",
            ))?)
        };
        Ok(PciSpec {
            device,
            bar,
            write_combining,
        })
    }
}

/// Where to look and how much to map.
#[derive(Clone, Debug)]
pub struct PciOptions {
    /// The directory of PCI devices (default `/sys/bus/pci/devices`).
    pub sysfs_root: PathBuf,
    /// Bytes to map from the start of the BAR (default: the whole BAR).
    pub size: Option<usize>,
}

impl Default for PciOptions {
    fn default() -> Self {
        PciOptions {
            sysfs_root: PathBuf::from(SYSFS_PCI_DEVICES),
            size: None,
        }
    }
}

/// Everything that can go wrong finding and mapping a BAR.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// The spec does not parse.
    #[error("bad PCI spec {spec:?}: {why}")]
    BadSpec {
        /// The spec.
        spec: String,
        /// What is wrong.
        why: &'static str,
    },
    /// No device matches.
    #[error("no PCI device {device} under {root} (check lspci -D)")]
    NoSuchDevice {
        /// The sysfs root searched.
        root: PathBuf,
        /// The device asked for.
        device: String,
    },
    /// More than one device has the id.
    #[error("{device} matches several devices ({}); give the address instead", matches.join(", "))]
    AmbiguousDevice {
        /// The id asked for.
        device: String,
        /// The addresses found.
        matches: Vec<String>,
    },
    /// Reading a sysfs file failed.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The resource file has no line for the BAR.
    #[error("{path}: no line for BAR{bar} (device has {lines} resources)")]
    NoSuchBar {
        /// The resource file.
        path: PathBuf,
        /// The BAR.
        bar: u8,
        /// Lines present.
        lines: usize,
    },
    /// The resource line is not three hex numbers.
    #[error("{path}: line for BAR{bar} is not `0xSTART 0xEND 0xFLAGS`: {line:?}")]
    BadResourceLine {
        /// The resource file.
        path: PathBuf,
        /// The BAR.
        bar: u8,
        /// The line.
        line: String,
    },
    /// The BAR is an I/O port BAR.
    #[error(
        "BAR{bar} of {device} is an I/O port BAR (flags {flags:#x}), not memory; pick a memory BAR"
    )]
    IoBar {
        /// The device address.
        device: String,
        /// The BAR.
        bar: u8,
        /// Its flags.
        flags: u64,
    },
    /// The BAR is not a memory BAR.
    #[error("BAR{bar} of {device} is not a memory BAR (flags {flags:#x})")]
    NotMemory {
        /// The device address.
        device: String,
        /// The BAR.
        bar: u8,
        /// Its flags.
        flags: u64,
    },
    /// The BAR has size 0 (unimplemented or unassigned).
    #[error("BAR{bar} of {device} has size 0 (not implemented, or not assigned by the firmware)")]
    SizeZero {
        /// The device address.
        device: String,
        /// The BAR.
        bar: u8,
    },
    /// The BAR size is not a power of two (a corrupt resource file).
    #[error("BAR{bar} of {device} has size {size:#x}, not a power of two")]
    NotPowerOfTwo {
        /// The device address.
        device: String,
        /// The BAR.
        bar: u8,
        /// The size read.
        size: u64,
    },
    /// The BAR is smaller than the window asked for.
    #[error("BAR{bar} of {device} is {} but {} were requested", human_size(*size), human_size(*requested))]
    TooSmall {
        /// The device address.
        device: String,
        /// The BAR.
        bar: u8,
        /// BAR size.
        size: u64,
        /// Requested size.
        requested: u64,
    },
    /// `resourceN_wc` does not exist.
    #[error("{path}: missing: the kernel offers write-combining only for prefetchable BARs{}; use `,uc` to map the uncached resource file", if *prefetchable { "" } else { " (this one is not)" })]
    WcMissing {
        /// The missing file.
        path: PathBuf,
        /// Whether the BAR claims to be prefetchable.
        prefetchable: bool,
    },
    /// The resource file cannot be opened for lack of permission.
    #[error("{path}: permission denied (mapping a BAR needs root or CAP_SYS_ADMIN; try sudo)")]
    PermissionDenied {
        /// The file.
        path: PathBuf,
    },
    /// The file is shorter than the mapping (a plain file standing in for sysfs).
    #[error("{path}: file is {file_size} bytes, shorter than the {need} bytes to map")]
    FileShorter {
        /// The file.
        path: PathBuf,
        /// Its size.
        file_size: u64,
        /// Bytes to map.
        need: u64,
    },
    /// Opening the resource file failed otherwise.
    #[error("{path}: cannot open: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn read(path: &Path) -> Result<String, PciError> {
    std::fs::read_to_string(path).map_err(|source| PciError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_id(s: &str) -> Option<u16> {
    let s = s.trim();
    u16::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// Finds the device directory; returns it and the device address.
fn find_device(root: &Path, dev: &PciDevice) -> Result<(PathBuf, String), PciError> {
    let not_found = || PciError::NoSuchDevice {
        root: root.to_owned(),
        device: dev.to_string(),
    };
    match dev {
        PciDevice::Addr(a) => {
            let d = root.join(a);
            if d.is_dir() {
                Ok((d, a.clone()))
            } else {
                Err(not_found())
            }
        }
        PciDevice::Id { vendor, device } => {
            let entries = std::fs::read_dir(root).map_err(|source| PciError::Read {
                path: root.to_owned(),
                source,
            })?;
            let mut matches: Vec<String> = entries
                .flatten()
                .filter(|e| {
                    let p = e.path();
                    let v = std::fs::read_to_string(p.join("vendor")).ok();
                    let d = std::fs::read_to_string(p.join("device")).ok();
                    v.as_deref().and_then(parse_id) == Some(*vendor)
                        && d.as_deref().and_then(parse_id) == Some(*device)
                })
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect();
            matches.sort();
            match matches.len() {
                0 => Err(not_found()),
                1 => {
                    let a = matches.remove(0);
                    Ok((root.join(&a), a))
                }
                _ => Err(PciError::AmbiguousDevice {
                    device: dev.to_string(),
                    matches,
                }),
            }
        }
    }
}

/// A BAR as read from the `resource` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// Bus address of the first byte.
    pub start: u64,
    /// Bus address of the last byte.
    pub end: u64,
    /// IORESOURCE_* flags.
    pub flags: u64,
    /// end - start + 1.
    pub size: u64,
}

/// Reads and validates BAR `bar` of the device in `dir` (address `addr`).
fn read_bar(dir: &Path, addr: &str, bar: u8) -> Result<BarInfo, PciError> {
    let path = dir.join("resource");
    let text = read(&path)?;
    let lines: Vec<&str> = text.lines().collect();
    let line = *lines.get(bar as usize).ok_or(PciError::NoSuchBar {
        path: path.clone(),
        bar,
        lines: lines.len(),
    })?;
    let bad = || PciError::BadResourceLine {
        path: path.clone(),
        bar,
        line: line.to_owned(),
    };
    let mut it = line.split_whitespace();
    let (Some(s), Some(e), Some(f), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(bad());
    };
    let (start, end, flags) = match (parse_hex(s), parse_hex(e), parse_hex(f)) {
        (Some(s), Some(e), Some(f)) => (s, e, f),
        _ => return Err(bad()),
    };
    let device = addr.to_owned();
    if flags & IORESOURCE_IO != 0 {
        return Err(PciError::IoBar { device, bar, flags });
    }
    if start == 0 && end == 0 {
        return Err(PciError::SizeZero { device, bar });
    }
    if flags & IORESOURCE_MEM == 0 {
        return Err(PciError::NotMemory { device, bar, flags });
    }
    let size = match end.checked_sub(start).and_then(|d| d.checked_add(1)) {
        Some(s) => s,
        None => return Err(bad()),
    };
    if !size.is_power_of_two() {
        return Err(PciError::NotPowerOfTwo { device, bar, size });
    }
    Ok(BarInfo {
        start,
        end,
        flags,
        size,
    })
}

/// A window onto a PCI BAR.
#[derive(Debug)]
pub struct PciBarWindow {
    region: Region,
    spec: PciSpec,
    addr: String,
    path: PathBuf,
    bar: BarInfo,
}

impl PciBarWindow {
    /// Finds the device and BAR of `spec` under `opts.sysfs_root` and maps
    /// `opts.size` bytes of it (default: all).
    pub fn open(spec: &PciSpec, opts: &PciOptions) -> Result<PciBarWindow, PciError> {
        let (dir, addr) = find_device(&opts.sysfs_root, &spec.device)?;
        let bar = read_bar(&dir, &addr, spec.bar)?;
        // A requested size is rounded up to whole pages (the mapping granularity),
        // but never past the end of the BAR.
        let want = match opts.size {
            Some(n) => (n as u64)
                .checked_next_multiple_of(super::page_size() as u64)
                .unwrap_or(u64::MAX)
                .min(bar.size.max(n as u64)),
            None => bar.size,
        };
        if want > bar.size || want == 0 {
            return Err(PciError::TooSmall {
                device: addr,
                bar: spec.bar,
                size: bar.size,
                requested: want,
            });
        }
        let len = usize::try_from(want).map_err(|_| PciError::TooSmall {
            device: addr.clone(),
            bar: spec.bar,
            size: bar.size,
            requested: want,
        })?;
        let name = if spec.write_combining {
            format!("resource{}_wc", spec.bar)
        } else {
            format!("resource{}", spec.bar)
        };
        let path = dir.join(name);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => return Err(open_failed(e, path, spec.write_combining, bar.flags)),
        };
        check_len(&file, &path, want)?;
        let region = map_file(&file, len, &path).map_err(|e| match e {
            WindowError::Map { source, .. }
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EACCES) | Some(libc::EPERM)
                ) =>
            {
                PciError::PermissionDenied { path: path.clone() }
            }
            WindowError::Map { source, .. } => PciError::Open {
                path: path.clone(),
                source,
            },
            other => PciError::Open {
                path: path.clone(),
                source: std::io::Error::other(other.to_string()),
            },
        })?;
        eprintln!(
            "zerohop: pci: mapped {} ({} of BAR{} of {}, {} BAR: {:#x}-{:#x} flags {:#x}, {})",
            path.display(),
            human_size(want),
            spec.bar,
            addr,
            human_size(bar.size),
            bar.start,
            bar.end,
            bar.flags,
            if spec.write_combining {
                "write-combining"
            } else {
                "uncached"
            }
        );
        Ok(PciBarWindow {
            region,
            spec: spec.clone(),
            addr,
            path,
            bar,
        })
    }

    /// The BAR as read from `resource`.
    pub fn bar(&self) -> BarInfo {
        self.bar
    }

    /// The device address (`dddd:bb:dd.f`).
    pub fn address(&self) -> &str {
        &self.addr
    }
}

/// Maps a failed open of a resource file to the error that says what to do.
fn open_failed(e: std::io::Error, path: PathBuf, wc: bool, flags: u64) -> PciError {
    match e.raw_os_error() {
        Some(libc::ENOENT) if wc => PciError::WcMissing {
            path,
            prefetchable: flags & IORESOURCE_PREFETCH != 0,
        },
        Some(libc::EACCES) | Some(libc::EPERM) => PciError::PermissionDenied { path },
        _ => PciError::Open { path, source: e },
    }
}

/// A sysfs resource file reports the BAR size as its size; a plain file standing in
/// for one must be at least as long as the mapping (else accesses would fault).
fn check_len(file: &File, path: &Path, need: u64) -> Result<(), PciError> {
    let md = file.metadata().map_err(|source| PciError::Read {
        path: path.to_owned(),
        source,
    })?;
    if md.is_file() && md.size() < need {
        return Err(PciError::FileShorter {
            path: path.to_owned(),
            file_size: md.size(),
            need,
        });
    }
    Ok(())
}

impl Window for PciBarWindow {
    fn region(&self) -> &Region {
        &self.region
    }

    fn kind(&self) -> WindowKind {
        WindowKind::PciBar {
            write_combining: self.spec.write_combining,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} ({} of a {} BAR, {}, {})",
            self.spec,
            human_size(self.region.len() as u64),
            human_size(self.bar.size),
            self.kind(),
            self.path.display()
        )
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_errors_say_what_to_do() {
        let err = |errno, wc, flags| {
            open_failed(
                std::io::Error::from_raw_os_error(errno),
                PathBuf::from("/sys/x/resource2_wc"),
                wc,
                flags,
            )
        };
        let e = err(libc::EACCES, true, 0);
        assert!(matches!(e, PciError::PermissionDenied { .. }));
        assert!(e.to_string().contains("root"), "{e}");
        let e = err(libc::ENOENT, true, IORESOURCE_MEM);
        assert!(e.to_string().contains("(this one is not)"), "{e}");
        assert!(e.to_string().contains(",uc"), "{e}");
        assert!(matches!(err(libc::ENOENT, false, 0), PciError::Open { .. }));
    }

    #[test]
    fn spec_parsing() {
        let s: PciSpec = "pci:0000:00:03.0/bar2".parse().unwrap();
        assert_eq!(
            s,
            PciSpec {
                device: PciDevice::Addr("0000:00:03.0".into()),
                bar: 2,
                write_combining: true
            }
        );
        assert_eq!(s.to_string(), "pci:0000:00:03.0/bar2");
        let s: PciSpec = "pci:00:1F.7/bar0,uc".parse().unwrap();
        assert_eq!(s.device, PciDevice::Addr("0000:00:1f.7".into()));
        assert!(!s.write_combining);
        assert_eq!(s.to_string(), "pci:0000:00:1f.7/bar0,uc");
        let s: PciSpec = "pci:1af4:1110/bar2,wc".parse().unwrap();
        assert_eq!(
            s.device,
            PciDevice::Id {
                vendor: 0x1af4,
                device: 0x1110
            }
        );
        for bad in [
            "pci:",
            "pci:0000:00:03.0",
            "pci:0000:00:03.0/bar6",
            "pci:0000:00:03.0/bar",
            "pci:0000:00:03.0/bar2,xx",
            "pci:0000:00:03.8/bar2",
            "pci:zz:00.0/bar1",
            "pci:1af4:111/bar2",
            "pci:0000:00:03.0/resource2",
        ] {
            assert!(
                matches!(bad.parse::<PciSpec>(), Err(PciError::BadSpec { .. })),
                "{bad}"
            );
        }
    }
}
