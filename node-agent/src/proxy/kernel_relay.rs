//! The in-kernel relay for plain TCP. The agent copies a connection's first
//! moments itself (`JOIN_AFTER`: most short exchanges end by then, and cost
//! less copied than joined; bulk then stays with the agent, spliced), then,
//! at a quiet moment (`splice::until`), pairs the two sockets in the relay
//! maps ([`RelayMaps`]); from then on `relay_verdict` sends what
//! each receives out of the other inside the kernel, and the agent is not
//! woken per message: no read, write or epoll round per hop. The agent only
//! watches for the ends. It passes a half-close on once every byte received
//! before it has been written to the other socket, and takes the byte counts
//! from the kernel's own TCP counters.
//!
//! The kernel's redirect has no back-pressure, so once more than
//! `RELAY_BUDGET` of what a socket forwarded is not yet delivered by its peer
//! (bulk, or a reader that fell behind) the agent takes the pair back, then
//! splices that way and copies the other (see `Direction::take_back`).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream as StdTcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_ebpf_common::RELAY_BUDGET;
use nix::libc;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::splice::{self, Early};
use crate::capture::{PairError, RelayMaps, RelaySlot};
use crate::metrics::{Metrics, Relay};
use crate::netns::Netns;
use std::sync::atomic::{AtomicBool, Ordering};

/// First and last pause while the kernel still holds bytes that precede a
/// half-close or the agent's own copying; each pause is a quarter longer than
/// the one before, so a take-back waits at most a quarter longer than the
/// kernel needs.
const DRAIN_PAUSE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(100));
/// Send buffer asked for both relayed sockets when they join (the kernel
/// doubles it for its bookkeeping): the redirect retries a full send buffer
/// only at the next timer tick (4 ms at HZ=250), so with a buffer still small
/// from autotuning, bulk forwarded in the kernel ran at about 2 Gbit/s and
/// left megabytes queued that a take-back had to wait out (20-80 ms, against
/// mostly 3-13 ms with this buffer). It only bounds what may queue: twice the
/// autotuning ceiling (tcp_wmem's default maximum), reached only by bulk,
/// which the agent takes back.
const RELAY_SEND_BUFFER: libc::c_int = 4 << 20;
/// The agent's copy buffer for the quiet way of a pair taken back.
const QUIET_BUFFER: usize = 64 * 1024;
/// How long a connection is copied by the agent before it may join the
/// relay. Joining and leaving cost more than copying a short exchange:
/// through the kernel relay from the first byte, a new connection per
/// request took 0.88-1.0 ms of the machine's CPU, against 0.78-0.83 ms
/// copied by the agent throughout, at the same latency. Connections that
/// live longer (kept alive, streams) join after this; bulk (`RELAY_BUDGET`
/// by then), which the relay would hand back, stays with the agent.
const JOIN_AFTER: Duration = Duration::from_millis(20);

