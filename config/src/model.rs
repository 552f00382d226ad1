//! The mesh model both proxies read: workloads, services with their
//! endpoints, Istio's routing and security objects, and the secondary
//! indexes the data path looks things up by (workload by IP, service by VIP
//! and port, VirtualServices and DestinationRules by host).
//!
//! The model is built from persistent maps: a source applies changes one
//! object at a time, each updating only the index entries that object
//! touches, and publishes a snapshot by cloning the model, which shares all
//! unchanged data and costs next to nothing. Readers keep their snapshot as
//! long as they like; no lock is held across I/O.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use serde::Serialize;

pub use crate::api::core::OutboundMode;
use crate::api::core::{EndpointSliceBody, IntOrString, PodBody, ServiceBody};
use crate::api::networking::{
    DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, VirtualServiceSpec,
};
use crate::api::security::{AuthorizationPolicySpec, PeerAuthenticationSpec};
use crate::document::{qualify_host, Object, ObjectRef, Resource};

mod addresses;
mod update;

pub use addresses::auto_address;

/// The label that puts a namespace or a pod in the mesh, as in Istio.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
pub const DATAPLANE_MODE_NONE: &str = "none";
/// The label naming the waypoint of a namespace, a service or a pod, as in Istio.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// The label naming the namespace of that waypoint when it is another.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// Set to `true` on a Service (or its namespace), ingress gateways send
/// its traffic through its waypoint rather than to its endpoints.
pub const INGRESS_USE_WAYPOINT_LABEL: &str = "istio.io/ingress-use-waypoint";
/// The annotation limiting which namespaces see a Service, as in Istio.
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";
/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub type Labels = BTreeMap<String, String>;

/// Names an object within its kind: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn of<S>(object: &Object<S>) -> Self {
        Self::new(object.namespace(), &object.metadata.name)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub labels: Labels,
}

/// A pod, as routing and policy see it.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub uid: Option<String>,
    pub node: Option<String>,
    pub service_account: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    /// It runs Istio's sidecar (injected: `sidecar.istio.io/status`, or a
    /// container `istio-proxy`, native sidecars included): never enrolled,
    /// the sidecar captures its traffic.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub istio_sidecar: bool,
}

/// What Istio's injector leaves on a pod it gave a sidecar.
const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// The name of Istio's sidecar container.
const SIDECAR_CONTAINER: &str = "istio-proxy";

impl Workload {
    fn from_pod(object: &Object<PodBody>) -> Self {
        let status = &object.spec.status;
        let mut ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .map(|ip| ip.ip.as_str())
            .chain(status.pod_ip.as_deref())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        let spec = &object.spec.spec;
        Self {
            uid: object.metadata.uid.clone(),
            node: spec.node_name.clone(),
            service_account: spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into()),
            labels: object.metadata.labels.clone(),
            ips,
            host_network: spec.host_network,
            istio_sidecar: object
                .metadata
                .annotations
                .contains_key(SIDECAR_STATUS_ANNOTATION)
                || spec
                    .containers
                    .iter()
                    .chain(&spec.init_containers)
                    .any(|c| c.name == SIDECAR_CONTAINER),
        }
    }

    /// The addresses that are the pod's own: a host-network pod shares its
    /// node's, which must not resolve to it.
    fn own_ips(&self) -> &[IpAddr] {
        if self.host_network {
            &[]
        } else {
            &self.ips
        }
    }
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub labels: Labels,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// One per address, in address order.
    pub endpoints: Vec<Endpoint>,
    /// Namespaces that see the Service (`*`: all); Istio's exportTo annotation.
    pub export_to: Vec<String>,
    /// The ports as the Service declares them, resolved again whenever its
    /// EndpointSlices change.
    #[serde(skip)]
    declared_ports: Vec<crate::api::core::ServicePort>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// The Service port's name: EndpointSlices name their ports after it.
    pub name: Option<String>,
    pub port: u16,
    pub target_port: u16,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub ip: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
}

