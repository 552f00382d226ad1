//! The agent's TCP metrics, with Istio's names so its dashboards work.

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use ambit_config::model::{Key, Workload};
use ambit_identity::Identity;

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

/// Istio's `response_flags`, with ztunnel's values for L4.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ResponseFlags {
    None,
    /// Refused by policy (AuthorizationPolicy, or PeerAuthentication STRICT).
    Denied,
    /// The upstream could not be connected.
    ConnectFailed,
}

impl EncodeLabelValue for ResponseFlags {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::None => "-",
            Self::Denied => "DENY",
            Self::ConnectFailed => "CONNECT",
        })
    }
}

/// Labels Istio gives its TCP metrics, so its dashboards and Kiali work.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    /// `name.namespace` of the Service called, or `unknown` for a pod address.
    pub destination_service: String,
    pub connection_security_policy: SecurityPolicy,
    pub response_flags: ResponseFlags,
}

/// One end of a connection: the pod, when the mesh knows it, and the
/// identity it proved, when it proved one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Party<'a> {
    pub workload: Option<(&'a Key, &'a Workload)>,
    pub principal: Option<&'a Identity>,
}

/// A party's labels: workload, namespace, principal, app, version.
struct PartyLabels([String; 5]);

impl PartyLabels {
    fn of(party: Party<'_>) -> Self {
        let unknown = || UNKNOWN.to_string();
        let principal = party.principal.map_or_else(unknown, ToString::to_string);
        let Some((key, workload)) = party.workload else {
            return Self([unknown(), unknown(), principal, unknown(), unknown()]);
        };
        let label = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|name| workload.labels.get(*name).cloned())
                .unwrap_or_else(unknown)
        };
        Self([
            workload_name(key, workload),
            key.namespace.clone(),
            principal,
            label(["app", "app.kubernetes.io/name"]),
            label(["version", "app.kubernetes.io/version"]),
        ])
    }
}

const UNKNOWN: &str = "unknown";

/// The workload a pod belongs to, as Istio names it: a Deployment's pod
/// `NAME-HASH-SUFFIX` (`pod-template-hash=HASH`) belongs to `NAME`;
/// another pod is its own workload.
fn workload_name(key: &Key, workload: &Workload) -> String {
    workload
        .labels
        .get("pod-template-hash")
        .and_then(|hash| {
            let (owner, _suffix) = key.name.rsplit_once('-')?;
            owner.strip_suffix(hash.as_str())?.strip_suffix('-')
        })
        .unwrap_or(&key.name)
        .to_string()
}

impl TcpLabels {
    pub fn new(
        reporter: Reporter,
        source: Party<'_>,
        destination: Party<'_>,
        destination_service: Option<&str>,
        connection_security_policy: SecurityPolicy,
    ) -> Self {
        let PartyLabels(
            [source_workload, source_workload_namespace, source_principal, source_app, source_version],
        ) = PartyLabels::of(source);
        let PartyLabels(
            [destination_workload, destination_workload_namespace, destination_principal, destination_app, destination_version],
        ) = PartyLabels::of(destination);
        Self {
            reporter,
            source_workload,
            source_workload_namespace,
            source_principal,
            source_app,
            source_version,
            destination_workload,
            destination_workload_namespace,
            destination_principal,
            destination_app,
            destination_version,
            destination_service: destination_service.unwrap_or(UNKNOWN).to_string(),
            connection_security_policy,
            response_flags: ResponseFlags::None,
        }
    }
}

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

#[derive(Default)]
pub struct Metrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    /// Bytes from the callee to the caller.
    sent: Family<TcpLabels, Counter>,
    /// Bytes from the caller to the callee.
    received: Family<TcpLabels, Counter>,
    relayed: Family<RelayLabels, Counter>,
    taken_back: Counter,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, labels: &[(&str, &str)]) -> (Key, Workload) {
        let workload = Workload {
            uid: None,
            node: None,
            service_account: "default".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ips: vec![],
            host_network: false,
        };
        (Key::new("shop", name), workload)
    }

    #[test]
    fn parties_are_labelled_as_istio_labels_them() {
        let (key, workload) = pod(
            "reviews-v2-7d8f9c6b5-x2k4q",
            &[
                ("pod-template-hash", "7d8f9c6b5"),
                ("app", "reviews"),
                ("version", "v2"),
            ],
        );
        let identity = Identity::new("cluster.local", "shop", "reviews");
        let party = Party {
            workload: Some((&key, &workload)),
            principal: Some(&identity),
        };
        let PartyLabels(labels) = PartyLabels::of(party);
        assert_eq!(
            labels,
            [
                "reviews-v2",
                "shop",
                "spiffe://cluster.local/ns/shop/sa/reviews",
                "reviews",
                "v2"
            ]
        );
        // A bare pod is its own workload; plaintext has no principal.
        let (key, workload) = pod("debug", &[("app.kubernetes.io/name", "toolbox")]);
        let bare = Party {
            workload: Some((&key, &workload)),
            principal: None,
        };
        let PartyLabels(labels) = PartyLabels::of(bare);
        assert_eq!(labels, ["debug", "shop", "unknown", "toolbox", "unknown"]);
        let PartyLabels(labels) = PartyLabels::of(Party::default());
        assert_eq!(labels, ["unknown"; 5]);
    }
}
