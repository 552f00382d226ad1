//! The test app: an HTTP/1.1 + h2c server and TCP echo server that says who
//! answered and whom it saw, and the clients that talk to it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ambit_testbed::testapp::{
    ConcurrencySummary, HttpSummary, LatencySummary, Reply, StreamSummary, TransferSummary,
};
use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use std::convert::Infallible;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::{body::Incoming, service::service_fn, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest body `/bytes/N` sends.
const MAX_SIZED_BODY: usize = 16 << 20;

#[derive(Parser)]
#[command(name = "ambit-testapp", about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve HTTP (HTTP/1.1 and h2c on the same port) and TCP echo.
    Serve {
        #[arg(long)]
        app: String,
        #[arg(long, default_value = "v1")]
        version: String,
        /// HTTP listen address; repeatable.
        #[arg(long)]
        http: Vec<SocketAddr>,
        /// HTTPS listen address (HTTP/1.1 and HTTP/2 by ALPN), with
        /// `--tls-cert` and `--tls-key`; repeatable.
        #[arg(long, requires_all = ["tls_cert", "tls_key"])]
        https: Vec<SocketAddr>,
        /// The server's certificate chain (PEM).
        #[arg(long)]
        tls_cert: Option<std::path::PathBuf>,
        /// The server's private key (PEM).
        #[arg(long)]
        tls_key: Option<std::path::PathBuf>,
        /// TCP echo listen address; repeatable.
        #[arg(long)]
        echo: Vec<SocketAddr>,
        /// Sink listen address (repeatable): reads until the client closes
        /// its side, then answers `<bytes> <crc32>`.
        #[arg(long)]
        sink: Vec<SocketAddr>,
        /// Sinks wait this long after accepting before they read, like a
        /// reader that falls behind.
        #[arg(long, default_value_t = 0)]
        sink_stall_ms: u64,
        /// Every HTTP answer waits this long first, like a slow replica.
        #[arg(long, default_value_t = 0)]
        answer_delay_ms: u64,
        /// A service this one calls for every ordinary request, forwarding
        /// the caller's user and trace headers as Bookinfo's services do;
        /// the answers join this one's (repeatable, called in order).
        #[arg(long)]
        call: Vec<Uri>,
        /// How long each call may take before the server answers without
        /// it, as Bookinfo's productpage gives up on reviews.
        #[arg(long, default_value_t = 5000)]
        call_timeout_ms: u64,
        /// Every Nth HTTP request (the first, then every Nth after it) is
        /// answered with `--fail-status` once its body is read, like a
        /// replica failing part of its traffic (0: never).
        #[arg(long, default_value_t = 0)]
        fail_every: u64,
        #[arg(long, default_value_t = 503)]
        fail_status: u16,
        /// Print `METHOD HOST PATH` for every HTTP request received.
        #[arg(long)]
        log_requests: bool,
    },
    /// Send requests one after another on one connection (reconnecting after
    /// a failure) and print a JSON summary.
    Http {
        #[arg(long)]
        url: Uri,
        #[arg(long, default_value_t = 1)]
        requests: usize,
        /// HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
        #[arg(long)]
        http2: bool,
        /// A new connection for every request.
        #[arg(long)]
        reconnect: bool,
        /// Pause between requests, in milliseconds.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// A header every request carries, `NAME:VALUE` (repeatable); a
        /// `host` given here replaces the URL's.
        #[arg(long = "header", value_parser = header_arg)]
        headers: Vec<(String, String)>,
        #[arg(long, default_value = "GET")]
        method: hyper::Method,
        /// Keep the cookies answers set, and send them with later requests.
        #[arg(long)]
        cookies: bool,
        /// A response header to count by value (repeatable).
        #[arg(long = "show-header")]
        show_headers: Vec<String>,
        /// Connect here rather than to the URL's host (as curl's
        /// `--resolve`): the URL's host is still the Host and the TLS
        /// server name.
        #[arg(long)]
        connect: Option<String>,
        #[command(flatten)]
        tls: ClientTls,
    },
    /// POST `bytes` bytes to `/upload` in one streamed body and print a
    /// JSON [`TransferSummary`] with what the server counted.
    Upload {
        #[arg(long)]
        url: Uri,
        #[arg(long)]
        bytes: u64,
        #[arg(long)]
        http2: bool,
    },
    /// One gRPC-like request to `/trailers` over h2c; print the status,
    /// body and trailers as JSON.
    Trailers {
        #[arg(long)]
        url: Uri,
        /// Sent as `x-echo`, answered as `grpc-message`.
        #[arg(long)]
        echo: String,
    },
    /// A gRPC-like bidirectional stream to `/stream` over h2c: each of
    /// `messages` messages is sent only once the one before has come back,
    /// so nothing on the way may hold a message back; print
    /// `{status, echoed, trailers}` as JSON.
    Stream {
        #[arg(long)]
        url: Uri,
        #[arg(long, default_value_t = 10)]
        messages: usize,
    },
    /// A WebSocket to `/ws`: `messages` messages echoed, then a close;
    /// print `{status, accepted, echoed}`.
    Websocket {
        #[arg(long)]
        url: Uri,
        #[arg(long, default_value_t = 10)]
        messages: usize,
    },
    /// Send a message to a TCP echo server, close the sending side, and print
    /// what came back.
    Echo {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        message: String,
    },
    /// Keep one connection to an echo server, send a line every interval and
    /// check each echo; print a JSON summary.
    EchoStream {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        lines: usize,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
    },
    /// Send `bytes` of varied data to a sink server, close the sending side,
    /// and print what the server counted next to what was sent (JSON).
    Send {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        bytes: u64,
        /// Milliseconds to wait between connecting and the first byte.
        #[arg(long, default_value_t = 0)]
        idle_first_ms: u64,
    },
    /// Send GET requests at a fixed rate over several kept-alive HTTP/1.1
    /// connections and print latency percentiles (JSON).
    Latency {
        #[arg(long)]
        url: Uri,
        /// Requests per second, in total.
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        seconds: u32,
        /// Requests in flight at most, each on a connection of its own.
        #[arg(long, default_value_t = 8)]
        connections: u32,
        /// Open a new connection for every request (and close it after), so
        /// the latency includes the connection's setup.
        #[arg(long)]
        new_connection_per_request: bool,
        /// Connect here rather than to the URL's host.
        #[arg(long)]
        connect: Option<String>,
        #[command(flatten)]
        tls: ClientTls,
    },
    /// Open `connections` connections to an echo server, all at once, then
    /// echo a message on each; print a JSON summary.
    EchoMany {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        connections: usize,
    },
    /// An OpenTelemetry collector's OTLP/HTTP receiver, as small as a test
    /// needs: takes JSON exports at `POST /v1/traces` and answers
    /// `GET /spans` with every span received, each with its resource's
    /// attributes beside its own (attributes as `{key: value}` maps).
    Otlp {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Resolve a name as the system's resolver does (A and AAAA), or with
    /// `--server` ask that server for its A records (over an unconnected
    /// UDP socket, the answer checked to come from the server, then over a
    /// connected one), and print its addresses, one a line.
    Resolve {
        #[arg(long)]
        name: String,
        #[arg(long)]
        server: Option<SocketAddr>,
    },
    /// A DNS server over UDP that knows these names (`NAME=ADDRESS`,
    /// repeatable) and no others.
    Dns {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long = "record", value_parser = record_arg)]
        records: Vec<(String, std::net::Ipv4Addr)>,
    },
}

