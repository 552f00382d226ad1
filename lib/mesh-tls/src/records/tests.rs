//! Real TLS on loopback sockets: Ambit's records against Ambit's and
//! against rustls's own streams (the record layer Istio's ztunnel runs),
//! key updates both ways, tickets, the end of a stream, tampering.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ambit_identity::ca::DEFAULT_TTL;
use ambit_identity::tls::{client_config, server_config};
use ambit_identity::{certificate_request, CertificateAuthority, TrustBundle, WorkloadCertificate};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const DOMAIN: &str = "cluster.local";

struct Mesh {
    ca: CertificateAuthority,
    client: WorkloadCertificate,
    server: WorkloadCertificate,
}

impl Mesh {
    fn new() -> Self {
        let ca = CertificateAuthority::generate(DOMAIN).expect("a CA");
        let client = workload(&ca, "shop", "cart");
        let server = workload(&ca, "shop", "pay");
        Self { ca, client, server }
    }

    fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem(DOMAIN, self.ca.root_pem()).expect("a bundle")
    }

    fn client_config(&self) -> ClientConfig {
        client_config(&self.client, &self.bundle(), &self.server.identity).expect("a config")
    }

    fn server_config(&self) -> ServerConfig {
        server_config(&self.server, &self.bundle()).expect("a config")
    }
}

fn workload(ca: &CertificateAuthority, namespace: &str, account: &str) -> WorkloadCertificate {
    let identity = Identity::new(ca.trust_domain(), namespace, account);
    let (key, csr) = certificate_request(&identity).expect("a request");
    let pem = ca
        .issue(&csr, &identity, DEFAULT_TTL)
        .expect("a certificate");
    WorkloadCertificate::new(&identity, &key, &pem).expect("a workload certificate")
}

async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("a listener");
    let address = listener.local_addr().expect("its address");
    let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
    (client.expect("connected"), accepted.expect("accepted").0)
}

fn name() -> ServerName<'static> {
    ServerName::IpAddress(Ipv4Addr::LOCALHOST.into())
}

async fn ambit_pair(mesh: &Mesh) -> (TlsStream, TlsStream) {
    let (near, far) = socket_pair().await;
    let (client, server) = tokio::join!(
        TlsStream::connect(Arc::new(mesh.client_config()), name(), near),
        TlsStream::accept(Arc::new(mesh.server_config()), far)
    );
    (
        client.expect("client handshake"),
        server.expect("server handshake"),
    )
}

/// Ambit's client to rustls's own server stream, configured by `server`.
async fn ambit_to_rustls(
    mesh: &Mesh,
    server: ServerConfig,
) -> (TlsStream, tokio_rustls::server::TlsStream<TcpStream>) {
    let (near, far) = socket_pair().await;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let (client, server) = tokio::join!(
        TlsStream::connect(Arc::new(mesh.client_config()), name(), near),
        acceptor.accept(far)
    );
    (
        client.expect("client handshake"),
        server.expect("server handshake"),
    )
}

/// Varied bytes, so a record out of place or out of order shows.
fn pattern(length: usize) -> Vec<u8> {
    (0..length).map(|i| (i * 7 % 251) as u8).collect()
}

/// Writes `data` in vectored writes of uneven slices, as HTTP/2 does (a
/// frame's short header, then its data), then shuts the stream down.
async fn write_in_slices(stream: &mut TlsStream, data: &[u8]) {
    let sizes = [9usize, 70_000, 3, 16_384, 200_000, 1, 40_000];
    let mut at = 0;
    let mut turn = 0;
    while at < data.len() {
        let mut slices = Vec::new();
        let mut end = at;
        for _ in 0..3 {
            let size = sizes[turn % sizes.len()].min(data.len() - end);
            turn += 1;
            slices.push(io::IoSlice::new(&data[end..end + size]));
            end += size;
        }
        let written = stream.write_vectored(&slices).await.expect("a write");
        assert!(written > 0, "the write took something");
        at += written;
    }
    stream.shutdown().await.expect("a shutdown");
}

/// Reads to the end, alternating small reads (a record opened in place)
/// and large ones (opened straight into the reader's buffer).
async fn read_alternating(stream: &mut TlsStream) -> io::Result<Vec<u8>> {
    let mut received = Vec::new();
    let mut small = [0u8; 100];
    let mut large = vec![0u8; 64 * 1024];
    for turn in 0.. {
        let read = if turn % 2 == 0 {
            let read = stream.read(&mut small).await?;
            received.extend_from_slice(&small[..read]);
            read
        } else {
            let read = stream.read(&mut large).await?;
            received.extend_from_slice(&large[..read]);
            read
        };
        if read == 0 {
            break;
        }
    }
    Ok(received)
}

