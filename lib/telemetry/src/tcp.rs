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
    /// The host called: a Service's `NAME.NAMESPACE.svc.cluster.local`, a
    /// ServiceEntry's host, or `unknown` for a pod address.
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub connection_security_policy: SecurityPolicy,
    pub response_flags: ResponseFlags,
}

impl TcpLabels {
    pub fn new(
        reporter: Reporter,
        source: Party<'_>,
        destination: Party<'_>,
        destination_service: Option<&DestinationService>,
        connection_security_policy: SecurityPolicy,
    ) -> Self {
        let service_label = |field: fn(&DestinationService) -> &String| {
            destination_service
                .map_or(UNKNOWN, |s| field(s))
                .to_string()
        };
        Self {
            reporter,
            parties: Parties::new(source, destination),
            destination_service: service_label(|s| &s.host),
            destination_service_name: service_label(|s| &s.name),
            destination_service_namespace: service_label(|s| &s.namespace),
            connection_security_policy,
            response_flags: ResponseFlags::None,
        }
    }
}

/// The Service (or ServiceEntry host) a connection was for, as Istio's
/// `destination_service*` labels name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationService {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

impl DestinationService {
    /// A Kubernetes Service, by its cluster-local name.
    pub fn service(name: &str, namespace: &str) -> Self {
        Self {
            host: format!("{name}.{namespace}.svc.cluster.local"),
            name: name.to_string(),
            namespace: namespace.to_string(),
        }
    }

    /// A ServiceEntry's host: Istio names the service by the host itself,
    /// in the entry's namespace.
    pub fn entry(host: &str, namespace: &str) -> Self {
        Self {
            host: host.to_string(),
            name: host.to_string(),
            namespace: namespace.to_string(),
        }
    }

    /// Where Istio reports what REGISTRY_ONLY turns away.
    pub fn black_hole() -> Self {
        Self {
            host: "BlackHoleCluster".to_string(),
            name: "BlackHoleCluster".to_string(),
            namespace: UNKNOWN.to_string(),
        }
    }
}

impl std::fmt::Display for DestinationService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.host)
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

    /// A connection ended after carrying these bytes each way (since it
    /// last reported them).
    pub fn closed(&self, labels: &TcpLabels, from_caller: u64, to_caller: u64) {
        self.closed.get_or_create(labels).inc();
        self.carried(labels, from_caller, to_caller);
    }

    /// An open connection carried these bytes each way since it last
    /// reported them.
    pub fn carried(&self, labels: &TcpLabels, from_caller: u64, to_caller: u64) {
        self.received.get_or_create(labels).inc_by(from_caller);
        self.sent.get_or_create(labels).inc_by(to_caller);
    }
}