/// The A records of `name` as `server` answers, asked as both kinds of
/// resolvers ask: musl's (unconnected, checking where the answer came
/// from) and glibc's (connected).
async fn ask_server(server: SocketAddr, name: &str) -> anyhow::Result<Vec<std::net::IpAddr>> {
    use ambit_dns as dns;
    let query = dns::query(0x5151, name).map_err(anyhow::Error::msg)?;
    let socket = dns::udp_socket_for(server).await?;
    socket.send_to(&query, server).await?;
    let mut buffer = [0u8; dns::MAX_UDP_MESSAGE];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer))
        .await
        .context("no answer")??;
    anyhow::ensure!(from == server, "the answer came from {from}, not {server}");
    let (unconnected, _) = dns::addresses(&buffer[..n], 0x5151).map_err(anyhow::Error::msg)?;
    let answer = dns::exchange(server, &query).await?;
    let (connected, _) = dns::addresses(&answer, 0x5151).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        unconnected == connected,
        "{unconnected:?} unconnected, {connected:?} connected"
    );
    Ok(connected.into_iter().map(Into::into).collect())
}

/// `NAME=ADDRESS`.
fn record_arg(text: &str) -> Result<(String, std::net::Ipv4Addr), String> {
    let (name, address) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=ADDRESS"))?;
    let address = address.parse().map_err(|e| format!("{address:?}: {e}"))?;
    Ok((name.to_ascii_lowercase(), address))
}

/// Answers A queries for `records`; any other name is answered NXDOMAIN.
async fn serve_dns(
    listen: SocketAddr,
    records: Vec<(String, std::net::Ipv4Addr)>,
) -> anyhow::Result<()> {
    use ambit_dns as dns;
    let socket = tokio::net::UdpSocket::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    eprintln!("dns serving");
    let mut buffer = [0u8; dns::MAX_UDP_MESSAGE];
    loop {
        let (n, from) = socket.recv_from(&mut buffer).await?;
        let query = &buffer[..n];
        let Some(question) = dns::parse_query(query) else {
            continue;
        };
        let found: Vec<std::net::IpAddr> = records
            .iter()
            .filter(|(name, _)| *name == question.name)
            .map(|(_, address)| (*address).into())
            .collect();
        let known = records.iter().any(|(name, _)| *name == question.name);
        if let Some(mut answer) = dns::answer(query, &found, 5) {
            if !known {
                answer[3] |= 3; // NXDOMAIN
            }
            socket.send_to(&answer, from).await?;
        }
    }
}

/// How an `https` URL is spoken to.
#[derive(clap::Args, Clone, Default)]
struct ClientTls {
    /// The roots (PEM) the server's certificate must chain to.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM), with `--tls-client-key`.
    #[arg(long, requires = "tls_client_key")]
    tls_client_cert: Option<std::path::PathBuf>,
    #[arg(long)]
    tls_client_key: Option<std::path::PathBuf>,
}

impl ClientTls {
    /// A connector for these settings, offering `alpn`.
    fn connector(&self, alpn: &[u8]) -> anyhow::Result<tokio_rustls::TlsConnector> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let ca = self
            .tls_ca
            .as_ref()
            .context("an https URL needs --tls-ca")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)? {
            roots.add(cert?)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        let mut config = match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(cert), Some(key)) => builder.with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>()?,
                PrivateKeyDer::from_pem_file(key)?,
            )?,
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

