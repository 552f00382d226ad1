//! How every listener of Ambit's accepts. At most so many of its
//! connections are open at once: past that, newcomers wait in the kernel's
//! queue. Where a listener limits each source address too, a source past
//! its share has its new connections closed at once, so one caller cannot
//! take every place. When accepting fails (out of descriptors, EMFILE or ENFILE; out
//! of memory) it pauses, a little longer each time up to a second, rather
//! than spin; it logs the first failure of a burst and, once accepting
//! works again, how many there were; and meanwhile the process reports not
//! ready.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Readiness, ACCEPT_QUIET};

const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// A listener with its limit and its way with failures.
pub struct Acceptor {
    listener: TcpListener,
    open: Arc<Semaphore>,
    /// With a limit per source: the most a source may have open, and how
    /// many each has.
    per_source: Option<(usize, Arc<OpenBySource>)>,
    /// Counts the connections closed for a source past its share.
    refused: Option<Counter>,
    failures: AcceptFailures,
}

/// How a listener meets accept failures (see the module's documentation);
/// for listeners other than TCP ones, which [`Acceptor`] does not take.
pub struct AcceptFailures {
    what: &'static str,
    readiness: Option<Readiness>,
    /// Failures in the burst going on, the last of them, and the next pause.
    /// A burst ends with a success [`ACCEPT_QUIET`] after its last failure:
    /// out of descriptors, accepts fail and succeed by turns.
    failures: u64,
    last_failure: Option<tokio::time::Instant>,
    pause: Duration,
}

/// An accepted connection, counted against its listener's limits until
/// `place` is dropped.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub place: Place,
}

/// How many connections each source address has open.
type OpenBySource = Mutex<HashMap<IpAddr, usize>>;

/// What a connection holds of its listener's limits.
pub struct Place {
    _permit: OwnedSemaphorePermit,
    _source: Option<SourceShare>,
}

/// One connection of a source's share.
struct SourceShare {
    open: Arc<OpenBySource>,
    source: IpAddr,
}

impl Drop for SourceShare {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(count) = open.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.source);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Acceptor {
    /// `what` names the listener in logs; at most `max_open` of its
    /// connections are open at once.
    pub fn new(listener: TcpListener, what: &'static str, max_open: usize) -> Self {
        Self {
            listener,
            open: Arc::new(Semaphore::new(max_open)),
            per_source: None,
            refused: None,
            failures: AcceptFailures::new(what),
        }
    }

    /// At most `max_open` connections from any one source address.
    pub fn per_source(mut self, max_open: usize) -> Self {
        self.per_source = Some((max_open, Arc::default()));
        self
    }

    /// Counts in `refused` each connection closed for a source past its
    /// share.
    pub fn counting_refusals(mut self, refused: Counter) -> Self {
        self.refused = Some(refused);
        self
    }

    /// An acceptor of `listener` (the same port over another address
    /// family, say) that counts against this one's limits and shares: the
    /// bounds hold for the two together, not for each.
    pub fn beside(&self, listener: TcpListener) -> Self {
        Self {
            listener,
            open: self.open.clone(),
            per_source: self.per_source.clone(),
            refused: self.refused.clone(),
            failures: AcceptFailures {
                readiness: self.failures.readiness.clone(),
                ..AcceptFailures::new(self.failures.what)
            },
        }
    }

    /// A place in `peer`'s share, unless it has used it up.
    fn share(&self, peer: IpAddr) -> Result<Option<SourceShare>, ()> {
        let Some((max_open, open)) = &self.per_source else {
            return Ok(None);
        };
        let mut counts = lock(open);
        let count = counts.entry(peer).or_default();
        if *count >= *max_open {
            return Err(());
        }
        *count += 1;
        Ok(Some(SourceShare {
            open: open.clone(),
            source: peer,
        }))
    }

    /// While accepting fails, `readiness` says not ready.
    pub fn reporting_to(mut self, readiness: Readiness) -> Self {
        self.failures.readiness = Some(readiness);
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection, once the limit has room; failures are met here
    /// (see the module's documentation), never returned.
    pub async fn accept(&mut self) -> Accepted {
        let permit = match self.open.clone().acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => return std::future::pending().await,
        };
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.failures.recovered();
                    // An IPv4 caller of a listener on every address (see
                    // `listen`) shows as IPv4-mapped IPv6: policies, limits
                    // and logs see it as the IPv4 address it is.
                    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                    let Ok(source) = self.share(peer.ip()) else {
                        // Past its share: closed at once.
                        tracing::debug!(listener = self.failures.what, %peer, "a source over its share of connections refused");
                        if let Some(refused) = &self.refused {
                            refused.inc();
                        }
                        continue;
                    };
                    return Accepted {
                        stream,
                        peer,
                        place: Place {
                            _permit: permit,
                            _source: source,
                        },
                    };
                }
                Err(error) => self.failures.failed(&error).await,
            }
        }
    }
}