/// Reads `stream` to its end, expecting `expected`, then sends `answer`,
/// which the `peer` task must return as what it read.
async fn read_then_answer(
    stream: &mut TlsStream,
    expected: &[u8],
    answer: &[u8],
    peer: tokio::task::JoinHandle<Vec<u8>>,
) {
    let received = read_alternating(stream).await.expect("the data");
    assert!(received == expected, "the data arrived altered");
    write_in_slices(stream, answer).await;
    assert!(
        peer.await.expect("the peer") == answer,
        "the answer arrived altered"
    );
}

#[tokio::test]
async fn bytes_cross_both_ways_whole_and_each_side_sees_the_others_identity() {
    let mesh = Mesh::new();
    let (mut client, mut server) = ambit_pair(&mesh).await;
    assert_eq!(client.peer_identity(), Some(&mesh.server.identity));
    assert_eq!(server.peer_identity(), Some(&mesh.client.identity));
    let upload = pattern(3 << 20);
    let download = pattern(5 << 20 | 77);
    let (expected_up, expected_down) = (upload.clone(), download.clone());
    let serving = tokio::spawn(async move {
        let received = read_alternating(&mut server).await.expect("the upload");
        write_in_slices(&mut server, &download).await;
        received
    });
    write_in_slices(&mut client, &upload).await;
    let received = read_alternating(&mut client).await.expect("the download");
    let uploaded = serving.await.expect("the server");
    assert_eq!(uploaded.len(), expected_up.len());
    assert!(uploaded == expected_up, "the upload arrived altered");
    assert_eq!(received.len(), expected_down.len());
    assert!(received == expected_down, "the download arrived altered");
}

#[tokio::test]
async fn rustls_as_server_updates_keys_and_sends_tickets_and_ambit_follows() {
    let mesh = Mesh::new();
    let mut config = mesh.server_config();
    config.send_tls13_tickets = 2;
    let (mut client, mut server) = ambit_to_rustls(&mesh, config).await;
    let first = pattern(300_000);
    let second = pattern(200_000);
    let expected: Vec<u8> = first.iter().chain(&second).copied().collect();
    let serving = tokio::spawn(async move {
        server.write_all(&first).await.expect("a write");
        // Key updates that ask Ambit to update its own keys too.
        for _ in 0..3 {
            server
                .get_mut()
                .1
                .refresh_traffic_keys()
                .expect("a key update");
            server.write_all(b"").await.expect("a write");
        }
        server.write_all(&second).await.expect("a write");
        server.shutdown().await.expect("a shutdown");
        let mut answer = Vec::new();
        server.read_to_end(&mut answer).await.expect("the answer");
        answer
    });
    // The answer is sealed under Ambit's updated key: rustls opens it.
    read_then_answer(&mut client, &expected, &pattern(100_000), serving).await;
}

#[tokio::test]
async fn rustls_as_client_updates_keys_and_ambit_follows() {
    let mesh = Mesh::new();
    let (near, far) = socket_pair().await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(mesh.client_config()));
    let (client, server) = tokio::join!(
        connector.connect(name(), near),
        TlsStream::accept(Arc::new(mesh.server_config()), far)
    );
    let (mut client, mut server) = (client.expect("client"), server.expect("server"));
    let data = pattern(400_000);
    let expected = data.clone();
    let calling = tokio::spawn(async move {
        client.write_all(&data[..1000]).await.expect("a write");
        client
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("a key update");
        client.write_all(&data[1000..]).await.expect("a write");
        client.shutdown().await.expect("a shutdown");
        let mut echoed = Vec::new();
        client.read_to_end(&mut echoed).await.expect("the echo");
        echoed
    });
    read_then_answer(&mut server, &expected, &expected, calling).await;
}

#[tokio::test]
async fn ambit_updates_its_keys_at_the_suites_limit_and_rustls_follows() {
    let mesh = Mesh::new();
    let (mut client, mut server) = ambit_to_rustls(&mesh, mesh.server_config()).await;
    // A new key every three records.
    client.key_limit = 3;
    let data = pattern(40 * MAX_CONTENT + 5);
    write_in_slices(&mut client, &data).await;
    let mut received = Vec::new();
    server.read_to_end(&mut received).await.expect("the data");
    assert!(received == data, "the data arrived altered");
    assert!(client.sending.sequence <= 3, "the key was updated");
}