/// A server's TLS, from its certificate and key files.
fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Serve {
            app,
            version,
            http,
            https,
            tls_cert,
            tls_key,
            echo,
            sink,
            sink_stall_ms,
            answer_delay_ms,
            call,
            call_timeout_ms,
            fail_every,
            fail_status,
            log_requests,
        } => {
            let sinks = Sinks {
                addrs: sink,
                stall: Duration::from_millis(sink_stall_ms),
            };
            let server = Arc::new(HttpServer {
                app,
                version,
                delay: Duration::from_millis(answer_delay_ms),
                calls: call,
                call_timeout: Duration::from_millis(call_timeout_ms),
                failing: Failing {
                    every: fail_every,
                    status: StatusCode::from_u16(fail_status)?,
                    seen: AtomicU64::new(0),
                },
                log_requests,
            });
            let https = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some((https, server_tls(&cert, &key)?)),
                _ => None,
            };
            serve(server, http, https, echo, sinks).await
        }
        Mode::Http {
            url,
            requests,
            http2,
            reconnect,
            interval_ms,
            headers,
            method,
            cookies,
            show_headers,
            connect,
            tls,
        } => {
            let pacing = Pacing {
                reconnect,
                interval: Duration::from_millis(interval_ms),
            };
            let request = RequestShape {
                method,
                headers,
                cookies,
                show_headers,
                connect,
                tls,
            };
            let summary = http_client(&url, requests, http2, pacing, &request).await?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(())
        }
        Mode::EchoStream {
            addr,
            lines,
            interval_ms,
        } => print_json(&echo_stream(addr, lines, Duration::from_millis(interval_ms)).await),
        Mode::Send {
            addr,
            bytes,
            idle_first_ms,
        } => print_json(&send(addr, bytes, Duration::from_millis(idle_first_ms)).await?),
        Mode::EchoMany { addr, connections } => print_json(&echo_many(addr, connections).await),
        Mode::Dns { listen, records } => serve_dns(listen, records).await,
        Mode::Resolve { name, server } => {
            let addresses: Vec<std::net::IpAddr> = match server {
                Some(server) => ask_server(server, &name).await?,
                None => (tokio::net::lookup_host((name.as_str(), 0)).await?)
                    .map(|address| address.ip())
                    .collect(),
            };
            for address in addresses {
                println!("{address}");
            }
            Ok(())
        }
        Mode::Otlp { listen } => serve_otlp(listen).await,
        Mode::Upload { url, bytes, http2 } => print_json(&upload(&url, bytes, http2).await?),
        Mode::Trailers { url, echo } => print_json(&trailers(&url, &echo).await?),
        Mode::Stream { url, messages } => print_json(&stream(&url, messages).await?),
        Mode::Websocket { url, messages } => print_json(&websocket(&url, messages).await?),
        Mode::Latency {
            url,
            rate,
            seconds,
            connections,
            new_connection_per_request,
            connect,
            tls,
        } => {
            let dial = Dial::of(&url, connect, tls)?;
            let load = (rate, seconds, connections, new_connection_per_request);
            print_json(&latency(url, dial, load).await?)
        }
        Mode::Echo { addr, message } => {
            let mut stream = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            stream.write_all(message.as_bytes()).await?;
            stream.shutdown().await?;
            let mut echoed = String::new();
            stream.read_to_string(&mut echoed).await?;
            print!("{echoed}");
            Ok(())
        }
    }
}

async fn serve_otlp(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = listen(addr)?;
    let spans = Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    loop {
        let (stream, _) = listener.accept().await?;
        let spans = spans.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let spans = spans.clone();
                async move {
                    let status = match (request.method().as_str(), request.uri().path()) {
                        ("POST", "/v1/traces") => {
                            let body = request.into_body().collect().await?.to_bytes();
                            match serde_json::from_slice(&body) {
                                Ok(export) => {
                                    let received = otlp_spans(&export);
                                    spans
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .extend(received);
                                    StatusCode::OK
                                }
                                Err(_) => StatusCode::BAD_REQUEST,
                            }
                        }
                        ("GET", "/spans") => {
                            let all = spans.lock().unwrap_or_else(|p| p.into_inner()).clone();
                            let body = serde_json::to_vec(&all).unwrap_or_default();
                            return Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(
                                body,
                            ))));
                        }
                        _ => StatusCode::NOT_FOUND,
                    };
                    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
                    *response.status_mut() = status;
                    Ok(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The spans of an OTLP JSON export, flattened: each span's fields with
/// `attributes` and its resource's as `resource`, both as maps.
fn otlp_spans(export: &serde_json::Value) -> Vec<serde_json::Value> {
    let map = |attributes: &serde_json::Value| -> serde_json::Map<String, serde_json::Value> {
        attributes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    a["key"].as_str()?.to_string(),
                    a["value"]["stringValue"].clone(),
                ))
            })
            .collect()
    };
    let mut spans = Vec::new();
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        let attributes = map(&resource["resource"]["attributes"]);
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let mut span = span.clone();
                span["attributes"] = map(&span["attributes"]).into();
                span["resource"] = attributes.clone().into();
                spans.push(span);
            }
        }
    }
    spans
}

/// Who answers HTTP, how slowly, and whom it calls on the way.
struct HttpServer {
    app: String,
    version: String,
    delay: Duration,
    calls: Vec<Uri>,
    call_timeout: Duration,
    failing: Failing,
    log_requests: bool,
}

/// Which requests a failing replica fails.
struct Failing {
    every: u64,
    status: StatusCode,
    seen: AtomicU64,
}

impl Failing {
    /// Whether this request is one of those failed.
    fn now(&self) -> bool {
        self.every != 0
            && self
                .seen
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(self.every)
    }

    /// The failure, once the request's body is read.
    async fn answer(&self, request: Request<Incoming>) -> Response<AnswerBody> {
        let _ = request.into_body().collect().await;
        let mut response = Response::new(Full::new(Bytes::from_static(b"failing")).boxed());
        *response.status_mut() = self.status;
        response
    }
}

async fn serve(
    server: Arc<HttpServer>,
    http: Vec<SocketAddr>,
    https: Option<(Vec<SocketAddr>, tokio_rustls::TlsAcceptor)>,
    echo: Vec<SocketAddr>,
    sinks: Sinks,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !http.is_empty() || !echo.is_empty() || https.is_some(),
        "give at least one --http, --https or --echo address"
    );
    let mut servers = tokio::task::JoinSet::new();
    for addr in http {
        let listener = listen(addr)?;
        servers.spawn(serve_http(listener, server.clone(), None));
    }
    if let Some((addrs, acceptor)) = https {
        for addr in addrs {
            let listener = listen(addr)?;
            servers.spawn(serve_http(listener, server.clone(), Some(acceptor.clone())));
        }
    }
    for addr in echo {
        let listener = listen(addr)?;
        servers.spawn(serve_echo(listener));
    }
    for addr in sinks.addrs {
        let listener = listen(addr)?;
        servers.spawn(serve_sink(listener, sinks.stall));
    }
    eprintln!("{} {} serving", server.app, server.version);
    match servers.join_next().await {
        Some(result) => result?,
        None => Ok(()),
    }
}

