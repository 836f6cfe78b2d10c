//! Notifications for a side that does not busy-poll.
//!
//! zerohop's fast path polls; notifications are the optional slow path for a side that
//! would rather sleep (an idle RPMsg endpoint, a control thread). The rings decide
//! *whether* to notify (virtio event-idx / flags suppression, so nothing is signalled
//! while the peer polls); this module delivers the signal:
//!
//! - [`Doorbell`]: "wake the peer". [`EventFd::ring`] on one host, or
//!   [`MmioDoorbell`]: a store to a doorbell register inside a mapped region (an NTB
//!   doorbell register, ivshmem's BAR0 doorbell, a PCIe endpoint function's register
//!   that raises an MSI on the other side).
//! - [`EventFd`]: the wait side on one host, with a deadline, plus [`send_fds`] /
//!   [`recv_fds`] to hand eventfds to the peer process over a unix socket
//!   (`SCM_RIGHTS`), and [`Rendezvous`] which does the whole exchange: each side makes
//!   its own "wake me" eventfd and gives it to the other, which rings it.
//!
//! None of this is called per packet: a doorbell is rung at most once per burst, and
//! only when the ring says the peer asked for it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rings::{Mem, MemError, Region};

/// What can go wrong delivering or waiting for a notification.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The doorbell register is outside its region or misaligned.
    #[error("doorbell register: {0}")]
    Register(#[from] MemError),
    /// The peer closed the socket or sent something other than the expected fds.
    #[error("notification rendezvous: {0}")]
    Protocol(String),
    /// The peer did not connect before the deadline.
    #[error("no peer connected to {path} within {waited:?}")]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> NotifyError {
    move |source| NotifyError::Io { what, source }
}

/// Wakes the peer.
pub trait Doorbell: Send + Sync {
    /// Signals the peer once. Cheap enough to call once per burst; never per packet.
    fn ring(&self) -> Result<(), NotifyError>;
}

/// A Linux eventfd (non-blocking, close-on-exec): a counter the peer increments and we
/// wait on.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd with counter 0.
    pub fn new() -> Result<EventFd, NotifyError> {
        // SAFETY: eventfd takes no pointers; the returned fd (if >= 0) is ours to own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io_err("eventfd")(io::Error::last_os_error()));
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd { fd })
    }

    /// Wraps an eventfd received from the peer.
    pub fn from_owned(fd: OwnedFd) -> EventFd {
        EventFd { fd }
    }

    /// Consumes pending signals without waiting; returns how many there were.
    pub fn take(&self) -> Result<u64, NotifyError> {
        let mut v = 0u64;
        // SAFETY: reads exactly 8 bytes into a local u64 from a descriptor we own.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut v as *mut u64).cast::<libc::c_void>(),
                8,
            )
        };
        if n == 8 {
            return Ok(v);
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(0)
        } else {
            Err(io_err("reading eventfd")(e))
        }
    }

    /// Waits until signalled or `timeout` passes; returns the number of signals (0 on
    /// timeout). Interrupted waits are resumed with the remaining time.
    pub fn wait(&self, timeout: Duration) -> Result<u64, NotifyError> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.take()?;
            if got > 0 {
                return Ok(got);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(0);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd on our stack, count 1.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(io_err("polling eventfd")(e));
                }
            }
        }
    }
}

