//! Copies between two TCP sockets. Small exchanges (requests and responses)
//! go through a small user-space buffer, which costs the least latency; once
//! a direction shows bulk traffic (a read fills the buffer) it switches to
//! splice(2), where bytes move socket -> pipe -> socket inside the kernel.
//!
//! The sockets are driven through `AsyncFd` so that a short read can mark
//! the socket drained without another read that would only say EAGAIN: one
//! system call fewer per message and hop.

use std::borrow::Borrow;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream as StdTcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;

/// User-space buffer per direction; a read that fills it means bulk. Small,
/// because it is zeroed for every connection (64 KiB took 4% of an agent's
/// CPU at 500 new connections per second).
const BUFFER: usize = 16 * 1024;
/// Pipe capacity asked for (the default is 64 KiB; 1 MiB is the usual
/// `fs.pipe-max-size`). A larger pipe moves more per system call.
const PIPE_SIZE: usize = 1 << 20;

/// A socket in tokio's reactor, owned (`StdTcpStream`) or borrowed.
type Socket<S> = AsyncFd<S>;

/// Copies both ways until both sides have finished sending; a side's end
/// of stream is passed on as a half-close. The first error ends both ways.
/// Returns the bytes moved from `a` to `b` and from `b` to `a`.
pub async fn bidirectional(a: TcpStream, b: TcpStream) -> io::Result<(u64, u64)> {
    let (a, b) = (register(a)?, register(b)?);
    tokio::try_join!(one_way(&a, &b), one_way(&b, &a))
}

fn register(stream: TcpStream) -> io::Result<Socket<StdTcpStream>> {
    // SAFETY: the `AsyncFd` owns the std stream, whose descriptor stays open
    // and the same until the `AsyncFd` is dropped.
    unsafe { AsyncFd::register(stream.into_std()?) }.map_err(io::Error::from)
}

/// Copies from `from` to `to` until `from` ends, then half-closes `to`.
pub async fn one_way<S: AsRawFd + Borrow<StdTcpStream>>(
    from: &Socket<S>,
    to: &Socket<S>,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let mut ready = from.readable().await?;
        let read = match ready.try_io(|socket| socket.get_ref().borrow().read(&mut buffer)) {
            Ok(read) => read?,
            Err(_would_block) => continue,
        };
        if read == 0 {
            return end_of_stream(to, total);
        }
        if read < BUFFER {
            // Drained. Safe against a race: tokio keeps the readiness if an
            // event arrived after this guard was taken.
            ready.clear_ready();
        }
        write_all(to, &buffer[..read]).await?;
        total += read as u64;
        if read == BUFFER {
            break;
        }
    }
    drop(buffer);
    let pipe = Pipe::new()?;
    loop {
        let moved = io_when(from, Direction::Read, |fd| {
            splice(fd, pipe.write.as_raw_fd(), PIPE_SIZE)
        })
        .await?;
        if moved == 0 {
            return end_of_stream(to, total);
        }
        let mut left = moved;
        while left > 0 {
            left -= io_when(to, Direction::Write, |fd| {
                splice(pipe.read.as_raw_fd(), fd, left)
            })
            .await?;
        }
        total += moved as u64;
    }
}

async fn write_all<S: AsRawFd + Borrow<StdTcpStream>>(
    to: &Socket<S>,
    mut data: &[u8],
) -> io::Result<()> {
    while !data.is_empty() {
        let mut ready = to.writable().await?;
        if let Ok(written) = ready.try_io(|socket| socket.get_ref().borrow().write(data)) {
            data = &data[written?..];
        }
    }
    Ok(())
}

enum Direction {
    Read,
    Write,
}

/// Runs `f` on the socket's descriptor once it is ready that way, until it
/// does not say `WouldBlock`.
async fn io_when(
    socket: &Socket<impl AsRawFd>,
    direction: Direction,
    mut f: impl FnMut(RawFd) -> io::Result<usize>,
) -> io::Result<usize> {
    loop {
        let mut ready = match direction {
            Direction::Read => socket.readable().await?,
            Direction::Write => socket.writable().await?,
        };
        if let Ok(result) = ready.try_io(|socket| f(socket.as_raw_fd())) {
            return result;
        }
    }
}

/// Passes a half-close on.
fn end_of_stream<S: AsRawFd + Borrow<StdTcpStream>>(to: &Socket<S>, total: u64) -> io::Result<u64> {
    to.get_ref().borrow().shutdown(Shutdown::Write)?;
    Ok(total)
}

/// One non-blocking splice(2); `WouldBlock` when there is nothing to move.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = nix::libc::SPLICE_F_MOVE | nix::libc::SPLICE_F_NONBLOCK;
    // SAFETY: both descriptors are open for the duration of the call; null
    // offsets mean "the current position", as sockets and pipes require.
    let moved = unsafe {
        nix::libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(moved as usize)
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe {
            nix::libc::pipe2(
                fds.as_mut_ptr(),
                nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are new and ours.
        let pipe = unsafe {
            Self {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        // A smaller pipe only costs speed: ignore a refusal.
        // SAFETY: F_SETPIPE_SZ on a pipe we own.
        unsafe {
            nix::libc::fcntl(
                pipe.write.as_raw_fd(),
                nix::libc::F_SETPIPE_SZ,
                PIPE_SIZE as nix::libc::c_int,
            )
        };
        Ok(pipe)
    }
}