impl AcceptFailures {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            readiness: None,
            failures: 0,
            last_failure: None,
            pause: FIRST_PAUSE,
        }
    }

    /// An accept failed with `error`: pauses unless it concerned only the
    /// one connection.
    pub async fn failed(&mut self, error: &std::io::Error) {
        if transient(error) {
            return;
        }
        if self.failures == 0 {
            tracing::error!(listener = self.what, %error, "accepting connections fails; pausing between attempts until it works again");
        }
        if let Some(readiness) = &self.readiness {
            readiness.accept_failed();
        }
        self.failures += 1;
        self.last_failure = Some(tokio::time::Instant::now());
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
    }

    /// An accept succeeded.
    pub fn recovered(&mut self) {
        self.pause = FIRST_PAUSE;
        let quiet = self
            .last_failure
            .is_none_or(|last| last.elapsed() >= ACCEPT_QUIET);
        if self.failures > 0 && quiet {
            tracing::warn!(
                listener = self.what,
                failures = self.failures,
                "accepting connections works again"
            );
            self.failures = 0;
        }
    }
}

/// Errors of one connection that is already gone again (reset before it
/// was accepted): the next accept is not affected.
fn transient(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    )
}

/// Runs `serve` on a connection for at most `within`: a connection that
/// keeps its place (slowly sent headers, an idle keep-alive) must not hold
/// it for ever.
pub async fn at_most<F: std::future::Future>(within: Duration, serve: F) -> Option<F::Output> {
    tokio::time::timeout(within, serve).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_its_limit_a_listener_leaves_newcomers_queued() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut acceptor = Acceptor::new(listener, "test", 2);
        let clients: Vec<TcpStream> = connect_many(addr, 3).await;
        let first = acceptor.accept().await;
        let _second = acceptor.accept().await;
        let third = tokio::time::timeout(Duration::from_millis(200), acceptor.accept()).await;
        assert!(
            third.is_err(),
            "a third connection was accepted past the limit of two"
        );
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), acceptor.accept()).await;
        assert!(third.is_ok(), "a place freed is taken by the one queued");
        drop(clients);
    }

    #[tokio::test]
    async fn an_ipv4_caller_of_a_listener_on_every_address_is_seen_as_ipv4() {
        let every = SocketAddr::new(crate::listen::EVERY_ADDRESS, 0);
        let listener = crate::listen::tcp_listener(every, 16, false).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut acceptor = Acceptor::new(listener, "test", 8).per_source(1);
        let _v4 = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _v6 = TcpStream::connect(("::1", port)).await.unwrap();
        let peers = [acceptor.accept().await.peer, acceptor.accept().await.peer];
        let ips = peers.map(|peer| peer.ip().to_string());
        assert_eq!(ips, ["127.0.0.1", "::1"]);
    }

    #[tokio::test]
    async fn a_source_past_its_share_is_closed_and_others_still_get_in() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut acceptor = Acceptor::new(listener, "test", 8).per_source(2);
        let mut greedy = connect_many(addr, 3).await;
        let held = [acceptor.accept().await, acceptor.accept().await];
        // The third is closed by the agent, not held.
        let other = tokio::net::TcpSocket::new_v4().unwrap();
        other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let _other = other.connect(addr).await.unwrap();
        let next = acceptor.accept().await;
        assert_eq!(next.peer.ip(), "127.0.0.2".parse::<IpAddr>().unwrap());
        let mut byte = [0u8; 1];
        let read = tokio::io::AsyncReadExt::read(&mut greedy[2], &mut byte).await;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the third of one source was closed"
        );
        drop(held);
        drop(next);
    }

    #[tokio::test]
    async fn listeners_beside_each_other_share_one_limit_and_each_source_one_share() {
        let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let second = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (first_addr, second_addr) = (first.local_addr().unwrap(), second.local_addr().unwrap());
        let mut one = Acceptor::new(first, "test", 3).per_source(2);
        let mut other = one.beside(second);
        let _greedy = [
            connect_many(first_addr, 1).await,
            connect_many(second_addr, 2).await,
        ];
        let held = one.accept().await;
        let _also_held = other.accept().await;
        // The source's third, on the second listener, is past its share of
        // the two together.
        let stranger = tokio::net::TcpSocket::new_v4().unwrap();
        stranger.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let _stranger = stranger.connect(second_addr).await.unwrap();
        let third = other.accept().await;
        assert_eq!(third.peer.ip(), "127.0.0.2".parse::<IpAddr>().unwrap());
        // Three places taken of three: a newcomer on either waits.
        let _late = connect_many(first_addr, 1).await;
        let waiting = tokio::time::timeout(Duration::from_millis(200), one.accept()).await;
        assert!(waiting.is_err(), "accepted past the limit the two share");
        drop(held);
        let freed = tokio::time::timeout(Duration::from_secs(5), one.accept()).await;
        assert!(
            freed.is_ok(),
            "a place freed on either is taken on the other"
        );
    }

    async fn connect_many(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
        let mut clients = Vec::new();
        for _ in 0..count {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        clients
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_descriptors_it_pauses_logs_once_and_is_not_ready_until_it_recovers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let readiness = Readiness::default();
        readiness.set_ready(true);
        let acceptor = Acceptor::new(listener, "test", 8).reporting_to(readiness.clone());
        let mut failures = acceptor.failures;
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let started = tokio::time::Instant::now();
        for _ in 0..8 {
            failures.failed(&emfile).await;
        }
        assert!(!readiness.is_ready());
        // 5 + 10 + ... + 640 ms: paused, not spinning.
        assert!(started.elapsed() >= Duration::from_millis(1275));
        // A success by the way does not end the burst; one after a quiet
        // second does.
        failures.recovered();
        assert_eq!((failures.failures, failures.pause), (8, FIRST_PAUSE));
        tokio::time::sleep(ACCEPT_QUIET).await;
        failures.recovered();
        assert_eq!(failures.failures, 0);
    }
}
