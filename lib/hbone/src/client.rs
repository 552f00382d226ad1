//! The sending side of HBONE: one connection to a peer's port 15008,
//! carrying a CONNECT stream per proxied TCP connection.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::{Caller, Target, TunnelStream, CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("HBONE: {0}")]
    Http2(#[from] h2::Error),
    #[error("HBONE: the peer refused the stream with HTTP {0}")]
    Refused(StatusCode),
    #[error("HBONE: {0}")]
    Request(#[from] http::Error),
    #[error("HBONE: connecting the peer: {0}")]
    Io(#[from] std::io::Error),
    #[error("HBONE: the peer did not answer the stream within {0:?}")]
    Timeout(std::time::Duration),
    #[error("HBONE: a new connection has no room for a stream (its peer allows none)")]
    NoRoom,
    #[error("HBONE: connecting the peer failed just now: {0}")]
    DialFailed(String),
}

/// How long a stream may take to open: the peer answers once it has
/// connected the target, and a TCP connect gives up within about this.
pub const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// An HTTP/2 connection to a peer, shared by many streams.
#[derive(Clone)]
pub struct Connection {
    sender: h2::client::SendRequest<Bytes>,
    /// Set when the connection's task ends: the peer went away or it failed.
    closed: Arc<AtomicBool>,
    /// Streams opened on it and not yet dropped.
    streams: Arc<AtomicUsize>,
    /// True once the peer's first SETTINGS, with its stream limit, are in
    /// force; until then the connection takes one stream.
    settled: watch::Receiver<bool>,
}

/// Held by a stream for as long as it lives (and from its reservation on):
/// counts it on its connection.
pub struct StreamCount(Arc<AtomicUsize>);

impl Drop for StreamCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connection {
    /// HTTP/2 over `io` (the mutual-TLS connection to the peer); the
    /// connection runs in a task of its own until the last stream ends.
    pub async fn handshake<S>(io: S) -> Result<Self, HboneError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .handshake(io)
            .await?;
        let ping_pong = connection.ping_pong();
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HBONE connection ended with an error");
            }
            ended.store(true, Ordering::Release);
        });
        // A server's first frame is its SETTINGS, applied before any later
        // frame is read: once a PING's answer is back, the peer's stream
        // limit is known. Until then a burst of streams could exceed it and
        // be refused (h2 assumes no limit), so the first stream goes at
        // once and the rest wait the one round trip.
        let (settle, settled) = watch::channel(false);
        tokio::spawn(async move {
            if let Some(mut ping_pong) = ping_pong {
                let _ =
                    tokio::time::timeout(OPEN_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await;
            }
            let _ = settle.send(true);
        });
        Ok(Self {
            sender,
            closed,
            streams: Arc::default(),
            settled,
        })
    }

    /// Whether the peer's stream limit is still unknown (see
    /// [`Connection::settled`]).
    pub fn is_settling(&self) -> bool {
        !*self.settled.borrow()
    }

    /// Returns once the peer's stream limit is known, or the connection
    /// has ended, or the peer has not answered within [`OPEN_TIMEOUT`].
    pub async fn settled(&self) {
        let _ = self.settled.clone().wait_for(|settled| *settled).await;
    }

    /// Whether the connection has ended; no stream can be opened on it.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether any stream opened on it is still in use.
    pub fn has_streams(&self) -> bool {
        self.streams.load(Ordering::Acquire) > 0
    }

    /// Whether both are the same connection.
    pub fn same_as(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.streams, &other.streams)
    }

    /// A place for one more stream, if fewer than the peer allows (and
    /// than `cap`) are open or reserved; while the peer's limit is not
    /// known yet, if none is.
    pub fn reserve(&self, cap: usize) -> Option<StreamCount> {
        let allowed = match self.is_settling() {
            true => 1,
            false => self.sender.current_max_send_streams(),
        };
        let limit = allowed.min(cap);
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .ok()
            .map(|_| StreamCount(self.streams.clone()))
    }

    /// Opens a stream to `target` on behalf of `source` (the client);
    /// returns once the peer has connected the target. Beyond the peer's
    /// stream limit it waits for a stream to end (see [`Connection::reserve`]
    /// to avoid that).
    pub async fn open(
        &self,
        target: impl Into<Target>,
        source: impl Into<Caller<'_>>,
    ) -> Result<TunnelStream, HboneError> {
        self.streams.fetch_add(1, Ordering::AcqRel);
        let place = StreamCount(self.streams.clone());
        self.open_reserved(place, target, source).await
    }

    /// [`Connection::open`] in a place reserved before; within [`OPEN_TIMEOUT`].
    pub async fn open_reserved(
        &self,
        place: StreamCount,
        target: impl Into<Target>,
        source: impl Into<Caller<'_>>,
    ) -> Result<TunnelStream, HboneError> {
        let source = source.into();
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(target.into().to_string())
            .header("forwarded", source.forwarded());
        if let Some(baggage) = source.baggage {
            request = request.header("baggage", baggage);
        }
        if let Some(trace) = source.trace {
            request = request.header("traceparent", trace.to_string());
        }
        let request = request.body(())?;
        let opened = async {
            let mut sender = self.sender.clone().ready().await?;
            let (response, send) = sender.send_request(request, false)?;
            let response = response.await?;
            if response.status() != StatusCode::OK {
                return Err(HboneError::Refused(response.status()));
            }
            Ok(TunnelStream::new(send, response.into_body()).counted(place))
        };
        tokio::time::timeout(OPEN_TIMEOUT, opened)
            .await
            .map_err(|_| HboneError::Timeout(OPEN_TIMEOUT))?
    }
}
