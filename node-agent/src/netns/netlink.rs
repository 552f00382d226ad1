//! A netlink socket in the current thread's network namespace, for one
//! request and its first reply at a time.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::libc;

// linux/netlink.h
pub const NLMSG_ERROR: u16 = 2;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

const HEADER: usize = 16;

pub struct Netlink(OwnedFd);

/// The first message the kernel answered with.
pub struct Reply {
    pub kind: u16,
    /// For an `NLMSG_ERROR`, the (negative) error, 0 for an acknowledgement.
    pub error: Option<i32>,
}

impl Netlink {
    /// `protocol`: `NETLINK_ROUTE`, `NETLINK_SOCK_DIAG`, ...
    pub fn open(protocol: libc::c_int) -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends one message of type `kind` and returns the first reply.
    pub fn request(&self, kind: u16, flags: u16, body: &[u8]) -> io::Result<Reply> {
        let len = u32::try_from(HEADER + body.len()).map_err(io::Error::other)?;
        let mut message = Vec::with_capacity(HEADER + body.len());
        message.extend_from_slice(&len.to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&flags.to_ne_bytes());
        message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        message.extend_from_slice(body);
        // SAFETY: the buffer is valid for its length; the kernel is the
        // default destination of a netlink socket.
        let sent = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = [0u8; 1024];
        // SAFETY: the buffer is valid for writes of its length.
        let received = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                reply.as_mut_ptr().cast(),
                reply.len(),
                0,
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        let reply = &reply[..received as usize];
        let kind = reply
            .get(4..6)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or_else(|| io::Error::other("netlink: a reply shorter than its header"))?;
        let error = match kind {
            NLMSG_ERROR => reply
                .get(HEADER..HEADER + 4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
            _ => None,
        };
        Ok(Reply { kind, error })
    }
}
