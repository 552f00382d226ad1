//! The Kubernetes kinds the mesh model is built from: Namespace, Pod,
//! Service (core/v1) and EndpointSlice (discovery.k8s.io/v1). Only the fields
//! Ambit uses are typed; the rest of these large objects is ignored, not
//! reported.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::types::check_port_number;
use super::{Issue, Spec};

/// Istio's mesh config: the ConfigMap `istio` (in the root namespace),
/// whose key `mesh` holds MeshConfig as YAML. Ambit reads
/// `outboundTrafficPolicy` from it; Istio's other settings are left alone.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigMapBody {
    #[serde(default)]
    pub data: std::collections::BTreeMap<String, String>,
}

/// The name of Istio's mesh config ConfigMap, and its key.
pub const MESH_CONFIG_MAP: &str = "istio";
const MESH_CONFIG_KEY: &str = "mesh";

/// What a pod of the mesh may reach beyond the registry (Services and
/// ServiceEntries): `outboundTrafficPolicy.mode`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Anything (Istio's default).
    #[default]
    AllowAny,
    /// Only what the registry holds.
    RegistryOnly,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MeshSettings {
    #[serde(default)]
    outbound_traffic_policy: OutboundTrafficPolicy,
}

#[derive(Deserialize, Default)]
struct OutboundTrafficPolicy {
    #[serde(default)]
    mode: OutboundMode,
}

impl ConfigMapBody {
    /// `outboundTrafficPolicy.mode` of the mesh config it holds (Istio's
    /// default when it holds none).
    pub fn outbound_mode(&self) -> Result<OutboundMode, String> {
        let Some(mesh) = self.data.get(MESH_CONFIG_KEY) else {
            return Ok(OutboundMode::default());
        };
        serde_saphyr::from_str::<Option<MeshSettings>>(mesh)
            .map(|settings| settings.unwrap_or_default().outbound_traffic_policy.mode)
            .map_err(|error| error.to_string())
    }
}

impl Spec for ConfigMapBody {
    fn validate(&self) -> Vec<Issue> {
        match self.outbound_mode() {
            Ok(_) => Vec::new(),
            Err(error) => vec![Issue::new(format!("data.{MESH_CONFIG_KEY}"), error)],
        }
    }
}

/// A Namespace: its labels (in the metadata) are all Ambit reads.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceBody {}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct PodBody {
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub node_name: Option<String>,
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub host_network: bool,
    /// Only their names: a container `istio-proxy` is Istio's sidecar.
    #[serde(default)]
    pub containers: Vec<ContainerName>,
    #[serde(default)]
    pub init_containers: Vec<ContainerName>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerName {
    #[serde(default)]
    pub name: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    pub phase: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIp {
    pub ip: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceBody {
    #[serde(default)]
    pub spec: ServiceSpec,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    #[serde(rename = "type")]
    pub service_type: Option<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u32,
    pub target_port: Option<IntOrString>,
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
}

/// A port given by number or by the name of a container port.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum IntOrString {
    Int(u32),
    String(String),
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSliceBody {
    #[serde(default)]
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: EndpointConditions,
    pub target_ref: Option<ObjectReference>,
    pub node_name: Option<String>,
}

/// Absent conditions mean ready and serving, as Kubernetes defines them.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointConditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

impl EndpointConditions {
    pub fn is_ready(&self) -> bool {
        self.ready.unwrap_or(true)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectReference {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    pub name: Option<String>,
    pub port: Option<u32>,
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
}

impl Spec for NamespaceBody {
    fn validate(&self) -> Vec<Issue> {
        Vec::new()
    }
}

impl Spec for PodBody {
    fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        let ips = self
            .status
            .pod_ip
            .iter()
            .map(|ip| ("status.podIP".to_string(), ip));
        let all = self
            .status
            .pod_ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("status.podIPs[{i}].ip"), &ip.ip));
        for (path, ip) in ips.chain(all) {
            if ip.parse::<std::net::IpAddr>().is_err() {
                issues.push(Issue::new(path, format!("{ip:?} is not an IP address")));
            }
        }
        issues
    }
}

impl Spec for ServiceBody {
    fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        let spec = &self.spec;
        let ips = spec
            .cluster_ip
            .iter()
            .map(|ip| ("spec.clusterIP".to_string(), ip));
        let all = spec
            .cluster_ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip));
        for (path, ip) in ips.chain(all) {
            // "None" is a headless Service.
            if ip != "None" && ip.parse::<std::net::IpAddr>().is_err() {
                issues.push(Issue::new(
                    path,
                    format!("{ip:?} is not an IP address or None"),
                ));
            }
        }
        for (i, port) in spec.ports.iter().enumerate() {
            check_port_number(&format!("spec.ports[{i}].port"), port.port, &mut issues);
            if let Some(IntOrString::Int(target)) = port.target_port {
                check_port_number(&format!("spec.ports[{i}].targetPort"), target, &mut issues);
            }
        }
        issues
    }
}

impl Spec for EndpointSliceBody {
    fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        if !matches!(self.address_type.as_str(), "IPv4" | "IPv6" | "FQDN") {
            issues.push(Issue::new(
                "addressType",
                format!("{:?} is not IPv4, IPv6 or FQDN", self.address_type),
            ));
        }
        for (e, endpoint) in self.endpoints.iter().enumerate() {
            for (a, address) in endpoint.addresses.iter().enumerate() {
                if self.address_type != "FQDN" && address.parse::<std::net::IpAddr>().is_err() {
                    issues.push(Issue::new(
                        format!("endpoints[{e}].addresses[{a}]"),
                        format!("{address:?} is not an IP address"),
                    ));
                }
            }
        }
        for (p, port) in self.ports.iter().enumerate() {
            if let Some(number) = port.port {
                check_port_number(&format!("ports[{p}].port"), number, &mut issues);
            }
        }
        issues
    }
}
