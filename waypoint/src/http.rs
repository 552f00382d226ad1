//! HTTP through the waypoint: served on each CONNECT stream of an HTTP
//! port ([`serve`]), decided and forwarded per request ([`service`]), to
//! endpoints over kept connections ([`upstream`]), traced ([`spans`]).

pub mod authz;
mod destinations;
mod mirror;
mod origination;
mod replay;
pub mod service;
pub mod spans;
pub mod upstream;

use std::sync::Arc;

use ambit_hbone::TunnelStream;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use service::StreamContext;

/// Serves HTTP/1.1 or HTTP/2 (as the client speaks) on one stream until
/// the client is done with it.
pub async fn serve(stream: TunnelStream, context: Arc<StreamContext>) {
    serve_with(stream, move |request| {
        service::handle(request, context.clone())
    })
    .await;
}

/// Serves HTTP/1.1 or HTTP/2 on `io`, each request answered by `handle`.
pub async fn serve_with<I, F, R>(io: I, handle: F)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(http::Request<Incoming>) -> R + Send + Sync + 'static,
    R: std::future::Future<
            Output = Result<http::Response<upstream::Body>, std::convert::Infallible>,
        > + Send
        + 'static,
{
    let served = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), service_fn(handle))
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}
