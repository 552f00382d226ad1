//! The in-kernel relay for plain TCP. The agent pairs the two sockets in the
//! relay maps ([`RelayMaps`]); from then on `relay_verdict` sends what
//! each receives out of the other inside the kernel, and the agent is not
//! woken per message: no read, write or epoll round per hop. The agent only
//! watches for the ends. It passes a half-close on once every byte received
//! before it has been written to the other socket, and takes the byte counts
//! from the kernel's own TCP counters.

use std::io::{self, Read, Write};
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
/// half-close or a handover.
const DRAIN_PAUSE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(100));
/// The agent's copy buffer once a direction is handed over (bulk).
const HANDED_OVER_BUFFER: usize = 256 * 1024;

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
    let _forget = Forget { maps, cookies };
    let handovers = cookies.map(|cookie| maps.handover_signal(cookie));
    // Nothing writes to either socket before the pair joins: their output
    // counts start here.
    let written_before = [written(&sockets[0])?, written(&sockets[1])?];
    let paired = maps.pair(
        &slot,
        (&sockets[0], cookies[0]),
        (&sockets[1], cookies[1]),
    );
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
    // Registered with tokio only once a direction is handed over.
    let registered = tokio::sync::OnceCell::new();
    let direction = |from: usize| Direction {
        from: &sockets[from],
        to: &sockets[1 - from],
        cookie: cookies[from],
        written_before: written_before[1 - from],
        handover: &handovers[from],
        maps,
        registered: &registered,
        sockets: &sockets,
        index: from,
    };
    tokio::try_join!(direction(0).run(), direction(1).run())?;
    Ok((data_received(&sockets[0])?, data_received(&sockets[1])?))
}

/// Drops the kernel's state for the pair when the relay ends.
struct Forget<'a> {
    maps: &'a RelayMaps,
    cookies: [u64; 2],
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.maps.forget(self.cookies);
    }
}

/// Both sockets in tokio's reactor, for directions the agent copies.
type Registered = [AsyncFd<Descriptor>; 2];

/// A socket's descriptor, owned by its `TcpStream`, which outlives this.
struct Descriptor(RawFd);

impl AsRawFd for Descriptor {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// One way of a relayed pair: in the kernel until `from` reaches its
/// budget, then copied by the agent.
struct Direction<'a> {
    from: &'a StdTcpStream,
    to: &'a StdTcpStream,
    cookie: u64,
    /// `to`'s output count when the pair joined.
    written_before: u64,
    handover: &'a tokio::sync::Notify,
    maps: &'a RelayMaps,
    registered: &'a tokio::sync::OnceCell<Registered>,
    sockets: &'a [StdTcpStream; 2],
    index: usize,
}

impl Direction<'_> {
    async fn run(self) -> io::Result<()> {
        let end = Ends::watch(self.from)?;
        loop {
            tokio::select! {
                events = end.next() => {
                    let events = events?;
                    if let Some(error) = self.from.take_error()? {
                        return Err(error);
                    }
                    if events.contains(EpollFlags::EPOLLRDHUP) {
                        break;
                    }
                }
                () = self.handover.notified() => break,
            }
        }
        // Either way, the kernel is done with what it took: wait until it
        // has all been written to `to`.
        let forwarded = self.wait_for_kernel().await?;
        if !forwarded.handed_over {
            self.to.shutdown(Shutdown::Write)?;
            return Ok(());
        }
        self.copy().await
    }

    /// Waits until `to` has been written everything the kernel forwarded
    /// from `from`, which it hands to `to` from a work queue: a half-close
    /// or the agent's own writes must not overtake it.
    async fn wait_for_kernel(&self) -> io::Result<Forwarded> {
        let mut pause = DRAIN_PAUSE.0;
        loop {
            let state = self.maps.state(self.cookie)?;
            let handed_over = state.handed_over != 0;
            // Until handed over, every byte received (up to the end) is
            // the kernel's to forward.
            let target = match handed_over {
                true => state.forwarded,
                false => data_received(self.from)?,
            };
            if written(self.to)?.saturating_sub(self.written_before) >= target {
                return Ok(Forwarded { handed_over });
            }
            if let Some(error) = self.to.take_error()? {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(DRAIN_PAUSE.1);
        }
    }

    /// The agent's copy from `from` to `to` after a handover, to the end.
    async fn copy(&self) -> io::Result<()> {
        let registered = self
            .registered
            .get_or_try_init(|| async {
                let register = |socket: &StdTcpStream| {
                    // SAFETY: the descriptor belongs to a socket that
                    // outlives the registration (declared before it).
                    unsafe { AsyncFd::register(Descriptor(socket.as_raw_fd())) }
                        .map_err(io::Error::from)
                };
                io::Result::Ok([register(&self.sockets[0])?, register(&self.sockets[1])?])
            })
            .await?;
        let (from_ready, to_ready) = (&registered[self.index], &registered[1 - self.index]);
        let mut buffer = vec![0u8; HANDED_OVER_BUFFER];
        loop {
            let mut ready = from_ready.readable().await?;
            let read = match ready.try_io(|_| (&mut &*self.from).read(&mut buffer)) {
                Ok(read) => read?,
                Err(_would_block) => continue,
            };
            if read == 0 {
                return self.to.shutdown(Shutdown::Write);
            }
            let mut data = &buffer[..read];
            while !data.is_empty() {
                let mut ready = to_ready.writable().await?;
                if let Ok(written) = ready.try_io(|_| (&mut &*self.to).write(data)) {
                    data = &data[written?..];
                }
            }
        }
    }
}

/// What the kernel had done when it let go of a direction.
struct Forwarded {
    /// The rest is the agent's to copy.
    handed_over: bool,
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

/// An epoll set watching one socket for its end only (the peer's FIN, an
/// error, a hang-up), in tokio's reactor. Arriving data does not wake it:
/// EPOLLIN is not asked for.
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
    fn watch(socket: &StdTcpStream) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let interest = EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
        epoll.add(socket.as_fd(), EpollEvent::new(interest, 0))?;
        // SAFETY: the `AsyncFd` owns the epoll descriptor, which stays open
        // and the same until the `AsyncFd` is dropped.
        let epoll = unsafe { AsyncFd::register_with_interest(EpollFd(epoll), Interest::READABLE) }?;
        Ok(Self { epoll })
    }

    /// The next end events reported.
    async fn next(&self) -> io::Result<EpollFlags> {
        loop {
            let mut ready = self.epoll.readable().await?;
            let mut events = [EpollEvent::empty()];
            let count = ready.get_ref().get_ref().0.wait(&mut events, EpollTimeout::ZERO)?;
            if count == 0 {
                ready.clear_ready();
                continue;
            }
            return Ok(events[0].events());
        }
    }
}
