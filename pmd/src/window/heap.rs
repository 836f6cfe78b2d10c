//! [`HeapWindow`]: [`rings::Region::heap`] behind the [`Window`] trait.
//!
//! For unit tests and Miri only: the memory is private to the process, so no peer
//! process can attach. Two "mappings" of one heap window are clones of its region
//! ([`HeapWindow::share`]), which is what the conformance suite uses.

use rings::Region;

use super::{human_size, page_size, round_size, Window, WindowError, WindowKind};

/// A heap buffer posing as a window (tests and Miri only).
#[derive(Debug, Clone)]
pub struct HeapWindow {
    region: Region,
}

impl HeapWindow {
    /// A zeroed window of `size` bytes rounded up to the page size.
    pub fn new(size: usize) -> Result<HeapWindow, WindowError> {
        let page = page_size();
        let len = round_size(size, page)?;
        // Region::heap aligns to 128 bytes; over-allocate one page and take the
        // page-aligned part, so the heap window is aligned like a mapping.
        let whole = Region::heap(len + page);
        let off = (page - whole.addr() % page) % page;
        let region = whole.sub(off, len).map_err(|_| WindowError::InvalidSize {
            size: size as u64,
            why: "too large",
        })?;
        Ok(HeapWindow { region })
    }

    /// A second window over the same memory (the heap analogue of mapping a file
    /// twice).
    pub fn share(&self) -> HeapWindow {
        self.clone()
    }
}

impl Window for HeapWindow {
    fn region(&self) -> &Region {
        &self.region
    }

    fn kind(&self) -> WindowKind {
        WindowKind::Heap
    }

    fn describe(&self) -> String {
        format!(
            "heap:{} ({})",
            human_size(self.region.len() as u64),
            self.kind()
        )
    }
}
