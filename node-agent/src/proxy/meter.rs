//! How far a connection has got, read from the kernel's own counts on one
//! of its sockets (`TCP_INFO`'s bytes acknowledged and received), so its
//! bytes are reported while it lasts and not only at its end, whichever
//! relay carries it (the kernel's, or the agent's copy).

use std::os::fd::{AsRawFd, RawFd};

use nix::libc;

/// The head of Linux's `struct tcp_info`, up to its byte counts (the
/// kernel only ever appends to it): eight one-byte fields, twenty-four
/// 32-bit ones, the two pacing rates, then the counts.
#[repr(C)]
#[derive(Default)]
struct TcpInfoHead {
    state: u8,
    _bytes: [u8; 7],
    _words: [u32; 24],
    _pacing_rates: [u64; 2],
    bytes_acked: u64,
    bytes_received: u64,
}

/// Which end of the connection the metered socket faces.
#[derive(Debug, Clone, Copy)]
enum Facing {
    /// The caller's own socket: what it received came from the caller.
    Caller,
    /// The socket to the callee: what it sent came from the caller.
    Callee,
}

/// One socket of a connection, known by its descriptor and its cookie:
/// the relay owns the socket, and a descriptor closed and reused for
/// another socket while the relay runs reads as gone, never as another
/// connection's counts.
#[derive(Debug)]
pub struct Meter {
    fd: RawFd,
    cookie: u64,
    facing: Facing,
}

impl Meter {
    /// The caller's own socket, accepted by the agent.
    pub fn caller(socket: &impl AsRawFd) -> Option<Self> {
        Self::new(socket.as_raw_fd(), Facing::Caller)
    }

    /// The socket to the callee, opened by the agent.
    pub fn callee(socket: &impl AsRawFd) -> Option<Self> {
        Self::new(socket.as_raw_fd(), Facing::Callee)
    }

    fn new(fd: RawFd, facing: Facing) -> Option<Self> {
        Some(Self {
            fd,
            cookie: cookie(fd)?,
            facing,
        })
    }

    /// Bytes from the caller and to the caller so far: what the kernel has
    /// received from one end and had acknowledged by the other. Only while
    /// the socket is established: a FIN counts in both counts, and once
    /// either side has closed the relay's own count at the end says the
    /// rest.
    pub fn read(&self) -> Option<(u64, u64)> {
        let (acked, received) = tcp_bytes(self.fd)?;
        // Read after the counts: the same socket throughout.
        if cookie(self.fd)? != self.cookie {
            return None;
        }
        Some(match self.facing {
            Facing::Caller => (received, acked),
            // The agent opened this one: its SYN is in the acknowledged count.
            Facing::Callee => (acked.saturating_sub(1), received),
        })
    }
}

/// What `getsockopt` fills: `value`, of `len` bytes at most.
fn socket_option<T: Default>(fd: RawFd, level: i32, name: i32) -> Option<T> {
    let mut value = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a plain struct of `len` writable bytes, which is
    // all the kernel writes; a stale descriptor only fails the call.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut T).cast(), &mut len) };
    (rc == 0 && len as usize == std::mem::size_of::<T>()).then_some(value)
}

fn tcp_bytes(fd: RawFd) -> Option<(u64, u64)> {
    let info: TcpInfoHead = socket_option(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    (info.state == TCP_ESTABLISHED).then_some((info.bytes_acked, info.bytes_received))
}

/// `tcpi_state` of an established connection (Linux's `TCP_ESTABLISHED`).
const TCP_ESTABLISHED: u8 = 1;

fn cookie(fd: RawFd) -> Option<u64> {
    socket_option(fd, libc::SOL_SOCKET, libc::SO_COOKIE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_sockets_counts_say_what_each_end_has_carried() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(&[1; 3000]).unwrap();
        let mut got = [0; 3000];
        server.read_exact(&mut got).unwrap();
        server.write_all(&[2; 700]).unwrap();
        let mut back = [0; 700];
        client.read_exact(&mut back).unwrap();
        // The server's socket faces the caller (the client); the client's
        // faces the callee. Acknowledgements arrive a moment later.
        let as_caller = Meter::caller(&server).unwrap();
        let as_callee = Meter::callee(&client).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while as_caller.read() != Some((3000, 700)) || as_callee.read() != Some((3000, 700)) {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?} {:?}",
                as_caller.read(),
                as_callee.read()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Half-closed: no longer read (the FIN is in the counts).
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while as_caller.read().is_some() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Closed, its descriptor likely given to the next socket: either
        // way not read as the connection.
        drop(server);
        let _next = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(as_caller.read(), None);
    }
}
