//! The labels Istio puts on its metrics, so its dashboards and Kiali work
//! on Ambit's unchanged: who reports, the two parties, the security policy.

use std::fmt::Write;

use ambit_config::model::{Key, Workload};
use ambit_identity::Identity;

use crate::baggage::Baggage;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// Which side of a connection reports it, as Istio labels it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The caller's agent (outbound).
    Source,
    /// The callee's agent (inbound).
    Destination,
    /// A waypoint, for the requests it routes (Istio's value for them).
    Waypoint,
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Source => "source",
            Self::Destination => "destination",
            Self::Waypoint => "waypoint",
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

/// One end of a connection: the pod, when the mesh knows it, and the
/// identity it proved, when it proved one; for a caller the mesh does not
/// know, what it told of itself ([`Baggage`]), if anything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Party<'a> {
    pub workload: Option<(&'a Key, &'a Workload)>,
    pub principal: Option<&'a Identity>,
    pub claimed: Option<&'a Baggage>,
}

impl<'a> Party<'a> {
    /// A party known by what the mesh knows of it alone (no claim).
    pub fn known(
        workload: Option<(&'a Key, &'a Workload)>,
        principal: Option<&'a Identity>,
    ) -> Self {
        Self {
            workload,
            principal,
            claimed: None,
        }
    }
}

/// The labels of both ends, in every family: workload, namespace,
/// principal, app, version, canonical service and revision, and cluster
/// of the source, then of the destination (Kiali draws its graph by the
/// canonical ones).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Parties {
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_cluster: String,
}

impl Parties {
    pub fn new(source: Party<'_>, destination: Party<'_>) -> Self {
        let PartyLabels(
            [source_workload, source_workload_namespace, source_principal, source_app, source_version, source_canonical_service, source_canonical_revision, source_cluster],
        ) = PartyLabels::of(source);
        let PartyLabels(
            [destination_workload, destination_workload_namespace, destination_principal, destination_app, destination_version, destination_canonical_service, destination_canonical_revision, destination_cluster],
        ) = PartyLabels::of(destination);
        Self {
            source_workload,
            source_workload_namespace,
            source_principal,
            source_app,
            source_version,
            source_canonical_service,
            source_canonical_revision,
            source_cluster,
            destination_workload,
            destination_workload_namespace,
            destination_principal,
            destination_app,
            destination_version,
            destination_canonical_service,
            destination_canonical_revision,
            destination_cluster,
        }
    }
}

/// The cluster every pod the mesh knows is in: Istio's default cluster
/// name (Ambit meshes one cluster).
pub const CLUSTER: &str = "Kubernetes";

/// A party's labels: workload, namespace, principal, app, version,
/// canonical service, canonical revision, cluster.
struct PartyLabels([String; 8]);

impl PartyLabels {
    fn of(party: Party<'_>) -> Self {
        let unknown = || UNKNOWN.to_string();
        let principal = party.principal.map_or_else(unknown, ToString::to_string);
        let Some((key, workload)) = party.workload else {
            return Self::claimed(party.claimed, principal);
        };
        let label = |names: &[&str]| {
            names
                .iter()
                .find_map(|name| workload.labels.get(*name).cloned())
        };
        let (name, _) = workload_name(key, workload);
        let (canonical_service, canonical_revision) = canonical_names(workload, &name);
        Self([
            name,
            key.namespace.clone(),
            principal,
            label(&["app", "app.kubernetes.io/name"]).unwrap_or_else(unknown),
            label(&["version", "app.kubernetes.io/version"]).unwrap_or_else(unknown),
            canonical_service,
            canonical_revision,
            CLUSTER.to_string(),
        ])
    }

