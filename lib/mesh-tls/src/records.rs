//! Mutual TLS's data path. rustls makes the handshake (through its
//! unbuffered API) and keeps the secrets afterwards (key updates, tickets);
//! this module seals and opens the TLS 1.3 records itself, straight between
//! the socket's bytes and the caller's: a record is opened into the
//! reader's buffer and sealed from the writer's slices. rustls's own
//! streams copy each record's plaintext twice on the way in (into a buffer
//! of its own, then out to the reader) and once on the way out, and
//! allocate every record; in bulk those copies were a sixth of a proxy's
//! CPU.
//!
//! Writes are gathered until the writer flushes, and a flush that follows
//! new writes is held back until the writer's task has had another turn:
//! HTTP/2 flushes after each large frame, and the answers of requests
//! served in the same turn then leave in one system call.

mod handshake;

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use ambit_identity::Identity;
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use bytes::{Buf, Bytes};
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::{AlertDescription, ConnectionTrafficSecrets, ExtractedSecrets};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use handshake::{Handshake, Secrets, Side};

/// A record's header: content type, legacy version, length.
const HEADER: usize = 5;
const TAG: usize = 16;
/// Plaintext in one record at most (RFC 8446, 5.1).
const MAX_CONTENT: usize = 1 << 14;
/// A record's sealed length at most: content, content type, padding, tag.
const MAX_SEALED: usize = MAX_CONTENT + 256;
/// Bytes read from the socket at once: sixteen full records.
const READ_AHEAD: usize = 256 * 1024;
/// Plaintext taken from the writer before what is sealed must leave.
const WRITE_LIMIT: usize = 256 * 1024;
/// Sealed bytes gathered before they are written even without a flush.
const WRITE_GATHER: usize = 64 * 1024;
/// The outgoing buffer in bulk: what is not yet written, and a write's
/// worth of sealed records after it.
const WRITE_CAPACITY: usize = 2 * WRITE_LIMIT + WRITE_LIMIT / MAX_CONTENT * (HEADER + 1 + TAG);
/// Writes of less than a record in a row after which a bulk-sized
/// outgoing buffer is let go: an idle connection holds none.
const SMALL_WRITES_BEFORE_RELEASE: u8 = 16;
/// Flushes held back in a row at most, so a writer that writes a little at
/// every turn still sends promptly.
const MAX_HELD_FLUSHES: u8 = 16;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const ALERT_CLOSE_NOTIFY: u8 = 0;

/// One direction's key and the sequence number of its next record.
struct Keys {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    sequence: u64,
}

impl Keys {
    fn new((sequence, secrets): (u64, ConnectionTrafficSecrets)) -> io::Result<Self> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(io::Error::other("a TLS cipher suite Ambit does not seal")),
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| io::Error::other("an unusable TLS traffic key"))?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| io::Error::other("a TLS IV of the wrong length"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            sequence,
        })
    }

    /// The nonce of the next record (RFC 8446, 5.3).
    fn next_nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (byte, sequence) in nonce[NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.sequence.to_be_bytes())
        {
            *byte ^= sequence;
        }
        self.sequence += 1;
        Nonce::assume_unique_for_key(nonce)
    }
}