impl Doorbell for EventFd {
    fn ring(&self) -> Result<(), NotifyError> {
        let v = 1u64;
        // SAFETY: writes exactly 8 bytes from a local u64 to a descriptor we own.
        let n = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&v as *const u64).cast::<libc::c_void>(),
                8,
            )
        };
        if n == 8 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        // EAGAIN: the counter is saturated, so the peer has a wake-up pending anyway.
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(())
        } else {
            Err(io_err("writing eventfd")(e))
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A doorbell register inside a mapped region (PCI BAR, NTB doorbell window): ringing
/// it is one 32-bit store, a posted write on PCIe.
#[derive(Debug, Clone)]
pub struct MmioDoorbell {
    region: Region,
    offset: usize,
    value: u32,
}

impl MmioDoorbell {
    /// A doorbell that writes `value` at `offset` of `region`. Checks the register
    /// lies inside the region and is 4-byte aligned.
    pub fn new(region: Region, offset: usize, value: u32) -> Result<MmioDoorbell, NotifyError> {
        region.load_u32(offset, Ordering::Relaxed).map(|_| ())?;
        Ok(MmioDoorbell {
            region,
            offset,
            value,
        })
    }
}

impl Doorbell for MmioDoorbell {
    fn ring(&self) -> Result<(), NotifyError> {
        // Release: everything the caller published before ringing (ring indices,
        // payload) is visible before the device sees the doorbell write; pairs with
        // the peer's read of its ring after it takes the interrupt.
        self.region
            .store_u32(self.offset, self.value, Ordering::Release)?;
        Ok(())
    }
}

/// Sends `fds` to the peer over a connected unix socket (`SCM_RIGHTS`), with a
/// one-byte payload.
pub fn send_fds(sock: &UnixStream, fds: &[BorrowedFd<'_>]) -> Result<(), NotifyError> {
    if fds.is_empty() || fds.len() > MAX_FDS {
        return Err(NotifyError::Protocol(format!(
            "can send 1 to {MAX_FDS} fds, not {}",
            fds.len()
        )));
    }
    let raw: Vec<libc::c_int> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let payload = [b'Z'];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let data_len = std::mem::size_of_val(raw.as_slice());
    let mut cbuf = CmsgBuf::new();
    // SAFETY: msg points at our iovec and control buffer, both alive for the call;
    // CMSG_* are used exactly as cmsg(3) describes, within the buffer's capacity
    // (MAX_FDS descriptors fit by construction).
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr();
        msg.msg_controllen = libc::CMSG_SPACE(data_len as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
        std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), data_len);
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io_err("sendmsg")(io::Error::last_os_error()));
    }
    Ok(())
}

/// Most descriptors one message carries.
pub const MAX_FDS: usize = 8;

/// An aligned control-message buffer big enough for [`MAX_FDS`] descriptors.
#[repr(C, align(8))]
struct CmsgBuf([u8; 128]);

impl CmsgBuf {
    fn new() -> Self {
        CmsgBuf([0; 128])
    }
    fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.0.as_mut_ptr().cast()
    }
}

/// Receives up to [`MAX_FDS`] descriptors sent with [`send_fds`]. Blocks (the socket's
/// own timeout applies).
pub fn recv_fds(sock: &UnixStream) -> Result<Vec<OwnedFd>, NotifyError> {
    let mut payload = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = CmsgBuf::new();
    // SAFETY: msg points at our iovec and control buffer, alive for the call.
    // MSG_CMSG_CLOEXEC: received fds are close-on-exec.
    let (n, msg) = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr();
        msg.msg_controllen = std::mem::size_of::<CmsgBuf>() as _;
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        (n, msg)
    };
    if n < 0 {
        return Err(io_err("recvmsg")(io::Error::last_os_error()));
    }
    if n == 0 {
        return Err(NotifyError::Protocol("peer closed the socket".into()));
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(NotifyError::Protocol("control message truncated".into()));
    }
    let mut fds = Vec::new();
    // SAFETY: walks the control messages the kernel wrote into our buffer, with the
    // CMSG_* macros bounding every access by msg_controllen; each SCM_RIGHTS entry is
    // a descriptor the kernel installed for us, so we take ownership of it once.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<libc::c_int>() {
                    let fd = std::ptr::read_unaligned(
                        data.add(i * std::mem::size_of::<libc::c_int>())
                            .cast::<libc::c_int>(),
                    );
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if fds.is_empty() {
        return Err(NotifyError::Protocol(
            "message carried no descriptors".into(),
        ));
    }
    Ok(fds)
}

/// The notification pair of one side after the exchange: `wake_me` is what we wait
/// on; `peer` is the doorbell that wakes the other side.
#[derive(Debug)]
pub struct NotifyPair {
    /// Our eventfd: the peer rings it, we wait on it.
    pub wake_me: EventFd,
    /// The peer's eventfd: we ring it.
    pub peer: EventFd,
}

/// The one-host exchange of eventfds over a unix socket at a path (next to the window
/// file, created 0600). The server side removes the socket file when it is done.
pub struct Rendezvous;

impl Rendezvous {
    /// Listens at `path`, accepts one peer before `timeout`, and swaps eventfds.
    pub fn serve(path: &Path, timeout: Duration) -> Result<NotifyPair, NotifyError> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(io_err("binding the notify socket"))?;
        let _cleanup = RemoveOnDrop(path.to_path_buf());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("setting the notify socket's mode"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("configuring the notify socket"))?;
        let start = Instant::now();
        let sock = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if start.elapsed() > timeout {
                        return Err(NotifyError::Timeout {
                            path: path.to_path_buf(),
                            waited: start.elapsed(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(io_err("accepting a notify peer")(e)),
            }
        };
        Self::swap(sock, timeout)
    }

    /// Connects to a peer serving at `path` and swaps eventfds.
    pub fn connect(path: &Path, timeout: Duration) -> Result<NotifyPair, NotifyError> {
        let start = Instant::now();
        let sock = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && start.elapsed() < timeout =>
                {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => return Err(io_err("connecting to the notify socket")(e)),
            }
        };
        Self::swap(sock, timeout)
    }