/// A listener whose accept queue holds as many connections as Linux allows
/// by default (`net.core.somaxconn`), as Go's servers ask: a burst of new
/// connections then waits for the app rather than losing SYNs to a full
/// queue, which TCP retries only after one, three, seven seconds.
fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    Ok(socket.listen(4096)?)
}

async fn serve_http(
    listener: TcpListener,
    server: Arc<HttpServer>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let server = server.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let server = server.clone();
                async move {
                    if server.log_requests {
                        let host = req.headers().get(hyper::header::HOST);
                        let host = host.and_then(|h| h.to_str().ok()).unwrap_or("-");
                        eprintln!("request: {} {host} {}", req.method(), req.uri());
                    }
                    // Tokio's timer rounds up to its next millisecond tick:
                    // even a zero sleep would add up to 1 ms to every answer
                    // and quantize the latencies the bench measures.
                    if !server.delay.is_zero() {
                        tokio::time::sleep(server.delay).await;
                    }
                    if server.failing.now() {
                        return Ok::<_, Infallible>(server.failing.answer(req).await);
                    }
                    Ok(answer(req, &server, peer).await)
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let _ = match tls {
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await
                    }
                    Err(_) => return,
                },
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await
                }
            };
        });
    }
}

type AnswerBody = BoxBody<Bytes, Infallible>;

/// `/bytes/N` answers N bytes (for benchmarks); `/ws` is a WebSocket echo; `/stream` echoes
/// each message of its body as it arrives, then ends as gRPC does;
/// `POST /upload` reads the
/// body and answers `<bytes> <crc32>`; `/trailers` answers as a gRPC
/// server does, its status in trailers (`grpc-status: 0`, and `x-echo` as
/// `grpc-message`); anything else says who answered and whom it saw, after
/// calling on the services the server calls.
async fn answer(
    req: Request<Incoming>,
    server: &HttpServer,
    peer: SocketAddr,
) -> Response<AnswerBody> {
    let full = |content_type: &'static str, body: Vec<u8>| {
        Response::builder()
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)).boxed())
            .unwrap_or_default()
    };
    let path = req.uri().path().to_string();
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        return full(
            "application/octet-stream",
            vec![b'x'; n.min(MAX_SIZED_BODY)],
        );
    }
    if path == "/stream" {
        return stream_echo(req.into_body());
    }
    if path == "/upload" {
        let mut body = req.into_body();
        let mut hasher = crc32fast::Hasher::new();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                hasher.update(data);
                total += data.len() as u64;
            }
        }
        return full(
            "text/plain",
            format!("{total} {}\n", hasher.finalize()).into_bytes(),
        );
    }
    if path == "/ws" {
        return websocket_echo(req);
    }
    if path == "/trailers" {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
        if let Some(echo) = req.headers().get("x-echo") {
            trailers.insert("grpc-message", echo.clone());
        }
        let frames = [
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"ok"))),
            Ok(Frame::trailers(trailers)),
        ];
        return Response::builder()
            .header("content-type", "application/grpc")
            .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
            .unwrap_or_default();
    }
    let forwarded: BTreeMap<String, String> = FORWARDED_HEADERS
        .iter()
        .filter_map(|name| {
            let value = req.headers().get(*name)?.to_str().ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect();
    let mut calls = Vec::with_capacity(server.calls.len());
    for url in &server.calls {
        calls.push(call_on(url, &forwarded, server.call_timeout).await);
    }
    let reply = Reply {
        app: server.app.clone(),
        version: server.version.clone(),
        peer: peer.to_string(),
        protocol: format!("{:?}", req.version()),
        path: req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
        forwarded,
        proxied: PROXY_HEADERS
            .iter()
            .filter_map(|name| {
                let value = req.headers().get(*name)?.to_str().ok()?;
                Some((name.to_string(), value.to_string()))
            })
            .collect(),
        calls,
    };
    full(
        "application/json",
        serde_json::to_vec(&reply).unwrap_or_default(),
    )
}

/// The headers Bookinfo's services pass on to the services they call: the
/// signed-in user and the trace context (Istio's distributed-tracing
/// contract: the mesh cannot join the spans of a call and the calls it
/// makes unless the app forwards these).
const FORWARDED_HEADERS: [&str; 13] = [
    "end-user",
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "cookie",
    "authorization",
    "user-agent",
];

/// What a proxy in front tells of the client (Envoy's edge headers).
const PROXY_HEADERS: [&str; 3] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-envoy-external-address",
];

/// GET `url` with `forwarded` headers; its reply, or one naming the failure.
async fn call_on(url: &Uri, forwarded: &BTreeMap<String, String>, timeout: Duration) -> Reply {
    let outcome = tokio::time::timeout(timeout, async {
        let authority = url.authority().context("the URL needs a host and port")?;
        let mut sender = Sender::connect(authority.as_str(), false).await?;
        let mut request = Request::get(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, authority.as_str());
        for (name, value) in forwarded {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = sender.send(request.body(Empty::new())?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status.is_success(), "{status}");
        Ok(serde_json::from_slice::<Reply>(&body)?)
    })
    .await
    .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {timeout:?}")));
    outcome.unwrap_or_else(|error| Reply {
        app: url.to_string(),
        version: format!("failed: {error:#}"),
        peer: String::new(),
        protocol: String::new(),
        path: String::new(),
        forwarded: BTreeMap::new(),
        proxied: BTreeMap::new(),
        calls: Vec::new(),
    })
}

/// Each data frame of `body` echoed as it arrives; then `grpc-status: 0`
/// in trailers, as a gRPC server ends a stream.
fn stream_echo(body: Incoming) -> Response<AnswerBody> {
    let frames = futures_util::stream::unfold(Some(body), |body| async move {
        let mut body = body?;
        loop {
            match body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => return Some((Ok(Frame::data(data)), Some(body))),
                    Err(_) => continue,
                },
                Some(Err(_)) => return None,
                None => {
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                    return Some((Ok::<_, Infallible>(Frame::trailers(trailers)), None));
                }
            }
        }
    });
    Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(frames).boxed())
        .unwrap_or_default()
}

