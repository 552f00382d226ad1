//! Wiring of the CA's parts, started from `main`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use ambit_admin::accept::{at_most, Acceptor};
use ambit_admin::{listen, AdminEndpoints, ConfigDump, Readiness, StopSignal};
use ambit_identity::{certificate_request, tls, WorkloadCertificate};
use ambit_mesh_source::MeshHandle;
use ambit_mesh_tls::ca_protocol::{
    encode_message, frame, unframe, CertificateRequest, GrpcCode, CREATE_CERTIFICATE_PATH,
};
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::api::Issuer;
use crate::authenticate::{Authenticator, NodeTokens};
use crate::config::Mode;
use crate::{root, Config};
use ambit_mesh_source::kubernetes::connect;

/// Connections the CA holds at once: every agent of a large cluster
/// renewing together, with room; past it they wait in the kernel's queue.
/// Each node's agent asks from its node's address, a few requests at once.
const MAX_CONNECTIONS: usize = 2048;
const MAX_CONNECTIONS_PER_SOURCE: usize = 64;
/// Calls one connection carries at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest a connection to the CA stays open: a request takes
/// milliseconds, and an agent asks again with a new connection.
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Requests are small: a CSR and an identity.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The CA's own serving certificate is issued at each start.
const SERVING_CERT_TTL: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Runs the CA until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let stop = StopSignal::install()?;
    let running = start(config).await?;
    stop.received().await;
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// A started CA.
pub struct Running {
    pub addr: SocketAddr,
    server: JoinHandle<()>,
    source: JoinHandle<()>,
    /// In Kubernetes: the root's publication into every namespace.
    publisher: Option<JoinHandle<()>>,
    admin: AdminEndpoints,
}

impl Running {
    pub async fn stop(self) {
        self.server.abort();
        self.source.abort();
        if let Some(publisher) = self.publisher {
            publisher.abort();
        }
        self.admin.stop().await;
    }
}

