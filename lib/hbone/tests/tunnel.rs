#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test
//! HBONE over real mutual TLS on loopback: many streams share one
//! connection, each carries its bytes both ways with half-close, the server
//! learns the target, the original source and the peer's identity, and
//! refusals reach the client as 401 and 503.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_hbone::client::{Connection, HboneError};
use ambit_hbone::pool::Pool;
use ambit_hbone::server::{serve, ConnectRequest, Refusal, Responder};
use ambit_hbone::Target;
use ambit_identity::ca::DEFAULT_TTL;
use ambit_identity::tls::{client_config, peer_identity, server_config};
use ambit_identity::{
    certificate_request, CertificateAuthority, Identity, TrustBundle, WorkloadCertificate,
};
use http::StatusCode;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn workload(ca: &CertificateAuthority, account: &str) -> WorkloadCertificate {
    let identity = Identity::new(ca.trust_domain(), "shop", account);
    let (key, csr) = certificate_request(&identity).unwrap();
    let pem = ca.issue(&csr, &identity, DEFAULT_TTL).unwrap();
    WorkloadCertificate::new(&identity, &key, &pem).unwrap()
}

/// Echoes every connection back until its client half-closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                tokio::io::copy(&mut read, &mut write).await.unwrap();
                write.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// What the HBONE server saw: each stream's request with its peer, and
/// how many TLS connections it accepted.
#[derive(Default)]
struct Seen {
    streams: Mutex<Vec<(Option<Identity>, ConnectRequest)>>,
    connections: Mutex<usize>,
}

/// A loopback listener and the mTLS acceptor for `certificate`.
async fn tls_listener(
    certificate: &WorkloadCertificate,
    trust: &TrustBundle,
) -> (tokio_rustls::TlsAcceptor, TcpListener, SocketAddr) {
    let config = server_config(certificate, trust).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        listener,
        addr,
    )
}

/// An HBONE server that opens any target on loopback except port 1, which
/// policy "denies".
async fn hbone_server(
    certificate: WorkloadCertificate,
    trust: &TrustBundle,
    seen: Arc<Seen>,
) -> SocketAddr {
    let (acceptor, listener, addr) = tls_listener(&certificate, trust).await;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            *seen.connections.lock().unwrap() += 1;
            let peer = peer_identity(tls.get_ref().1);
            let seen = seen.clone();
            tokio::spawn(serve(
                tls,
                move |request: ConnectRequest, responder: Responder| {
                    seen.streams
                        .lock()
                        .unwrap()
                        .push((peer.clone(), request.clone()));
                    async move {
                        let Target::Address(target) = request.target else {
                            return responder.refuse(Refusal::Unreachable);
                        };
                        if target.port() == 1 {
                            return responder.refuse(Refusal::Denied);
                        }
                        let Ok(mut upstream) = TcpStream::connect(target).await else {
                            return responder.refuse(Refusal::Unreachable);
                        };
                        let tunnel = responder.accept().unwrap();
                        // The echo returns every byte: as many each way.
                        let (to_tunnel, to_upstream) = tunnel.relay(&mut upstream).await.unwrap();
                        assert_eq!(to_tunnel, to_upstream);
                    }
                },
            ));
        }
    });
    addr
}

/// A new HBONE connection to `addr` through `connector`.
async fn dial(
    connector: tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> Result<Connection, HboneError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    Connection::handshake(tls).await
}

#[tokio::test]
async fn streams_share_one_mutual_tls_connection_and_carry_bytes_both_ways() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let trust = TrustBundle::from_pem("cluster.local", ca.root_pem()).unwrap();
    let (cart, pay) = (workload(&ca, "cart"), workload(&ca, "pay"));
    let seen = Arc::new(Seen::default());
    let echo = echo_server().await;
    let hbone = hbone_server(pay, &trust, seen.clone()).await;

    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        client_config(
            &cart,
            &trust,
            &Identity::new("cluster.local", "shop", "pay"),
        )
        .unwrap(),
    ));
    let tcp = TcpStream::connect(hbone).await.unwrap();
    let tls = connector
        .connect(ServerName::IpAddress(hbone.ip().into()), tcp)
        .await
        .unwrap();
    let connection = Connection::handshake(tls).await.unwrap();
    let source: IpAddr = "10.244.0.7".parse().unwrap();

    // Three streams at once, each a MiB with its own pattern.
    let transfers = (0..3u8).map(|n| {
        let connection = connection.clone();
        async move {
            let stream = connection.open(echo, source).await.unwrap();
            let (mut read, mut write) = tokio::io::split(stream);
            let sent: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 ^ n).collect();
            let writing = {
                let sent = sent.clone();
                async move {
                    write.write_all(&sent).await.unwrap();
                    write.shutdown().await.unwrap();
                }
            };
            let mut received = Vec::new();
            let reading = read.read_to_end(&mut received);
            let ((), read) = tokio::join!(writing, reading);
            read.unwrap();
            assert!(
                received == sent,
                "stream {n}: {} bytes back of {}",
                received.len(),
                sent.len()
            );
        }
    });
    futures_util::future::join_all(transfers).await;

    assert_eq!(
        *seen.connections.lock().unwrap(),
        1,
        "one TLS connection for all streams"
    );
    let streams = seen.streams.lock().unwrap().clone();
    assert_eq!(streams.len(), 3);
    for (peer, request) in streams {
        assert_eq!(
            peer,
            Some(cart.identity.clone()),
            "the server knows the caller"
        );
        assert_eq!(
            request,
            ConnectRequest {
                target: Target::Address(echo),
                source: Some(source),
                service: None,
                baggage: None,
                traceparent: None,
            }
        );
    }

    // Refusals come back as their status codes.
    let denied = connection
        .open("127.0.0.1:1".parse::<SocketAddr>().unwrap(), source)
        .await;
    assert!(
        matches!(denied, Err(HboneError::Refused(StatusCode::UNAUTHORIZED))),
        "{denied:?}"
    );
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let unreachable = connection.open(closed, source).await;
    assert!(
        matches!(
            unreachable,
            Err(HboneError::Refused(StatusCode::SERVICE_UNAVAILABLE))
        ),
        "{unreachable:?}"
    );
}

