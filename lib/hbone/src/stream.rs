//! One tunnelled TCP connection: an HTTP/2 stream read and written as a
//! byte stream. A write half-close ends the stream's sending side, as a
//! TCP FIN would.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::client::StreamCount;

/// Bytes read from a socket at once: small to start, so an idle connection
/// holds little; doubled while reads fill it, up to the largest size.
const FIRST_READ: usize = 16 * 1024;
const LARGEST_READ: usize = 256 * 1024;

pub struct TunnelStream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received, not yet read.
    pending: Bytes,
    /// On the client side, counts the stream on its pooled connection.
    _count: Option<StreamCount>,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("stream", &self.send.stream_id())
            .finish_non_exhaustive()
    }
}

impl TunnelStream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            _count: None,
        }
    }

    pub(crate) fn counted(self, count: StreamCount) -> Self {
        Self {
            _count: Some(count),
            ..self
        }
    }

    /// Copies both ways between the tunnel and `socket` until both sides
    /// are done, passing each side's end on as a half-close. Data read from
    /// the socket goes to HTTP/2 as it was read, and data from HTTP/2 to the
    /// socket, without another copy. Returns the bytes moved from the
    /// socket into the tunnel, and from the tunnel to the socket.
    pub async fn relay(self, socket: &mut TcpStream) -> io::Result<(u64, u64)> {
        let Self {
            send,
            recv,
            pending,
            _count,
        } = self;
        let (from_socket, to_socket) = socket.split();
        tokio::try_join!(
            socket_to_tunnel(from_socket, send),
            tunnel_to_socket(pending, recv, to_socket)
        )
    }
}

async fn socket_to_tunnel(
    mut socket: ReadHalf<'_>,
    mut send: SendStream<Bytes>,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut read_size = FIRST_READ;
    let mut buffer = BytesMut::new();
    loop {
        buffer.reserve(read_size);
        let read = socket.read_buf(&mut buffer).await?;
        if read == 0 {
            send.send_data(Bytes::new(), true).map_err(io_error)?;
            return Ok(total);
        }
        if read >= read_size {
            read_size = (read_size * 2).min(LARGEST_READ);
        }
        total += read as u64;
        let mut data = buffer.split().freeze();
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let granted = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(granted) => granted.map_err(io_error)?,
                None => return Err(io::ErrorKind::BrokenPipe.into()),
            };
            let piece = data.split_to(granted.min(data.len()));
            send.send_data(piece, false).map_err(io_error)?;
        }
    }
}

async fn tunnel_to_socket(
    pending: Bytes,
    mut recv: RecvStream,
    mut socket: WriteHalf<'_>,
) -> io::Result<u64> {
    let mut total = pending.len() as u64;
    socket.write_all(&pending).await?;
    while let Some(data) = recv.data().await {
        let data = data.map_err(io_error)?;
        socket.write_all(&data).await?;
        total += data.len() as u64;
        // The window reopens once the data has left for the socket.
        recv.flow_control()
            .release_capacity(data.len())
            .map_err(io_error)?;
    }
    socket.shutdown().await?;
    Ok(total)
}

fn io_error(error: h2::Error) -> io::Error {
    if error.is_io() {
        error
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"))
    } else {
        io::Error::new(io::ErrorKind::ConnectionReset, error)
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The window reopens as the data is taken from h2.
                    let taken = data.len();
                    self.recv
                        .flow_control()
                        .release_capacity(taken)
                        .map_err(io_error)?;
                    self.pending = data;
                }
                Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        let granted = match ready!(self.send.poll_capacity(cx)) {
            Some(Ok(granted)) => granted,
            Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
            None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        };
        let n = granted.min(buf.len());
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.send.reserve_capacity(0);
        Poll::Ready(self.send.send_data(Bytes::new(), true).map_err(io_error))
    }
}
