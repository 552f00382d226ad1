//! The sending side of HBONE: one connection to a peer's port 15008,
//! carrying a CONNECT stream per proxied TCP connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{TunnelStream, CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};

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
}

/// An HTTP/2 connection to a peer, shared by many streams.
#[derive(Clone)]
pub struct Connection {
    sender: h2::client::SendRequest<Bytes>,
    /// Set when the connection's task ends: the peer went away or it failed.
    closed: Arc<AtomicBool>,
    /// Streams opened on it and not yet dropped.
    streams: Arc<AtomicUsize>,
}

/// Held by a stream for as long as it lives: counts it on its connection.
pub(crate) struct StreamCount(Arc<AtomicUsize>);

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
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .handshake(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HBONE connection ended with an error");
            }
            ended.store(true, Ordering::Release);
        });
        Ok(Self {
            sender,
            closed,
            streams: Arc::default(),
        })
    }

    /// Whether the connection has ended; no stream can be opened on it.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether any stream opened on it is still in use.
    pub fn has_streams(&self) -> bool {
        self.streams.load(Ordering::Acquire) > 0
    }

    /// Opens a stream to `target` on behalf of the client at `source`;
    /// returns once the peer has connected the target.
    pub async fn open(
        &self,
        target: SocketAddr,
        source: IpAddr,
    ) -> Result<TunnelStream, HboneError> {
        let mut sender = self.sender.clone().ready().await?;
        let source = match source {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("\"[{ip}]\""),
        };
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string())
            .header("forwarded", format!("for={source}"))
            .body(())?;
        self.streams.fetch_add(1, Ordering::AcqRel);
        let count = StreamCount(self.streams.clone());
        let (response, send) = sender.send_request(request, false)?;
        let response = response.await?;
        if response.status() != StatusCode::OK {
            return Err(HboneError::Refused(response.status()));
        }
        Ok(TunnelStream::new(send, response.into_body()).counted(count))
    }
}
