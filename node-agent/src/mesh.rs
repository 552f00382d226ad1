//! What the agent knows of the mesh: which pods are enrolled and which
//! addresses are Services. Pure decisions over one immutable snapshot.
//!
//! Until the configuration model lands this comes from a small JSON file
//! (`--mesh-config`), watched for changes; the decisions stay the same when
//! Kubernetes becomes the source.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ambit_cni::protocol::PodRef;
use serde::{Deserialize, Serialize};

/// The label that puts a namespace or a pod in the mesh, as in Istio.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
pub const DATAPLANE_MODE_NONE: &str = "none";

pub type Labels = BTreeMap<String, String>;

/// The file's contents.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    #[serde(default)]
    pub namespaces: Vec<NamespaceConfig>,
    #[serde(default)]
    pub pods: Vec<PodConfig>,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PodConfig {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceConfig {
    pub namespace: String,
    pub name: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    pub port: u16,
    pub target_port: u16,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    #[serde(default = "ready_by_default")]
    pub ready: bool,
}

fn ready_by_default() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum MeshConfigError {
    #[error("reading mesh config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("mesh config {path}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("mesh config {path}: {message}")]
    Invalid { path: String, message: String },
}

impl MeshConfig {
    pub fn load(path: &Path) -> Result<Self, MeshConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| MeshConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let config: Self =
            serde_json::from_slice(&text).map_err(|source| MeshConfigError::Parse {
                path: shown.clone(),
                source,
            })?;
        config
            .validate()
            .map_err(|message| MeshConfigError::Invalid {
                path: shown,
                message,
            })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let mut vips = HashMap::new();
        for service in &self.services {
            let name = format!("service {}/{}", service.namespace, service.name);
            for port in &service.ports {
                if port.port == 0 || port.target_port == 0 {
                    return Err(format!(
                        "{name}: ports.port and ports.targetPort must be 1-65535"
                    ));
                }
                if let Some(other) = vips.insert((service.vip, port.port), name.clone()) {
                    return Err(format!(
                        "{name}: {}:{} is also {other}",
                        service.vip, port.port
                    ));
                }
            }
        }
        Ok(())
    }
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

/// How often the mesh config file is checked for changes.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Watches the mesh config file and calls `changed` with every new valid
/// version; an invalid version is reported and the last valid one stays.
pub async fn watch(path: PathBuf, mut changed: impl FnMut(MeshConfig)) {
    let mut seen: Option<(SystemTime, u64)> = stamp(&path);
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match MeshConfig::load(&path) {
            Ok(config) => changed(config),
            Err(error) => {
                tracing::error!(%error, "mesh config change ignored; the previous one stays in force")
            }
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

#[cfg(test)]
mod tests;