/// Loads (or creates) the root, reads the mesh and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    tracing::info!(?config, "starting ambit-ca");
    let mesh = Arc::new(MeshHandle::default());
    let mut publisher = None;
    let (ca, authenticator, source) = match &config.mode {
        Mode::Standalone {
            root_dir,
            node_tokens,
        } => (
            root::load_or_create(root_dir, &config.trust_domain)?,
            Authenticator::NodeTokens(NodeTokens::read(node_tokens)?),
            ambit_mesh_source::start(&config.source, mesh.clone()).await,
        ),
        Mode::Kubernetes {
            kubeconfig,
            root_secret,
            node_agent_service_account,
        } => {
            let client = connect(kubeconfig.as_deref()).await?;
            let namespace = &config.identity.namespace;
            let ca = root::load_or_create_in_secret(
                &client,
                namespace,
                root_secret,
                &config.trust_domain,
            )
            .await?;
            root::publish_root_cert(&client, namespace, ca.root_pem()).await?;
            // The mesh is read with the same client.
            let source = ambit_mesh_source::start_with_client(client.clone(), mesh.clone()).await;
            publisher = Some(tokio::spawn(root::publish_everywhere(
                client.clone(),
                ca.root_pem().to_string(),
                mesh.clone(),
            )));
            let authenticator =
                Authenticator::token_review(client, namespace, node_agent_service_account);
            (ca, authenticator, source)
        }
    };
    let source = source.context("reading the mesh configuration")?;

    // The CA proves itself to agents (by identity) and to Istio's proxies
    // (by host name) with a certificate of its own root.
    let identity = &config.identity;
    let (key, csr) = certificate_request(identity)?;
    let chain = ca.issue_with_dns_names(&csr, identity, &config.dns_names, SERVING_CERT_TTL)?;
    let serving = WorkloadCertificate::new(identity, &key, &chain)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        tls::server_config_for_anonymous_clients(&serving)?,
    ));
    let listener = listen::tcp_listener(config.listen, listen::BACKLOG, false)
        .and_then(tokio::net::TcpListener::from_std)
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;

    let config_dump: ConfigDump = {
        let (trust_domain, root) = (config.trust_domain.clone(), ca.root_pem().to_string());
        Arc::new(move || serde_json::json!({ "trustDomain": trust_domain, "root": root }))
    };
    let mut registry = Registry::default();
    let issuer = Arc::new(Issuer {
        own_identity: config.identity.clone(),
        ca,
        authenticator,
        mesh,
        ttl: config.workload_cert_ttl,
        requests: Issuer::register(&mut registry),
    });
    let readiness = Readiness::default();
    let mut listener = Acceptor::new(listener, "CA", MAX_CONNECTIONS)
        .per_source(MAX_CONNECTIONS_PER_SOURCE)
        .reporting_to(readiness.clone());
    let server = tokio::spawn(async move {
        loop {
            let accepted = listener.accept().await;
            let (acceptor, issuer, peer) = (acceptor.clone(), issuer.clone(), accepted.peer);
            tokio::spawn(async move {
                let handshake = acceptor.accept(accepted.stream);
                let tls = match at_most(HANDSHAKE_TIMEOUT, handshake).await {
                    Some(Ok(tls)) => tls,
                    Some(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    None => {
                        tracing::debug!(%peer, "TLS handshake not completed in time");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |request| {
                    let issuer = issuer.clone();
                    async move { Ok::<_, Infallible>(respond(&issuer, request).await) }
                });
                // gRPC: HTTP/2, a few calls at a time; the connection's
                // whole life is bounded below.
                let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(hyper_util::rt::TokioTimer::new())
                    .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                    .serve_connection(TokioIo::new(tls), service);
                if let Some(Err(error)) = at_most(CONNECTION_LIFETIME, served).await {
                    tracing::debug!(%peer, %error, "CA connection ended with an error");
                }
                drop(accepted.place);
            });
        }
    });
    ambit_admin::health::ProcessHealth::register(
        &mut registry,
        "ambit-ca",
        env!("CARGO_PKG_VERSION"),
    );
    let admin = AdminEndpoints::start(
        config.admin,
        readiness.clone(),
        Arc::new(registry),
        config_dump,
    )
    .await?;
    readiness.set_ready(true);
    tracing::info!(%addr, identity = %config.identity, "ready");
    Ok(Running {
        addr,
        server,
        source,
        publisher,
        admin,
    })
}

/// Istio's `CreateCertificate`, a unary gRPC call: the answer's message
/// then `grpc-status` in the trailers, or a refusal's status alone in the
/// headers (gRPC's trailers-only answer).
async fn respond(issuer: &Issuer, request: Request<Incoming>) -> Response<GrpcBody> {
    let answer =
        if request.method() != Method::POST || request.uri().path() != CREATE_CERTIFICATE_PATH {
            Err((
                GrpcCode::Unimplemented,
                format!("this CA serves {CREATE_CERTIFICATE_PATH} only"),
            ))
        } else {
            let bearer = request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::to_string);
            match Limited::new(request.into_body(), MAX_REQUEST_BYTES)
                .collect()
                .await
            {
                Ok(body) => {
                    let body = body.to_bytes();
                    match unframe(&body).and_then(CertificateRequest::decode) {
                        Ok(asked) => issuer.answer(bearer.as_deref(), &asked).await,
                        Err(error) => Err((GrpcCode::InvalidArgument, error.to_string())),
                    }
                }
                Err(_) => Err((
                    GrpcCode::ResourceExhausted,
                    format!("requests are at most {MAX_REQUEST_BYTES} bytes"),
                )),
            }
        };
    let grpc = |code: GrpcCode| HeaderValue::from(code as u32);
    let mut response = Response::new(GrpcBody::default());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    match answer {
        Ok(certificates) => {
            issuer.count(GrpcCode::Ok);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", grpc(GrpcCode::Ok));
            *response.body_mut() = GrpcBody {
                message: Some(frame(&certificates.encode())),
                trailers: Some(trailers),
            };
        }
        Err((code, message)) => {
            issuer.count(code);
            let headers = response.headers_mut();
            headers.insert("grpc-status", grpc(code));
            if let Ok(message) = HeaderValue::from_str(&encode_message(&message)) {
                headers.insert("grpc-message", message);
            }
        }
    }
    response
}

/// A unary gRPC answer's body: its message, then its trailers.
#[derive(Default)]
struct GrpcBody {
    message: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.message.take() {
            Some(message) => Some(Frame::data(message)),
            None => self.trailers.take().map(Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers.is_none()
    }
}
