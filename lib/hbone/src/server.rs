//! The receiving side of HBONE, on a connection whose peer is already
//! authenticated: each CONNECT stream is read, then decided, answered and
//! carried by the caller.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{Target, TraceParent, TunnelStream, CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};

/// Streams one connection may carry at once (`SETTINGS_MAX_CONCURRENT_STREAMS`),
/// ztunnel's 200: a client with more opens another connection. Without it,
/// one connection could hold any number of the pod's upstream sockets.
/// Clients that open streams before our SETTINGS arrive (Envoy as a
/// waypoint, handed many tunnels at once on a new connection) see the
/// limit only after their first burst, and streams past it are refused:
/// so it is not lower than ztunnel's, which Istio's waypoints are used to.
pub const MAX_CONCURRENT_STREAMS: u32 = 200;
/// Largest header block a CONNECT request may carry (its own are a few
/// hundred bytes; h2's default would take 16 MiB).
const MAX_HEADER_LIST: u32 = 64 << 10;
/// How long a client may take to send HTTP/2's preface and settings.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a CONNECT stream asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The workload or Service the stream is for (`:authority`).
    pub target: Target,
    /// The original client's address, from `Forwarded: for=`.
    pub source: Option<IpAddr>,
    /// The Service the client called, from `Forwarded: host=`: a claim,
    /// to be checked against the Services the target backs.
    pub service: Option<String>,
    /// The client's `baggage` headers, joined: what it tells of itself.
    pub baggage: Option<String>,
    /// The connection's id, if the client sent a valid one.
    pub traceparent: Option<TraceParent>,
}

/// Why a stream is not opened, as the status its client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Policy denies it: 401.
    Denied,
    /// The target could not be reached: 503.
    Unreachable,
}

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Refusal::Denied => StatusCode::UNAUTHORIZED,
            Refusal::Unreachable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A CONNECT stream waiting for its answer.
pub struct Responder {
    respond: SendResponse<Bytes>,
    body: RecvStream,
}

impl Responder {
    /// Answers 200: the target is connected; bytes may flow.
    pub fn accept(mut self) -> Result<TunnelStream, h2::Error> {
        let send = self.respond.send_response(Response::new(()), false)?;
        Ok(TunnelStream::new(send, self.body))
    }

    /// Answers with the refusal's status and ends the stream.
    pub fn refuse(mut self, refusal: Refusal) {
        answer(&mut self.respond, refusal.status());
    }
}

/// Serves one connection until the peer closes it: each CONNECT stream is
/// read and handed, in a task of its own, to `handle`, which answers it
/// through the [`Responder`] and carries its bytes. Malformed requests are
/// answered 400 here.
pub async fn serve<S, F, Fut>(io: S, handle: F) -> Result<(), h2::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(ConnectRequest, Responder) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake(io);
    let Ok(handshake) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await else {
        return Err(h2::Error::from(h2::Reason::SETTINGS_TIMEOUT));
    };
    let mut connection = handshake?;
    while let Some(accepted) = connection.accept().await {
        let (request, mut respond) = accepted?;
        match connect_request(&request) {
            Ok(connect) => {
                let responder = Responder {
                    respond,
                    body: request.into_body(),
                };
                tokio::spawn(handle(connect, responder));
            }
            Err(reason) => {
                tracing::debug!(%reason, "HBONE request refused");
                answer(&mut respond, StatusCode::BAD_REQUEST);
            }
        }
    }
    Ok(())
}

fn answer(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    let _ = respond.send_response(response, true);
}

/// Reads a CONNECT request: its target and the original source.
pub fn connect_request<T>(request: &Request<T>) -> Result<ConnectRequest, String> {
    if request.method() != Method::CONNECT {
        return Err(format!("{} is not CONNECT", request.method()));
    }
    let authority = request
        .uri()
        .authority()
        .ok_or("CONNECT without an :authority")?;
    let target = match authority.as_str().parse() {
        Ok(address) => Target::Address(address),
        Err(_) => {
            let name = authority.host().to_ascii_lowercase();
            match (authority.port_u16(), is_dns_name(&name)) {
                (Some(port), true) => Target::Host { name, port },
                _ => {
                    return Err(format!(
                        "the :authority {authority} is neither ip:port nor host:port"
                    ))
                }
            }
        }
    };
    let values = |name| {
        request
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
    };
    let baggage: Vec<&str> = values("baggage").collect();
    Ok(ConnectRequest {
        target,
        source: values("forwarded")
            .find_map(|header| forwarded_pair(header, "for").and_then(address)),
        service: values("forwarded")
            .find_map(|header| forwarded_pair(header, "host"))
            .map(str::to_ascii_lowercase),
        baggage: (!baggage.is_empty()).then(|| baggage.join(",")),
        traceparent: values("traceparent").find_map(TraceParent::parse),
    })
}

