//! How every listener of Ambit's accepts. At most so many of its
//! connections are open at once: past that, newcomers wait in the kernel's
//! queue. When accepting fails (out of descriptors, EMFILE or ENFILE; out
//! of memory) it pauses, a little longer each time up to a second, rather
//! than spin; it logs the first failure of a burst and, once accepting
//! works again, how many there were; and meanwhile the process reports not
//! ready.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::Readiness;

const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// A listener with its limit and its way with failures.
pub struct Acceptor {
    listener: TcpListener,
    open: Arc<Semaphore>,
    failures: AcceptFailures,
}

/// How a listener meets accept failures (see the module's documentation);
/// for listeners other than TCP ones, which [`Acceptor`] does not take.
pub struct AcceptFailures {
    what: &'static str,
    readiness: Option<Readiness>,
    /// Failures in the burst going on, and the next pause.
    failures: u64,
    pause: Duration,
}

/// An accepted connection, counted against its listener's limit until
/// `permit` is dropped.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub permit: OwnedSemaphorePermit,
}

impl Acceptor {
    /// `what` names the listener in logs; at most `max_open` of its
    /// connections are open at once.
    pub fn new(listener: TcpListener, what: &'static str, max_open: usize) -> Self {
        Self {
            listener,
            open: Arc::new(Semaphore::new(max_open)),
            failures: AcceptFailures::new(what),
        }
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
                    return Accepted {
                        stream,
                        peer,
                        permit,
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
            if let Some(readiness) = &self.readiness {
                readiness.accepting(false);
            }
        }
        self.failures += 1;
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
    }

    /// An accept succeeded.
    pub fn recovered(&mut self) {
        if self.failures > 0 {
            tracing::warn!(
                listener = self.what,
                failures = self.failures,
                "accepting connections works again"
            );
            if let Some(readiness) = &self.readiness {
                readiness.accepting(true);
            }
        }
        self.failures = 0;
        self.pause = FIRST_PAUSE;
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
        failures.recovered();
        assert!(readiness.is_ready());
        assert_eq!((failures.failures, failures.pause), (0, FIRST_PAUSE));
    }
}