/// An EndpointSlice as the model keeps it: the Service it belongs to and
/// its endpoints.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    pub service: Option<String>,
    pub body: EndpointSliceBody,
}

/// One of Istio's objects, without what only its source knows (file
/// position, resource version).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Config<S> {
    pub labels: Labels,
    pub annotations: Labels,
    /// `metadata.creationTimestamp`; none in a manifest directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub spec: S,
}

impl<S: Clone> Config<S> {
    fn of(object: &Object<S>) -> Arc<Self> {
        Arc::new(Self {
            labels: object.metadata.labels.clone(),
            annotations: object.metadata.annotations.clone(),
            created: object.metadata.creation_timestamp.clone(),
            spec: object.spec.clone(),
        })
    }
}

/// An AuthorizationPolicy, or the denial standing in for one that could not
/// be read: a policy the proxies cannot understand must never widen access.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum AuthorizationPolicy {
    Valid(Arc<Config<AuthorizationPolicySpec>>),
    /// Denies every connection to every workload of its namespace until the
    /// object is fixed (its selector cannot be trusted either).
    Invalid {
        problems: Vec<String>,
    },
}

/// A PeerAuthentication, or the STRICT mode standing in for one that could
/// not be read and was never read before: it may have been the policy
/// meant to require mutual TLS.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum PeerAuthentication {
    Valid(Arc<Config<PeerAuthenticationSpec>>),
    /// Makes every workload of its namespace STRICT, over any other policy
    /// there (its selector cannot be trusted either); in the root
    /// namespace, the mesh-wide mode.
    Invalid {
        problems: Vec<String>,
    },
}

/// The mesh: every object the proxies use and the indexes over them. Cheap
/// to clone; a clone is a consistent snapshot.
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Mesh {
    pub namespaces: OrdMap<String, Namespace>,
    pub workloads: OrdMap<Key, Workload>,
    pub services: OrdMap<Key, Service>,
    pub endpoint_slices: OrdMap<Key, EndpointSlice>,
    pub virtual_services: OrdMap<Key, Arc<Config<VirtualServiceSpec>>>,
    pub destination_rules: OrdMap<Key, Arc<Config<DestinationRuleSpec>>>,
    pub service_entries: OrdMap<Key, Arc<Config<ServiceEntrySpec>>>,
    pub gateways: OrdMap<Key, Arc<Config<GatewaySpec>>>,
    pub authorization_policies: OrdMap<Key, AuthorizationPolicy>,
    pub peer_authentications: OrdMap<Key, PeerAuthentication>,
    /// Istio's mesh configs (the ConfigMap `istio`, by namespace): what
    /// Ambit reads of them.
    pub mesh_configs: OrdMap<Key, OutboundMode>,
    #[serde(skip)]
    indexes: Indexes,
}

/// Lookups the data path makes, kept in step with the objects by
/// [`Mesh::apply`] and [`Mesh::delete`].
#[derive(Debug, Clone, Default, PartialEq)]
struct Indexes {
    workload_by_ip: OrdMap<IpAddr, OrdSet<Key>>,
    /// (VIP, port) -> Service and its target port.
    service_by_vip: OrdMap<(IpAddr, u16), OrdSet<(Key, u16)>>,
    slices_by_service: OrdMap<Key, OrdSet<Key>>,
    virtual_services_by_host: OrdMap<String, OrdSet<Key>>,
    destination_rules_by_host: OrdMap<String, OrdSet<Key>>,
    /// The addresses given to ServiceEntry hosts that have none.
    auto_addresses: addresses::AutoAddresses,
    /// The `addresses` of the ServiceEntries that have some, read once.
    entry_blocks: OrdMap<Key, Vec<ipnet::IpNet>>,
    /// Changes are being made together: `auto_addresses` waits for the end.
    in_batch: bool,
}