/// A TLS 1.3 connection after its handshake, as a byte stream.
pub struct TlsStream {
    socket: TcpStream,
    secrets: Secrets,
    peer: Option<Identity>,
    /// Records sealed with one key at most before the key is updated.
    key_limit: u64,
    receiving: Keys,
    sending: Keys,
    /// Plaintext that came with the handshake, not yet read.
    early: Bytes,
    /// Bytes read from the socket; those before `start` are done with.
    incoming: Vec<u8>,
    start: usize,
    /// A record opened in place in `incoming`, not yet read.
    opened: Range<usize>,
    /// Whether the peer sent close_notify: nothing more to read.
    peer_closed: bool,
    /// Whether any data came from the peer: a client names a fatal alert
    /// before that as the refusal of its certificate it is.
    read_any: bool,
    /// Sealed records: `outgoing[sent..filled]` not yet written. The
    /// vector's length is how much of it is initialised.
    outgoing: Vec<u8>,
    sent: usize,
    filled: usize,
    /// Writes of less than a record in a row.
    small_writes: u8,
    /// Flushes held back since bytes last left.
    held: u8,
    written_since_flush: bool,
    close_notify_sealed: bool,
    /// Whether the key update that answers the peer's request is sealed
    /// but not yet written.
    key_update_unsent: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl TlsStream {
    /// The client's handshake on `socket`, with a configuration that lets
    /// rustls hand over the secrets (`ambit_identity::tls::client_config`).
    pub async fn connect(
        config: std::sync::Arc<rustls::ClientConfig>,
        server: rustls::pki_types::ServerName<'static>,
        socket: TcpStream,
    ) -> io::Result<Self> {
        let connection = UnbufferedClientConnection::new(config, server).map_err(tls_error)?;
        Self::after(handshake::run(connection, socket).await?)
    }

    /// The server's handshake on `socket`, with a configuration that lets
    /// rustls hand over the secrets (`ambit_identity::tls::server_config`).
    pub async fn accept(
        config: std::sync::Arc<rustls::ServerConfig>,
        socket: TcpStream,
    ) -> io::Result<Self> {
        let connection = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        Self::after(handshake::run(connection, socket).await?)
    }

    /// The stream that takes over from rustls once `done`.
    fn after(done: Handshake) -> io::Result<Self> {
        let Handshake {
            socket,
            secrets,
            extracted: ExtractedSecrets { tx, rx },
            peer,
            key_limit,
            early,
            incoming,
        } = done;
        let read_any = !early.is_empty();
        Ok(Self {
            socket,
            secrets,
            peer,
            key_limit,
            receiving: Keys::new(rx)?,
            sending: Keys::new(tx)?,
            early: early.into(),
            incoming,
            start: 0,
            opened: 0..0,
            peer_closed: false,
            read_any,
            outgoing: Vec::new(),
            sent: 0,
            filled: 0,
            small_writes: 0,
            held: 0,
            written_since_flush: false,
            close_notify_sealed: false,
            key_update_unsent: false,
        })
    }

    /// The workload identity the peer's certificate proved, if any.
    pub fn peer_identity(&self) -> Option<&Identity> {
        self.peer.as_ref()
    }
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {what}"))
}

/// A record's content type and content length: what precedes the last
/// non-zero byte of its opened plaintext (the padding is zeros).
fn content_of(opened: &[u8]) -> io::Result<(u8, usize)> {
    let end = opened
        .iter()
        .rposition(|&byte| byte != 0)
        .ok_or_else(|| protocol_error("a record without a content type"))?;
    Ok((opened[end], end))
}

impl TlsStream {
    /// The length of the complete record at `start`, if there is one.
    fn complete_record(&self) -> io::Result<Option<usize>> {
        let unread = &self.incoming[self.start..];
        let Some(header) = unread.get(..HEADER) else {
            return Ok(None);
        };
        if header[0] != CONTENT_APPLICATION_DATA {
            return Err(protocol_error(&format!(
                "an unprotected record (content type {}) after the handshake",
                header[0]
            )));
        }
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if !(TAG + 1..=MAX_SEALED).contains(&length) {
            return Err(protocol_error(&format!("a record of {length} bytes")));
        }
        Ok((unread.len() >= HEADER + length).then_some(HEADER + length))
    }