async fn serve_echo(listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let (mut reader, mut writer) = stream.split();
            if tokio::io::copy(&mut reader, &mut writer).await.is_ok() {
                let _ = writer.shutdown().await;
            }
        });
    }
}

/// Sink listeners, and how long each waits before reading.
struct Sinks {
    addrs: Vec<SocketAddr>,
    stall: Duration,
}

async fn serve_sink(listener: TcpListener, stall: Duration) -> anyhow::Result<()> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            tokio::time::sleep(stall).await;
            let mut hasher = crc32fast::Hasher::new();
            let mut buffer = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) => break,
                    Ok(n) => {
                        hasher.update(&buffer[..n]);
                        total += n as u64;
                    }
                    Err(_) => return,
                }
            }
            // Answering after the client's half-close is the point.
            let answer = format!("{total} {}\n", hasher.finalize());
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

async fn echo_stream(addr: SocketAddr, lines: usize, interval: Duration) -> StreamSummary {
    let mut summary = StreamSummary::default();
    let outcome: anyhow::Result<()> = async {
        let stream = TcpStream::connect(addr).await?;
        let (reader, mut writer) = stream.into_split();
        let mut reader = tokio::io::BufReader::new(reader);
        for n in 0..lines {
            let line = format!("line {n}\n");
            writer.write_all(line.as_bytes()).await?;
            summary.sent += 1;
            let mut echoed = String::new();
            tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut echoed)).await??;
            anyhow::ensure!(echoed == line, "sent {line:?}, got back {echoed:?}");
            summary.echoed += 1;
            tokio::time::sleep(interval).await;
        }
        Ok(())
    }
    .await;
    summary.error = outcome.err().map(|error| format!("{error:#}"));
    summary
}

/// Chunks of this size are sent, each made different by its index.
const CHUNK: usize = 1 << 20;

async fn send(
    addr: SocketAddr,
    bytes: u64,
    idle_first: Duration,
) -> anyhow::Result<TransferSummary> {
    let started = std::time::Instant::now();
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tokio::time::sleep(idle_first).await;
    let mut chunk = varied_bytes(CHUNK);
    let mut hasher = crc32fast::Hasher::new();
    let mut sent = 0u64;
    let mut index = 0u64;
    while sent < bytes {
        chunk[..8].copy_from_slice(&index.to_le_bytes());
        let len = usize::try_from((bytes - sent).min(CHUNK as u64))?;
        stream.write_all(&chunk[..len]).await?;
        hasher.update(&chunk[..len]);
        sent += len as u64;
        index += 1;
    }
    stream.shutdown().await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let mut fields = answer.split_whitespace();
    let (Some(count), Some(crc)) = (fields.next(), fields.next()) else {
        anyhow::bail!("the sink answered {answer:?}");
    };
    Ok(TransferSummary {
        seconds: started.elapsed().as_secs_f64(),
        bytes_sent: sent,
        crc_sent: hasher.finalize(),
        bytes_received_by_server: count.parse()?,
        crc_received_by_server: crc.parse()?,
    })
}

/// RFC 6455's GUID, appended to the client's key for the accept value.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn websocket_accept(key: &[u8]) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        &[key, WEBSOCKET_GUID.as_bytes()].concat(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Accepts a WebSocket upgrade, then echoes every message until a close.
fn websocket_echo(mut req: Request<Incoming>) -> Response<AnswerBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder()
            .status(400)
            .body(Full::new(Bytes::from_static(b"not a WebSocket handshake")).boxed())
            .unwrap_or_default();
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        while let Ok((opcode, payload)) = read_frame(&mut io).await {
            // Echoed unmasked, as a server sends; a close is answered and ends it.
            if write_frame(&mut io, opcode, &payload, None).await.is_err() || opcode == 8 {
                break;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-accept", websocket_accept(key.as_bytes()))
        .body(Empty::new().map_err(|never| match never {}).boxed())
        .unwrap_or_default()
}

/// One WebSocket frame: its opcode and unmasked payload.
async fn read_frame(
    io: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await?;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => u64::from(io.read_u16().await?),
        127 => io.read_u64().await?,
        n => u64::from(n),
    };
    let mut mask = [0u8; 4];
    if masked {
        io.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; usize::try_from(len.min(1 << 20)).unwrap_or(0)];
    io.read_exact(&mut payload).await?;
    if masked {
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
    }
    Ok((head[0] & 0x0f, payload))
}