    /// A party the mesh does not know, by what it claimed, as ztunnel
    /// labels a source by its baggage: its service name for app and
    /// canonical service, its version for both revisions.
    fn claimed(claimed: Option<&Baggage>, principal: String) -> Self {
        let value =
            |field: Option<&String>| field.map_or_else(|| UNKNOWN.to_string(), String::clone);
        let Some(claimed) = claimed else {
            let mut labels = [(); 8].map(|()| UNKNOWN.to_string());
            labels[2] = principal;
            return Self(labels);
        };
        Self([
            value(claimed.workload_name.as_ref()),
            value(claimed.namespace.as_ref()),
            principal,
            value(claimed.service_name.as_ref()),
            value(claimed.revision.as_ref()),
            value(claimed.service_name.as_ref()),
            value(claimed.revision.as_ref()),
            value(claimed.cluster.as_ref()),
        ])
    }
}

/// Istio's canonical service and revision of a workload named `name`:
/// its own labels, else the app's, else the name and `latest`.
pub(crate) fn canonical_names(workload: &Workload, name: &str) -> (String, String) {
    let label = |names: &[&str]| {
        names
            .iter()
            .find_map(|label| workload.labels.get(*label).cloned())
    };
    let service = label(&[
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ])
    .unwrap_or_else(|| name.to_string());
    let revision = label(&[
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ])
    .unwrap_or_else(|| "latest".to_string());
    (service, revision)
}

pub const UNKNOWN: &str = "unknown";

/// The workload a pod belongs to, as Istio names it, and whether that is
/// a Deployment: a Deployment's pod `NAME-HASH-SUFFIX`
/// (`pod-template-hash=HASH`) belongs to `NAME`; another pod is its own
/// workload.
pub(crate) fn workload_name(key: &Key, workload: &Workload) -> (String, bool) {
    let owner = workload.labels.get("pod-template-hash").and_then(|hash| {
        let (owner, _suffix) = key.name.rsplit_once('-')?;
        owner.strip_suffix(hash.as_str())?.strip_suffix('-')
    });
    match owner {
        Some(owner) => (owner.to_string(), true),
        None => (key.name.clone(), false),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pod of namespace `shop`.
    pub(crate) fn pod(name: &str, labels: &[(&str, &str)]) -> (Key, Workload) {
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
            istio_sidecar: false,
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
        let party = Party::known(Some((&key, &workload)), Some(&identity));
        let PartyLabels(labels) = PartyLabels::of(party);
        assert_eq!(
            labels,
            [
                "reviews-v2",
                "shop",
                "spiffe://cluster.local/ns/shop/sa/reviews",
                "reviews",
                "v2",
                "reviews",
                "v2",
                "Kubernetes"
            ]
        );
        // A bare pod is its own workload; plaintext has no principal.
        let (key, workload) = pod("debug", &[("app.kubernetes.io/name", "toolbox")]);
        let bare = Party::known(Some((&key, &workload)), None);
        let PartyLabels(labels) = PartyLabels::of(bare);
        assert_eq!(
            labels,
            [
                "debug",
                "shop",
                "unknown",
                "toolbox",
                "unknown",
                "toolbox",
                "latest",
                "Kubernetes"
            ]
        );
        // Istio's own canonical labels win.
        let (key, workload) = pod(
            "cart-0",
            &[
                ("app", "cart"),
                ("service.istio.io/canonical-name", "shop-cart"),
                ("service.istio.io/canonical-revision", "2024"),
            ],
        );
        let canonical = Party::known(Some((&key, &workload)), None);
        let PartyLabels(labels) = PartyLabels::of(canonical);
        assert_eq!(labels[5..7], ["shop-cart", "2024"]);
        let PartyLabels(labels) = PartyLabels::of(Party::default());
        assert_eq!(labels, ["unknown"; 8]);
        // A caller the mesh does not know, by its claim.
        let claim = Baggage::parse("k8s.cluster.name=east,k8s.namespace.name=shop,k8s.deployment.name=cart-v1,service.name=cart,service.version=v1");
        let stranger = Party {
            workload: None,
            principal: Some(&identity),
            claimed: Some(&claim),
        };
        let PartyLabels(labels) = PartyLabels::of(stranger);
        assert_eq!(
            labels,
            [
                "cart-v1",
                "shop",
                "spiffe://cluster.local/ns/shop/sa/reviews",
                "cart",
                "v1",
                "cart",
                "v1",
                "east"
            ]
        );
    }
}