/// Whether `name` is a DNS name: dot-separated labels of letters, digits
/// and inner hyphens, each at most 63 long, 253 in all.
fn is_dns_name(name: &str) -> bool {
    let label = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label)
}

/// The value of a `Forwarded` header's first `name=` (RFC 7239), unquoted.
fn forwarded_pair<'h>(header: &'h str, name: &str) -> Option<&'h str> {
    let value = header
        .split([',', ';'])
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(found, _)| found.eq_ignore_ascii_case(name))?
        .1
        .trim_matches('"');
    (!value.is_empty()).then_some(value)
}

/// The address in a `for=` value: bare, bracketed IPv6, with or without a
/// port.
fn address(value: &str) -> Option<IpAddr> {
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    value
        .parse()
        .ok()
        .or_else(|| value.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str, forwarded: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(value) = forwarded {
            builder = builder.header("forwarded", value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn connect_requests_name_their_target_and_source() {
        let read = |method, uri, forwarded| connect_request(&request(method, uri, forwarded));
        assert_eq!(
            read(Method::CONNECT, "10.244.1.5:8080", Some("for=10.244.0.7")),
            Ok(ConnectRequest {
                target: Target::Address("10.244.1.5:8080".parse().unwrap()),
                source: Some("10.244.0.7".parse().unwrap()),
                service: None,
                baggage: None,
                traceparent: None,
            })
        );
        // The connection's id, as ztunnel sends it; a malformed one is
        // dropped.
        let traced = |value: &str| {
            let request = Request::builder()
                .method(Method::CONNECT)
                .uri("10.244.1.5:8080")
                .header("traceparent", value)
                .body(())
                .unwrap();
            connect_request(&request).unwrap().traceparent
        };
        let id = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(
            traced(id).map(|trace| trace.to_string()).as_deref(),
            Some(id)
        );
        assert_eq!(traced("00-zz-00f067aa0ba902b7-00"), None);
        // What the client tells of itself, over one header or several.
        let told = Request::builder()
            .method(Method::CONNECT)
            .uri("10.244.1.5:8080")
            .header("baggage", "k8s.namespace.name=shop")
            .header("baggage", "k8s.pod.name=cart-0")
            .body(())
            .unwrap();
        assert_eq!(
            connect_request(&told).unwrap().baggage.as_deref(),
            Some("k8s.namespace.name=shop,k8s.pod.name=cart-0")
        );
        // As ztunnel sends it: the client quoted with its port, and the
        // Service called.
        let forwarded = "for=\"10.244.0.7:40312\";host=Reviews.default.svc.cluster.local";
        let parsed = read(Method::CONNECT, "10.244.1.5:9080", Some(forwarded)).unwrap();
        assert_eq!(
            (parsed.source, parsed.service.as_deref()),
            (
                Some("10.244.0.7".parse().unwrap()),
                Some("reviews.default.svc.cluster.local")
            )
        );
        for (header, source) in [
            ("for=\"[2001:db8::7]:4711\";proto=http", "2001:db8::7"),
            ("proto=https;For=\"10.0.0.1:99\", for=10.0.0.2", "10.0.0.1"),
        ] {
            let read = read(Method::CONNECT, "[2001:db8::5]:80", Some(header)).unwrap();
            assert_eq!(read.source, Some(source.parse().unwrap()), "{header}");
        }
        assert_eq!(
            read(Method::CONNECT, "10.0.0.1:80", None).unwrap().source,
            None
        );
        assert!(read(Method::GET, "http://10.0.0.1:80/", None).is_err());
        // A Service by name, as ztunnel sends across networks.
        assert_eq!(
            read(
                Method::CONNECT,
                "Reviews.Bookinfo.svc.cluster.local:9080",
                None
            )
            .unwrap()
            .target,
            Target::Host {
                name: "reviews.bookinfo.svc.cluster.local".into(),
                port: 9080
            }
        );
        for authority in ["reviews", "-bad-.svc:80", "a..b:80", "10.0.0.1"] {
            assert_eq!(
                read(Method::CONNECT, authority, None),
                Err(format!(
                    "the :authority {authority} is neither ip:port nor host:port"
                )),
                "{authority}"
            );
        }
    }
}