    /// Opens the record of `length` bytes at `start`: its data into `out`
    /// if it fits, else in place; a control message is acted on.
    fn open(&mut self, length: usize, out: &mut ReadBuf<'_>) -> io::Result<()> {
        let record = self.start..self.start + length;
        self.start = record.end;
        let header: [u8; HEADER] = self.incoming[record.start..record.start + HEADER]
            .try_into()
            .expect("a header's length");
        let body = record.start + HEADER..record.end;
        let sealed = body.len() - TAG;
        let nonce = self.receiving.next_nonce();
        let forged = || protocol_error("a record that does not authenticate (bad_record_mac)");
        let (kind, content) = if out.remaining() >= sealed {
            let (ciphertext, tag) = self.incoming[body].split_at(sealed);
            let target = out.initialize_unfilled_to(sealed);
            self.receiving
                .key
                .open_separate_gather(nonce, Aad::from(header), ciphertext, tag, target)
                .map_err(|_| forged())?;
            let (kind, length) = content_of(target)?;
            if kind == CONTENT_APPLICATION_DATA {
                out.advance(length);
                self.read_any |= length > 0;
                return Ok(());
            }
            (kind, target[..length].to_vec())
        } else {
            let opened = self
                .receiving
                .key
                .open_in_place(nonce, Aad::from(header), &mut self.incoming[body.clone()])
                .map_err(|_| forged())?;
            let (kind, length) = content_of(opened)?;
            if kind == CONTENT_APPLICATION_DATA {
                self.opened = body.start..body.start + length;
                self.read_any |= length > 0;
                return Ok(());
            }
            (kind, opened[..length].to_vec())
        };
        match kind {
            CONTENT_ALERT => self.alert(&content),
            CONTENT_HANDSHAKE => self.handshake_messages(&content),
            other => Err(protocol_error(&format!("a record of content type {other}"))),
        }
    }

