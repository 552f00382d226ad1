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
use std::time::Instant;

use nix::libc;
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

/// What [`until`] leaves of a connection.
pub enum Early {
    /// It ended with the agent, having moved these bytes from `a` to `b` and
    /// from `b` to `a`.
    Ended(u64, u64),
    /// Both sides were still open past the deadline, and at a quiet moment:
    /// every byte read has been written, and neither socket holds a byte
    /// unread. The sockets (out of tokio's reactor), and the bytes moved
    /// each way as in `Ended`.
    Lived([StdTcpStream; 2], [u64; 2]),
}

/// Copies both ways through a small buffer until `deadline`, then until a
/// quiet moment, stopping only between a write and the next read. A side
/// that ends before is passed on as a half-close, and the other way carried
/// to its end (as [`bidirectional`] would), as is bulk: more than `bulk`
/// bytes copied by the deadline, or past it with no quiet moment.
///
/// Quiet means nothing received is left unread: the kernel relay's verdict
/// takes a socket's queued buffers whole, so one the agent had read part of
/// would be sent again (a transfer joined mid-read arrived corrupted).
pub async fn until(a: TcpStream, b: TcpStream, deadline: Instant, bulk: u64) -> io::Result<Early> {
    let (a, b) = (register(a)?, register(b)?);
    let mut buffer = vec![0u8; BUFFER];
    let mut moved = [0u64; 2];
    let mut due = false;
    // What was moved before the bytes that count towards `bulk`.
    let mut not_counted = 0;
    let ended = loop {
        if due && moved[0] + moved[1] - not_counted > bulk {
            drop(buffer);
            let (a_to_b, b_to_a) = tokio::try_join!(one_way(&a, &b), one_way(&b, &a))?;
            return Ok(Early::Ended(moved[0] + a_to_b, moved[1] + b_to_a));
        }
        if due && unread(&a)? == 0 && unread(&b)? == 0 {
            return Ok(Early::Lived([a.into_inner(), b.into_inner()], moved));
        }
        let (from, ready) = tokio::select! {
            biased;
            () = tokio::time::sleep_until(deadline.into()), if !due => {
                due = true;
                if moved[0] + moved[1] <= bulk {
                    not_counted = moved[0] + moved[1];
                }
                continue;
            }
            ready = a.readable() => (0, ready?),
            ready = b.readable() => (1, ready?),
        };
        let to = if from == 0 { &b } else { &a };
        match read_ready(ready, &mut buffer)? {
            None => continue,
            Some(0) => break from,
            Some(read) => {
                write_all(to, &buffer[..read]).await?;
                moved[from] += read as u64;
            }
        }
    };
    drop(buffer);
    // The way still open, whose `from` is the ended side's peer.
    let (from, to) = if ended == 0 { (&b, &a) } else { (&a, &b) };
    end_of_stream(from, 0)?;
    moved[1 - ended] += one_way(from, to).await?;
    Ok(Early::Ended(moved[0], moved[1]))
}

/// Bytes received and not yet read.
fn unread(socket: &impl AsRawFd) -> io::Result<u64> {
    queue_length(socket, libc::FIONREAD)
}

/// Bytes in a socket's output queue (TIOCOUTQ) or received and not read
/// (FIONREAD).
pub(super) fn queue_length(socket: &impl AsRawFd, request: libc::Ioctl) -> io::Result<u64> {
    let mut length: libc::c_int = 0;
    // SAFETY: both requests write one int to the pointer, which outlives
    // the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), request, &mut length) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(length as u64)
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
        let Some(read) = read_ready(from.readable().await?, &mut buffer)? else {
            continue;
        };
        if read == 0 {
            return end_of_stream(to, total);
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

/// One read from a socket found readable; `None` if it was not after all.
fn read_ready<S: AsRawFd + Borrow<StdTcpStream>>(
    mut ready: tokio::io::unix::AsyncFdReadyGuard<'_, S>,
    buffer: &mut [u8],
) -> io::Result<Option<usize>> {
    let Ok(read) = ready.try_io(|socket| socket.get_ref().borrow().read(buffer)) else {
        return Ok(None);
    };
    let read = read?;
    if read < buffer.len() {
        // Drained. Safe against a race: tokio keeps the readiness if an
        // event arrived after this guard was taken.
        ready.clear_ready();
    }
    Ok(Some(read))
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
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: both descriptors are open for the duration of the call; null
    // offsets mean "the current position", as sockets and pipes require.
    let moved = unsafe {
        libc::splice(
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
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
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
            libc::fcntl(
                pipe.write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        Ok(pipe)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A relay's two sockets on loopback with their far ends: the caller,
    /// connected to `a`, and the server, to `b`.
    async fn relayed() -> io::Result<[TcpStream; 4]> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let caller = TcpStream::connect(listener.local_addr()?).await?;
        let (a, _) = listener.accept().await?;
        let b = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        Ok([caller, a, b, server])
    }

    #[tokio::test]
    async fn a_short_exchange_ends_with_the_agent() -> io::Result<()> {
        let [mut caller, a, b, mut server] = relayed().await?;
        let relay = tokio::spawn(until(a, b, Instant::now() + Duration::from_secs(60), 0));
        caller.write_all(b"ping").await?;
        caller.shutdown().await?;
        let mut asked = Vec::new();
        server.read_to_end(&mut asked).await?;
        server.write_all(b"pong!").await?;
        drop(server);
        let mut answered = Vec::new();
        caller.read_to_end(&mut answered).await?;
        assert_eq!((&asked[..], &answered[..]), (&b"ping"[..], &b"pong!"[..]));
        assert!(matches!(relay.await??, Early::Ended(4, 5)));
        Ok(())
    }

    #[tokio::test]
    async fn a_connection_open_past_the_deadline_is_handed_over_with_nothing_unread(
    ) -> io::Result<()> {
        let [mut caller, a, b, mut server] = relayed().await?;
        let relay = tokio::spawn(until(
            a,
            b,
            Instant::now() + Duration::from_millis(100),
            1 << 20,
        ));
        let sent: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut received = vec![0; sent.len()];
        tokio::try_join!(caller.write_all(&sent), server.read_exact(&mut received))?;
        assert!(received == sent);
        let Early::Lived(sockets, moved) = relay.await?? else {
            panic!("a connection still open was not handed over");
        };
        assert_eq!(moved, [200_000, 0]);
        for socket in &sockets {
            assert_eq!(unread(socket)?, 0);
        }
        Ok(())
    }

    #[tokio::test]
    async fn bulk_by_the_deadline_stays_with_the_agent() -> io::Result<()> {
        let [mut caller, a, b, mut server] = relayed().await?;
        let deadline = Instant::now() + Duration::from_millis(100);
        let relay = tokio::spawn(until(a, b, deadline, 1 << 20));
        let sent: Vec<u8> = (0..2_000_000u32).map(|i| (i / 7) as u8).collect();
        let mut received = vec![0; sent.len()];
        tokio::try_join!(caller.write_all(&sent), server.read_exact(&mut received))?;
        tokio::time::sleep_until((deadline + Duration::from_millis(50)).into()).await;
        caller.write_all(b"and the rest").await?;
        caller.shutdown().await?;
        server.shutdown().await?;
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await?;
        assert!(received == sent);
        assert_eq!(rest, b"and the rest");
        assert!(matches!(relay.await??, Early::Ended(2_000_012, 0)));
        Ok(())
    }
}