/// Relays both ways until both sides have finished sending, a side's end of
/// stream passed on as a half-close; the first error ends both ways.
/// Returns the bytes moved from `a` to `b` and from `b` to `a`.
pub async fn bidirectional(
    a: TcpStream,
    b: TcpStream,
    maps: &Arc<RelayMaps>,
    slot: RelaySlot<'_>,
    netns: &Arc<Netns>,
    metrics: &Metrics,
) -> io::Result<(u64, u64)> {
    // Returned out of tokio's reactor: its registration would wake the
    // agent for every message the kernel forwards.
    let (sockets, moved) =
        match splice::until(a, b, Instant::now() + JOIN_AFTER, RELAY_BUDGET).await? {
            Early::Ended(a_to_b, b_to_a) => {
                metrics.relayed(Relay::UserSpace);
                return Ok((a_to_b, b_to_a));
            }
            Early::Lived(sockets, moved) => (sockets, moved),
        };
    let cookie = |socket: &StdTcpStream| socket2::SockRef::from(socket).cookie();
    let cookies = [cookie(&sockets[0])?, cookie(&sockets[1])?];
    let _forget = Forget { maps, cookies };
    let handovers = cookies.map(|cookie| maps.handover_signal(cookie));
    // The output counts start where the agent's copying left them.
    let written_before = [written_exactly(&sockets[0])?, written_exactly(&sockets[1])?];
    let paired = maps.pair(
        &slot,
        (&sockets[0], cookies[0]),
        (&sockets[1], cookies[1]),
        written_before,
    );
    match paired {
        Ok(()) => metrics.relayed(Relay::Kernel),
        Err(PairError::NotJoined(reason)) => {
            tracing::debug!(%reason, "relaying a connection in user space");
            metrics.relayed(Relay::UserSpace);
            drop(slot);
            let [a, b] = sockets.map(TcpStream::from_std);
            let (a_to_b, b_to_a) = splice::bidirectional(a?, b?).await?;
            return Ok((moved[0] + a_to_b, moved[1] + b_to_a));
        }
        Err(PairError::Halfway(reason)) => {
            // `b` joined and may have forwarded into `a` already, so the
            // pair cannot start over in user space; it is taken straight
            // back, in order, as a pair past its budget is.
            tracing::debug!(%reason, "taking back a pair only half joined");
            metrics.relayed(Relay::Kernel);
            handovers[1].notify_one();
        }
    }
    for socket in &sockets {
        set_relay_send_buffer(socket);
        forward_queued(socket)?;
    }
    // Registered with tokio only once the agent takes the pair back.
    let registered = tokio::sync::OnceCell::new();
    let taken_back = AtomicBool::new(false);
    let switched = [tokio::sync::Notify::new(), tokio::sync::Notify::new()];
    let direction = |from: usize| Direction {
        from: &sockets[from],
        to: &sockets[1 - from],
        cookie: cookies[from],
        peer_cookie: cookies[1 - from],
        from_written_before: written_before[from],
        written_before: written_before[1 - from],
        received_before: moved[from],
        handover: &handovers[from],
        switched: &switched[from],
        other_switched: &switched[1 - from],
        taken_back: &taken_back,
        maps,
        netns,
        metrics,
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

/// Both sockets in tokio's reactor, for the agent's own copying.
type Registered = [AsyncFd<Borrowed>; 2];

/// A second handle on a socket the relay owns, for tokio's reactor; it
/// never closes the descriptor.
struct Borrowed(std::mem::ManuallyDrop<StdTcpStream>);

impl Borrowed {
    /// # Safety
    /// `socket` must outlive the handle.
    unsafe fn new(socket: &StdTcpStream) -> Self {
        // SAFETY: the descriptor stays open (the caller's promise) and is
        // never closed through this handle (ManuallyDrop).
        Self(std::mem::ManuallyDrop::new(unsafe {
            StdTcpStream::from_raw_fd(socket.as_raw_fd())
        }))
    }
}

impl AsRawFd for Borrowed {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl std::borrow::Borrow<StdTcpStream> for Borrowed {
    fn borrow(&self) -> &StdTcpStream {
        &self.0
    }
}

/// One way of a relayed pair: in the kernel until the agent takes the pair
/// back, then copied by the agent.
struct Direction<'a> {
    from: &'a StdTcpStream,
    to: &'a StdTcpStream,
    cookie: u64,
    peer_cookie: u64,
    /// `from`'s output count when the pair joined.
    from_written_before: u64,
    /// `to`'s output count when the pair joined.
    written_before: u64,
    /// What `from` received before the pair joined, which the agent copied.
    received_before: u64,
    handover: &'a tokio::sync::Notify,
    /// Told when the other way took the pair back: this way's bytes now
    /// stay with `from`, for the agent to copy.
    switched: &'a tokio::sync::Notify,
    other_switched: &'a tokio::sync::Notify,
    taken_back: &'a AtomicBool,
    maps: &'a Arc<RelayMaps>,
    netns: &'a Arc<Netns>,
    metrics: &'a Metrics,
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
                () = self.handover.notified() => {
                    if !self.taken_back.swap(true, Ordering::AcqRel) {
                        return self.take_back().await;
                    }
                }
                () = self.switched.notified() => return self.copy_quiet().await,
            }
        }
        // `from` has ended. Every byte it received is the kernel's to
        // forward, unless the other way takes the pair back meanwhile.
        let mut pause = DRAIN_PAUSE.0;
        loop {
            if self.taken_back.load(Ordering::Acquire) {
                self.switched.notified().await;
                return self.copy_quiet().await;
            }
            let received = data_received(self.from)?.saturating_sub(self.received_before);
            if self.written_to()? >= received {
                self.to.shutdown(Shutdown::Write)?;
                return Ok(());
            }
            if let Some(error) = self.to.take_error()? {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
            pause = longer(pause);
        }
    }

    /// Bytes written to `to` since the pair joined.
    fn written_to(&self) -> io::Result<u64> {
        Ok(written(self.to)?.saturating_sub(self.written_before))
    }

    /// Takes the pair back from the kernel, `from` (this way's source, past
    /// its budget) out of the relay, without losing or reordering a byte:
    /// 1. the other way stops: `to`'s bytes stay with `to` (the agent
    ///    copies them, see `copy_quiet`), and reading `to`'s TCP_INFO takes
    ///    its lock, so no verdict on `to` is still running;
    /// 2. once `from` has written all `to` forwarded into it, nothing is
    ///    queued for it, and `relay_release` takes it out under its lock;
    /// 3. once `to` has written all `from` forwarded, the agent splices.
    async fn take_back(&self) -> io::Result<()> {
        self.metrics.taken_back();
        self.maps.unpeer(self.peer_cookie)?;
        tcp_info(self.to)?;
        self.other_switched.notify_one();
        let quiet_forwarded = self.maps.state(self.peer_cookie)?.forwarded;
        wait_until_written(self.from, self.from_written_before, quiet_forwarded).await?;
        self.maps.release(self.cookie, self.netns).await?;
        let forwarded = self.maps.state(self.cookie)?.forwarded;
        wait_until_written(self.to, self.written_before, forwarded).await?;
        let registered = self.registered().await?;
        let (from, to) = (&registered[self.index], &registered[1 - self.index]);
        super::splice::one_way(from, to).await?;
        Ok(())
    }

    /// This way once the other took the pair back: what the kernel
    /// forwarded is written first, then the agent copies what stays with
    /// `from` (read through the relay's own queue) to the end.
    async fn copy_quiet(&self) -> io::Result<()> {
        let forwarded = self.maps.state(self.cookie)?.forwarded;
        wait_until_written(self.to, self.written_before, forwarded).await?;
        let registered = self.registered().await?;
        let (from, to) = (&registered[self.index], &registered[1 - self.index]);
        let mut buffer = vec![0u8; QUIET_BUFFER];
        loop {
            let mut ready = from.readable().await?;
            let read = match ready.try_io(|_| (&mut &*self.from).read(&mut buffer)) {
                Ok(read) => read?,
                Err(_would_block) => continue,
            };
            if read == 0 {
                return self.to.shutdown(Shutdown::Write);
            }
            let mut data = &buffer[..read];
            while !data.is_empty() {
                let mut ready = to.writable().await?;
                if let Ok(written) = ready.try_io(|_| (&mut &*self.to).write(data)) {
                    data = &data[written?..];
                }
            }
        }
    }

    async fn registered(&self) -> io::Result<&Registered> {
        self.registered
            .get_or_try_init(|| async {
                let register = |socket: &StdTcpStream| {
                    // SAFETY: the sockets outlive the registrations, which
                    // are declared after them.
                    unsafe { AsyncFd::register(Borrowed::new(socket)) }.map_err(io::Error::from)
                };
                io::Result::Ok([register(&self.sockets[0])?, register(&self.sockets[1])?])
            })
            .await
    }
}

