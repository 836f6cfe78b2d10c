//! [`WindowSpec`]: the window strings users type (`--window SPEC`, config files).
//!
//! ```text
//!   shm:/dev/shm/NAME   or a plain path (/dev/shm/NAME, ./win)   -> ShmWindow
//!   huge:memfd          huge:memfd:NAME                          -> HugeWindow (memfd)
//!   huge:/dev/hugepages/NAME                                     -> HugeWindow (file)
//!   huge:/proc/PID/fd/N (open only: another process's memfd)     -> HugeWindow
//!   pci:0000:00:03.0/bar2[,uc]   pci:1af4:1110/bar2              -> PciBarWindow
//!   heap:SIZE           e.g. heap:64K, heap:2M, heap:4096        -> HeapWindow (tests)
//! ```

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::pci::{PciError, PciOptions, PciSpec};
use super::{HeapWindow, HugeWindow, OpenOptions, PciBarWindow, ShmWindow, Window, WindowError};

/// Where a window lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WindowSpec {
    /// A shared file.
    Shm(PathBuf),
    /// An anonymous huge-page memfd with this name.
    HugeMemfd(String),
    /// A hugetlbfs file (or `/proc/PID/fd/N` of a memfd, to open).
    HugeFile(PathBuf),
    /// A PCI BAR.
    Pci(PciSpec),
    /// A heap buffer of this many bytes (tests only).
    Heap(usize),
}

/// Why a spec does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Nothing given.
    #[error(
        "empty window spec (expected shm:PATH, huge:memfd, huge:PATH, pci:DEV/barN or heap:SIZE)"
    )]
    Empty,
    /// The part before the first ':' is not a known scheme.
    #[error("unknown window scheme {scheme:?} in {spec:?} (expected shm, huge, pci or heap)")]
    UnknownScheme {
        /// The scheme.
        scheme: String,
        /// The whole spec.
        spec: String,
    },
    /// A scheme with nothing after it.
    #[error("{spec:?}: missing {what} after the scheme")]
    Missing {
        /// The whole spec.
        spec: String,
        /// What is missing.
        what: &'static str,
    },
    /// A path that is not absolute or ./relative.
    #[error("{spec:?}: window paths must be absolute or start with ./")]
    RelativePath {
        /// The whole spec.
        spec: String,
    },
    /// A bad size.
    #[error("{spec:?}: bad size (expected a number with an optional K, M or G suffix)")]
    BadSize {
        /// The whole spec.
        spec: String,
    },
    /// A bad PCI spec.
    #[error("{spec:?}: {why}")]
    Pci {
        /// The whole spec.
        spec: String,
        /// What is wrong.
        why: String,
    },
}

/// Parses `4096`, `64K`, `64KiB`, `2M`, `1G` (binary units).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&v| v > 0)
}

fn path_ok(p: &str) -> bool {
    p.starts_with('/') || p.starts_with("./") || p.starts_with("../")
}