/// A waypoint: the Gateway (`istio.io/use-waypoint` names it) in a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaypointRef(pub Key);

impl Mesh {
    /// The model of `resources`, as a source applying them one by one builds it.
    pub fn from_resources(resources: impl IntoIterator<Item = Resource>) -> Self {
        let mut mesh = Self::default();
        mesh.in_batch(|mesh| {
            for resource in resources {
                mesh.apply(resource);
            }
        });
        mesh
    }

    /// Istio's rule: a pod labelled `istio.io/dataplane-mode=ambient` is in;
    /// one labelled `none` is out; otherwise its namespace's label decides.
    /// A pod with Istio's sidecar is never in, whatever its labels say.
    pub fn is_enrolled(&self, namespace: &str, name: &str) -> bool {
        let workload = self.workloads.get(&Key::new(namespace, name));
        if workload.is_some_and(|w| w.istio_sidecar) {
            return false;
        }
        let pod_mode = workload.and_then(|w| w.labels.get(DATAPLANE_MODE_LABEL));
        match pod_mode.map(String::as_str) {
            Some(DATAPLANE_MODE_AMBIENT) => true,
            Some(DATAPLANE_MODE_NONE) => false,
            _ => self
                .namespaces
                .get(namespace)
                .and_then(|ns| ns.labels.get(DATAPLANE_MODE_LABEL))
                .is_some_and(|mode| mode == DATAPLANE_MODE_AMBIENT),
        }
    }

