//! Request mirroring, as Envoy shadows: a copy of the request goes to each
//! mirror its route samples, its authority suffixed `-shadow`, fire and
//! forget. The copy's body is fed from the request's as it passes; a
//! mirror that falls behind loses its copy rather than slow the request,
//! and the mirror's answer (or failure) is dropped, so it never changes
//! what the caller gets.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ambit_config::model::Mesh;
use ambit_route::compile::Mirror;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Request;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::service::{attempt_request, empty};
use super::upstream::{Body, BoxError, Upstream};

/// Frames a copy may lag behind the request before it is given up.
const COPY_LAG: usize = 16;
/// Mirrored requests in flight at once, over all routes: past it requests
/// are not mirrored, so a slow mirror cannot pile up work.
const MAX_IN_FLIGHT: usize = 1024;
/// How long a mirrored request may take when its route sets no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Where the copies go from.
pub struct Shadowing {
    pub upstream: Arc<Upstream>,
    pub mesh: Arc<Mesh>,
    pub local_ip: IpAddr,
    /// The route's timeout, which the copies keep to too.
    pub timeout: Option<Duration>,
}

impl Shadowing {
    /// Sends a copy of the request (`head`, as prepared for its upstream,
    /// and `body`) to each of `mirrors` it samples; the body to send on.
    pub fn copy(&self, mirrors: &[Mirror], head: &http::request::Parts, body: Body) -> Body {
        let chosen: Vec<&Mirror> = mirrors
            .iter()
            .filter(|mirror| fastrand::f64() * 100.0 < mirror.percent)
            .collect();
        if chosen.is_empty() {
            return body;
        }
        let bodiless = hyper::body::Body::is_end_stream(&body);
        let (body, mut copies) = match bodiless {
            true => (body, Vec::new()),
            false => tee(body, chosen.len()),
        };
        for mirror in chosen {
            let copy = copies.pop().unwrap_or_else(empty);
            self.send(mirror, head, copy);
        }
        body
    }

    fn send(&self, mirror: &Mirror, head: &http::request::Parts, body: Body) {
        if IN_FLIGHT.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let backend = mirror.backend.clone();
        let http2 = backend.upstream.http2_for(head.version);
        let mut request = attempt_request(head, body);
        let authority = shadow(ambit_route::matching::authority(head));
        // As prepared for the main request, then for the mirror's protocol.
        *request.uri_mut() = head
            .uri
            .path_and_query()
            .and_then(|p| p.as_str().parse().ok())
            .unwrap_or_else(|| http::Uri::from_static("/"));
        if let Ok(host) = HeaderValue::from_str(&authority) {
            request.headers_mut().insert(header::HOST, host);
        }
        let (mut parts, body) = request.into_parts();
        super::service::prepare(&mut parts, http2);
        let request = Request::from_parts(parts, body);
        let upstream = self.upstream.clone();
        let mesh = self.mesh.clone();
        let from = self.local_ip;
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        tokio::spawn(async move {
            let copied = async {
                let (endpoint, _in_flight) = upstream.pick(&backend, None)?;
                let response = upstream
                    .send(&mesh, from, endpoint, (http2, &backend), request)
                    .await
                    .ok()?;
                // Read whole, so its connection can be used again.
                response.into_body().collect().await.ok()
            };
            let _ = tokio::time::timeout(timeout, copied).await;
            IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Envoy's shadow authority: `-shadow` after the host, before any port.
fn shadow(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => format!("{host}-shadow:{port}"),
        _ => format!("{authority}-shadow"),
    }
}

/// `body` and `copies` copies of it, each fed as the body is read.
fn tee(body: Body, copies: usize) -> (Body, Vec<Body>) {
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..copies).map(|_| mpsc::channel(COPY_LAG)).unzip();
    let tee = Tee {
        body,
        senders: senders.into_iter().map(Some).collect(),
    };
    let copies = receivers.into_iter().map(|r| Copy(r).boxed()).collect();
    (tee.boxed(), copies)
}

type Sent = Result<Frame<Bytes>, BoxError>;

struct Tee {
    body: Body,
    senders: Vec<Option<mpsc::Sender<Sent>>>,
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Sent>> {
        let this = self.get_mut();
        let frame = match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        match &frame {
            Some(Ok(frame)) => {
                for sender in &mut this.senders {
                    let copy = match (frame.data_ref(), frame.trailers_ref()) {
                        (Some(data), _) => Frame::data(data.clone()),
                        (None, Some(trailers)) => Frame::trailers(trailers.clone()),
                        (None, None) => continue,
                    };
                    // Full or gone: that copy is given up.
                    if sender
                        .as_ref()
                        .is_some_and(|s| s.try_send(Ok(copy)).is_err())
                    {
                        *sender = None;
                    }
                }
            }
            // The end, or a failure: copies end (a cut copy fails upstream).
            _ => this.senders.clear(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A copy of a body, as a tee feeds it.
struct Copy(mpsc::Receiver<Sent>);

impl http_body::Body for Copy {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Sent>> {
        self.get_mut().0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_authority_keeps_the_port() {
        assert_eq!(shadow("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow("reviews.default.svc"), "reviews.default.svc-shadow");
    }

    #[tokio::test]
    async fn copies_get_the_body_and_a_lagging_one_is_given_up() {
        let chunks: Vec<Sent> = (0..40)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; 10]))))
            .collect();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks)).boxed();
        let (body, mut copies) = tee(body, 2);
        let lagging = copies.pop().unwrap();
        let reading = copies.pop().unwrap();
        let reader = tokio::spawn(async move { reading.collect().await.map(|c| c.to_bytes()) });
        // The request's body is read whole without waiting on the copies.
        let sent = body.collect().await.unwrap().to_bytes();
        assert_eq!(sent.len(), 400);
        // One read as it went, though it may have fallen behind too: what
        // it got is a prefix of the body; the one never read was cut off.
        let copied = reader.await.unwrap().unwrap();
        assert!(sent.starts_with(&copied));
        let lagged = lagging.collect().await.unwrap().to_bytes();
        assert_eq!(lagged.len(), COPY_LAG * 10);
    }
}
