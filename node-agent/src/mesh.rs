//! What the agent knows of the mesh: which pods are enrolled and which
//! addresses are Services. Pure decisions over one immutable snapshot.
//!
//! The snapshot is compiled from Kubernetes manifests (Namespaces, Pods,
//! Services, EndpointSlices) in a directory (`--config-dir`), watched for
//! changes; the Kubernetes API becomes another source of the same objects.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ambit_cni::protocol::PodRef;
use ambit_config::api::core::{EndpointSliceBody, IntOrString};
use ambit_config::document::{parse_sources, Resource, Severity};
use serde::{Deserialize, Serialize};

/// The label that puts a namespace or a pod in the mesh, as in Istio.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
pub const DATAPLANE_MODE_NONE: &str = "none";

pub type Labels = BTreeMap<String, String>;

/// The mesh as the agent uses it, compiled from manifests.
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
    /// Compiles the objects the agent uses; Istio's kinds are not used yet.
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

    /// Reads every manifest (`.yaml`, `.yml`, `.json`) in `dir`. Problems are
    /// logged, naming the file, object and field; objects with an error are
    /// left out and everything else applies.
    pub fn load_dir(dir: &Path) -> Result<Self, MeshConfigError> {
        let files = manifest_files(dir)?;
        let mut texts = Vec::new();
        for file in &files {
            texts.push(
                std::fs::read_to_string(file).map_err(|source| MeshConfigError::Read {
                    path: file.display().to_string(),
                    source,
                })?,
            );
        }
        let parsed = parse_sources(&texts.iter().map(String::as_str).collect::<Vec<_>>());
        for problem in &parsed.problems {
            let file = files[problem.source].display();
            match problem.severity {
                Severity::Error => tracing::error!("{file}: {problem}"),
                Severity::Warning => tracing::warn!("{file}: {problem}"),
            }
        }
        Ok(Self::from_resources(&parsed.resources))
    }
}

/// Label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, thiserror::Error)]
pub enum MeshConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// Manifest files in `dir`, in name order.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, MeshConfigError> {
    let read = |source| MeshConfigError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read)?;
    files.retain(|file| {
        file.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
    });
    files.sort();
    Ok(files)
}

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
    pub fn is_enrolled(&self, pod: &PodRef) -> bool {
        let pod_mode = self
            .config
            .pods
            .iter()
            .find(|p| p.namespace == pod.namespace && p.name == pod.name)
            .and_then(|p| p.labels.get(DATAPLANE_MODE_LABEL));
        match pod_mode.map(String::as_str) {
            Some(DATAPLANE_MODE_AMBIENT) => true,
            Some(DATAPLANE_MODE_NONE) => false,
            _ => self
                .config
                .namespaces
                .iter()
                .find(|ns| ns.name == pod.namespace)
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

/// The current snapshot, replaced whole on every change. Readers clone the
/// `Arc` and never hold the lock across I/O.
#[derive(Debug, Default)]
pub struct MeshHandle(RwLock<Arc<MeshSnapshot>>);

impl MeshHandle {
    pub fn new(snapshot: MeshSnapshot) -> Self {
        Self(RwLock::new(Arc::new(snapshot)))
    }

    pub fn snapshot(&self) -> Arc<MeshSnapshot> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn replace(&self, snapshot: MeshSnapshot) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(snapshot);
    }
}

/// How often the config directory is checked for changes.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Watches the config directory and calls `changed` with the mesh each time
/// a file in it is added, changed or removed.
pub async fn watch(dir: PathBuf, mut changed: impl FnMut(MeshConfig)) {
    let mut seen = stamp(&dir);
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = stamp(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        match MeshConfig::load_dir(&dir) {
            Ok(config) => changed(config),
            Err(error) => {
                tracing::error!(%error, "config change ignored; the previous config stays in force")
            }
        }
    }
}

/// Names, sizes and modification times of the manifests in `dir`.
fn stamp(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    manifest_files(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|file| {
            let metadata = std::fs::metadata(&file).ok()?;
            Some((file, metadata.len(), metadata.modified().ok()))
        })
        .collect()
}

#[cfg(test)]
mod tests;