/// Writes a final frame; a client masks with `mask`.
async fn write_frame(
    io: &mut (impl tokio::io::AsyncWrite + Unpin),
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> std::io::Result<()> {
    let mut frame = vec![0x80 | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => frame.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => frame.extend_from_slice(payload),
    }
    io.write_all(&frame).await
}

/// Opens a WebSocket to `url`, sends `messages` text messages and checks
/// each echo, then closes: `{status, accepted, echoed}`.
async fn websocket(url: &Uri, messages: usize) -> anyhow::Result<serde_json::Value> {
    let authority = url
        .authority()
        .context("the URL needs a host and port")?
        .clone();
    let mut stream = TcpStream::connect(authority.as_str()).await?;
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let handshake = format!(
        "GET {} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        url.path()
    );
    stream.write_all(handshake.as_bytes()).await?;
    // The answer's head, byte by byte, so nothing after it is read.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await?);
        anyhow::ensure!(head.len() < 16 << 10, "no end to the answer's head");
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1).unwrap_or("0").parse()?;
    let accepted = head.contains(&format!(
        "sec-websocket-accept: {}",
        websocket_accept(key.as_bytes()).to_ascii_lowercase()
    ));
    let mut echoed = 0;
    if status == 101 {
        for n in 0..messages {
            let message = format!("message {n}");
            write_frame(&mut stream, 1, message.as_bytes(), Some([1, 2, 3, 4])).await?;
            let (opcode, payload) =
                tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut stream)).await??;
            anyhow::ensure!(
                opcode == 1 && payload == message.as_bytes(),
                "sent {message:?}, got {payload:?}"
            );
            echoed += 1;
        }
        write_frame(&mut stream, 8, &[], Some([1, 2, 3, 4])).await?;
        let (opcode, _) = tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut stream)).await??;
        anyhow::ensure!(opcode == 8, "the close was not answered");
    }
    Ok(serde_json::json!({ "status": status, "accepted": accepted, "echoed": echoed }))
}

async fn upload(url: &Uri, bytes: u64, http2: bool) -> anyhow::Result<TransferSummary> {
    let started = std::time::Instant::now();
    let authority = url
        .authority()
        .context("the URL needs a host and port")?
        .clone();
    let stream = TcpStream::connect(authority.as_str()).await?;
    let io = TokioIo::new(stream);
    let (sent_crc, sent) = (
        std::sync::Arc::new(std::sync::Mutex::new(crc32fast::Hasher::new())),
        bytes,
    );
    // Chunks made different by their index, hashed as they go.
    let hasher = sent_crc.clone();
    let chunks = futures_util::stream::unfold(0u64, move |offset| {
        let hasher = hasher.clone();
        async move {
            if offset >= sent {
                return None;
            }
            let mut chunk = varied_bytes(CHUNK);
            chunk[..8].copy_from_slice(&(offset / CHUNK as u64).to_le_bytes());
            let len = usize::try_from((sent - offset).min(CHUNK as u64)).ok()?;
            chunk.truncate(len);
            hasher.lock().ok()?.update(&chunk);
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))),
                offset + len as u64,
            ))
        }
    });
    let request = Request::post(url.clone())
        .header(hyper::header::HOST, authority.as_str())
        .body(StreamBody::new(Box::pin(chunks)))?;
    let response = if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(connection);
        sender.send_request(request).await?
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        sender.send_request(request).await?
    };
    let status = response.status();
    let answer = response.into_body().collect().await?.to_bytes();
    let answer = String::from_utf8_lossy(&answer);
    let mut fields = answer.split_whitespace();
    let (Some(count), Some(crc)) = (fields.next(), fields.next()) else {
        anyhow::bail!("the server answered {status}: {answer:?}");
    };
    let crc_sent = sent_crc
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone()
        .finalize();
    Ok(TransferSummary {
        seconds: started.elapsed().as_secs_f64(),
        bytes_sent: bytes,
        crc_sent,
        bytes_received_by_server: count.parse()?,
        crc_received_by_server: crc.parse()?,
    })
}

/// An h2c connection (HTTP/2 with prior knowledge) to `url`'s authority.
async fn h2c<B>(url: &Uri) -> anyhow::Result<hyper::client::conn::http2::SendRequest<B>>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let authority = url.authority().context("the URL needs a host and port")?;
    let stream = TcpStream::connect(authority.as_str()).await?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn trailers(url: &Uri, echo: &str) -> anyhow::Result<serde_json::Value> {
    let mut sender = h2c(url).await?;
    let request = Request::post(url.clone())
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-echo", echo)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    // A trailers-only answer carries its gRPC status in the headers.
    let in_headers = json_map(
        response
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("grpc-")),
    );
    let collected = response.into_body().collect().await?;
    let trailers = collected
        .trailers()
        .map(|trailers| json_map(trailers.iter()))
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    let mut answer = serde_json::json!({ "status": status, "body": body, "trailers": trailers });
    if !in_headers.is_empty() {
        answer["headers"] = serde_json::Value::Object(in_headers);
    }
    Ok(answer)
}

fn json_map<'a>(
    headers: impl Iterator<
        Item = (
            &'a hyper::header::HeaderName,
            &'a hyper::header::HeaderValue,
        ),
    >,
) -> serde_json::Map<String, serde_json::Value> {
    headers
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.to_string(), serde_json::Value::String(value))
        })
        .collect()
}

async fn stream(url: &Uri, messages: usize) -> anyhow::Result<serde_json::Value> {
    let mut sender = h2c(url).await?;
    let (outgoing, receiver) = tokio::sync::mpsc::channel::<Bytes>(1);
    let body = Box::pin(futures_util::stream::unfold(
        receiver,
        |mut receiver| async move {
            let message = receiver.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(message)), receiver))
        },
    ));
    let request = Request::post(url.clone())
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(body))?;
    let response = sender.send_request(request);
    let mut echoed = 0;
    let mut outgoing = Some(outgoing);
    let first = format!("message {echoed}");
    if let Some(outgoing) = &outgoing {
        outgoing.send(Bytes::from(first)).await?;
    }
    let response = tokio::time::timeout(REQUEST_TIMEOUT, response).await??;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut received = Vec::new();
    let mut trailers = serde_json::Map::new();
    while let Some(frame) = tokio::time::timeout(REQUEST_TIMEOUT, body.frame())
        .await
        .context("a message did not come back in time")?
    {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            received.extend_from_slice(data);
            // A message is whole once all its bytes are back.
            let expected = format!("message {echoed}");
            if received.len() >= expected.len() {
                anyhow::ensure!(
                    received == expected.as_bytes(),
                    "sent {expected:?}, got back {:?}",
                    String::from_utf8_lossy(&received)
                );
                received.clear();
                echoed += 1;
                match (&outgoing, echoed < messages) {
                    (Some(sender), true) => sender.send(format!("message {echoed}").into()).await?,
                    // Ends the request: the server then ends the stream.
                    _ => outgoing = None,
                }
            }
        }
        if let Some(frame_trailers) = frame.trailers_ref() {
            for (name, value) in frame_trailers {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                trailers.insert(name.to_string(), serde_json::Value::String(value));
            }
        }
    }
    Ok(serde_json::json!({ "status": status, "echoed": echoed, "trailers": trailers }))
}

