//! The receiving side of HBONE, on a connection whose peer is already
//! authenticated: each CONNECT stream is checked and opened by the caller
//! (`open`), answered, then carried both ways until both sides end.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{TunnelStream, CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};

/// What a CONNECT stream asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The workload address the stream is for (`:authority`).
    pub target: SocketAddr,
    /// The original client's address, from `Forwarded: for=`.
    pub source: Option<IpAddr>,
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

/// Serves one connection until the peer closes it.
pub async fn serve<S, U, F, Fut>(io: S, open: F) -> Result<(), h2::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(ConnectRequest) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<U, Refusal>> + Send + 'static,
{
    let mut connection = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .handshake(io)
        .await?;
    while let Some(accepted) = connection.accept().await {
        let (request, respond) = accepted?;
        tokio::spawn(carry(request, respond, open.clone()));
    }
    Ok(())
}

async fn carry<U, F, Fut>(request: Request<RecvStream>, mut respond: SendResponse<Bytes>, open: F)
where
    U: AsyncRead + AsyncWrite + Unpin,
    F: Fn(ConnectRequest) -> Fut,
    Fut: Future<Output = Result<U, Refusal>>,
{
    let connect = match connect_request(&request) {
        Ok(connect) => connect,
        Err(reason) => {
            tracing::debug!(%reason, "HBONE request refused");
            answer(&mut respond, StatusCode::BAD_REQUEST);
            return;
        }
    };
    let mut upstream = match open(connect).await {
        Ok(upstream) => upstream,
        Err(refusal) => {
            answer(&mut respond, refusal.status());
            return;
        }
    };
    let Ok(send) = respond.send_response(Response::new(()), false) else {
        return;
    };
    let mut tunnel = TunnelStream::new(send, request.into_body());
    if let Err(error) = tokio::io::copy_bidirectional(&mut tunnel, &mut upstream).await {
        tracing::debug!(%error, "HBONE stream ended with an error");
    }
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
    let target = authority
        .as_str()
        .parse()
        .map_err(|_| format!("the :authority {authority} is not ip:port"))?;
    let source = request
        .headers()
        .get_all("forwarded")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(forwarded_for);
    Ok(ConnectRequest { target, source })
}

/// The address in a `Forwarded` header's first `for=` (RFC 7239): bare,
/// quoted, bracketed IPv6, with or without a port.
fn forwarded_for(header: &str) -> Option<IpAddr> {
    let value = header
        .split([',', ';'])
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| name.eq_ignore_ascii_case("for"))?
        .1
        .trim_matches('"');
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
                target: "10.244.1.5:8080".parse().unwrap(),
                source: Some("10.244.0.7".parse().unwrap()),
            })
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
        assert_eq!(
            read(Method::CONNECT, "reviews:9080", None),
            Err("the :authority reviews:9080 is not ip:port".into())
        );
    }
}
