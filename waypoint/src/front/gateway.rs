//! An ingress gateway's listeners: one per port its Gateways' servers name,
//! opened and closed as the tables change. A plaintext port serves HTTP;
//! on a TLS port the ClientHello's server name picks the server, which
//! ends TLS (SIMPLE, MUTUAL) and serves HTTP inside, or passes the
//! connection on whole (PASSTHROUGH) where its `tls` routes send it. HTTP
//! goes through the waypoint's own pipeline, by the virtual host of the
//! request's host name, into the mesh over HBONE.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_admin::accept::Acceptor;
use ambit_admin::listen;
use ambit_config::model::Key;
use ambit_route::compile::gateway::{
    ClientCertificates, ListenerProtocol, ServerMode, VirtualHost,
};
use ambit_route::compile::WeightedBackend;
use ambit_route::sni::{self, ClientHello};
use ambit_route::{GatewayTables, PortTable};
use ambit_telemetry::http::HttpMetrics;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::credentials::Credentials;
use crate::http::authz::Authz;
use crate::http::service::{Role, StreamContext};
use crate::http::spans::Tracer;
use crate::http::upstream::{Body, Upstream};
use crate::tables::{Current, Tables};

/// Connections a port holds at once, and from any one client address.
const MAX_CONNECTIONS: usize = 16384;
const MAX_CONNECTIONS_PER_SOURCE: usize = 1024;
/// How long a client has to send its ClientHello and finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Virtual hosts a connection keeps its request context for.
const CONTEXTS_PER_CONNECTION: usize = 16;

/// What every connection reads.
pub struct Gateway {
    pub tables: Arc<Tables<GatewayTables>>,
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<HttpMetrics>,
    pub tracer: Option<Arc<Tracer>>,
    pub authz: Arc<Authz>,
    pub credentials: Credentials,
    /// The gateway's own pod, which its requests are reported from.
    pub pod: Key,
    /// Where listeners bind.
    pub bind: IpAddr,
}

/// The listeners open, by port, and the changes of the tables they follow.
pub struct Listeners {
    open: HashMap<u16, AbortOnDrop>,
    changes: tokio::sync::watch::Receiver<Option<Arc<Current<GatewayTables>>>>,
}

impl Listeners {
    /// Listeners on the ports of the tables in force.
    pub async fn open(gateway: &Arc<Gateway>) -> Self {
        let mut listeners = Self {
            open: HashMap::new(),
            changes: gateway.tables.subscribe(),
        };
        listeners.update(gateway).await;
        listeners
    }

    /// Keeps a listener open on each port of the tables in force, until
    /// the task is dropped (a port that cannot be bound is tried again at
    /// the next change).
    pub async fn keep_open(mut self, gateway: Arc<Gateway>) {
        while self.changes.changed().await.is_ok() {
            self.update(&gateway).await;
        }
    }

    /// Opens the ports the tables in force name, closes the others (the
    /// connections they accepted go on).
    async fn update(&mut self, gateway: &Arc<Gateway>) {
        let current = self.changes.borrow_and_update().clone();
        let Some(current) = current else {
            return;
        };
        gateway.credentials.follow(&current.tables);
        let ports: Vec<u16> = current.tables.listeners.keys().copied().collect();
        self.open.retain(|port, _| ports.contains(port));
        for port in ports {
            if self.open.contains_key(&port) {
                continue;
            }
            let address = SocketAddr::new(gateway.bind, port);
            let bound = listen::tcp_listener(address, listen::BACKLOG, false);
            match bound.and_then(TcpListener::from_std) {
                Ok(listener) => {
                    tracing::info!(%address, "gateway listening");
                    let task = tokio::spawn(listen(listener, port, gateway.clone()));
                    self.open.insert(port, AbortOnDrop(task));
                }
                Err(error) => tracing::error!(%address, %error, "gateway port cannot be bound"),
            }
        }
    }
}

/// A listener's task, stopped when its port leaves the tables.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn listen(listener: TcpListener, port: u16, gateway: Arc<Gateway>) {
    let mut acceptor =
        Acceptor::new(listener, "gateway", MAX_CONNECTIONS).per_source(MAX_CONNECTIONS_PER_SOURCE);
    loop {
        let accepted = acceptor.accept().await;
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let _place = accepted.place;
            connection(accepted.stream, accepted.peer, port, gateway).await;
        });
    }
}