    /// The pod that owns `ip`. Two pods claiming one address (a stale
    /// object during a restart) resolve to the first by name.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<(&Key, &Workload)> {
        let key = self.indexes.workload_by_ip.get(&ip)?.get_min()?;
        Some((key, self.workloads.get(key)?))
    }

    /// The Service at `vip:port` and the port its endpoints listen on.
    pub fn service_by_vip(&self, vip: IpAddr, port: u16) -> Option<(&Key, &Service, u16)> {
        let (key, target_port) = self.indexes.service_by_vip.get(&(vip, port))?.get_min()?;
        Some((key, self.services.get(key)?, *target_port))
    }

    /// The VirtualServices for `host` (fully qualified) that a workload in
    /// `from_namespace` sees, by `exportTo`, in name order.
    pub fn virtual_services_for(
        &self,
        host: &str,
        from_namespace: &str,
    ) -> Vec<(&Key, &Config<VirtualServiceSpec>)> {
        visible(
            &self.indexes.virtual_services_by_host,
            &self.virtual_services,
            host,
            from_namespace,
            |config| &config.spec.export_to,
        )
    }

    /// The VirtualService `key` as a delegate of a root VirtualService in
    /// `from_namespace`: as Istio takes delegates, one without hosts,
    /// exported to that namespace.
    pub fn delegate(
        &self,
        key: &Key,
        from_namespace: &str,
    ) -> Option<(&Key, &Config<VirtualServiceSpec>)> {
        let (key, config) = self.virtual_services.get_key_value(key)?;
        (config.spec.hosts.is_empty()
            && exported_to(&config.spec.export_to, &key.namespace, from_namespace))
        .then_some((key, config.as_ref()))
    }

    /// The DestinationRules for `host` that a workload in `from_namespace` sees.
    pub fn destination_rules_for(
        &self,
        host: &str,
        from_namespace: &str,
    ) -> Vec<(&Key, &Config<DestinationRuleSpec>)> {
        visible(
            &self.indexes.destination_rules_by_host,
            &self.destination_rules,
            host,
            from_namespace,
            |config| &config.spec.export_to,
        )
    }

    /// Whether a workload in `from_namespace` sees the Service `key`.
    pub fn service_visible(&self, key: &Key, from_namespace: &str) -> bool {
        self.services
            .get(key)
            .is_some_and(|s| exported_to(&s.export_to, &key.namespace, from_namespace))
    }

    /// The ServiceEntry a workload in `from_namespace` sees (by
    /// `exportTo`) whose `addresses` hold `ip` (as an address or a CIDR)
    /// and which declares `port`: the narrowest address first, then the
    /// first by namespace and name.
    pub fn service_entry_at(
        &self,
        ip: IpAddr,
        port: u16,
        from_namespace: &str,
    ) -> Option<EntryAt<'_>> {
        // An address Ambit gave (a /32), then the entries' own blocks.
        let given = match ip {
            IpAddr::V4(ip) => self.indexes.auto_addresses.entries.get(&ip),
            IpAddr::V6(_) => None,
        };
        let given = given.into_iter().flatten().map(|key| (32, key));
        let listed = self
            .indexes
            .entry_blocks
            .iter()
            .filter_map(|(key, blocks)| {
                let holding = blocks.iter().filter(|block| block.contains(&ip));
                Some((holding.map(ipnet::IpNet::prefix_len).max()?, key))
            });
        let mut best: Option<(u8, EntryAt<'_>)> = None;
        for (prefix, key) in given.chain(listed) {
            let Some(entry) = self.service_entries.get(key) else {
                continue;
            };
            if !exported_to(&entry.spec.export_to, &key.namespace, from_namespace) {
                continue;
            }
            let Some(port) = entry
                .spec
                .ports
                .iter()
                .find(|p| p.number == u32::from(port))
            else {
                continue;
            };
            let better = best
                .as_ref()
                .is_none_or(|(best, found)| prefix > *best || (prefix == *best && key < found.key));
            if better {
                best = Some((prefix, EntryAt { key, entry, port }));
            }
        }
        best.map(|(_, found)| found)
    }

    /// The address Ambit gave the ServiceEntry host `host`, if it gave one.
    pub fn auto_address_of(&self, host: &str) -> Option<Ipv4Addr> {
        let by_host = &self.indexes.auto_addresses.by_host;
        match by_host.get(host) {
            Some(address) => Some(*address),
            None => by_host.get(&host.to_ascii_lowercase()).copied(),
        }
    }

    /// The mesh-wide `outboundTrafficPolicy.mode`: the mesh config's in
    /// the root namespace, else Istio's default, ALLOW_ANY.
    pub fn outbound_mode(&self, root_namespace: &str) -> OutboundMode {
        let key = Key::new(root_namespace, crate::api::core::MESH_CONFIG_MAP);
        self.mesh_configs.get(&key).copied().unwrap_or_default()
    }

    /// The addresses of `name` as the mesh knows it, for a pod in
    /// `from_namespace`: a Service's VIPs (`NAME.NAMESPACE.svc.cluster.local`,
    /// both families of a dual-stack one), a ServiceEntry host's own
    /// addresses, or the one Ambit gives a host of an entry without any;
    /// none when the mesh does not know the name.
    pub fn host_addresses(&self, name: &str, from_namespace: &str) -> Option<Vec<IpAddr>> {
        if let Some((key, service)) = self.service_named(name) {
            if self.service_visible(key, from_namespace) {
                return Some(service.vips.clone());
            }
        }
        let (_, entry, host) = self.service_entry_for_host(name, from_namespace)?;
        let spec = &entry.spec;
        match spec.addresses.is_empty() {
            // A wildcard has an address (one for every name under it) only
            // when a waypoint resolves each request's host; else the names
            // under it are the DNS's to answer.
            true => self
                .auto_address_of(host)
                .map(|address| vec![address.into()]),
            false => Some(self.service_entry_addresses(spec)),
        }
    }

    /// The Services of `namespace`, by name (a Service selects pods of its
    /// own namespace).
    pub fn services_in<'m>(
        &'m self,
        namespace: &'m str,
    ) -> impl Iterator<Item = (&'m Key, &'m Service)> + 'm {
        self.services
            .range(Key::new(namespace, "")..)
            .take_while(move |(key, _)| key.namespace == namespace)
    }

    /// The Service a cluster-local name (`NAME.NAMESPACE.svc.cluster.local`)
    /// names.
    pub fn service_named(&self, host: &str) -> Option<(&Key, &Service)> {
        let (service, namespace) = host
            .strip_suffix(".svc.cluster.local")?
            .split_once('.')
            .filter(|(_, namespace)| !namespace.contains('.'))?;
        self.services.get_key_value(&Key::new(namespace, service))
    }

    /// The waypoint serving a Service: its own `istio.io/use-waypoint`
    /// label, else its namespace's. `none` opts out.
    pub fn waypoint_for_service(&self, key: &Key) -> Option<WaypointRef> {
        let service = self.services.get(key)?;
        waypoint_label(&service.labels, &key.namespace)
            .unwrap_or_else(|| self.waypoint_for_namespace(&key.namespace))
    }

    /// The waypoint an ingress gateway sends the Service `key`'s traffic
    /// through: its waypoint, when `istio.io/ingress-use-waypoint` is
    /// `true` on the Service, else on its namespace.
    pub fn ingress_waypoint_for_service(&self, key: &Key) -> Option<WaypointRef> {
        let service = self.services.get(key)?;
        let namespace = self.namespaces.get(&key.namespace);
        let asked = service
            .labels
            .get(INGRESS_USE_WAYPOINT_LABEL)
            .or_else(|| namespace?.labels.get(INGRESS_USE_WAYPOINT_LABEL));
        match asked.map(String::as_str) {
            Some("true") => self.waypoint_for_service(key),
            _ => None,
        }
    }

    /// The waypoint serving a ServiceEntry, as a Service's: its own
    /// `istio.io/use-waypoint` label, else its namespace's.
    pub fn waypoint_for_service_entry(&self, key: &Key) -> Option<WaypointRef> {
        let entry = self.service_entries.get(key)?;
        waypoint_label(&entry.labels, &key.namespace)
            .unwrap_or_else(|| self.waypoint_for_namespace(&key.namespace))
    }

    /// The ServiceEntries whose traffic goes through `waypoint`.
    pub fn service_entries_bound_to(&self, waypoint: &WaypointRef) -> Vec<&Key> {
        self.service_entries
            .keys()
            .filter(|key| self.waypoint_for_service_entry(key).as_ref() == Some(waypoint))
            .collect()
    }

    /// The ServiceEntry a workload in `from_namespace` sees whose hosts
    /// take `host`, with the host that took it: one naming it exactly,
    /// else the narrowest wildcard (first by namespace and name).
    pub fn service_entry_for_host(
        &self,
        host: &str,
        from_namespace: &str,
    ) -> Option<EntryForHost<'_>> {
        let mut best: Option<(usize, EntryForHost<'_>)> = None;
        for (key, entry) in &self.service_entries {
            if !exported_to(&entry.spec.export_to, &key.namespace, from_namespace) {
                continue;
            }
            for pattern in &entry.spec.hosts {
                let Some(rank) = crate::hosts::rank(pattern, host) else {
                    continue;
                };
                if best.as_ref().is_none_or(|(best, _)| rank > *best) {
                    best = Some((rank, (key, entry.as_ref(), pattern.as_str())));
                }
            }
        }
        best.map(|(_, found)| found)
    }

    /// The endpoints of the STATIC ServiceEntry `key` for its `port`: those
    /// it lists by address (at the port an endpoint names for the entry's
    /// port, else `targetPort`, else the port itself) and the pods of its
    /// namespace its `workloadSelector` picks.
    pub fn service_entry_endpoints(
        &self,
        key: &Key,
        spec: &ServiceEntrySpec,
        port: &crate::api::networking::ServicePort,
    ) -> Vec<std::net::SocketAddr> {
        let at = |ip: IpAddr, named: Option<u32>| {
            let number = named.or(port.target_port).unwrap_or(port.number);
            Some(std::net::SocketAddr::new(ip, u16::try_from(number).ok()?))
        };
        let listed = spec.endpoints.iter().filter_map(|endpoint| {
            let ip: IpAddr = endpoint.address.as_deref()?.parse().ok()?;
            at(ip, endpoint.ports.get(&port.name).copied())
        });
        let selected = spec.workload_selector.iter().flat_map(|selector| {
            in_namespace(&self.workloads, &key.namespace)
                .filter(|(_, pod)| {
                    let labels = &selector.labels;
                    labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
                })
                .flat_map(|(_, pod)| pod.ips.iter())
                .filter_map(|ip| at(*ip, None))
        });
        listed.chain(selected).collect()
    }

    /// The addresses a ServiceEntry is reached at: its own single
    /// addresses, or (with none) the ones Ambit gives its hosts.
    pub fn service_entry_addresses(&self, spec: &ServiceEntrySpec) -> Vec<IpAddr> {
        match spec.addresses.is_empty() {
            true => addresses::auto_addressed_hosts(spec)
                .filter_map(|host| self.auto_address_of(host))
                .map(IpAddr::V4)
                .collect(),
            false => spec
                .addresses
                .iter()
                .filter_map(|a| address_block(a))
                .filter(|block| block.prefix_len() == block.max_prefix_len())
                .map(|block| block.addr())
                .collect(),
        }
    }

    /// The waypoint named by a namespace's `istio.io/use-waypoint` label.
    pub fn waypoint_for_namespace(&self, namespace: &str) -> Option<WaypointRef> {
        let labels = &self.namespaces.get(namespace)?.labels;
        waypoint_label(labels, namespace).flatten()
    }

    /// The waypoint a pod is reached through when addressed by its own
    /// IP: only its own `istio.io/use-waypoint` label says so.
    pub fn waypoint_for_workload(&self, key: &Key) -> Option<WaypointRef> {
        let workload = self.workloads.get(key)?;
        waypoint_label(&workload.labels, &key.namespace).flatten()
    }

    /// The Services whose traffic goes through `waypoint`.
    pub fn services_bound_to(&self, waypoint: &WaypointRef) -> Vec<&Key> {
        self.services
            .keys()
            .filter(|key| self.waypoint_for_service(key).as_ref() == Some(waypoint))
            .collect()
    }

    /// How many objects the model holds, by kind.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        BTreeMap::from([
            ("Namespace", self.namespaces.len()),
            ("Pod", self.workloads.len()),
            ("Service", self.services.len()),
            ("EndpointSlice", self.endpoint_slices.len()),
            ("VirtualService", self.virtual_services.len()),
            ("DestinationRule", self.destination_rules.len()),
            ("ServiceEntry", self.service_entries.len()),
            ("Gateway", self.gateways.len()),
            ("AuthorizationPolicy", self.authorization_policies.len()),
            ("PeerAuthentication", self.peer_authentications.len()),
            ("ConfigMap", self.mesh_configs.len()),
        ])
    }

    /// Every object the model holds, named as its source names them.
    pub fn object_refs(&self) -> Vec<ObjectRef> {
        fn refs<'a, V: 'a>(
            kind: &'static str,
            keys: impl Iterator<Item = (&'a Key, &'a V)> + 'a,
        ) -> impl Iterator<Item = ObjectRef> + 'a {
            keys.map(move |(key, _)| ObjectRef {
                kind: kind.into(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            })
        }
        let namespaces = self.namespaces.keys().map(|name| ObjectRef {
            kind: "Namespace".into(),
            namespace: String::new(),
            name: name.clone(),
        });
        namespaces
            .chain(refs("Pod", self.workloads.iter()))
            .chain(refs("Service", self.services.iter()))
            .chain(refs("EndpointSlice", self.endpoint_slices.iter()))
            .chain(refs("VirtualService", self.virtual_services.iter()))
            .chain(refs("DestinationRule", self.destination_rules.iter()))
            .chain(refs("ServiceEntry", self.service_entries.iter()))
            .chain(refs("Gateway", self.gateways.iter()))
            .chain(refs(
                "AuthorizationPolicy",
                self.authorization_policies.iter(),
            ))
            .chain(refs("PeerAuthentication", self.peer_authentications.iter()))
            .chain(refs("ConfigMap", self.mesh_configs.iter()))
            .collect()
    }
}

