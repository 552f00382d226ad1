//! HBONE as a test client speaks it (one CONNECT stream from a pod's
//! namespace, in mutual TLS with a certificate of the test's choosing),
//! and as a stricter peer than Ambit's agents serves it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use ambit_hbone::client::Connection;
use ambit_hbone::{Forwarded, Target};
use ambit_identity::{tls, Identity, TrustBundle, WorkloadCertificate};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Pod;

/// One HBONE stream to `target` from `from`'s namespace, in mutual TLS as
/// `certificate` (none: no client certificate at all); whether the echo
/// came back.
pub fn tunnel_from(
    from: &Pod,
    certificate: Option<&WorkloadCertificate>,
    bundle: &TrustBundle,
    server: &Identity,
    target: SocketAddr,
) -> anyhow::Result<bool> {
    let peer = target.ip();
    tunnel_through(
        from,
        certificate,
        bundle,
        (server, peer),
        (target.into(), None),
    )
}

/// [`tunnel_from`] through the 15008 of the peer `server` at its address,
/// to a target that may name a Service by host, the stream telling
/// `baggage` of its caller when given.
pub fn tunnel_through(
    from: &Pod,
    certificate: Option<&WorkloadCertificate>,
    bundle: &TrustBundle,
    (server, peer): (&Identity, IpAddr),
    (target, baggage): (Target, Option<&str>),
) -> anyhow::Result<bool> {
    let config = match certificate {
        Some(certificate) => tls::client_config(certificate, bundle, server)?,
        None => tls::client_config_without_certificate(bundle, server)?,
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let source = IpAddr::V4(from.ip);
    from.place().in_netns(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let attempt = async {
                let hbone = SocketAddr::new(peer, ambit_hbone::HBONE_PORT);
                let tcp = tokio::net::TcpStream::connect(hbone).await?;
                let name = ServerName::IpAddress(hbone.ip().into());
                let tls = connector.connect(name, tcp).await?;
                let connection = Connection::handshake(tls).await?;
                let forwarded = Forwarded {
                    baggage,
                    ..Forwarded::from(source)
                };
                let mut stream = connection.open(target, forwarded).await?;
                stream.write_all(b"ping").await?;
                stream.shutdown().await?;
                let mut back = Vec::new();
                stream.read_to_end(&mut back).await?;
                anyhow::Ok(back == b"ping")
            };
            let within = tokio::time::timeout(Duration::from_secs(5), attempt).await;
            anyhow::Ok(matches!(within, Ok(Ok(true))))
        })
    })?
}

/// An HBONE peer that answers every CONNECT itself, echoing the stream's
/// bytes, and allows `max_streams` streams a connection: a waypoint or
/// agent stricter than Ambit's and ztunnel's 200. Counts what it saw.
pub struct EchoPeer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    seen: Arc<PeerCounts>,
}

/// What an [`EchoPeer`] saw: connections, streams, the most streams one
/// connection carried at once, and the last stream's `baggage`.
#[derive(Debug, Default)]
pub struct PeerCounts {
    pub connections: AtomicUsize,
    pub streams: AtomicUsize,
    pub most_at_once: AtomicUsize,
    pub baggage: std::sync::Mutex<Option<String>>,
}

impl EchoPeer {
    /// Listens on `pod`'s 15008 in mutual TLS as `certificate`, callers
    /// verified against `bundle`.
    pub fn start(
        pod: &Pod,
        certificate: &WorkloadCertificate,
        bundle: &TrustBundle,
        max_streams: u32,
    ) -> anyhow::Result<Self> {
        let config = Arc::new(tls::server_config(certificate, bundle)?);
        let address = SocketAddr::from((pod.ip, ambit_hbone::HBONE_PORT));
        let listener = pod
            .place()
            .in_netns(|| std::net::TcpListener::bind(address))??;
        listener.set_nonblocking(true)?;
        let seen = Arc::new(PeerCounts::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let counts = seen.clone();
        let serving = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let accepting = async {
                    loop {
                        let (tcp, _) = listener.accept().await?;
                        let serving =
                            serve_echo(acceptor.clone(), tcp, max_streams, counts.clone());
                        tokio::spawn(async move {
                            if let Err(error) = serving.await {
                                eprintln!("echo peer: a connection failed: {error:#}");
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = stopped => Ok(()),
                    failed = accepting => failed,
                }
            })
        });
        Ok(Self {
            stop: Some(stop),
            serving: Some(serving),
            seen,
        })
    }

    pub fn counts(&self) -> &PeerCounts {
        &self.seen
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(serving) = self.serving.take() {
            let _ = serving.join();
        }
    }
}

/// One connection: TLS, HTTP/2 allowing `max_streams`, each CONNECT
/// answered 200 and echoed.
async fn serve_echo(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    max_streams: u32,
    seen: Arc<PeerCounts>,
) -> anyhow::Result<()> {
    let tls = acceptor.accept(tcp).await?;
    let mut connection = h2::server::Builder::new()
        .max_concurrent_streams(max_streams)
        .handshake::<_, Bytes>(tls)
        .await?;
    seen.connections.fetch_add(1, Ordering::Relaxed);
    let open = Arc::new(AtomicUsize::new(0));
    while let Some(accepted) = connection.accept().await {
        let (request, mut respond) = accepted?;
        seen.streams.fetch_add(1, Ordering::Relaxed);
        let baggage = request.headers().get("baggage");
        *seen
            .baggage
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))? = baggage
            .and_then(|value| value.to_str().ok())
            .map(String::from);
        let now = open.fetch_add(1, Ordering::AcqRel) + 1;
        seen.most_at_once.fetch_max(now, Ordering::Relaxed);
        let open = open.clone();
        tokio::spawn(async move {
            let mut body = request.into_body();
            let echoed = async {
                let mut send = respond.send_response(http::Response::new(()), false)?;
                while let Some(data) = body.data().await {
                    let data = data?;
                    body.flow_control().release_capacity(data.len())?;
                    send.send_data(data, false)?;
                }
                send.send_data(Bytes::new(), true)
            };
            if let Err(error) = echoed.await {
                eprintln!("echo peer: a stream failed: {error}");
            }
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
    Ok(())
}