/// A client's connection to `port`.
async fn connection(stream: TcpStream, peer: SocketAddr, port: u16, gateway: Arc<Gateway>) {
    let _ = stream.set_nodelay(true);
    let Some(current) = gateway.tables.current() else {
        return;
    };
    let Some(listener) = current.tables.listeners.get(&port) else {
        return;
    };
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let client = Client {
        gateway: gateway.clone(),
        port,
        peer,
        // An address is always a valid header value.
        peer_header: HeaderValue::try_from(peer.ip().to_string())
            .unwrap_or(HeaderValue::from_static("")),
        // IPv4 on a listener of both families shows as IPv4-mapped IPv6.
        local_ip: local.ip().to_canonical(),
        sni: None,
        scheme: "http",
        contexts: Mutex::default(),
    };
    match listener.protocol {
        ListenerProtocol::Http => return serve_http(stream, client).await,
        ListenerProtocol::Tcp => {
            let route = listener.servers.first().map_or(&[][..], |s| &s.tcp_route);
            return carry(stream, route, &client, &current).await;
        }
        ListenerProtocol::Tls => {}
    }
    // One deadline for the ClientHello and the handshake after it.
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let (hello, stream) = match tokio::time::timeout_at(deadline, read_hello(stream)).await {
        Ok(Ok(read)) => read,
        Ok(Err(error)) => {
            tracing::debug!(%peer, port, %error, "not a TLS client");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, port, "no ClientHello in time");
            return;
        }
    };
    let Some(server) = listener.server(hello.as_deref()).cloned() else {
        tracing::debug!(%peer, port, sni = ?hello, "no server for this server name");
        return;
    };
    match &server.mode {
        ServerMode::Passthrough => match server.tls_route(hello.as_deref()) {
            Some(route) => carry(stream, &route.destinations, &client, &current).await,
            None => tracing::debug!(%peer, sni = ?hello, "no tls route for this server name"),
        },
        ServerMode::Terminate(tls) => {
            let config = match gateway.credentials.server_config(tls) {
                Ok(config) => config,
                Err(error) => {
                    tracing::warn!(gateway = %server.gateway, server = %server.name, %error, "TLS credential unusable: connection refused");
                    return;
                }
            };
            let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
            let tls_stream = match tokio::time::timeout_at(deadline, accept).await {
                Ok(Ok(tls_stream)) => tls_stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, port, %error, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            if !tls.subject_alt_names.is_empty() {
                let certificate = tls_stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first());
                // Checked when a certificate is shown (OPTIONAL_MUTUAL
                // lets a client show none).
                let refused = match certificate {
                    Some(certificate) => !names_one_of(certificate, &tls.subject_alt_names),
                    None => tls.clients == ClientCertificates::Required,
                };
                if refused {
                    tracing::debug!(%peer, port, "client certificate names none of subjectAltNames: refused");
                    return;
                }
            }
            let client = Client {
                sni: hello,
                scheme: "https",
                ..client
            };
            serve_http(tls_stream, client).await;
        }
        // A listener is TLS only when its servers are.
        ServerMode::Http { .. } | ServerMode::Tcp => {}
    }
}

/// Whether a client certificate carries one of `names` as a DNS name or
/// URI in its subject alternative names.
fn names_one_of(certificate: &[u8], names: &[String]) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate) else {
        return false;
    };
    let Ok(Some(sans)) = parsed.subject_alternative_name() else {
        return false;
    };
    sans.value.general_names.iter().any(|name| match name {
        GeneralName::DNSName(value) | GeneralName::URI(value) => {
            names.iter().any(|wanted| wanted == value)
        }
        _ => false,
    })
}

/// Reads the ClientHello; returns the server name it asks for and the
/// stream, which gives back what was read before the rest.
async fn read_hello(mut stream: TcpStream) -> std::io::Result<(Option<String>, Prefixed)> {
    let mut read = Vec::with_capacity(2048);
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        read.extend_from_slice(&chunk[..n]);
        match sni::client_hello(&read) {
            ClientHello::Complete(name) => {
                let stream = Prefixed {
                    prefix: Bytes::from(read),
                    inner: stream,
                };
                return Ok((name, stream));
            }
            ClientHello::Incomplete if read.len() <= sni::MAX_CLIENT_HELLO => {}
            _ => return Err(std::io::ErrorKind::InvalidData.into()),
        }
    }
}

/// A stream whose first bytes were read already, and are read again.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let taken = self.prefix.split_to(n);
            buf.put_slice(&taken);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// PASSTHROUGH and TCP: the connection (a ClientHello first, read back)
/// carried whole to an endpoint of one of `destinations`.
async fn carry<S>(
    mut stream: S,
    destinations: &[WeightedBackend],
    client: &Client,
    current: &Current<GatewayTables>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connected = crate::tcp::connect(
        &client.gateway.upstream,
        &current.mesh,
        client.local_ip,
        Some(client.peer.ip()),
        destinations,
    )
    .await;
    match connected {
        Ok((mut upstream, _in_flight)) => crate::tcp::join(&mut stream, &mut upstream).await,
        Err(error) => tracing::debug!(peer = %client.peer, %error, "upstream unreachable"),
    }
}

