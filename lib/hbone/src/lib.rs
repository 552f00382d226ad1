//! HBONE, as Istio ambient defines it: each proxied TCP connection is one
//! HTTP/2 `CONNECT` stream to port 15008, its `:authority` the target
//! `ip:port` (or a Service's `host:port`), a `Forwarded` header naming the original source; many streams
//! share one mutual-TLS connection. The server answers 200 once the target
//! is connected, 401 when policy denies, 503 when the target fails.
//!
//! This crate is the HTTP/2 part over any established (TLS) connection;
//! the TLS and its records come from `ambit-mesh-tls`, the identities from
//! `ambit-identity`.

use std::net::{IpAddr, SocketAddr};

pub mod client;
pub mod pool;
pub mod server;
mod stream;
mod trace;

pub use stream::TunnelStream;
pub use trace::TraceParent;

/// Istio's HBONE port.
pub const HBONE_PORT: u16 = 15008;

/// Where a CONNECT stream goes (its `:authority`): an address, or a
/// Service by its fully qualified name and port, as ztunnel names one
/// across networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Address(SocketAddr),
    Host { name: String, port: u16 },
}

/// Who a stream is for, as its headers tell the peer: in `Forwarded`, the
/// original client (`for=`) and the Service it called (`host=`, as
/// ztunnel sends it), which the peer's metrics then name; in `baggage`,
/// the client's workload (as ztunnel sends it, see
/// `ambit_telemetry::baggage`), for a peer that does not know the client;
/// in `traceparent`, the connection's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller<'a> {
    pub client: IpAddr,
    pub service: Option<&'a str>,
    pub baggage: Option<&'a str>,
    pub trace: Option<TraceParent>,
}

impl From<IpAddr> for Caller<'_> {
    fn from(client: IpAddr) -> Self {
        Caller {
            client,
            service: None,
            baggage: None,
            trace: None,
        }
    }
}

impl Caller<'_> {
    /// The `Forwarded` header's value (RFC 7239).
    fn forwarded(&self) -> String {
        let client = match self.client {
            IpAddr::V4(ip) => format!("for={ip}"),
            IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
        };
        match self.service {
            Some(host) => format!("{client};host={host}"),
            None => client,
        }
    }
}

impl From<SocketAddr> for Target {
    fn from(address: SocketAddr) -> Self {
        Target::Address(address)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Address(address) => address.fmt(f),
            Target::Host { name, port } => write!(f, "{name}:{port}"),
        }
    }
}

/// Flow-control windows sized for bulk transfers between nodes: a stream
/// may have 4 MiB in flight, a connection 16 MiB across its streams.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
const MAX_FRAME: u32 = 1 << 20;
