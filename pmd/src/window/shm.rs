//! [`ShmWindow`]: a window in a file, usually on tmpfs under `/dev/shm` (the
//! embedded default; GUIDE.md section 2).
//!
//! Creation is exclusive (`O_CREAT | O_EXCL`, mode 0600), so two creators cannot
//! share a window by accident and a pre-planted file is an error, not a window.
//! Opening uses `O_NOFOLLOW` and refuses files owned by another user or writable by
//! group/others unless the caller says otherwise (GUIDE.md section 8).

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rings::Region;

use super::{check_file, human_size, map_file_guarded, open_error, page_size, round_size};
use super::{OpenOptions, Window, WindowError, WindowKind};

/// A window in a shared file, mapped `MAP_SHARED`.
#[derive(Debug)]
pub struct ShmWindow {
    region: Region,
    path: PathBuf,
    remove_on_drop: bool,
    created: bool,
}

impl ShmWindow {
    /// Creates `path` (which must not exist) with mode 0600, sizes it to `size`
    /// rounded up to the page size, and maps it. The file is removed when the
    /// window drops, unless [`ShmWindow::keep`] is called.
    pub fn create(path: impl AsRef<Path>, size: usize) -> Result<ShmWindow, WindowError> {
        let path = path.as_ref();
        let len = round_size(size, page_size())?;
        let file = create_excl(path)?;
        // From here on the file is ours: remove it again on any error (the guard is
        // disarmed once the window owns the path).
        let mut w = ShmWindow {
            region: Region::heap(0),
            path: path.to_owned(),
            remove_on_drop: true,
            created: true,
        };
        file.set_len(len as u64).map_err(|source| WindowError::Io {
            op: "ftruncate",
            path: path.to_owned(),
            source,
        })?;
        w.region = map_file_guarded(&file, len, path, page_size())?;
        Ok(w)
    }

    /// Opens an existing window file and maps all of it.
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<ShmWindow, WindowError> {
        let path = path.as_ref();
        let file = open_rw_nofollow(path)?;
        let size = check_file(&file, path, opts, true)?;
        let len = usize::try_from(size).map_err(|_| WindowError::InvalidSize {
            size,
            why: "larger than the address space",
        })?;
        let region = map_file_guarded(&file, len, path, page_size())?;
        Ok(ShmWindow {
            region,
            path: path.to_owned(),
            remove_on_drop: false,
            created: false,
        })
    }

    /// Keeps the file when the window drops (for a peer that opens it later).
    pub fn keep(mut self) -> Self {
        self.remove_on_drop = false;
        self
    }

    /// Sets whether the file is removed when the window drops (default: only if this
    /// window created it).
    pub fn set_remove_on_drop(&mut self, yes: bool) {
        self.remove_on_drop = yes;
    }

    /// True if this window created its file.
    pub fn created(&self) -> bool {
        self.created
    }
}

/// Creates `path` read-write with O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode
/// 0600 (before the umask, which can only remove bits).
pub(crate) fn create_excl(path: &Path) -> Result<File, WindowError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true) // O_CREAT | O_EXCL
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| open_error(path, "create", e))
}

/// Opens `path` read-write with O_NOFOLLOW | O_CLOEXEC, mapping errno to typed errors.
pub(crate) fn open_rw_nofollow(path: &Path) -> Result<File, WindowError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| open_error(path, "open", e))
}

impl Drop for ShmWindow {
    fn drop(&mut self) {
        if self.remove_on_drop {
            // The mapping (owned by the Region and its clones) stays valid after the
            // unlink; only the name goes away. A failure here has nobody to report to.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Window for ShmWindow {
    fn region(&self) -> &Region {
        &self.region
    }

    fn kind(&self) -> WindowKind {
        WindowKind::Shm
    }

    fn describe(&self) -> String {
        format!(
            "shm:{} ({}, {})",
            self.path.display(),
            human_size(self.region.len() as u64),
            self.kind()
        )
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
}
