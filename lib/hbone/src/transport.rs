//! The socket under HBONE's TLS. rustls asks for one record's worth of
//! bytes per read (at most about 16 KiB), which costs a system call per
//! record in bulk; [`ReadBuffered`] serves those reads from one larger
//! socket read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at once: sixteen full TLS records.
const READ_BUFFER: usize = 256 * 1024;

/// A socket whose reads are buffered; writes go straight through. The
/// buffer is never zeroed (the socket fills it) and is let go whenever it
/// is empty and the socket has nothing more: an idle connection holds none.
pub struct ReadBuffered<S> {
    inner: S,
    buffer: Vec<u8>,
    /// Where the unread part of `buffer` starts.
    start: usize,
}

impl<S> ReadBuffered<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buffer: Vec::new(),
            start: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadBuffered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.buffer.len() {
            // A read as large as the buffer gains nothing from it.
            if out.remaining() >= READ_BUFFER {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            this.buffer.clear();
            this.start = 0;
            this.buffer.reserve(READ_BUFFER);
            let mut fill = ReadBuf::uninit(this.buffer.spare_capacity_mut());
            let Poll::Ready(read) = Pin::new(&mut this.inner).poll_read(cx, &mut fill) else {
                this.buffer = Vec::new();
                return Poll::Pending;
            };
            read?;
            let filled = fill.filled().len();
            // SAFETY: the read initialised the first `filled` bytes of the
            // spare capacity.
            unsafe { this.buffer.set_len(filled) };
        }
        let unread = &this.buffer[this.start..];
        let taken = unread.len().min(out.remaining());
        out.put_slice(&unread[..taken]);
        this.start += taken;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadBuffered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_see_every_byte_in_order_and_the_end() {
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writing = tokio::spawn(async move {
            writer.write_all(&sent).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let mut reader = ReadBuffered::new(reader);
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let read = reader.read(&mut chunk).await.unwrap();
            if read == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..read]);
        }
        writing.await.unwrap();
        assert_eq!(received.len(), expected.len());
        assert!(received == expected, "bytes differ");
    }

    #[tokio::test]
    async fn a_drained_reader_waiting_for_more_holds_no_buffer() {
        let (mut writer, reader) = tokio::io::duplex(1024);
        writer.write_all(b"hello").await.unwrap();
        let mut reader = ReadBuffered::new(reader);
        let mut chunk = [0u8; 16];
        assert_eq!(reader.read(&mut chunk).await.unwrap(), 5);
        assert!(
            reader.buffer.capacity() >= READ_BUFFER,
            "the read was buffered"
        );
        let mut waiting = std::pin::pin!(reader.read(&mut chunk));
        let pending =
            std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx).is_pending()));
        assert!(pending.await, "nothing more to read yet");
        assert_eq!(reader.buffer.capacity(), 0, "the buffer was let go");
        writer.write_all(b"again").await.unwrap();
        assert_eq!(reader.read(&mut chunk).await.unwrap(), 5);
        assert_eq!(&chunk[..5], b"again");
    }

    #[tokio::test]
    async fn a_read_larger_than_the_buffer_goes_straight_to_the_socket() {
        let (mut writer, reader) = tokio::io::duplex(READ_BUFFER * 2);
        writer
            .write_all(&vec![7u8; READ_BUFFER + 10])
            .await
            .unwrap();
        let mut reader = ReadBuffered::new(reader);
        let mut large = vec![0u8; READ_BUFFER * 2];
        let read = reader.read(&mut large).await.unwrap();
        assert_eq!(read, READ_BUFFER + 10);
        assert!(large[..read].iter().all(|&byte| byte == 7));
        assert_eq!(reader.buffer.capacity(), 0, "no buffer was allocated");
    }
}