#[tokio::test]
async fn a_closed_socket_without_close_notify_is_an_error_not_an_end() {
    let mesh = Mesh::new();
    let (client, mut server) = ambit_pair(&mesh).await;
    drop(client);
    let mut rest = Vec::new();
    let error = server
        .read_to_end(&mut rest)
        .await
        .expect_err("a truncated stream");
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn a_client_whose_certificate_the_server_refuses_is_told_so() {
    let mesh = Mesh::new();
    let stranger = Mesh::new();
    let (near, far) = socket_pair().await;
    // The server trusts only its own CA; the client's is another.
    let client_config =
        client_config(&stranger.client, &mesh.bundle(), &mesh.server.identity).expect("a config");
    let (client, server) = tokio::join!(
        TlsStream::connect(Arc::new(client_config), name(), near),
        TlsStream::accept(Arc::new(mesh.server_config()), far)
    );
    assert!(server.is_err(), "the server refused the client");
    let mut client = client.expect("the client's side of the handshake is done");
    let mut buffer = [0u8; 16];
    let error = client.read(&mut buffer).await.expect_err("the refusal");
    assert_eq!(error.kind(), io::ErrorKind::PermissionDenied, "{error}");
    assert!(
        error
            .to_string()
            .contains("does not accept this workload's certificate"),
        "{error}"
    );
}

#[tokio::test]
async fn a_tampered_byte_is_refused_and_nothing_altered_is_delivered() {
    let mesh = Mesh::new();
    let (near, relay_near) = socket_pair().await;
    let (relay_far, far) = socket_pair().await;
    // A relay that flips one bit well past the handshake.
    let relay = tokio::spawn(async move {
        let (mut from_client, mut to_client) = relay_near.into_split();
        let (mut from_server, mut to_server) = relay_far.into_split();
        let upstream = async move {
            let mut buffer = vec![0u8; 4096];
            let mut passed = 0usize;
            loop {
                let read = from_client.read(&mut buffer).await.unwrap_or(0);
                if read == 0 {
                    break;
                }
                let flip = 200_000usize.checked_sub(passed).filter(|at| *at < read);
                if let Some(at) = flip {
                    buffer[at] ^= 0x10;
                }
                passed += read;
                if to_server.write_all(&buffer[..read]).await.is_err() {
                    break;
                }
            }
        };
        let downstream = async move {
            let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        };
        tokio::join!(upstream, downstream);
    });
    let (client, server) = tokio::join!(
        TlsStream::connect(Arc::new(mesh.client_config()), name(), near),
        TlsStream::accept(Arc::new(mesh.server_config()), far)
    );
    let (mut client, mut server) = (client.expect("client"), server.expect("server"));
    let data = pattern(1 << 20);
    let sent = data.clone();
    let sending = tokio::spawn(async move {
        let _ = client.write_all(&sent).await;
        let _ = client.shutdown().await;
    });
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let error = loop {
        match server.read(&mut buffer).await {
            Ok(0) => panic!("the tampered stream ended as if whole"),
            Ok(read) => received.extend_from_slice(&buffer[..read]),
            Err(error) => break error,
        }
    };
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    assert!(
        received.len() < 200_000,
        "nothing after the flip was delivered"
    );
    assert!(
        data.starts_with(&received),
        "what was delivered is unaltered"
    );
    drop(server);
    let _ = sending.await;
    relay.abort();
}

#[tokio::test]
async fn an_idle_connection_holds_no_buffers() {
    let mesh = Mesh::new();
    let (mut client, mut server) = ambit_pair(&mesh).await;
    client.write_all(b"hello").await.expect("a write");
    client.flush().await.expect("a flush");
    client.flush().await.expect("the held flush");
    let mut hello = [0u8; 5];
    server.read_exact(&mut hello).await.expect("the hello");
    assert_eq!(&hello, b"hello");
    let mut more = [0u8; 1];
    let waiting =
        tokio::time::timeout(std::time::Duration::from_millis(50), server.read(&mut more)).await;
    assert!(waiting.is_err(), "nothing more to read yet");
    assert_eq!(server.incoming.capacity(), 0, "the read buffer was let go");
    assert_eq!(client.outgoing.capacity(), 0, "the write buffer was let go");
    // Bulk keeps its buffer while it lasts, and lets it go once writes
    // have stayed small a while.
    let bulk = pattern(1 << 20);
    let reading = tokio::spawn(async move {
        let mut received = vec![0u8; (1 << 20) + usize::from(SMALL_WRITES_BEFORE_RELEASE)];
        server.read_exact(&mut received).await.expect("the data");
        received
    });
    client.write_all(&bulk).await.expect("a write");
    client.flush().await.expect("a flush");
    client.flush().await.expect("the held flush");
    assert!(
        client.outgoing.capacity() >= WRITE_CAPACITY,
        "bulk kept its buffer"
    );
    for _ in 0..SMALL_WRITES_BEFORE_RELEASE {
        client.write_all(b"!").await.expect("a write");
        client.flush().await.expect("a flush");
        client.flush().await.expect("the held flush");
    }
    assert_eq!(client.outgoing.capacity(), 0, "the bulk buffer was let go");
    let received = reading.await.expect("the reader");
    assert!(received[..1 << 20] == bulk[..], "the bulk arrived altered");
}