    fn alert(&mut self, alert: &[u8]) -> io::Result<()> {
        let [_, description] = alert else {
            return Err(protocol_error("a malformed alert"));
        };
        if *description == ALERT_CLOSE_NOTIFY {
            self.peer_closed = true;
            return Ok(());
        }
        let alert = AlertDescription::from(*description);
        if matches!(self.secrets, Secrets::Client(_)) && !self.read_any {
            // In TLS 1.3 the client's handshake is done before the server
            // has checked the client's certificate: a refusal arrives now.
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the peer refused the TLS handshake (alert {alert:?}): \
                     it does not accept this workload's certificate"
                ),
            ));
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("the peer ended the TLS connection with alert {alert:?}"),
        ))
    }

    /// Handshake messages after the handshake: tickets, key updates.
    fn handshake_messages(&mut self, mut messages: &[u8]) -> io::Result<()> {
        while !messages.is_empty() {
            let [kind, a, b, c, rest @ ..] = messages else {
                return Err(protocol_error("a handshake message split across records"));
            };
            let length = u32::from_be_bytes([0, *a, *b, *c]) as usize;
            if rest.len() < length {
                return Err(protocol_error("a handshake message split across records"));
            }
            let (payload, rest) = rest.split_at(length);
            messages = rest;
            match (*kind, &mut self.secrets) {
                (HANDSHAKE_NEW_SESSION_TICKET, Secrets::Client(kernel)) => {
                    kernel
                        .handle_new_session_ticket(payload)
                        .map_err(tls_error)?;
                }
                (HANDSHAKE_KEY_UPDATE, _) => {
                    let requested = match payload {
                        [0] => false,
                        [1] => true,
                        _ => return Err(protocol_error("a malformed key update")),
                    };
                    // The next record is under the new key.
                    if !messages.is_empty() {
                        return Err(protocol_error("data after a key update in its record"));
                    }
                    self.receiving =
                        Keys::new(self.secrets.next(Side::Receiving).map_err(tls_error)?)?;
                    // One answer covers every request before it is sent,
                    // so a peer asking again and again adds nothing.
                    if requested && !self.key_update_unsent {
                        self.update_sending_keys()?;
                        self.key_update_unsent = true;
                    }
                }
                (other, _) => {
                    return Err(protocol_error(&format!(
                        "handshake message {other} after the handshake"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Reads more from the socket. An empty buffer is let go while the
    /// socket has nothing: an idle connection holds none.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.start == self.incoming.len() {
            self.incoming.clear();
            self.start = 0;
        } else if self.incoming.capacity() - self.incoming.len() < MAX_SEALED {
            self.incoming.drain(..self.start);
            self.start = 0;
        }
        // Always the same size (what is left is less than a record), so
        // the allocator reuses one block rather than mapping new pages.
        if self.incoming.capacity() < READ_AHEAD {
            self.incoming
                .reserve_exact(READ_AHEAD - self.incoming.len());
        }
        let mut fill = ReadBuf::uninit(self.incoming.spare_capacity_mut());
        let Poll::Ready(read) = Pin::new(&mut self.socket).poll_read(cx, &mut fill) else {
            if self.incoming.is_empty() {
                self.incoming = Vec::new();
            }
            return Poll::Pending;
        };
        read?;
        let read = fill.filled().len();
        if read == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection without a TLS close_notify",
            )));
        }
        // SAFETY: the read initialised the first `read` bytes of the spare
        // capacity.
        unsafe { self.incoming.set_len(self.incoming.len() + read) };
        Poll::Ready(Ok(()))
    }

    /// Seals one record of `kind` whose content is `content`, straight
    /// from the caller's bytes into the outgoing buffer.
    fn seal(&mut self, kind: u8, content: &[u8]) -> io::Result<()> {
        let (body, aad, nonce) = self.next_record(content.len());
        let (ciphertext, extra_and_tag) = self.outgoing[body.clone()].split_at_mut(content.len());
        let sealed = self.sending.key.seal_out_of_place_scatter(
            nonce,
            aad,
            content,
            ciphertext,
            &[kind],
            extra_and_tag,
        );
        self.sealed(body, sealed)
    }

    /// Seals one record of application data gathered from several slices
    /// (a frame's header and the start of its data, cut to one record's
    /// room by the caller): copied, then sealed in place. Returns the bytes
    /// taken.
    fn seal_gathered(&mut self, slices: &[&[u8]]) -> io::Result<usize> {
        let length = slices.iter().map(|slice| slice.len()).sum::<usize>();
        let (body, aad, nonce) = self.next_record(length);
        let (content, extra_and_tag) = self.outgoing[body.clone()].split_at_mut(length);
        let mut at = 0;
        for slice in slices {
            content[at..at + slice.len()].copy_from_slice(slice);
            at += slice.len();
        }
        let sealed = self.sending.key.seal_in_place_scatter(
            nonce,
            aad,
            content,
            &[CONTENT_APPLICATION_DATA],
            extra_and_tag,
        );
        self.sealed(body, sealed)?;
        Ok(length)
    }

    /// Room for a record of `content` bytes after `filled`, its header
    /// written: the range of its body, the header as the record's
    /// additional data, and its nonce.
    fn next_record(&mut self, content: usize) -> (Range<usize>, Aad<[u8; HEADER]>, Nonce) {
        let sealed = content + 1 + TAG;
        let end = self.filled + HEADER + sealed;
        if self.outgoing.len() < end {
            // Bulk takes its largest size at once, so its pages are set up
            // once; small writes take what they need.
            let size = if end > WRITE_GATHER {
                end.max(WRITE_CAPACITY)
            } else {
                end
            };
            self.outgoing.resize(size, 0);
        }
        let length = u16::try_from(sealed)
            .expect("a record's length")
            .to_be_bytes();
        let header = [CONTENT_APPLICATION_DATA, 3, 3, length[0], length[1]];
        self.outgoing[self.filled..self.filled + HEADER].copy_from_slice(&header);
        (
            self.filled + HEADER..end,
            Aad::from(header),
            self.sending.next_nonce(),
        )
    }

    /// The record at `body` is complete once sealed.
    fn sealed(
        &mut self,
        body: Range<usize>,
        sealed: Result<(), aws_lc_rs::error::Unspecified>,
    ) -> io::Result<()> {
        sealed.map_err(|_| io::Error::other("sealing a TLS record failed"))?;
        self.filled = body.end;
        Ok(())
    }

    /// Sends a key update and seals what follows under the next key.
    fn update_sending_keys(&mut self) -> io::Result<()> {
        self.seal(CONTENT_HANDSHAKE, &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0])?;
        self.sending = Keys::new(self.secrets.next(Side::Sending).map_err(tls_error)?)?;
        Ok(())
    }

    /// Writes out every sealed byte.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.filled {
            let written =
                ready!(Pin::new(&mut self.socket)
                    .poll_write(cx, &self.outgoing[self.sent..self.filled]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += written;
        }
        // Let go of a small buffer at once, a bulk one only once writes
        // have stayed small a while: setting up its pages again for every
        // write of bulk would cost a pass over it each time.
        self.small_writes = if self.filled < MAX_CONTENT {
            self.small_writes.saturating_add(1)
        } else {
            0
        };
        if self.outgoing.len() <= WRITE_GATHER || self.small_writes >= SMALL_WRITES_BEFORE_RELEASE {
            self.outgoing = Vec::new();
        }
        self.sent = 0;
        self.filled = 0;
        self.held = 0;
        self.key_update_unsent = false;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let taken = this.early.len().min(out.remaining());
            out.put_slice(&this.early[..taken]);
            this.early.advance(taken);
            return Poll::Ready(Ok(()));
        }
        let before = out.filled().len();
        loop {
            if !this.opened.is_empty() {
                let taken = this.opened.len().min(out.remaining());
                out.put_slice(&this.incoming[this.opened.start..this.opened.start + taken]);
                this.opened.start += taken;
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match this.complete_record()? {
                Some(length) => this.open(length, out)?,
                None if out.filled().len() > before => return Poll::Ready(Ok(())),
                None => ready!(this.poll_fill(cx))?,
            }
        }
    }
}

