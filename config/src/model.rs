//! The mesh as the proxies use it, compiled from Kubernetes objects: which
//! pods are enrolled and which addresses are Services. Pure decisions over
//! one immutable snapshot.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::api::core::{EndpointSliceBody, IntOrString};
use crate::document::Resource;

/// The label that puts a namespace or a pod in the mesh, as in Istio.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
pub const DATAPLANE_MODE_NONE: &str = "none";

pub type Labels = BTreeMap<String, String>;

/// The mesh as the proxies use it, compiled from Kubernetes objects.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshConfig {
    pub namespaces: Vec<NamespaceConfig>,
    pub pods: Vec<PodConfig>,
    pub services: Vec<ServiceConfig>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NamespaceConfig {
    pub name: String,
    pub labels: Labels,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PodConfig {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceConfig {
    pub namespace: String,
    pub name: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// The Service port's name: EndpointSlices name their ports after it.
    pub name: Option<String>,
    pub port: u16,
    pub target_port: u16,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub ready: bool,
}

impl MeshConfig {
    /// Compiles the objects the proxies use; Istio's kinds are not used yet.
    /// A Service is matched to its EndpointSlices by the
    /// `kubernetes.io/service-name` label; its target port is the slice's port
    /// of the same name, else a numeric `targetPort`, else the port itself.
    pub fn from_resources(resources: &[Resource]) -> Self {
        let mut config = Self::default();
        let mut slices: HashMap<(String, String), Vec<&EndpointSliceBody>> = HashMap::new();
        for resource in resources {
            match resource {
                Resource::Namespace(ns) => config.namespaces.push(NamespaceConfig {
                    name: ns.metadata.name.clone(),
                    labels: ns.metadata.labels.clone(),
                }),
                Resource::Pod(pod) => config.pods.push(PodConfig {
                    namespace: pod.namespace().to_string(),
                    name: pod.metadata.name.clone(),
                    labels: pod.metadata.labels.clone(),
                }),
                Resource::EndpointSlice(slice) => {
                    if let Some(service) = slice.metadata.labels.get(SERVICE_NAME_LABEL) {
                        slices
                            .entry((slice.namespace().to_string(), service.clone()))
                            .or_default()
                            .push(&slice.spec);
                    }
                }
                _ => {}
            }
        }
        for resource in resources {
            let Resource::Service(service) = resource else {
                continue;
            };
            let Some(vip) = service
                .spec
                .spec
                .cluster_ip
                .as_deref()
                .and_then(|ip| ip.parse().ok())
            else {
                continue; // headless or IPv6: not routed by VIP
            };
            let key = (
                service.namespace().to_string(),
                service.metadata.name.clone(),
            );
            let slices = slices.get(&key).map(Vec::as_slice).unwrap_or_default();
            let ports = service
                .spec
                .spec
                .ports
                .iter()
                .filter_map(|port| {
                    let from_slice = slices
                        .iter()
                        .flat_map(|slice| &slice.ports)
                        .find(|p| p.name == port.name)
                        .and_then(|p| p.port);
                    let numeric = match port.target_port {
                        Some(IntOrString::Int(target)) => Some(target),
                        _ => None,
                    };
                    Some(ServicePort {
                        name: port.name.clone(),
                        port: u16::try_from(port.port).ok()?,
                        target_port: u16::try_from(from_slice.or(numeric).unwrap_or(port.port))
                            .ok()?,
                    })
                })
                .collect();
            let endpoints = slices
                .iter()
                .filter(|slice| slice.address_type == "IPv4")
                .flat_map(|slice| &slice.endpoints)
                .flat_map(|endpoint| {
                    let ready = endpoint.conditions.is_ready();
                    endpoint.addresses.iter().filter_map(move |ip| {
                        Some(Endpoint {
                            ip: ip.parse().ok()?,
                            ready,
                        })
                    })
                })
                .collect();
            config.services.push(ServiceConfig {
                namespace: key.0,
                name: key.1,
                vip,
                ports,
                endpoints,
            });
        }
        config
    }
}

/// Label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Where an outbound connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Not a Service address: to the destination itself.
    Direct(SocketAddrV4),
    /// A Service port: to one of its ready endpoints.
    Service {
        service: String,
        endpoint: SocketAddrV4,
    },
    /// A Service port with no ready endpoint: refused.
    NoReadyEndpoint { service: String },
}

/// An immutable view of the mesh, swapped whole on every change.
#[derive(Debug, Default)]
pub struct MeshSnapshot {
    config: MeshConfig,
    /// (VIP, port) -> (index into services, target port).
    service_ports: HashMap<(Ipv4Addr, u16), (usize, u16)>,
    /// Round-robin position per service.
    next_endpoint: Vec<AtomicUsize>,
}

impl MeshSnapshot {
    pub fn new(config: MeshConfig) -> Self {
        let service_ports = config
            .services
            .iter()
            .enumerate()
            .flat_map(|(index, service)| {
                service
                    .ports
                    .iter()
                    .map(move |port| ((service.vip, port.port), (index, port.target_port)))
            })
            .collect();
        let next_endpoint = config
            .services
            .iter()
            .map(|_| AtomicUsize::new(0))
            .collect();
        Self {
            config,
            service_ports,
            next_endpoint,
        }
    }

    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    /// Istio's rule: a pod labelled `istio.io/dataplane-mode=ambient` is in;
    /// one labelled `none` is out; otherwise its namespace's label decides.
    pub fn is_enrolled(&self, namespace: &str, name: &str) -> bool {
        let pod_mode = self
            .config
            .pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .and_then(|p| p.labels.get(DATAPLANE_MODE_LABEL));
        match pod_mode.map(String::as_str) {
            Some(DATAPLANE_MODE_AMBIENT) => true,
            Some(DATAPLANE_MODE_NONE) => false,
            _ => self
                .config
                .namespaces
                .iter()
                .find(|ns| ns.name == namespace)
                .and_then(|ns| ns.labels.get(DATAPLANE_MODE_LABEL))
                .is_some_and(|mode| mode == DATAPLANE_MODE_AMBIENT),
        }
    }

    /// Where a connection to `destination` goes; spreads a Service's
    /// connections over its ready endpoints in turn.
    pub fn route(&self, destination: SocketAddrV4) -> Route {
        let Some(&(index, target_port)) = self
            .service_ports
            .get(&(*destination.ip(), destination.port()))
        else {
            return Route::Direct(destination);
        };
        let service = &self.config.services[index];
        let name = format!("{}.{}", service.name, service.namespace);
        let ready: Vec<Ipv4Addr> = service
            .endpoints
            .iter()
            .filter(|e| e.ready)
            .map(|e| e.ip)
            .collect();
        if ready.is_empty() {
            return Route::NoReadyEndpoint { service: name };
        }
        let turn = self.next_endpoint[index].fetch_add(1, Ordering::Relaxed);
        Route::Service {
            service: name,
            endpoint: SocketAddrV4::new(ready[turn % ready.len()], target_port),
        }
    }
}

#[cfg(test)]
mod tests;