impl FromStr for WindowSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(SpecError::Empty);
        }
        let missing = |what| SpecError::Missing {
            spec: s.to_owned(),
            what,
        };
        if path_ok(s) {
            return Ok(WindowSpec::Shm(PathBuf::from(s)));
        }
        let Some((scheme, rest)) = s.split_once(':') else {
            return Err(SpecError::RelativePath { spec: s.to_owned() });
        };
        match scheme {
            "shm" => {
                if rest.is_empty() {
                    return Err(missing("a path"));
                }
                if !path_ok(rest) {
                    return Err(SpecError::RelativePath { spec: s.to_owned() });
                }
                Ok(WindowSpec::Shm(PathBuf::from(rest)))
            }
            "huge" => {
                if rest.is_empty() {
                    return Err(missing("memfd or a path"));
                }
                if rest == "memfd" {
                    return Ok(WindowSpec::HugeMemfd("zerohop".to_owned()));
                }
                if let Some(name) = rest.strip_prefix("memfd:") {
                    if name.is_empty() || name.contains('\0') {
                        return Err(missing("a memfd name"));
                    }
                    return Ok(WindowSpec::HugeMemfd(name.to_owned()));
                }
                if !path_ok(rest) {
                    return Err(SpecError::RelativePath { spec: s.to_owned() });
                }
                Ok(WindowSpec::HugeFile(PathBuf::from(rest)))
            }
            "pci" => {
                if rest.is_empty() {
                    return Err(missing("a device and BAR"));
                }
                rest.parse::<PciSpec>()
                    .map(WindowSpec::Pci)
                    .map_err(|e| SpecError::Pci {
                        spec: s.to_owned(),
                        why: match e {
                            PciError::BadSpec { why, .. } => why.to_owned(),
                            other => other.to_string(),
                        },
                    })
            }
            "heap" => {
                if rest.is_empty() {
                    return Err(missing("a size"));
                }
                parse_size(rest)
                    .map(WindowSpec::Heap)
                    .ok_or(SpecError::BadSize { spec: s.to_owned() })
            }
            other => Err(SpecError::UnknownScheme {
                scheme: other.to_owned(),
                spec: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowSpec::Shm(p) => write!(f, "shm:{}", p.display()),
            WindowSpec::HugeMemfd(n) => write!(f, "huge:memfd:{n}"),
            WindowSpec::HugeFile(p) => write!(f, "huge:{}", p.display()),
            WindowSpec::Pci(p) => write!(f, "{p}"),
            WindowSpec::Heap(n) => write!(f, "heap:{n}"),
        }
    }
}

/// Creates the window a spec names, `size` bytes (rounded up to its page size).
/// A PCI BAR is not created but mapped whole (it must be at least `size` bytes):
/// the window is the BAR, so the header's window size is the BAR size, which is what
/// the other side maps (the whole BAR, or the file or memory behind it).
pub fn create_spec(spec: &WindowSpec, size: usize) -> Result<Box<dyn Window>, WindowError> {
    Ok(match spec {
        WindowSpec::Shm(p) => Box::new(ShmWindow::create(p, size)?),
        WindowSpec::HugeMemfd(n) => Box::new(HugeWindow::memfd(n, size)?),
        WindowSpec::HugeFile(p) => Box::new(HugeWindow::create(p, size)?),
        WindowSpec::Pci(p) => {
            let w = PciBarWindow::open(p, &PciOptions::default())?;
            if w.len() < size {
                return Err(PciError::TooSmall {
                    device: w.address().to_owned(),
                    bar: p.bar,
                    size: w.bar().size,
                    requested: size as u64,
                }
                .into());
            }
            Box::new(w)
        }
        WindowSpec::Heap(n) => Box::new(HeapWindow::new(size.max(*n))?),
    })
}

/// Opens the existing window a spec names (a PCI BAR: all of it).
pub fn open_spec(spec: &WindowSpec, opts: &OpenOptions) -> Result<Box<dyn Window>, WindowError> {
    Ok(match spec {
        WindowSpec::Shm(p) => Box::new(ShmWindow::open(p, opts)?),
        WindowSpec::HugeFile(p) if p.starts_with("/proc/") => {
            Box::new(HugeWindow::open_proc_fd(p, opts)?)
        }
        WindowSpec::HugeFile(p) => Box::new(HugeWindow::open(p, opts)?),
        WindowSpec::HugeMemfd(_) => return Err(WindowError::Unsupported(
            "an anonymous memfd cannot be opened by name; open huge:/proc/PID/fd/N of its creator",
        )),
        WindowSpec::Pci(p) => Box::new(PciBarWindow::open(p, &PciOptions::default())?),
        WindowSpec::Heap(_) => {
            return Err(WindowError::Unsupported(
                "a heap window is private to its creator and cannot be opened",
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("2MiB"), Some(2 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("5T"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }
}