/// The objects of one namespace, by name: keys sort by namespace first, so
/// this is a range of the map, not a scan.
pub fn in_namespace<'a, 'n, V>(
    objects: &'a OrdMap<Key, V>,
    namespace: &'n str,
) -> impl Iterator<Item = (&'a Key, &'a V)> + use<'a, 'n, V> {
    objects
        .range(Key::new(namespace, "")..)
        .take_while(move |(key, _)| key.namespace == namespace)
}

/// A ServiceEntry a destination falls under, and its port there.
#[derive(Debug, Clone, Copy)]
pub struct EntryAt<'a> {
    pub key: &'a Key,
    pub entry: &'a Config<ServiceEntrySpec>,
    pub port: &'a crate::api::networking::ServicePort,
}

/// A ServiceEntry found for a host, with the host of its that took it.
pub type EntryForHost<'m> = (&'m Key, &'m Config<ServiceEntrySpec>, &'m str);

/// Where a ServiceEntry of `resolution` DNS or DNS_ROUND_ROBIN sends its
/// `port`: the addresses of its endpoints (names to resolve, or IPs), each
/// at the port it names for the entry's port, else `targetPort`, else the
/// port itself; without endpoints, its named hosts at that port.
pub fn dns_targets<'s>(
    spec: &'s ServiceEntrySpec,
    port: &crate::api::networking::ServicePort,
) -> Vec<(&'s str, u16)> {
    let at = |named: Option<u32>| u16::try_from(named.or(port.target_port).unwrap_or(port.number));
    let listed: Vec<(&str, u16)> = spec
        .endpoints
        .iter()
        .filter_map(|e| {
            Some((
                e.address.as_deref()?,
                at(e.ports.get(&port.name).copied()).ok()?,
            ))
        })
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    spec.hosts
        .iter()
        .filter(|host| !host.starts_with('*'))
        .filter_map(|host| Some((host.as_str(), at(None).ok()?)))
        .collect()
}

