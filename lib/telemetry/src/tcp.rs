//! Istio's TCP metrics, as ztunnel reports them: connections opened and
//! closed, bytes each way.

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::labels::{Parties, Party, Reporter, SecurityPolicy, UNKNOWN};

/// Istio's `response_flags`, with ztunnel's values for L4.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ResponseFlags {
    None,
    /// Refused by policy (AuthorizationPolicy, or PeerAuthentication STRICT).
    Denied,
    /// The upstream could not be connected.
    ConnectFailed,
    /// No route: a destination outside the registry under
    /// `outboundTrafficPolicy: REGISTRY_ONLY` (Istio's BlackHoleCluster).
    NoRoute,
}

impl EncodeLabelValue for ResponseFlags {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::None => "-",
            Self::Denied => "DENY",
            Self::ConnectFailed => "CONNECT",
            Self::NoRoute => "NR",
        })
    }
}

/// Labels Istio gives its TCP metrics, so its dashboards and Kiali work.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    #[prometheus(flatten)]
    pub parties: Parties,
    /// `name.namespace` of the Service called, or `unknown` for a pod address.
    pub destination_service: String,
    pub connection_security_policy: SecurityPolicy,
    pub response_flags: ResponseFlags,
}

impl TcpLabels {
    pub fn new(
        reporter: Reporter,
        source: Party<'_>,
        destination: Party<'_>,
        destination_service: Option<&str>,
        connection_security_policy: SecurityPolicy,
    ) -> Self {
        Self {
            reporter,
            parties: Parties::new(source, destination),
            destination_service: destination_service.unwrap_or(UNKNOWN).to_string(),
            connection_security_policy,
            response_flags: ResponseFlags::None,
        }
    }
}

/// The four TCP families.
#[derive(Default)]
pub struct TcpMetrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    /// Bytes from the callee to the caller.
    sent: Family<TcpLabels, Counter>,
    /// Bytes from the caller to the callee.
    received: Family<TcpLabels, Counter>,
}

impl TcpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let families = [
            (
                "istio_tcp_connections_opened",
                "Total TCP connections opened",
                &metrics.opened,
            ),
            (
                "istio_tcp_connections_closed",
                "Total TCP connections closed",
                &metrics.closed,
            ),
            (
                "istio_tcp_sent_bytes",
                "Bytes sent to the caller during the connection",
                &metrics.sent,
            ),
            (
                "istio_tcp_received_bytes",
                "Bytes received from the caller during the connection",
                &metrics.received,
            ),
        ];
        for (name, help, family) in families {
            registry.register(name, help, family.clone());
        }
        metrics
    }

    pub fn opened(&self, labels: &TcpLabels) {
        self.opened.get_or_create(labels).inc();
    }

    /// A connection refused before it carried anything.
    pub fn refused(&self, labels: &TcpLabels) {
        self.opened(labels);
        self.closed(labels, 0, 0);
    }

    /// A connection ended after carrying these bytes each way.
    pub fn closed(&self, labels: &TcpLabels, from_caller: u64, to_caller: u64) {
        self.closed.get_or_create(labels).inc();
        self.received.get_or_create(labels).inc_by(from_caller);
        self.sent.get_or_create(labels).inc_by(to_caller);
    }
}
