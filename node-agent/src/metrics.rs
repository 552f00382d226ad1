//! The agent's metrics: Istio's TCP families (`ambit-telemetry`), and how
//! its relays carry plain TCP.

use std::fmt::Write;
use std::time::Duration;

pub use ambit_telemetry::labels::{Party, Reporter, SecurityPolicy};
use ambit_telemetry::tcp::TcpMetrics;
pub use ambit_telemetry::tcp::{DestinationService, ResponseFlags, TcpLabels};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which relay carries a plain TCP connection's bytes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Relay {
    /// Paired in the kernel (`relay_verdict`); it may be taken back later.
    Kernel,
    /// Copied by the agent: the kernel relay is off, its maps are full, or
    /// a socket could not join (its peer had already ended).
    UserSpace,
}

impl EncodeLabelValue for Relay {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Kernel => "kernel",
            Self::UserSpace => "user_space",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayLabels {
    relay: Relay,
}

/// Why the agent turned a connection away before it carried anything.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Refusal {
    /// An AuthorizationPolicy, or PeerAuthentication STRICT, said no.
    PolicyDenied,
    /// A destination outside the registry under REGISTRY_ONLY.
    NoRoute,
    /// The destination (or its agent) could not be connected.
    UpstreamConnectFailed,
    /// A caller's mutual TLS failed: no or an untrusted certificate.
    HandshakeFailed,
    /// An HBONE stream asked for an address that is not the pod's.
    NotThisPod,
    /// A source past its share of a pod's HBONE connections.
    OverSourceLimit,
}

impl Refusal {
    /// The reason a connection refused with Istio's `flags` is counted
    /// under.
    pub fn of(flags: ResponseFlags) -> Option<Self> {
        match flags {
            ResponseFlags::Denied => Some(Self::PolicyDenied),
            ResponseFlags::NoRoute => Some(Self::NoRoute),
            ResponseFlags::ConnectFailed => Some(Self::UpstreamConnectFailed),
            ResponseFlags::None => None,
        }
    }
}

impl EncodeLabelValue for Refusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::PolicyDenied => "policy_denied",
            Self::NoRoute => "no_route",
            Self::UpstreamConnectFailed => "upstream_connect_failed",
            Self::HandshakeFailed => "handshake_failed",
            Self::NotThisPod => "not_this_pod",
            Self::OverSourceLimit => "over_source_limit",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reporter: Reporter,
    reason: Refusal,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpenLabels {
    reporter: Reporter,
}

pub struct Metrics {
    pub tcp: TcpMetrics,
    /// How often open connections' bytes are reported.
    pub tcp_reporting: Duration,
    relayed: Family<RelayLabels, Counter>,
    taken_back: Counter,
    refused: Family<RefusalLabels, Counter>,
    open: Family<OpenLabels, Gauge>,
}

/// A connection counted as open until dropped.
pub struct Open(Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn register(registry: &mut Registry, tcp_reporting: Duration) -> Self {
        let metrics = Self {
            tcp: TcpMetrics::register(registry),
            tcp_reporting,
            relayed: Family::default(),
            taken_back: Counter::default(),
            refused: Family::default(),
            open: Family::default(),
        };
        registry.register(
            "ambit_connections_refused",
            "Connections the agent turned away before they carried anything, \
             by side (reporter) and reason",
            metrics.refused.clone(),
        );
        registry.register(
            "ambit_connections_open",
            "Connections the agent carries now, by side (reporter)",
            metrics.open.clone(),
        );
        registry.register(
            "ambit_relayed_connections",
            "Plain TCP connections by the relay that started carrying them",
            metrics.relayed.clone(),
        );
        registry.register(
            "ambit_relay_takebacks",
            "Connections the agent took back from the kernel relay: bulk \
             transfers and readers that fell behind",
            metrics.taken_back.clone(),
        );
        metrics
    }

    pub fn relayed(&self, relay: Relay) {
        self.relayed.get_or_create(&RelayLabels { relay }).inc();
    }

    pub fn taken_back(&self) {
        self.taken_back.inc();
    }

    /// The counter of connections `reporter` refuses for `reason`, for a
    /// refusal made elsewhere (a listener's).
    pub fn refusals(&self, reporter: Reporter, reason: Refusal) -> Counter {
        self.refused
            .get_or_create(&RefusalLabels { reporter, reason })
            .clone()
    }

    pub fn refused(&self, reporter: Reporter, reason: Refusal) {
        self.refusals(reporter, reason).inc();
    }

    /// Counts a connection `reporter` carries as open while the guard lives.
    pub fn open(&self, reporter: Reporter) -> Open {
        let gauge = self.open.get_or_create(&OpenLabels { reporter }).clone();
        gauge.inc();
        Open(gauge)
    }
}
