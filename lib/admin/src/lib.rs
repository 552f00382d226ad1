//! What every Ambit binary serves and does around its real work: the admin
//! port (readiness for the kubelet's probe), logging set-up, and waiting for
//! the signal that starts a graceful stop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// Readiness path, as Istio's proxies serve it.
pub const READY_PATH: &str = "/healthz/ready";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("binding the admin listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("installing the handler for {signal}: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
}

/// Whether the process is ready for traffic; cloned into whoever decides.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Sets up `tracing` for a binary: level from `RUST_LOG` (default `info`),
/// plain text on stderr.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The admin HTTP server, bound and ready to serve.
pub struct AdminServer {
    listener: TcpListener,
    readiness: Readiness,
}

impl AdminServer {
    pub async fn bind(addr: SocketAddr, readiness: Readiness) -> Result<Self, AdminError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        Ok(Self {
            listener,
            readiness,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                _ = &mut shutdown => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        continue;
                    }
                },
            };
            let readiness = self.readiness.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let readiness = readiness.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &readiness)) }
                });
                if let Err(error) = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%error, "admin connection ended with an error");
                }
            });
        }
    }
}

fn respond(req: &Request<Incoming>, readiness: &Readiness) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, READY_PATH) if readiness.is_ready() => (StatusCode::OK, "ready\n"),
        (&Method::GET, READY_PATH) => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// Completes on the first SIGTERM (the kubelet's stop) or SIGINT (Ctrl-C).
pub async fn stop_signal() -> Result<(), AdminError> {
    let mut term = signal(SignalKind::terminate()).map_err(|source| AdminError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| AdminError::Signal {
        signal: "SIGINT",
        source,
    })?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
        _ = int.recv() => tracing::info!("SIGINT received, stopping"),
    }
    Ok(())
}
