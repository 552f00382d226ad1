//! HTTP through the waypoint: served on each CONNECT stream of an HTTP
//! port ([`serve`]), decided and forwarded per request ([`service`]), to
//! endpoints over kept connections ([`upstream`]).

pub mod authz;
mod destinations;
mod mirror;
mod replay;
pub mod service;
pub mod upstream;

use std::sync::Arc;

use ambit_hbone::TunnelStream;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use service::StreamContext;

/// Serves HTTP/1.1 or HTTP/2 (as the client speaks) on one stream until
/// the client is done with it.
pub async fn serve(stream: TunnelStream, context: Arc<StreamContext>) {
    let service = service_fn(move |request| service::handle(request, context.clone()));
    let served = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "HTTP on an HBONE stream ended with an error");
    }
}