/// A ServiceEntry's address: a CIDR, or one address.
fn address_block(text: &str) -> Option<ipnet::IpNet> {
    text.parse()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

/// `Some(None)` for an explicit `none`, `None` when the label is absent.
/// The waypoint is in `namespace` unless `istio.io/use-waypoint-namespace`
/// names another.
fn waypoint_label(labels: &Labels, namespace: &str) -> Option<Option<WaypointRef>> {
    let name = labels.get(USE_WAYPOINT_LABEL)?;
    let namespace = labels
        .get(USE_WAYPOINT_NAMESPACE_LABEL)
        .map_or(namespace, String::as_str);
    Some((name != "none").then(|| WaypointRef(Key::new(namespace, name))))
}

/// Istio's `exportTo`: empty or `*` is everyone, `.` the object's own
/// namespace, anything else a namespace by name.
fn exported_to(export_to: &[String], own_namespace: &str, from_namespace: &str) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|to| match to.as_str() {
            "*" => true,
            "." => own_namespace == from_namespace,
            namespace => namespace == from_namespace,
        })
}

fn visible<'a, S>(
    index: &'a OrdMap<String, OrdSet<Key>>,
    objects: &'a OrdMap<Key, Arc<Config<S>>>,
    host: &str,
    from_namespace: &str,
    export_to: impl Fn(&Config<S>) -> &Vec<String>,
) -> Vec<(&'a Key, &'a Config<S>)> {
    let Some(keys) = index.get(host) else {
        return Vec::new();
    };
    keys.iter()
        .filter_map(|key| Some((key, objects.get(key)?.as_ref())))
        .filter(|(key, config)| exported_to(export_to(config), &key.namespace, from_namespace))
        .collect()
}

