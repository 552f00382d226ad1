//! The handshake, made by rustls through its unbuffered API, and what
//! rustls keeps of the connection after it: the secrets' next generation
//! at a key update, and a client's tickets.

use std::io;

use ambit_identity::tls::peer_identity;
use ambit_identity::Identity;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{tls_error, MAX_SEALED};

/// What a finished handshake leaves for the records.
pub(super) struct Handshake {
    pub socket: TcpStream,
    pub secrets: Secrets,
    pub extracted: ExtractedSecrets,
    pub peer: Option<Identity>,
    /// Records sealed with one key at most before the key is updated.
    pub key_limit: u64,
    /// Plaintext that came with the handshake.
    pub early: Vec<u8>,
    /// Bytes read past the handshake.
    pub incoming: Vec<u8>,
}

/// rustls's part after the handshake: new secrets at a key update, and
/// the tickets a server sends its client.
pub(super) enum Secrets {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Secrets {
    pub(super) fn next(
        &mut self,
        direction: Side,
    ) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match (self, direction) {
            (Self::Client(kernel), Side::Sending) => kernel.update_tx_secret(),
            (Self::Client(kernel), Side::Receiving) => kernel.update_rx_secret(),
            (Self::Server(kernel), Side::Sending) => kernel.update_tx_secret(),
            (Self::Server(kernel), Side::Receiving) => kernel.update_rx_secret(),
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum Side {
    Sending,
    Receiving,
}

/// An unbuffered rustls connection of either side.
pub(super) trait Handshaking: Sized {
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    type Data;
    fn common(&self) -> &rustls::CommonState;
    fn finish(self) -> Result<(ExtractedSecrets, Secrets), rustls::Error>;
}

/// The same for either side: rustls's two connection types differ only in
/// their side's data.
macro_rules! handshaking {
    ($connection:ty, $data:ty, $side:ident) => {
        impl Handshaking for $connection {
            type Data = $data;
            fn process<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, $data> {
                self.process_tls_records(incoming)
            }
            fn common(&self) -> &rustls::CommonState {
                self
            }
            fn finish(self) -> Result<(ExtractedSecrets, Secrets), rustls::Error> {
                let (secrets, kernel) = self.dangerous_into_kernel_connection()?;
                Ok((secrets, Secrets::$side(kernel)))
            }
        }
    };
}

handshaking!(UnbufferedClientConnection, ClientConnectionData, Client);
handshaking!(UnbufferedServerConnection, ServerConnectionData, Server);

/// Drives rustls through the handshake and takes what the records need.
pub(super) async fn run<C: Handshaking>(
    mut connection: C,
    mut socket: TcpStream,
) -> io::Result<Handshake> {
    let mut incoming = Vec::with_capacity(MAX_SEALED);
    let mut outgoing = vec![0u8; MAX_SEALED];
    let mut encoded = 0;
    let mut early = Vec::new();
    loop {
        let UnbufferedStatus { mut discard, state } = connection.process(&mut incoming);
        let state = match state {
            Ok(state) => state,
            Err(error) => {
                send_alert(&mut connection, &mut socket).await;
                return Err(tls_error(error));
            }
        };
        let mut read_more = false;
        match state {
            ConnectionState::EncodeTlsData(mut data) => loop {
                match data.encode(&mut outgoing[encoded..]) {
                    Ok(written) => {
                        encoded += written;
                        break;
                    }
                    Err(EncodeError::InsufficientSize(size)) => {
                        outgoing.resize(encoded + size.required_size, 0);
                    }
                    Err(EncodeError::AlreadyEncoded) => break,
                }
            },
            ConnectionState::TransmitTlsData(data) => {
                socket.write_all(&outgoing[..encoded]).await?;
                encoded = 0;
                data.done();
            }
            ConnectionState::BlockedHandshake => read_more = true,
            // Data sent with the handshake's last flight (a server's
            // first HTTP/2 frames): rustls opens it, kept for the reader.
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record.map_err(tls_error)?;
                    early.extend_from_slice(record.payload);
                    discard += record.discard;
                }
            }
            // Done once both directions carry data: a server may send
            // before it has checked the client's certificate.
            ConnectionState::WriteTraffic(_) => read_more = true,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the TLS connection closed during its handshake",
                ))
            }
        }
        incoming.drain(..discard);
        if read_more {
            if !connection.common().is_handshaking() {
                break;
            }
            incoming.reserve(MAX_SEALED);
            if socket.read_buf(&mut incoming).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ));
            }
        }
    }
    let peer = peer_identity(connection.common());
    let suite = connection
        .common()
        .negotiated_cipher_suite()
        .and_then(|suite| suite.tls13())
        .ok_or_else(|| io::Error::other("the TLS handshake did not settle on TLS 1.3"))?;
    let key_limit = suite.common.confidentiality_limit;
    let (extracted, secrets) = connection.finish().map_err(tls_error)?;
    Ok(Handshake {
        socket,
        secrets,
        extracted,
        peer,
        key_limit,
        early,
        incoming,
    })
}

/// Sends the alert rustls queued for a failed handshake, if it can.
async fn send_alert<C: Handshaking>(connection: &mut C, socket: &mut TcpStream) {
    let mut alert = [0u8; 64];
    let mut none: [u8; 0] = [];
    let UnbufferedStatus { state, .. } = connection.process(&mut none);
    if let Ok(ConnectionState::EncodeTlsData(mut data)) = state {
        if let Ok(written) = data.encode(&mut alert) {
            let _ = socket.write_all(&alert[..written]).await;
        }
    }
}
