//! HBONE as a test client speaks it (one CONNECT stream from a pod's
//! namespace, in mutual TLS with a certificate of the test's choosing),
//! and as a stricter peer than Ambit's agents serves it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use ambit_hbone::client::Connection;
use ambit_hbone::{Caller, Target};
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
    let stream = Stream {
        from,
        certificate,
        server,
        peer,
        target,
        baggage,
    };
    let back = exchange(stream, bundle, b"ping", true)?;
    Ok(back.as_deref() == Some(&b"ping"[..]))
}

/// One HTTP/1.1 GET of `path` from `host`, in an HBONE stream as
/// [`tunnel_through`] opens it: the response's status code, or none when
/// the stream failed.
pub fn get_through(
    from: &Pod,
    certificate: &WorkloadCertificate,
    bundle: &TrustBundle,
    (server, peer): (&Identity, IpAddr),
    (target, baggage): (Target, Option<&str>),
    (host, path): (&str, &str),
) -> anyhow::Result<Option<u16>> {
    let stream = Stream {
        from,
        certificate: Some(certificate),
        server,
        peer,
        target,
        baggage,
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let back = exchange(stream, bundle, request.as_bytes(), false)?;
    Ok(back.and_then(|response| {
        let response = String::from_utf8_lossy(&response).into_owned();
        response.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }))
}

/// Who opens an HBONE stream, through which peer, to where.
struct Stream<'a> {
    from: &'a Pod,
    certificate: Option<&'a WorkloadCertificate>,
    server: &'a Identity,
    peer: IpAddr,
    target: Target,
    baggage: Option<&'a str>,
}

/// Sends `request` in a new HBONE stream (ended by a half-close when
/// `half_close`, else left to the peer to end) and reads all that comes
/// back, within 5 s; none when the stream failed.
fn exchange(
    stream: Stream<'_>,
    bundle: &TrustBundle,
    request: &[u8],
    half_close: bool,
) -> anyhow::Result<Option<Vec<u8>>> {
    let config = match stream.certificate {
        Some(certificate) => tls::client_config(certificate, bundle, stream.server)?,
        None => tls::client_config_without_certificate(bundle, stream.server)?,
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let source = IpAddr::V4(stream.from.ip);
    stream.from.place().in_netns(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let attempt = async {
                let hbone = SocketAddr::new(stream.peer, ambit_hbone::HBONE_PORT);
                let tcp = tokio::net::TcpStream::connect(hbone).await?;
                let name = ServerName::IpAddress(hbone.ip().into());
                let tls = connector.connect(name, tcp).await?;
                let connection = Connection::handshake(tls).await?;
                let caller = Caller {
                    baggage: stream.baggage,
                    ..Caller::from(source)
                };
                let mut tunnel = connection.open(stream.target, caller).await?;
                tunnel.write_all(request).await?;
                if half_close {
                    tunnel.shutdown().await?;
                }
                let mut back = Vec::new();
                tunnel.read_to_end(&mut back).await?;
                anyhow::Ok(back)
            };
            let within = tokio::time::timeout(Duration::from_secs(5), attempt).await;
            anyhow::Ok(within.ok().and_then(Result::ok))
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
/// connection carried at once, and the last stream's headers.
#[derive(Debug, Default)]
pub struct PeerCounts {
    pub connections: AtomicUsize,
    pub streams: AtomicUsize,
    pub most_at_once: AtomicUsize,
    pub last_headers: std::sync::Mutex<http::HeaderMap>,
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
        *seen
            .last_headers
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))? = request.headers().clone();
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