    fn swap(sock: UnixStream, timeout: Duration) -> Result<NotifyPair, NotifyError> {
        sock.set_nonblocking(false)
            .and_then(|_| sock.set_read_timeout(Some(timeout)))
            .map_err(io_err("configuring the notify socket"))?;
        let wake_me = EventFd::new()?;
        send_fds(&sock, &[wake_me.as_fd()])?;
        let mut fds = recv_fds(&sock)?;
        if fds.len() != 1 {
            return Err(NotifyError::Protocol(format!(
                "expected 1 eventfd, got {}",
                fds.len()
            )));
        }
        let peer = EventFd::from_owned(fds.remove(0));
        Ok(NotifyPair { wake_me, peer })
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_counts_and_times_out() {
        let e = EventFd::new().unwrap();
        assert_eq!(e.take().unwrap(), 0);
        assert_eq!(e.wait(Duration::from_millis(5)).unwrap(), 0);
        e.ring().unwrap();
        e.ring().unwrap();
        assert_eq!(e.wait(Duration::from_secs(5)).unwrap(), 2);
        assert_eq!(e.take().unwrap(), 0);
    }

    #[test]
    fn eventfd_wakes_a_waiting_thread() {
        let e = std::sync::Arc::new(EventFd::new().unwrap());
        let e2 = e.clone();
        let t = std::thread::spawn(move || e2.wait(Duration::from_secs(10)).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        e.ring().unwrap();
        assert_eq!(t.join().unwrap(), 1);
    }

    #[test]
    fn mmio_doorbell_writes_its_register_and_checks_bounds() {
        let r = Region::heap(64);
        let d = MmioDoorbell::new(r.clone(), 8, 0xabcd).unwrap();
        d.ring().unwrap();
        assert_eq!(r.load_u32(8, Ordering::Acquire).unwrap(), 0xabcd);
        assert!(matches!(
            MmioDoorbell::new(r.clone(), 62, 1),
            Err(NotifyError::Register(_))
        ));
        assert!(matches!(
            MmioDoorbell::new(r, 6, 1),
            Err(NotifyError::Register(_))
        ));
    }

    #[test]
    fn fds_cross_a_socket_and_still_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        let e = EventFd::new().unwrap();
        send_fds(&a, &[e.as_fd()]).unwrap();
        let got = recv_fds(&b).unwrap();
        assert_eq!(got.len(), 1);
        let peer = EventFd::from_owned(got.into_iter().next().unwrap());
        peer.ring().unwrap();
        assert_eq!(e.wait(Duration::from_secs(5)).unwrap(), 1);
        assert!(send_fds(&a, &[]).is_err());
    }

    #[test]
    fn rendezvous_swaps_eventfds_and_removes_its_socket() {
        let path = std::env::temp_dir().join(format!("zerohop-notify-{}.sock", std::process::id()));
        let p2 = path.clone();
        let server = std::thread::spawn(move || Rendezvous::serve(&p2, Duration::from_secs(10)));
        let client = Rendezvous::connect(&path, Duration::from_secs(10)).unwrap();
        let server = server.join().unwrap().unwrap();
        // Each side rings the other's wake_me.
        client.peer.ring().unwrap();
        assert_eq!(server.wake_me.wait(Duration::from_secs(5)).unwrap(), 1);
        server.peer.ring().unwrap();
        assert_eq!(client.wake_me.wait(Duration::from_secs(5)).unwrap(), 1);
        assert!(!path.exists(), "socket file left behind");
    }

    #[test]
    fn rendezvous_without_a_peer_times_out_cleanly() {
        let path =
            std::env::temp_dir().join(format!("zerohop-notify-lonely-{}.sock", std::process::id()));
        let e = Rendezvous::serve(&path, Duration::from_millis(30)).unwrap_err();
        assert!(matches!(e, NotifyError::Timeout { .. }), "{e}");
        assert!(!path.exists());
        let e = Rendezvous::connect(&path, Duration::from_millis(30)).unwrap_err();
        assert!(matches!(e, NotifyError::Io { .. }), "{e}");
    }
}