/// Deterministic bytes that do not repeat within the chunk (xorshift).
fn varied_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Each connection sends its share of the requests on a fixed schedule;
/// a request's latency runs from sending it to the end of its response.
async fn latency(
    url: Uri,
    dial: Dial,
    (rate, seconds, connections, new_connection_per_request): (u32, u32, u32, bool),
) -> anyhow::Result<LatencySummary> {
    anyhow::ensure!(
        rate > 0 && connections > 0,
        "--rate and --connections must be above 0"
    );
    let authority = url
        .authority()
        .context("the URL needs a host and port")?
        .to_string();
    let total = u64::from(rate) * u64::from(seconds);
    let period = Duration::from_secs(1) / rate;
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..connections {
        let (url, authority, dial) = (url.clone(), authority.clone(), dial.clone());
        workers.spawn(async move {
            // Kept-alive connections are opened before the clock starts.
            let mut sender = match new_connection_per_request {
                true => None,
                false => Some(dial.open(false).await?),
            };
            let mut samples = Vec::new();
            let mut errors = 0u64;
            for n in (u64::from(worker)..total).step_by(connections as usize) {
                tokio::time::sleep_until(start + period * u32::try_from(n)?).await;
                let request = Request::builder()
                    .uri(url.clone())
                    .header(hyper::header::HOST, authority.as_str())
                    .body(Empty::new())?;
                let sent = std::time::Instant::now();
                let outcome = async {
                    if new_connection_per_request || sender.is_none() {
                        // Replacing the sender closes the old connection.
                        sender = Some(dial.open(false).await?);
                    }
                    let sender = sender.as_mut().context("a connection")?;
                    let response = sender.send(request).await?;
                    let ok = response.status().is_success();
                    response.into_body().collect().await?;
                    anyhow::Ok(ok)
                };
                match tokio::time::timeout(REQUEST_TIMEOUT, outcome).await {
                    Ok(Ok(true)) => samples.push(u64::try_from(sent.elapsed().as_micros())?),
                    _ => {
                        errors += 1;
                        sender = None;
                    }
                }
            }
            anyhow::Ok((samples, errors))
        });
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    let outcomes = workers.join_all().await;
    let elapsed = start.elapsed();
    for outcome in outcomes {
        let (worker_samples, worker_errors) = outcome?;
        samples.extend(worker_samples);
        errors += worker_errors;
    }
    samples.sort_unstable();
    let percentile = |p: f64| {
        samples
            .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(LatencySummary {
        requests: total,
        errors,
        p50_us: percentile(0.50),
        p90_us: percentile(0.90),
        p99_us: percentile(0.99),
        max_us: samples.last().copied().unwrap_or(0),
        elapsed_us: u64::try_from(elapsed.as_micros())?,
    })
}

async fn echo_many(addr: SocketAddr, connections: usize) -> ConcurrencySummary {
    let mut summary = ConcurrencySummary {
        connections,
        ..ConcurrencySummary::default()
    };
    // Every connection is open before any of them is used.
    let mut connecting = tokio::task::JoinSet::new();
    for _ in 0..connections {
        connecting.spawn(TcpStream::connect(addr));
    }
    let mut echoing = tokio::task::JoinSet::new();
    for (n, stream) in connecting.join_all().await.into_iter().enumerate() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                summary
                    .first_error
                    .get_or_insert(format!("connect: {error}"));
                continue;
            }
        };
        echoing.spawn(async move {
            let message = format!("connection {n}");
            stream.write_all(message.as_bytes()).await?;
            stream.shutdown().await?;
            let mut echoed = String::new();
            tokio::time::timeout(REQUEST_TIMEOUT, stream.read_to_string(&mut echoed)).await??;
            anyhow::ensure!(echoed == message, "sent {message:?}, got back {echoed:?}");
            anyhow::Ok(())
        });
    }
    for echo in echoing.join_all().await {
        match echo {
            Ok(()) => summary.completed += 1,
            Err(error) => {
                summary.first_error.get_or_insert(format!("{error:#}"));
            }
        }
    }
    summary
}

/// One connection's way of sending a request.
enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn connect(addr: &str, http2: bool) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Self::handshake(stream, http2).await
    }

    async fn handshake<I>(stream: I, http2: bool) -> anyhow::Result<Self>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(stream);
        Ok(if http2 {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(connection);
            Self::Http2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(connection);
            Self::Http1(sender)
        })
    }

    async fn send(&mut self, request: Request<Empty<Bytes>>) -> hyper::Result<Response<Incoming>> {
        match self {
            // A connection takes the next request only once the last one is done.
            Self::Http1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
            Self::Http2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
        }
    }
}

/// How a client reaches a URL: where it connects, and for `https` the
/// server name and TLS it speaks.
#[derive(Clone)]
struct Dial {
    addr: String,
    /// The server name, and the connectors offering HTTP/1.1 and h2.
    https: Option<Https>,
}

#[derive(Clone)]
struct Https {
    name: rustls::pki_types::ServerName<'static>,
    http1: tokio_rustls::TlsConnector,
    http2: tokio_rustls::TlsConnector,
}