/// A TLS server that hangs up right after the handshake, like a peer agent
/// that went away.
async fn vanishing_server(certificate: WorkloadCertificate, trust: &TrustBundle) -> SocketAddr {
    let (acceptor, listener, addr) = tls_listener(&certificate, trust).await;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            drop(acceptor.accept(tcp).await);
        }
    });
    addr
}

#[tokio::test]
async fn a_pool_reuses_its_connection_replaces_one_gone_or_made_with_an_old_credential_and_lets_idle_ones_go(
) {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let trust = TrustBundle::from_pem("cluster.local", ca.root_pem()).unwrap();
    let cart = workload(&ca, "cart");
    let seen = Arc::new(Seen::default());
    let echo = echo_server().await;
    let hbone = hbone_server(workload(&ca, "pay"), &trust, seen.clone()).await;
    let gone = vanishing_server(workload(&ca, "pay"), &trust).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        client_config(
            &cart,
            &trust,
            &Identity::new("cluster.local", "shop", "pay"),
        )
        .unwrap(),
    ));
    let dial = |addr: SocketAddr| dial(connector.clone(), addr);
    let source: IpAddr = "10.244.0.7".parse().unwrap();
    let round_trip = |mut stream: ambit_hbone::TunnelStream| async move {
        stream.write_all(b"ping").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"ping");
    };

    let pool: Pool<&str, u32> = Pool::default();
    // The first connection for "pay" hangs up: its stream fails...
    assert!(pool
        .open(&"pay", &1, echo, source, || dial(gone))
        .await
        .is_err());
    // ...and the next stream for "pay" gets a new connection, then reuses it.
    for _ in 0..5 {
        let stream = pool
            .open(&"pay", &1, echo, source, || dial(hbone))
            .await
            .unwrap();
        round_trip(stream).await;
    }
    assert_eq!(
        *seen.connections.lock().unwrap(),
        1,
        "five streams, one connection"
    );
    assert_eq!(seen.streams.lock().unwrap().len(), 5);
    assert_eq!(pool.len(), 1);
    // A renewed credential: the next stream gets a connection of its own,
    // which replaces the old one in the pool.
    for _ in 0..2 {
        let stream = pool
            .open(&"pay", &2, echo, source, || dial(hbone))
            .await
            .unwrap();
        round_trip(stream).await;
    }
    assert_eq!(*seen.connections.lock().unwrap(), 2);
    assert_eq!(pool.len(), 1);
    // A peer that hangs up under another key: once a new connection is
    // made, the pool no longer holds the dead one.
    assert!(pool
        .open(&"gone", &1, echo, source, || dial(gone))
        .await
        .is_err());
    let stream = pool
        .open(&"other", &1, echo, source, || dial(hbone))
        .await
        .unwrap();
    round_trip(stream).await;
    assert_eq!(pool.len(), 2, "pay and other; not the dead one");

    // Idle connections are let go; one with a stream in use is kept.
    let held = pool
        .open(&"pay", &2, echo, source, || dial(hbone))
        .await
        .unwrap();
    pool.release_idle(Duration::from_secs(3600));
    assert_eq!(pool.len(), 2, "both opened a stream just now");
    pool.release_idle(Duration::ZERO);
    assert_eq!(pool.len(), 1, "\"other\" is idle; \"pay\" carries a stream");
    round_trip(held).await;
    pool.release_idle(Duration::ZERO);
    assert!(pool.is_empty());
    let connections = *seen.connections.lock().unwrap();
    let stream = pool
        .open(&"pay", &2, echo, source, || dial(hbone))
        .await
        .unwrap();
    round_trip(stream).await;
    assert_eq!(
        *seen.connections.lock().unwrap(),
        connections + 1,
        "a stream after the release gets a new connection"
    );
}

#[tokio::test]
async fn past_its_peers_stream_limit_the_pool_opens_another_connection() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let trust = TrustBundle::from_pem("cluster.local", ca.root_pem()).unwrap();
    let seen = Arc::new(Seen::default());
    let echo = echo_server().await;
    let hbone = hbone_server(workload(&ca, "pay"), &trust, seen.clone()).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        client_config(
            &workload(&ca, "cart"),
            &trust,
            &Identity::new("cluster.local", "shop", "pay"),
        )
        .unwrap(),
    ));
    let dial = || dial(connector.clone(), hbone);
    let source: IpAddr = "10.244.0.7".parse().unwrap();
    let pool: Pool<&str, ()> = Pool::default();
    // The pool opens 100 streams a connection: 250 held open at once
    // need three connections, and none of them waits.
    let opened = futures_util::future::join_all(
        (0..250).map(|_| pool.open(&"pay", &(), echo, source, dial)),
    );
    let streams: Vec<_> = tokio::time::timeout(Duration::from_secs(20), opened)
        .await
        .expect("every stream opens without waiting for another to end")
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(streams.len(), 250);
    assert_eq!(*seen.connections.lock().unwrap(), 3);
    assert_eq!(pool.len(), 3);
    for mut stream in streams {
        stream.write_all(b"ping").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"ping");
    }
}