impl AsyncWrite for TlsStream {
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
        // Records are added only behind records none of which has left:
        // a buffer the socket has taken part of is written out first, so
        // it never grows past one write's worth behind another.
        if this.sent > 0 || this.filled >= WRITE_LIMIT {
            ready!(this.poll_send(cx))?;
        }
        let mut slices: Vec<&[u8]> = Vec::new();
        let mut taken = 0;
        let mut rest = data
            .iter()
            .map(|slice| &**slice)
            .filter(|slice| !slice.is_empty());
        let mut current: &[u8] = &[];
        while taken < WRITE_LIMIT {
            if current.is_empty() {
                match rest.next() {
                    Some(slice) => current = slice,
                    None => break,
                }
            }
            if this.sending.sequence >= this.key_limit {
                this.update_sending_keys()?;
            }
            let room = MAX_CONTENT.min(WRITE_LIMIT - taken);
            if current.len() >= room {
                let (content, after) = current.split_at(room);
                this.seal(CONTENT_APPLICATION_DATA, content)?;
                taken += room;
                current = after;
                continue;
            }
            // A short slice: the record takes what follows it too, up to
            // its room, copied (a frame's header and its data's start).
            slices.clear();
            slices.push(current);
            let mut gathered = current.len();
            current = &[];
            while gathered < room {
                let Some(slice) = rest.next() else { break };
                let used = slice.len().min(room - gathered);
                slices.push(&slice[..used]);
                gathered += used;
                current = &slice[used..];
            }
            if slices.len() == 1 {
                this.seal(CONTENT_APPLICATION_DATA, slices[0])?;
                taken += gathered;
            } else {
                taken += this.seal_gathered(&slices)?;
            }
        }
        this.written_since_flush |= taken > 0;
        if this.filled - this.sent >= WRITE_GATHER {
            if let Poll::Ready(Err(error)) = this.poll_send(cx) {
                return Poll::Ready(Err(error));
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let fresh = std::mem::take(&mut this.written_since_flush);
        if fresh && this.held < MAX_HELD_FLUSHES {
            this.held += 1;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sealed {
            this.seal(CONTENT_ALERT, &[1, ALERT_CLOSE_NOTIFY])?;
            this.close_notify_sealed = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