/// Waits until `socket` has written `target` bytes since `before`: the
/// kernel hands what it forwards to a socket from a work queue.
async fn wait_until_written(socket: &StdTcpStream, before: u64, target: u64) -> io::Result<()> {
    let mut pause = DRAIN_PAUSE.0;
    while written(socket)?.saturating_sub(before) < target {
        if let Some(error) = socket.take_error()? {
            return Err(error);
        }
        tokio::time::sleep(pause).await;
        pause = longer(pause);
    }
    Ok(())
}

fn longer(pause: Duration) -> Duration {
    (pause * 5 / 4).min(DRAIN_PAUSE.1)
}

/// Sets `RELAY_SEND_BUFFER` with SO_SNDBUFFORCE, which the agent's
/// CAP_NET_ADMIN allows past `net.core.wmem_max` (208 KiB by default). A
/// refusal only costs speed: the socket keeps its autotuned buffer.
fn set_relay_send_buffer(socket: &StdTcpStream) {
    if let Err(error) = set_socket_option(socket, libc::SO_SNDBUFFORCE, RELAY_SEND_BUFFER) {
        tracing::debug!(%error, "keeping a relayed socket's autotuned send buffer");
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
    Ok(acked + splice::queue_length(socket, libc::TIOCOUTQ)?)
}

/// [`written`] with no acknowledgement arriving between its two reads: a
/// count to start from, which must not be short. Like the kernel's
/// `bytes_acked`, which the relay verdict compares with it, it includes a
/// connecting socket's SYN.
fn written_exactly(socket: &StdTcpStream) -> io::Result<u64> {
    loop {
        let acked = tcp_info(socket)?.tcpi_bytes_acked;
        let queued = splice::queue_length(socket, libc::TIOCOUTQ)?;
        if tcp_info(socket)?.tcpi_bytes_acked == acked {
            return Ok(acked + queued);
        }
    }
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
    set_socket_option(socket, libc::SO_RCVLOWAT, 1)
}

/// Sets a `SOL_SOCKET` option whose value is an int.
fn set_socket_option(
    socket: &StdTcpStream,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is one int that outlives the call.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
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
            let count = ready
                .get_ref()
                .get_ref()
                .0
                .wait(&mut events, EpollTimeout::ZERO)?;
            if count == 0 {
                ready.clear_ready();
                continue;
            }
            return Ok(events[0].events());
        }
    }
}