impl Dial {
    fn of(url: &Uri, connect: Option<String>, tls: ClientTls) -> anyhow::Result<Self> {
        let authority = url.authority().context("the URL needs a host")?;
        let https = url.scheme_str() == Some("https");
        let addr = match (connect, authority.port_u16()) {
            (Some(connect), _) => connect,
            (None, Some(_)) => authority.to_string(),
            (None, None) if https => format!("{authority}:443"),
            (None, None) => format!("{authority}:80"),
        };
        let https = match https {
            true => Some(Https {
                name: rustls::pki_types::ServerName::try_from(authority.host().to_string())?,
                http1: tls.connector(b"http/1.1")?,
                http2: tls.connector(b"h2")?,
            }),
            false => None,
        };
        Ok(Self { addr, https })
    }

    /// A new connection, in HTTP/2 (h2c, or ALPN h2) or HTTP/1.1.
    async fn open(&self, http2: bool) -> anyhow::Result<Sender> {
        let Some(https) = &self.https else {
            return Sender::connect(&self.addr, http2).await;
        };
        let connector = if http2 { &https.http2 } else { &https.http1 };
        let stream = TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        let stream = connector
            .connect(https.name.clone(), stream)
            .await
            .context("TLS handshake")?;
        // In TLS 1.3 a server refuses a client's certificate after the
        // client's handshake is done: the first request then fails.
        Sender::handshake(stream, http2).await
    }
}

/// How the client spaces its requests.
struct Pacing {
    reconnect: bool,
    interval: Duration,
}

/// What each request of the HTTP client looks like besides its URL.
struct RequestShape {
    method: hyper::Method,
    headers: Vec<(String, String)>,
    /// Whether cookies set by answers are sent back.
    cookies: bool,
    /// Response headers counted by value.
    show_headers: Vec<String>,
    /// Where to connect, when not to the URL's host.
    connect: Option<String>,
    tls: ClientTls,
}

/// `NAME:VALUE`.
fn header_arg(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not NAME:VALUE"))?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

async fn http_client(
    url: &Uri,
    requests: usize,
    http2: bool,
    pacing: Pacing,
    shape: &RequestShape,
) -> anyhow::Result<HttpSummary> {
    let authority = url
        .authority()
        .context("the URL needs a host and port")?
        .clone();
    let dial = Dial::of(url, shape.connect.clone(), shape.tls.clone())?;
    let mut summary = HttpSummary::default();
    let mut sender: Option<Sender> = None;
    // `name=value` of each cookie kept.
    let mut jar: Vec<String> = Vec::new();
    for _ in 0..requests {
        summary.requests += 1;
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let connection = match sender.take() {
                Some(connection) => connection,
                None => dial.open(http2).await?,
            };
            let connection = sender.insert(connection);
            let host_given = shape
                .headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("host"));
            // HTTP/1.1 in origin form, as browsers and curl send it, so
            // that the Host header names the authority; HTTP/2 takes it
            // from the URL.
            let uri = match http2 {
                true => url.clone(),
                false => url.path_and_query().map_or("/", |p| p.as_str()).parse()?,
            };
            let mut request = Request::builder().method(shape.method.clone()).uri(uri);
            if !host_given {
                request = request.header(hyper::header::HOST, authority.as_str());
            }
            for (name, value) in &shape.headers {
                request = request.header(name.as_str(), value.as_str());
            }
            if !jar.is_empty() {
                request = request.header(hyper::header::COOKIE, jar.join("; "));
            }
            let request = request.body(Empty::new())?;
            let response = connection.send(request).await?;
            if shape.cookies {
                for set in response.headers().get_all(hyper::header::SET_COOKIE) {
                    let set = set.to_str().unwrap_or_default();
                    let pair = set.split(';').next().unwrap_or_default().trim();
                    let name = pair.split('=').next().unwrap_or_default();
                    jar.retain(|kept| kept.split('=').next() != Some(name));
                    jar.push(pair.to_string());
                }
            }
            for name in &shape.show_headers {
                for value in response.headers().get_all(name.as_str()) {
                    let value = value.to_str().unwrap_or("(not text)");
                    *summary
                        .headers
                        .entry(format!("{name}: {value}"))
                        .or_default() += 1;
                }
            }
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        })
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no response within {REQUEST_TIMEOUT:?}")));
        match outcome {
            Ok((status, body)) => record(&mut summary, status, &body),
            Err(error) => {
                sender = None;
                summary.errors += 1;
                summary
                    .first_error
                    .get_or_insert_with(|| format!("{error:#}"));
            }
        }
        if pacing.reconnect {
            sender = None;
        }
        tokio::time::sleep(pacing.interval).await;
    }
    Ok(summary)
}

/// Counts each `name: value` of `headers`.
fn count_headers(counts: &mut BTreeMap<String, usize>, headers: &BTreeMap<String, String>) {
    for (name, value) in headers {
        *counts.entry(format!("{name}: {value}")).or_default() += 1;
    }
}

fn record(summary: &mut HttpSummary, status: u16, body: &[u8]) {
    *summary.statuses.entry(status).or_default() += 1;
    let (version, peer) = match serde_json::from_slice::<Reply>(body) {
        Ok(reply) => {
            let peer_ip = reply
                .peer
                .rsplit_once(':')
                .map_or(reply.peer.clone(), |(ip, _)| ip.to_string());
            *summary.protocols.entry(reply.protocol.clone()).or_default() += 1;
            *summary.paths.entry(reply.path.clone()).or_default() += 1;
            count_headers(&mut summary.proxied, &reply.proxied);
            count_headers(&mut summary.forwarded, &reply.forwarded);
            if !reply.calls.is_empty() {
                *summary.chains.entry(reply.chain()).or_default() += 1;
                summary.one_trace += usize::from(reply.one_trace());
            }
            (format!("{}/{}", reply.app, reply.version), Some(peer_ip))
        }
        Err(_) => ("unknown".to_string(), None),
    };
    *summary.versions.entry(version).or_default() += 1;
    if let Some(peer) = peer {
        *summary.peers.entry(peer).or_default() += 1;
    }
}
