//! The in-kernel relay for plain TCP. The agent pairs the two sockets in the
//! relay maps ([`RelayMaps`]); from then on `relay_verdict` sends what
//! each receives out of the other inside the kernel, and the agent is not
//! woken per message: no read, write or epoll round per hop. The agent only
//! watches for the ends. It passes a half-close on once every byte received
//! before it has been written to the other socket, and takes the byte counts
//! from the kernel's own TCP counters.

use std::io;
use std::net::{Shutdown, TcpStream as StdTcpStream};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::libc;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::splice;
use crate::capture::{PairError, RelayMaps, RelaySlot};

/// First and last pause while the kernel still holds bytes that precede a
/// half-close.
const DRAIN_PAUSE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(100));

/// Relays both ways until both sides have finished sending, a side's end of
/// stream passed on as a half-close; the first error ends both ways.
/// Returns the bytes moved from `a` to `b` and from `b` to `a`.
pub async fn bidirectional(
    a: TcpStream,
    b: TcpStream,
    maps: &RelayMaps,
    slot: RelaySlot<'_>,
) -> io::Result<(u64, u64)> {
    // Out of tokio's reactor: its registration would wake the agent for every
    // message the kernel forwards.
    let sockets = [a.into_std()?, b.into_std()?];
    let cookie = |socket: &StdTcpStream| socket2::SockRef::from(socket).cookie();
    let cookies = [cookie(&sockets[0])?, cookie(&sockets[1])?];
    // Nothing writes to either socket before the pair joins: their output
    // counts start here.
    let written_before = [written(&sockets[0])?, written(&sockets[1])?];
    let paired = maps.pair(&slot, (&sockets[0], cookies[0]), (&sockets[1], cookies[1]));
    match paired {
        Ok(()) => {}
        Err(PairError::NotJoined(reason)) => {
            tracing::debug!(%reason, "relaying a connection in user space");
            drop(slot);
            let [a, b] = sockets.map(TcpStream::from_std);
            return splice::bidirectional(a?, b?).await;
        }
        Err(PairError::Halfway(error)) => return Err(error),
    }
    for socket in &sockets {
        forward_queued(socket)?;
    }
    let ends = Ends::watch(&sockets)?;
    // `finished[i]`: socket i's peer has ended and that end was passed on.
    let mut finished = [false, false];
    while !(finished[0] && finished[1]) {
        let events = ends.next().await?;
        for from in [0, 1] {
            if events[from].is_empty() {
                continue;
            }
            if let Some(error) = sockets[from].take_error()? {
                return Err(error);
            }
            if finished[from] || !events[from].contains(EpollFlags::EPOLLRDHUP) {
                continue;
            }
            let to = 1 - from;
            drained(&sockets[from], &sockets[to], written_before[to]).await?;
            sockets[to].shutdown(Shutdown::Write)?;
            finished[from] = true;
        }
    }
    Ok((data_received(&sockets[0])?, data_received(&sockets[1])?))
}

/// Waits until every byte `from` received before its peer's end has been
/// written to `to`: the kernel hands redirected bytes to `to` from a work
/// queue, so a half-close sent at once could overtake the last of them.
async fn drained(from: &StdTcpStream, to: &StdTcpStream, written_before: u64) -> io::Result<()> {
    let received = data_received(from)?;
    let mut pause = DRAIN_PAUSE.0;
    loop {
        if written(to)?.saturating_sub(written_before) >= received {
            return Ok(());
        }
        if let Some(error) = to.take_error()? {
            return Err(error);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(DRAIN_PAUSE.1);
    }
}

/// Data bytes a socket has received, once its peer has ended: the kernel's
/// count includes the FIN's one sequence number.
fn data_received(socket: &StdTcpStream) -> io::Result<u64> {
    Ok(tcp_info(socket)?.tcpi_bytes_received.saturating_sub(1))
}

/// Bytes written to a socket so far: acknowledged plus still queued. Read in
/// that order, an acknowledgement arriving in between makes the sum short,
/// never long, so a caller waiting for a count only waits a little longer.
fn written(socket: &StdTcpStream) -> io::Result<u64> {
    let acked = tcp_info(socket)?.tcpi_bytes_acked;
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one int to the pointer, which outlives the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut queued) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(acked + queued as u64)
}

fn tcp_info(socket: &StdTcpStream) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain integers, for which all zeroes is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes to `info`, both of which
    // outlive the call.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// Bytes that arrived before the socket joined wait in its queue until the
/// kernel next signals it readable; setting SO_RCVLOWAT signals it now.
fn forward_queued(socket: &StdTcpStream) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the option value is one int that outlives the call.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An epoll set watching two sockets for their ends only (the peer's FIN,
/// an error, a hang-up), in tokio's reactor as one descriptor. Arriving
/// data does not wake it: EPOLLIN is not asked for.
struct Ends {
    epoll: AsyncFd<EpollFd>,
}

struct EpollFd(Epoll);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

impl Ends {
    fn watch(sockets: &[StdTcpStream; 2]) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        for (index, socket) in sockets.iter().enumerate() {
            let interest = EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
            epoll.add(socket.as_fd(), EpollEvent::new(interest, index as u64))?;
        }
        // SAFETY: the `AsyncFd` owns the epoll descriptor, which stays open
        // and the same until the `AsyncFd` is dropped.
        let epoll = unsafe { AsyncFd::register_with_interest(EpollFd(epoll), Interest::READABLE) }?;
        Ok(Self { epoll })
    }

    /// The next ends reported, per socket (empty where there was none).
    async fn next(&self) -> io::Result<[EpollFlags; 2]> {
        loop {
            let mut ready = self.epoll.readable().await?;
            let mut events = [EpollEvent::empty(); 2];
            let count = ready
                .get_ref()
                .get_ref()
                .0
                .wait(&mut events, EpollTimeout::ZERO)?;
            if count == 0 {
                ready.clear_ready();
                continue;
            }
            let mut ends = [EpollFlags::empty(); 2];
            for event in &events[..count] {
                ends[event.data() as usize] |= event.events();
            }
            return Ok(ends);
        }
    }
}
