//! The agent's TCP metrics, with Istio's names so its dashboards work.

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Which side of a connection reports it, as Istio labels it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The caller's agent (outbound).
    Source,
    /// The callee's agent (inbound).
    Destination,
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Source => "source",
            Self::Destination => "destination",
        })
    }
}

/// Istio's `connection_security_policy`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SecurityPolicy {
    /// Plain TCP: no CA, or a peer outside the mesh.
    None,
    /// HBONE between agents, both sides authenticated.
    MutualTls,
}

impl EncodeLabelValue for SecurityPolicy {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::None => "none",
            Self::MutualTls => "mutual_tls",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    /// `name.namespace` of the Service called, or `unknown` for a pod address.
    pub destination_service: String,
    pub connection_security_policy: SecurityPolicy,
}

#[derive(Default)]
pub struct Metrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    /// Bytes from the callee to the caller.
    sent: Family<TcpLabels, Counter>,
    /// Bytes from the caller to the callee.
    received: Family<TcpLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "istio_tcp_connections_opened",
            "Total TCP connections opened",
            metrics.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "Total TCP connections closed",
            metrics.closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the caller during the connection",
            metrics.sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the caller during the connection",
            metrics.received.clone(),
        );
        metrics
    }

    pub fn opened(&self, labels: &TcpLabels) {
        self.opened.get_or_create(labels).inc();
    }

    /// A connection ended after carrying these bytes each way.
    pub fn closed(&self, labels: &TcpLabels, from_caller: u64, to_caller: u64) {
        self.closed.get_or_create(labels).inc();
        self.received.get_or_create(labels).inc_by(from_caller);
        self.sent.get_or_create(labels).inc_by(to_caller);
    }
}
