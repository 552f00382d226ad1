//! One HTTP request through the waypoint: route, pick, forward. Local
//! answers are Envoy's: 404 when no route matches (`NR`), 503 when the
//! destination has no endpoint (`UH`) or cannot be reached (`UF`).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use ambit_config::model::{Key, Mesh};
use ambit_route::lb::pick_weighted;
use ambit_route::{Caller, PortTable, Protocol};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::upstream::{Body, BoxError, Upstream};

/// What every request of one stream shares.
pub struct StreamContext {
    pub table: Arc<PortTable>,
    pub mesh: Arc<Mesh>,
    /// The calling pod, when its address and identity agree.
    pub source: Option<Key>,
    /// The waypoint's own address, which upstream connections come from.
    pub local_ip: IpAddr,
    pub upstream: Arc<Upstream>,
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
];

pub async fn handle(
    request: Request<Incoming>,
    context: Arc<StreamContext>,
) -> Result<Response<Body>, Infallible> {
    Ok(match forward(request, &context).await {
        Ok(response) => response,
        Err((status, flag, message)) => local(status, flag, message),
    })
}

type Refusal = (StatusCode, &'static str, String);

async fn forward(
    request: Request<Incoming>,
    context: &StreamContext,
) -> Result<Response<Body>, Refusal> {
    let (mut parts, body) = request.into_parts();
    let workload = context
        .source
        .as_ref()
        .and_then(|key| Some((key, context.mesh.workloads.get(key)?)));
    let caller = Caller {
        namespace: workload.map(|(key, _)| key.namespace.as_str()),
        labels: workload.map(|(_, workload)| &workload.labels),
    };
    let route = context.table.route(&parts, "http", caller).ok_or((
        StatusCode::NOT_FOUND,
        "NR",
        "no route".to_string(),
    ))?;
    let chosen = pick_weighted(
        route.destinations.iter().map(|d| d.weight),
        fastrand::u64(..),
    )
    .ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "NR",
        "no weighted destination".to_string(),
    ))?;
    let backend = &route.destinations[chosen].backend;
    let (endpoint, in_flight) = context.upstream.pick(backend).ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "UH",
        "no healthy upstream".to_string(),
    ))?;
    let http2 = backend.protocol == Protocol::Http2;
    prepare(&mut parts, http2);
    let request = Request::from_parts(parts, body.map_err(BoxError::from).boxed());
    let response = context
        .upstream
        .send(
            &context.mesh,
            context.local_ip,
            endpoint,
            backend.protocol,
            request,
        )
        .await
        .map_err(|error| {
            tracing::debug!(%endpoint, %error, "upstream request failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "UF",
                format!("upstream connect error or disconnect/reset before headers: {error}"),
            )
        })?;
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    // The endpoint counts as busy until its answer has been passed on.
    let body = body
        .map_err(BoxError::from)
        .map_frame(move |frame| {
            let _ = &in_flight;
            frame
        })
        .boxed();
    Ok(Response::from_parts(parts, body))
}

/// The request as the upstream connection carries it: HTTP/1.1 in origin
/// form with `Host`, HTTP/2 in absolute form; hop-by-hop headers dropped;
/// a request id and the forwarded protocol added when absent, as Envoy does.
fn prepare(parts: &mut http::request::Parts, http2: bool) {
    let authority = ambit_route::matching::authority(parts).to_string();
    remove_hop_by_hop(&mut parts.headers);
    let headers = &mut parts.headers;
    if !headers.contains_key("x-request-id") {
        let id = format!("{:032x}", fastrand::u128(..));
        if let Ok(id) = HeaderValue::from_str(&id) {
            headers.insert("x-request-id", id);
        }
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if http2 {
        parts.version = http::Version::HTTP_2;
        if let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(path)
            .build()
        {
            parts.uri = uri;
        }
        parts.headers.remove(header::HOST);
    } else {
        parts.version = http::Version::HTTP_11;
        if let Ok(uri) = path.parse() {
            parts.uri = uri;
        }
        if let Ok(host) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, host);
        }
    }
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    // `te: trailers` is the one value HTTP/2 (gRPC) keeps.
    if headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
}

/// An answer the waypoint makes itself, with Envoy's response flag.
fn local(status: StatusCode, flag: &'static str, message: String) -> Response<Body> {
    tracing::debug!(%status, flag, %message, "answered locally");
    let mut response = Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
