//! The socket under HBONE's TLS. rustls asks for one record's worth of
//! bytes per read (at most about 16 KiB), which costs a system call per
//! record in bulk, and writes each record as soon as it is sealed, which
//! costs one per HTTP/2 frame when many small answers leave together.
//! [`Buffered`] serves reads from one larger socket read, and gathers
//! small writes until the writer flushes. HTTP/2 flushes after each large
//! frame, so once the connection speaks HTTP/2, a flush is held back until
//! the writer's task has had another turn: the answers of requests served
//! in the same turn then leave in one system call.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at once: sixteen full TLS records.
const READ_BUFFER: usize = 256 * 1024;
/// Bytes gathered before they are written even without a flush; a write at
/// least this large goes straight to the socket.
const WRITE_BUFFER: usize = 64 * 1024;
/// Flushes held back in a row at most, so a writer that writes a little at
/// every turn still sends promptly.
const MAX_HELD_FLUSHES: u8 = 16;

/// A socket whose reads are buffered and whose small writes are gathered.
/// Neither buffer is zeroed, and both are let go when empty (the read
/// buffer when the socket has nothing more, the write buffer once written
/// out): an idle connection holds none.
pub struct Buffered<S> {
    inner: S,
    buffer: Vec<u8>,
    /// Where the unread part of `buffer` starts.
    start: usize,
    /// Written by the caller, not yet to the socket.
    pending: Vec<u8>,
    /// How much of `pending` the socket has taken.
    sent: usize,
    /// Whether flushes may be held back (see [`Buffered::hold_flushes`]).
    hold: bool,
    /// Flushes held back since bytes last left; none if bytes were written
    /// since the last one.
    held: u8,
    written_since_flush: bool,
}

impl<S> Buffered<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buffer: Vec::new(),
            start: 0,
            pending: Vec::new(),
            sent: 0,
            hold: false,
            held: 0,
            written_since_flush: false,
        }
    }

    /// From now on, a flush that follows new writes is held back: the
    /// writer's task is woken, and the bytes leave at the next flush that
    /// finds nothing new (or once the buffer is full). Only for a writer
    /// that flushes again every time its task runs, as HTTP/2 does; a TLS
    /// handshake does not.
    pub fn hold_flushes(&mut self) {
        self.hold = true;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Buffered<S> {
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

impl<S: AsyncWrite + Unpin> Buffered<S> {
    /// Writes out every gathered byte.
    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let written =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += written;
        }
        self.pending = Vec::new();
        self.sent = 0;
        self.held = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Buffered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = data.iter().map(|slice| slice.len()).sum();
        if this.pending.len() + total > WRITE_BUFFER {
            ready!(this.poll_write_pending(cx))?;
        }
        if total >= WRITE_BUFFER {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, data);
        }
        this.written_since_flush |= total > 0;
        this.pending.reserve(total);
        for slice in data {
            this.pending.extend_from_slice(slice);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let fresh = std::mem::take(&mut this.written_since_flush);
        if this.hold && fresh && this.held < MAX_HELD_FLUSHES {
            this.held += 1;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_write_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
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
        let mut reader = Buffered::new(reader);
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
        let mut reader = Buffered::new(reader);
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
        let mut reader = Buffered::new(reader);
        let mut large = vec![0u8; READ_BUFFER * 2];
        let read = reader.read(&mut large).await.unwrap();
        assert_eq!(read, READ_BUFFER + 10);
        assert!(large[..read].iter().all(|&byte| byte == 7));
        assert_eq!(reader.buffer.capacity(), 0, "no buffer was allocated");
    }

    #[tokio::test]
    async fn small_writes_leave_together_on_flush_and_large_ones_at_once() {
        let (writer, mut reader) = tokio::io::duplex(1 << 20);
        let mut writer = Buffered::new(writer);
        for frame in 0..8u8 {
            writer.write_all(&[frame; 1000]).await.unwrap();
        }
        let mut seen = [0u8; 8000];
        {
            let mut probe = std::pin::pin!(reader.read(&mut seen));
            let waiting =
                std::future::poll_fn(|cx| Poll::Ready(probe.as_mut().poll(cx).is_pending()));
            assert!(waiting.await, "nothing reached the socket before the flush");
        }
        writer.flush().await.unwrap();
        reader.read_exact(&mut seen).await.unwrap();
        let expected: Vec<u8> = (0..8u8).flat_map(|frame| [frame; 1000]).collect();
        assert!(seen[..] == expected[..], "bytes differ");
        assert_eq!(writer.pending.capacity(), 0, "the write buffer was let go");
        // A write as large as the buffer is not held back.
        let large = vec![9u8; WRITE_BUFFER];
        writer.write_all(&large).await.unwrap();
        let mut received = vec![0u8; WRITE_BUFFER];
        reader.read_exact(&mut received).await.unwrap();
        assert!(received == large, "the large write arrived whole");
    }

    #[tokio::test]
    async fn a_held_flush_sends_at_the_writers_next_turn() {
        let (writer, mut reader) = tokio::io::duplex(1 << 16);
        let mut writer = Buffered::new(writer);
        writer.hold_flushes();
        let mut turns = 0;
        // A writer that writes twice in its first turn, flushing after
        // each, and only flushes in its later turns, as HTTP/2 does.
        std::future::poll_fn(|cx| {
            turns += 1;
            let mut writer = Pin::new(&mut writer);
            if turns == 1 {
                for part in [&b"one "[..], b"two"] {
                    assert!(writer.as_mut().poll_write(cx, part).is_ready());
                    assert!(writer.as_mut().poll_flush(cx).is_ready());
                }
                assert!(writer.pending.len() == 7, "both held back");
                return Poll::Pending;
            }
            assert!(writer.as_mut().poll_flush(cx).is_ready());
            Poll::Ready(())
        })
        .await;
        assert_eq!(turns, 2, "the held flush woke the writer");
        let mut received = [0u8; 7];
        reader.read_exact(&mut received).await.unwrap();
        assert_eq!(&received, b"one two");
    }

    #[tokio::test]
    async fn shutdown_writes_what_was_gathered_first() {
        let (writer, mut reader) = tokio::io::duplex(1 << 16);
        let mut writer = Buffered::new(writer);
        writer.write_all(b"last words").await.unwrap();
        writer.shutdown().await.unwrap();
        let mut received = Vec::new();
        reader.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"last words");
    }
}