/// The fully qualified hosts an object names, relative to its namespace.
fn qualified_hosts<'a>(
    hosts: impl IntoIterator<Item = &'a String>,
    namespace: &str,
) -> OrdSet<String> {
    hosts
        .into_iter()
        .map(|host| qualify_host(host, namespace))
        .collect()
}

impl Service {
    /// Whether one of its endpoints is at `ip`.
    pub fn has_endpoint(&self, ip: IpAddr) -> bool {
        // Asked per inbound connection, of Services of thousands of pods.
        self.endpoints
            .binary_search_by_key(&ip, |endpoint| endpoint.ip)
            .is_ok()
    }

    /// The addresses of its ready endpoints of `ip`'s family, in address
    /// order.
    pub fn ready_like(&self, ip: IpAddr) -> impl Iterator<Item = IpAddr> + '_ {
        self.endpoints
            .iter()
            .filter(move |e| e.ready && e.ip.is_ipv4() == ip.is_ipv4())
            .map(|e| e.ip)
    }

    /// The addresses of its ready endpoints of `ip`'s family where it has
    /// some, else of the other family: a peer reached over either, as a
    /// waypoint (IPv4-only, dual-stack or IPv6-only).
    pub fn ready_preferring(&self, ip: IpAddr) -> Vec<IpAddr> {
        let alike: Vec<IpAddr> = self.ready_like(ip).collect();
        if !alike.is_empty() {
            return alike;
        }
        let other = match ip {
            IpAddr::V4(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        self.ready_like(other).collect()
    }

    fn from_object(object: &Object<ServiceBody>) -> Self {
        let spec = &object.spec.spec;
        let mut vips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .map(String::as_str)
            .chain(spec.cluster_ip.as_deref())
            .filter_map(|ip| ip.parse().ok()) // `None` (headless) has no VIP
            .collect();
        vips.sort();
        vips.dedup();
        let export_to = object
            .metadata
            .annotations
            .get(EXPORT_TO_ANNOTATION)
            .map(|list| {
                list.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Self {
            labels: object.metadata.labels.clone(),
            vips,
            ports: Vec::new(),
            endpoints: Vec::new(),
            export_to,
            declared_ports: spec.ports.clone(),
        }
    }

    /// Fills ports and endpoints from the Service's spec and its slices.
    /// A target port is the slice's port of the same name, else a numeric
    /// `targetPort`, else the port itself.
    fn resolve(&mut self, slices: &[&EndpointSliceBody]) {
        self.ports = self
            .declared_ports
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
                    target_port: u16::try_from(from_slice.or(numeric).unwrap_or(port.port)).ok()?,
                    protocol: port.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    app_protocol: port.app_protocol.clone(),
                })
            })
            .collect();
        let mut endpoints: Vec<Endpoint> = slices
            .iter()
            .flat_map(|slice| &slice.endpoints)
            .flat_map(|endpoint| {
                let conditions = endpoint.conditions;
                endpoint.addresses.iter().filter_map(move |ip| {
                    Some(Endpoint {
                        ip: ip.parse().ok()?,
                        ready: conditions.is_ready(),
                        serving: conditions.serving.unwrap_or(conditions.is_ready()),
                        terminating: conditions.terminating.unwrap_or(false),
                        node: endpoint.node_name.clone(),
                    })
                })
            })
            .collect();
        endpoints.sort_by_key(|e| e.ip);
        endpoints.dedup_by_key(|e| e.ip);
        self.endpoints = endpoints;
    }
}

#[cfg(test)]
mod tests;