/// One client connection's HTTP: what its requests share.
struct Client {
    gateway: Arc<Gateway>,
    port: u16,
    peer: SocketAddr,
    /// The client's address, as headers carry it.
    peer_header: HeaderValue,
    local_ip: IpAddr,
    /// The server name a TLS client asked for (its server ends the TLS).
    sni: Option<String>,
    scheme: &'static str,
    /// The request context per virtual host table, made at first use.
    contexts: Mutex<Vec<(Arc<PortTable>, Arc<StreamContext>)>>,
}

async fn serve_http<I>(io: I, client: Client)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = Arc::new(client);
    crate::http::serve_with(io, move |request| {
        let client = client.clone();
        async move { client.handle(request).await }
    })
    .await;
}

impl Client {
    /// A request: to the virtual host of its host name on the server (or
    /// port) it came to, by the tables in force now.
    async fn handle(&self, mut request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let Some(current) = self.gateway.tables.current() else {
            return Ok(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "no route tables yet",
            ));
        };
        let Some(listener) = current.tables.listeners.get(&self.port) else {
            return Ok(plain(StatusCode::NOT_FOUND, "no route"));
        };
        let host = host_name(&request);
        let virtual_host = if listener.protocol == ListenerProtocol::Tls {
            // The server that ended the TLS, by the name the client asked for.
            listener
                .server(self.sni.as_deref())
                .and_then(|server| server.virtual_host(host))
        } else {
            let redirects = listener.server(Some(host)).is_some_and(|server| {
                matches!(
                    server.mode,
                    ServerMode::Http {
                        https_redirect: true
                    }
                )
            });
            if redirects {
                return Ok(to_https(host, &request));
            }
            listener.virtual_host(host)
        };
        let Some(virtual_host) = virtual_host else {
            return Ok(plain(StatusCode::NOT_FOUND, "no route"));
        };
        self.forwarded(request.headers_mut());
        let context = self.context(virtual_host, &current);
        crate::http::service::handle(request, context).await
    }

    /// Sets what Istio's gateway tells upstreams of the client (Envoy with
    /// `use_remote_address`): its address appended to `x-forwarded-for`
    /// and in `x-envoy-external-address`, the scheme it spoke in
    /// `x-forwarded-proto`.
    fn forwarded(&self, headers: &mut http::HeaderMap) {
        let client = &self.peer_header;
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => HeaderValue::from_str(&format!("{earlier},{}", self.peer.ip())).ok(),
            None => Some(client.clone()),
        };
        if let Some(forwarded_for) = forwarded_for {
            headers.insert("x-forwarded-for", forwarded_for);
        }
        headers.insert("x-envoy-external-address", client.clone());
        headers.insert("x-forwarded-proto", HeaderValue::from_static(self.scheme));
    }

    /// The context requests for `virtual_host` are served in: kept per
    /// table, made again when the tables change.
    fn context(
        &self,
        virtual_host: &VirtualHost,
        current: &Current<GatewayTables>,
    ) -> Arc<StreamContext> {
        let mut contexts = self.contexts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, context)) = contexts
            .iter()
            .find(|(table, _)| Arc::ptr_eq(table, &virtual_host.table))
        {
            return context.clone();
        }
        let gateway = &self.gateway;
        let context = Arc::new(StreamContext {
            table: virtual_host.table.clone(),
            mesh: current.mesh.clone(),
            role: Role::Gateway,
            scheme: self.scheme,
            caller: None,
            source: Some(gateway.pod.clone()),
            claimed: None,
            source_ip: Some(self.peer.ip()),
            local_ip: self.local_ip,
            target: SocketAddr::new(self.local_ip, self.port),
            authz: gateway.authz.clone(),
            upstream: gateway.upstream.clone(),
            metrics: gateway.metrics.clone(),
            tracer: gateway.tracer.clone(),
            series: Mutex::default(),
        });
        if contexts.len() >= CONTEXTS_PER_CONNECTION {
            contexts.remove(0);
        }
        contexts.push((virtual_host.table.clone(), context.clone()));
        context
    }
}

/// The host name a request is for (its authority, else `Host`), without
/// the port (virtual hosts match it in any case).
fn host_name<B>(request: &Request<B>) -> &str {
    let authority = request
        .uri()
        .authority()
        .map(|authority| authority.as_str())
        .or_else(|| request.headers().get(header::HOST)?.to_str().ok())
        .unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        // An IPv6 literal's colons are inside brackets.
        Some((host, port)) if !port.contains(']') => host,
        _ => authority,
    };
    host
}

/// `httpsRedirect`: the same request's URL in HTTPS, moved permanently.
fn to_https(host: &str, request: &Request<Incoming>) -> Response<Body> {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut response = plain(StatusCode::MOVED_PERMANENTLY, "");
    if let Ok(location) = HeaderValue::from_str(&format!("https://{host}{path}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn plain(status: StatusCode, message: &'static str) -> Response<Body> {
    let body = Full::new(Bytes::from_static(message.as_bytes()))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
