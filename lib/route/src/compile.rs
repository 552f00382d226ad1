//! The model compiled into what a waypoint decides each request by: per
//! Service address it serves, the protocol, the routes of the
//! VirtualServices for the host in order, and for each destination the
//! endpoints of its subset and the load balancer its DestinationRule sets.
//! Done off the request path, again whenever the model changes; nothing on
//! the request path reads an Istio spec or compiles a regex.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_config::api::networking::{
    self, ClientTlsSettings, ConnectionPoolSettings, Destination, DestinationRuleSpec,
    H2UpgradePolicy, HeaderOperations, HttpMatchRequest, LoadBalancerSettings, OutlierDetection,
    Resolution, RetryBudget, SimpleLb, TlsMode, TrafficPolicy, VirtualServiceSpec,
};
use ambit_config::document::qualify_host;
use ambit_config::model::{Key, Mesh, Service, ServicePort, WaypointRef};
use http::HeaderName;
use serde::Serialize;

use crate::actions::{HeaderEdits, Respond, Rewrite};
use crate::cors::Cors;
use crate::fault::Fault;
use crate::hash::ConsistentHash;
use crate::lb::LoadBalancer;
use crate::limits::Limits;
use crate::matching::{Arrival, Caller, Matcher, RequestMatch};
use crate::outlier::OutlierPolicy;
use crate::retry::RetryPolicy;

/// The gateway name that stands for the mesh's own traffic in a
/// VirtualService's `gateways`.
const MESH_GATEWAY: &str = "mesh";
/// The domain of Services' host names.
const SERVICE_DOMAIN: &str = "svc.cluster.local";

/// Everything a waypoint routes by.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTables {
    /// By the address agents send to the waypoint (the `:authority` of
    /// their CONNECT): a Service VIP and port.
    #[serde(serialize_with = "by_address")]
    pub ports: HashMap<SocketAddr, Arc<PortTable>>,
    /// The pods bound to the waypoint by their own `istio.io/use-waypoint`,
    /// by address: reached by pod IP, their traffic passes the waypoint on
    /// to the pod and port asked for (no VirtualService names a pod).
    #[serde(serialize_with = "by_pod_address")]
    pub pods: HashMap<IpAddr, Arc<PodTables>>,
    /// What could not be compiled, by object: those objects are left out.
    pub problems: BTreeMap<String, String>,
    /// The Services bound to the waypoint, in name order (shown apart in
    /// the config dump).
    #[serde(skip)]
    pub bindings: Vec<Binding>,
}

/// A pod bound to the waypoint: its ports a Service gives a protocol, by
/// target port; any other port is carried as TCP.
#[derive(Debug, Serialize)]
pub struct PodTables {
    pub pod: Key,
    pub ports: BTreeMap<u16, Arc<PortTable>>,
}

impl RouteTables {
    /// The table for a stream to `target`: a bound Service address's, else
    /// a bound pod's port.
    pub fn table(&self, target: SocketAddr) -> Option<Arc<PortTable>> {
        if let Some(table) = self.ports.get(&target) {
            return Some(table.clone());
        }
        let pod = self.pods.get(&target.ip())?;
        Some(match pod.ports.get(&target.port()) {
            Some(table) => table.clone(),
            None => Arc::new(pod_table(&pod.pod, target, Protocol::Tcp)),
        })
    }
}

/// To the pod at `target` alone: every request or connection to it.
fn pod_table(pod: &Key, target: SocketAddr, protocol: Protocol) -> PortTable {
    let host = target.ip().to_string();
    let backend = Arc::new(Backend {
        cluster: format!("pod|{}|{host}", target.port()),
        service: pod.clone(),
        host: host.clone(),
        subset: None,
        port: target.port(),
        upstream: PortPolicy::default().upstream(protocol),
        endpoints: vec![target],
        load_balancer: LoadBalancer::RoundRobin,
        limits: Limits::default(),
        outlier_detection: None,
        tls: None,
        resolve: None,
        through: None,
    });
    let mut table = PortTable {
        service: pod.clone(),
        host,
        virtual_service: None,
        port: target.port(),
        protocol,
        http: Vec::new(),
        tcp: Vec::new(),
    };
    table.route_all(vec![WeightedBackend::new(1, backend)]);
    table
}

fn by_pod_address<S: serde::Serializer>(
    pods: &HashMap<IpAddr, Arc<PodTables>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let sorted: BTreeMap<&IpAddr, &PodTables> =
        pods.iter().map(|(ip, pod)| (ip, pod.as_ref())).collect();
    serializer.collect_map(sorted)
}

fn by_address<S: serde::Serializer>(
    ports: &HashMap<SocketAddr, Arc<PortTable>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let sorted: BTreeMap<String, &PortTable> = ports
        .iter()
        .map(|(address, table)| (address.to_string(), table.as_ref()))
        .collect();
    serializer.collect_map(sorted)
}

/// How a Service port's traffic is read, by Istio's rules: its
/// `appProtocol`, else the prefix of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Protocol {
    /// HTTP/1.1 or HTTP/2, upstream in HTTP/1.1.
    Http,
    /// HTTP/2 (gRPC included) upstream too.
    Http2,
    Tcp,
}

impl Protocol {
    pub fn of(port: &ServicePort) -> Self {
        let declared = port.app_protocol.as_deref().or_else(|| {
            let name = port.name.as_deref()?;
            Some(name.split_once('-').map_or(name, |(prefix, _)| prefix))
        });
        match declared.map(str::to_ascii_lowercase).as_deref() {
            Some("http") => Self::Http,
            Some("http2" | "grpc" | "grpc-web" | "h2c" | "kubernetes.io/h2c") => Self::Http2,
            _ => Self::Tcp,
        }
    }

    pub fn is_http(self) -> bool {
        self != Self::Tcp
    }
}

/// One Service port the waypoint serves.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortTable {
    pub service: Key,
    pub host: String,
    /// The VirtualService whose routes these are; none: the Service itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_service: Option<Key>,
    pub port: u16,
    pub protocol: Protocol,
    /// For HTTP, in order: the first that matches decides. A request that
    /// none matches is answered 404.
    pub http: Vec<HttpRoute>,
    /// For TCP: the first whose port matches (all do by default).
    pub tcp: Vec<TcpRoute>,
}

impl PortTable {
    /// Adds a route that every request (or connection, on a TCP port)
    /// matches, to `destinations`.
    fn route_all(&mut self, destinations: Vec<WeightedBackend>) {
        if self.protocol.is_http() {
            self.http.push(HttpRoute {
                name: None,
                matches: Vec::new(),
                destinations,
                mirrors: Vec::new(),
                actions: Actions::default(),
            });
        } else {
            self.tcp.push(TcpRoute {
                port: None,
                destinations,
            });
        }
    }

    /// The route for a request: the first with a match that holds.
    pub fn route(
        &self,
        request: &http::request::Parts,
        scheme: &str,
        caller: Caller<'_>,
    ) -> Option<Routed<'_>> {
        let arrival = Arrival {
            port: self.port,
            scheme,
        };
        self.http.iter().find_map(|route| {
            if route.matches.is_empty() {
                return Some(Routed {
                    route,
                    matched: None,
                });
            }
            let matched = route
                .matches
                .iter()
                .find(|matched| matched.matches(request, arrival, caller))?;
            Some(Routed {
                route,
                matched: Some(matched),
            })
        })
    }
}

/// The route a request took, and which of its matches held.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'a> {
    pub route: &'a HttpRoute,
    pub matched: Option<&'a RequestMatch>,
}

impl Routed<'_> {
    /// The name Istio gives the route it hands Envoy (and access logs
    /// show): the route's name and the match's, joined by a dot, or
    /// whichever of them is given.
    pub fn name(&self) -> Option<String> {
        let matched = self.matched.and_then(|m| m.name.as_deref());
        match (self.route.name.as_deref(), matched) {
            (Some(route), Some(matched)) => Some(format!("{route}.{matched}")),
            (route, matched) => route.or(matched).map(str::to_string),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Alternatives; empty matches every request.
    pub matches: Vec<RequestMatch>,
    pub destinations: Vec<WeightedBackend>,
    /// Where copies of its requests go, fire and forget.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    #[serde(flatten)]
    pub actions: Actions,
}

/// A `mirror` (or an entry of `mirrors`): the share of requests copied to
/// its destination.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    pub percent: f64,
    pub backend: Arc<Backend>,
}

/// What a route does to a request besides choosing where it goes.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Actions {
    /// How long the upstream may take to answer; none: as long as it takes
    /// (Istio's default for HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<std::time::Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// None: retries are off (`attempts: 0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// An answer given in place of any destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub respond: Option<Respond>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
}

/// A route's actions when it sets none: Istio's default retries alone.
impl Default for Actions {
    fn default() -> Self {
        Self {
            timeout: None,
            fault: None,
            retry: Some(RetryPolicy::istio_default()),
            cors: None,
            respond: None,
            rewrite: None,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
        }
    }
}

impl Actions {
    /// The actions of `route`, written at `at`, with notes on what of them
    /// is left out as Istio leaves it out.
    fn of(route: &networking::HttpRoute, at: &str) -> Result<(Self, Vec<String>), String> {
        let (fault, left_out) = match &route.fault {
            Some(spec) => Fault::from_spec(spec).map_err(|e| format!("{at}.{e}"))?,
            None => (None, Vec::new()),
        };
        let respond = match (&route.direct_response, &route.redirect) {
            (Some(_), Some(_)) => return Err(format!("{at}: both directResponse and redirect")),
            (Some(direct), None) => Some(Respond::direct(direct)),
            (None, Some(redirect)) => Some(Respond::redirect(redirect)),
            (None, None) => None,
        }
        .transpose()
        .map_err(|e| format!("{at}.{e}"))?;
        let rewrite = route
            .rewrite
            .as_ref()
            .map(Rewrite::from_spec)
            .transpose()
            .map_err(|e| format!("{at}.{e}"))?;
        let edits = |ops, which| header_edits(ops, at, which);
        let headers = route.headers.as_ref();
        let actions = Self {
            // Zero stands for none, as in Envoy.
            timeout: route.timeout.as_ref().map(|t| t.0).filter(|t| !t.is_zero()),
            fault,
            retry: RetryPolicy::from_spec(route.retries.as_ref())
                .map_err(|e| format!("{at}.{e}"))?,
            cors: route
                .cors_policy
                .as_ref()
                .map(Cors::from_spec)
                .transpose()
                .map_err(|e| format!("{at}.{e}"))?,
            respond,
            rewrite,
            request_headers: edits(headers.and_then(|h| h.request.as_ref()), "request")?,
            response_headers: edits(headers.and_then(|h| h.response.as_ref()), "response")?,
        };
        let notes = left_out
            .into_iter()
            .map(|field| format!("{at}.{field}: {LEFT_OUT}"));
        Ok((actions, notes.collect()))
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRoute {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub destinations: Vec<WeightedBackend>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedBackend {
    pub weight: u32,
    pub backend: Arc<Backend>,
    /// The destination's own `headers`, edited before the route's.
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
}

impl WeightedBackend {
    fn new(weight: u32, backend: Arc<Backend>) -> Self {
        Self {
            weight,
            backend,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
        }
    }
}

/// Where a route sends: a Service port, or the part of it a subset names.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// The name Envoy and Istio give this destination's cluster:
    /// `outbound|PORT|SUBSET|HOST`.
    pub cluster: String,
    pub service: Key,
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    pub port: u16,
    pub upstream: Upstream,
    /// Ready endpoints (of the subset), at the port they listen on.
    pub endpoints: Vec<SocketAddr>,
    pub load_balancer: LoadBalancer,
    /// Its `connectionPool`: circuit breakers and connection options.
    pub limits: Limits,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierPolicy>,
    /// TLS the waypoint starts toward the endpoints, if its
    /// DestinationRule asks for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Arc<Origination>>,
    /// Endpoints found by DNS as requests go out, not compiled in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolve: Option<Resolve>,
    /// The waypoint the endpoints (then the Service's own addresses) are
    /// reached through: an ingress gateway's, for a Service labelled
    /// `istio.io/ingress-use-waypoint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub through: Option<WaypointRef>,
}

/// How a backend's endpoints are found by DNS when a request goes out: a
/// ServiceEntry of `resolution` DNS, DNS_ROUND_ROBIN or DYNAMIC_DNS.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolve {
    pub names: Names,
    /// Every address of each name is an endpoint (DNS, Envoy's
    /// STRICT_DNS), else only the first (DNS_ROUND_ROBIN, LOGICAL_DNS).
    pub every_address: bool,
    /// The DestinationRule's `loadBalancer`, to balance the addresses found.
    #[serde(skip)]
    load_balancer: Option<LoadBalancerSettings>,
}

/// The names a backend's endpoints are found by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Names {
    /// These names (or addresses), each at its port.
    Listed(Vec<(String, u16)>),
    /// DYNAMIC_DNS: the host each request names, when one of the entry's
    /// `hosts` takes it (never any other: the waypoint is no open proxy),
    /// at `port`.
    OfRequest { hosts: Vec<String>, port: u16 },
}

impl Resolve {
    /// The names to resolve for a request to `authority` (its `Host`),
    /// each with its port; an error says why the request's host is not
    /// one this backend reaches.
    pub fn names_for<'r>(&'r self, authority: &'r str) -> Result<Vec<(&'r str, u16)>, String> {
        match &self.names {
            Names::Listed(names) => Ok(names
                .iter()
                .map(|(name, port)| (name.as_str(), *port))
                .collect()),
            Names::OfRequest { hosts, port } => {
                let host = match authority.rsplit_once(':') {
                    Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                    _ => authority,
                };
                if host.is_empty() {
                    return Err("the request names no host".into());
                }
                match hosts
                    .iter()
                    .any(|pattern| ambit_config::hosts::covers(pattern, host))
                {
                    true => Ok(vec![(host, *port)]),
                    false => Err(format!(
                        "{host} is not a host of this ServiceEntry ({})",
                        hosts.join(", ")
                    )),
                }
            }
        }
    }
}

impl Backend {
    /// This backend with the endpoints DNS found for it; `host` is the
    /// request's host when the names are the request's, which TLS toward
    /// the endpoints then asks for and checks.
    pub fn resolved(&self, endpoints: Vec<SocketAddr>, host: Option<&str>) -> Backend {
        let settings = self.resolve.as_ref().and_then(|r| r.load_balancer.as_ref());
        let load_balancer = match &self.load_balancer {
            LoadBalancer::ConsistentHash(_) => LoadBalancer::from_settings(settings, &endpoints),
            other => other.clone(),
        };
        let tls = self.tls.clone().map(|tls| match host {
            Some(host) if tls.sni == self.host => Arc::new(Origination {
                sni: host.to_string(),
                ..(*tls).clone()
            }),
            _ => tls,
        });
        Backend {
            endpoints,
            load_balancer,
            tls,
            ..self.clone()
        }
    }
}

/// TLS the waypoint starts toward a destination's endpoints (DestinationRule
/// `tls` mode SIMPLE or MUTUAL), as Istio's TLS origination: inside the
/// HBONE tunnel when the endpoint is in the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Origination {
    /// The server name asked for: `sni`, else the host.
    pub sni: String,
    /// How the server's certificate is checked.
    pub check: ServerCheck,
    /// The roots the server's certificate must chain to (a PEM file);
    /// none: the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// MUTUAL: the client's certificate chain and key (PEM files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<(String, String)>,
}

/// How a server's certificate is checked when the waypoint starts TLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ServerCheck {
    /// Chained to the roots, naming the server name asked for.
    ServerName,
    /// Chained to the roots, naming one of these (`subjectAltNames`).
    OneOf(Vec<String>),
    /// Not checked at all (`insecureSkipVerify`).
    Skipped,
}

impl Origination {
    /// What `tls` asks of connections to `host`'s endpoints.
    fn of(tls: Option<&ClientTlsSettings>, host: &str) -> Option<Self> {
        let tls = tls?;
        let client = match tls.mode? {
            TlsMode::Simple => None,
            TlsMode::Mutual => Some((tls.client_certificate.clone()?, tls.private_key.clone()?)),
            TlsMode::Disable | TlsMode::IstioMutual => return None,
        };
        let check = match (tls.insecure_skip_verify, tls.subject_alt_names.is_empty()) {
            (Some(true), _) => ServerCheck::Skipped,
            (_, false) => ServerCheck::OneOf(tls.subject_alt_names.clone()),
            (_, true) => ServerCheck::ServerName,
        };
        Some(Self {
            sni: tls.sni.clone().unwrap_or_else(|| host.to_string()),
            check,
            ca_certificates: tls.ca_certificates.clone(),
            client,
        })
    }
}

/// How the waypoint speaks to a backend's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Upstream {
    Http1,
    Http2,
    /// HTTP/2 for a caller that spoke HTTP/2, else HTTP/1.1.
    AsClient,
    Tcp,
}

impl Upstream {
    /// Whether a request the caller sent in `version` goes on in HTTP/2.
    pub fn http2_for(self, version: http::Version) -> bool {
        match self {
            Self::Http2 => true,
            Self::AsClient => version == http::Version::HTTP_2,
            Self::Http1 | Self::Tcp => false,
        }
    }
}

/// The tables for the Services bound to `waypoint`.
pub fn compile(mesh: &Mesh, waypoint: &WaypointRef) -> RouteTables {
    let mut tables = RouteTables::default();
    let mut compiler = Compiler {
        mesh,
        namespace: &waypoint.0.namespace,
        backends: HashMap::new(),
        ingress: false,
    };
    for key in mesh.services_bound_to(waypoint) {
        let Some(service) = mesh.services.get(key) else {
            continue;
        };
        let host = qualify_host(&key.name, &key.namespace);
        let chosen = compiler.virtual_service(&host, &mut tables.problems);
        tables.bindings.push(Binding {
            service: key.clone(),
            host: host.clone(),
            virtual_service: chosen.as_ref().map(|routes| routes.key.clone()),
            destination_rules: mesh
                .destination_rules_for(&host, compiler.namespace)
                .into_iter()
                .map(|(key, _)| key.clone())
                .collect(),
        });
        for port in &service.ports {
            let table = Arc::new(compiler.port_table(key, &host, port, chosen.as_ref()));
            for vip in &service.vips {
                tables
                    .ports
                    .insert(SocketAddr::new(*vip, port.port), table.clone());
            }
        }
    }
    // The ServiceEntries bound to the waypoint (as an egress gateway), at
    // each address they are reached at, per port they declare; routed by
    // the VirtualServices of their (first) host.
    for key in mesh.service_entries_bound_to(waypoint) {
        let Some(entry) = mesh.service_entries.get(key) else {
            continue;
        };
        let Some(host) = entry.spec.hosts.first() else {
            continue;
        };
        let chosen = compiler.virtual_service(host, &mut tables.problems);
        let addresses = mesh.service_entry_addresses(&entry.spec);
        for port in &entry.spec.ports {
            let port = entry_service_port(port);
            let table = Arc::new(compiler.port_table(key, host, &port, chosen.as_ref()));
            for address in &addresses {
                tables
                    .ports
                    .insert(SocketAddr::new(*address, port.port), table.clone());
            }
        }
    }
    // The pods bound by their own label, by address, each with the ports
    // the Services it serves name: found in one pass over the endpoints.
    let mut pods: HashMap<IpAddr, (&Key, BTreeMap<u16, Arc<PortTable>>)> = mesh
        .workloads
        .iter()
        .filter(|(key, _)| mesh.waypoint_for_workload(key).as_ref() == Some(waypoint))
        .flat_map(|(key, workload)| {
            workload
                .ips
                .iter()
                .map(move |ip| (*ip, (key, BTreeMap::new())))
        })
        .collect();
    if !pods.is_empty() {
        for service in mesh.services.values() {
            for endpoint in &service.endpoints {
                let Some((key, ports)) = pods.get_mut(&endpoint.ip) else {
                    continue;
                };
                for port in &service.ports {
                    let target = SocketAddr::new(endpoint.ip, port.target_port);
                    ports
                        .entry(port.target_port)
                        .or_insert_with(|| Arc::new(pod_table(key, target, Protocol::of(port))));
                }
            }
        }
    }
    for (ip, (key, ports)) in pods {
        let pod = PodTables {
            pod: key.clone(),
            ports,
        };
        tables.pods.insert(ip, Arc::new(pod));
    }
    tables
}

/// A Service bound to a waypoint, with what routes it there: as the
/// waypoint's config dump shows it.
#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    pub service: Key,
    pub host: String,
    /// The VirtualService in force for the host.
    pub virtual_service: Option<Key>,
    /// The DestinationRules for the host the waypoint sees.
    pub destination_rules: Vec<Key>,
}

/// The names a VirtualService may give `host` by, most specific first:
/// the host itself, then wildcards over ever shorter suffixes
/// (`*.ns.svc.cluster.local`, …, `*`), as Envoy matches domains.
fn host_patterns(host: &str) -> impl Iterator<Item = String> + '_ {
    let suffixes = host
        .match_indices('.')
        .map(move |(dot, _)| format!("*{}", &host[dot..]));
    std::iter::once(host.to_string())
        .chain(suffixes)
        .chain(std::iter::once("*".to_string()))
}

/// A VirtualService's routes as they apply to the mesh or a gateway,
/// before ports are known.
pub(crate) struct Routes<'a> {
    pub(crate) key: &'a Key,
    http: Vec<MeshHttpRoute<'a>>,
    /// A gateway's: by SNI, in order (an alternative each).
    pub(crate) tls: Vec<TlsMatch>,
    /// Port (none: all), destinations.
    pub(crate) tcp: Vec<(Option<u16>, Weighted)>,
    /// What was left out of it, as Istio leaves it out (a delegate that
    /// cannot be found): the rest applies.
    pub(crate) notes: Vec<String>,
}

/// One alternative of a `tls` route: the server names it takes (none:
/// all), on a port (none: all), and where their connections go.
pub(crate) struct TlsMatch {
    pub(crate) sni_hosts: Vec<String>,
    pub(crate) port: Option<u16>,
    pub(crate) destinations: Weighted,
}

/// An HTTP route, its own or a delegate's.
struct MeshHttpRoute<'a> {
    name: Option<String>,
    /// Alternatives; empty: all requests.
    matches: Vec<RequestMatch>,
    /// Where its destinations' short host names are resolved: the namespace
    /// of the VirtualService that wrote them.
    namespace: &'a str,
    destinations: Weighted,
    /// Each destination's `headers`: request, then response edits.
    destination_headers: Vec<(HeaderEdits, HeaderEdits)>,
    /// Percent of requests, and where their copies go.
    mirrors: Vec<(f64, Destination)>,
    actions: Actions,
}

/// Destinations with their weights.
type Weighted = Vec<(u32, Destination)>;

/// What a destination's host and port lead to, before its traffic policy.
struct Found {
    key: Key,
    protocol: Protocol,
    endpoints: Vec<SocketAddr>,
    resolve: Option<Resolve>,
    through: Option<WaypointRef>,
}

struct Compiler<'a> {
    mesh: &'a Mesh,
    /// The waypoint's namespace: what it sees by `exportTo`.
    namespace: &'a str,
    /// One backend per (destination host, subset, port), shared by routes.
    backends: HashMap<(String, Option<String>, u16), Arc<Backend>>,
    /// Compiling for an ingress gateway: Services that ask for it are
    /// reached through their waypoints.
    ingress: bool,
}

impl<'a> Compiler<'a> {
    /// The VirtualService that routes `host` for the mesh, compiled. As
    /// Istio picks it for mesh traffic: one per host, the most specific
    /// host name first (exact, then the longest wildcard), among equals the
    /// oldest (then by name and namespace). Istio does not merge
    /// VirtualServices for the mesh: the others naming the host as
    /// specifically are reported (Istio's IST0109) and not used for it; one
    /// that cannot be compiled is reported and left out, the next applies.
    fn virtual_service(
        &self,
        host: &str,
        problems: &mut BTreeMap<String, String>,
    ) -> Option<Routes<'a>> {
        for pattern in host_patterns(host) {
            let mut found: Vec<(&'a Key, &'a VirtualServiceSpec, Option<&'a str>)> = self
                .mesh
                .virtual_services_for(&pattern, self.namespace)
                .into_iter()
                .filter(|(key, config)| Audience::Mesh.takes(&config.spec.gateways, &key.namespace))
                .map(|(key, config)| (key, &config.spec, config.created.as_deref()))
                .collect();
            // Oldest first; a manifest directory has no creation times.
            found.sort_by_key(|(key, _, created)| {
                (created.is_none(), *created, &key.name, &key.namespace)
            });
            let mut chosen: Option<Routes<'a>> = None;
            for (key, spec, _) in found {
                if let Some(routes) = &chosen {
                    problems.insert(
                        format!("VirtualService {key}"),
                        format!(
                            "host {pattern} is routed by VirtualService {} (older, or first by name): \
                             for the mesh Istio uses one VirtualService per host (IST0109), so this one \
                             does not apply to {host}; merge them",
                            routes.key
                        ),
                    );
                    continue;
                }
                match routes(self.mesh, key, spec, Audience::Mesh) {
                    Ok(routes) => {
                        if !routes.notes.is_empty() {
                            problems
                                .insert(format!("VirtualService {key}"), routes.notes.join("; "));
                        }
                        chosen = Some(routes);
                    }
                    Err(problem) => {
                        problems.insert(format!("VirtualService {key}"), problem);
                    }
                }
            }
            if chosen.is_some() {
                return chosen;
            }
        }
        None
    }

    fn port_table(
        &mut self,
        service: &Key,
        host: &str,
        port: &ServicePort,
        virtual_service: Option<&Routes<'a>>,
    ) -> PortTable {
        let protocol = Protocol::of(port);
        let mut table = PortTable {
            service: service.clone(),
            host: host.to_string(),
            virtual_service: virtual_service.map(|routes| routes.key.clone()),
            port: port.port,
            protocol,
            http: Vec::new(),
            tcp: Vec::new(),
        };
        if let Some(routes) = virtual_service {
            if protocol.is_http() {
                table.http = self.http_routes(routes, host, port);
            } else {
                for (route_port, destinations) in &routes.tcp {
                    if route_port.is_some_and(|p| p != port.port) {
                        continue;
                    }
                    table.tcp.push(TcpRoute {
                        port: *route_port,
                        destinations: self.weighted(
                            &routes.key.namespace,
                            host,
                            port,
                            destinations,
                        ),
                    });
                }
            }
        }
        // Without a route of its own, a port goes to the Service itself.
        let unrouted = if protocol.is_http() {
            table.http.is_empty()
        } else {
            table.tcp.is_empty()
        };
        if unrouted {
            let itself = Destination {
                host: host.to_string(),
                subset: None,
                port: None,
            };
            table.route_all(self.weighted(self.namespace, host, port, &[(1, itself)]));
        }
        table
    }

    /// The HTTP routes of `routes` for requests that arrived at `port`
    /// for `host`: those with a match for the port, in order.
    pub(crate) fn http_routes(
        &mut self,
        routes: &Routes<'a>,
        host: &str,
        port: &ServicePort,
    ) -> Vec<HttpRoute> {
        let mut compiled = Vec::new();
        for route in &routes.http {
            let all = &route.matches;
            let matches: Vec<RequestMatch> = all
                .iter()
                .filter(|matched| matched.port.is_none_or(|p| p == port.port))
                .cloned()
                .collect();
            // Every alternative was for another port.
            if matches.is_empty() && !all.is_empty() {
                continue;
            }
            compiled.push(HttpRoute {
                name: route.name.clone(),
                matches,
                destinations: self
                    .weighted(route.namespace, host, port, &route.destinations)
                    .into_iter()
                    .zip(route.destination_headers.iter().cloned())
                    .map(|(backend, (request, response))| WeightedBackend {
                        request_headers: request,
                        response_headers: response,
                        ..backend
                    })
                    .collect(),
                mirrors: route
                    .mirrors
                    .iter()
                    .map(|(percent, destination)| Mirror {
                        percent: *percent,
                        backend: self.backend(route.namespace, host, port, destination),
                    })
                    .collect(),
                actions: route.actions.clone(),
            });
        }
        compiled
    }

    fn weighted(
        &mut self,
        namespace: &str,
        arrived_host: &str,
        arrived: &ServicePort,
        destinations: &[(u32, Destination)],
    ) -> Vec<WeightedBackend> {
        destinations
            .iter()
            .map(|(weight, destination)| {
                let backend = self.backend(namespace, arrived_host, arrived, destination);
                WeightedBackend::new(*weight, backend)
            })
            .collect()
    }

    /// The backend a destination names, written in `namespace`, for a
    /// request that arrived at `arrived` of `arrived_host`.
    fn backend(
        &mut self,
        namespace: &str,
        arrived_host: &str,
        arrived: &ServicePort,
        destination: &Destination,
    ) -> Arc<Backend> {
        let host = qualify_host(&destination.host, namespace);
        let service = service_key(&host).and_then(|key| {
            let service = self.mesh.services.get(&key)?;
            self.mesh
                .service_visible(&key, self.namespace)
                .then_some((key, service))
        });
        // The port: as written, else the one the request came to when the
        // destination is that Service, else the Service's only one.
        let port = destination
            .port
            .as_ref()
            .and_then(|p| u16::try_from(p.number).ok())
            .or_else(|| (host == arrived_host).then_some(arrived.port))
            .or_else(|| match service.as_ref().map(|(_, s)| s.ports.as_slice()) {
                Some([only]) => Some(only.port),
                _ => None,
            })
            .unwrap_or(arrived.port);
        let cache_key = (host.clone(), destination.subset.clone(), port);
        if let Some(backend) = self.backends.get(&cache_key) {
            return backend.clone();
        }
        let rule = self
            .mesh
            .destination_rules_for(&host, self.namespace)
            .into_iter()
            .next()
            .map(|(_, config)| &config.spec);
        let subset = destination.subset.as_deref();
        let policy = PortPolicy::of(rule, subset, port);
        // A Service's endpoints, else those of a ServiceEntry for the host.
        let found = match service {
            Some((key, service)) => Some(self.service_endpoints(key, service, port, rule, subset)),
            None => self.entry_endpoints(&host, port, subset, policy.load_balancer),
        };
        let backend = Arc::new(match found {
            Some(found) => Backend {
                cluster: cluster_name(port, subset, &host),
                upstream: policy.upstream(found.protocol),
                load_balancer: LoadBalancer::from_settings(policy.load_balancer, &found.endpoints),
                limits: Limits::of(policy.connection_pool, policy.retry_budget),
                outlier_detection: OutlierPolicy::from_spec(policy.outlier_detection),
                tls: Origination::of(policy.tls, &host).map(Arc::new),
                resolve: found.resolve,
                through: found.through,
                endpoints: found.endpoints,
                service: found.key,
                host,
                subset: destination.subset.clone(),
                port,
            },
            // A host that is no Service nor ServiceEntry the waypoint sees:
            // no endpoint.
            None => Backend {
                cluster: cluster_name(port, destination.subset.as_deref(), &host),
                service: Key::new("", ""),
                host,
                subset: destination.subset.clone(),
                port,
                upstream: Upstream::Tcp,
                endpoints: Vec::new(),
                load_balancer: LoadBalancer::default(),
                limits: Limits::default(),
                outlier_detection: None,
                tls: None,
                resolve: None,
                through: None,
            },
        });
        self.backends.insert(cache_key, backend.clone());
        backend
    }

    /// Where the Service `key` sends `port`: its ready endpoints (of the
    /// subset); at an ingress gateway, for a Service that asks, its own
    /// addresses through its waypoint, which routes it.
    fn service_endpoints(
        &self,
        key: Key,
        service: &Service,
        port: u16,
        rule: Option<&DestinationRuleSpec>,
        subset: Option<&str>,
    ) -> Found {
        let service_port = service.ports.iter().find(|p| p.port == port);
        let through = match self.ingress {
            true => self.mesh.ingress_waypoint_for_service(&key),
            false => None,
        };
        let endpoints = match (service_port, &through) {
            (Some(_), Some(_)) => service
                .vips
                .iter()
                .map(|vip| SocketAddr::new(*vip, port))
                .collect(),
            (Some(service_port), None) => self.endpoints(service, service_port, rule, subset),
            (None, _) => Vec::new(),
        };
        Found {
            key,
            protocol: service_port.map_or(Protocol::Tcp, Protocol::of),
            endpoints,
            resolve: None,
            through,
        }
    }

    /// Where the ServiceEntry for `host` sends `port`: its STATIC
    /// endpoints, else names to resolve as requests go out; a subset of an
    /// entry selects none.
    fn entry_endpoints(
        &self,
        host: &str,
        port: u16,
        subset: Option<&str>,
        load_balancer: Option<&LoadBalancerSettings>,
    ) -> Option<Found> {
        let (key, entry, _) = self.mesh.service_entry_for_host(host, self.namespace)?;
        let spec = &entry.spec;
        let entry_port = spec.ports.iter().find(|p| p.number == u32::from(port));
        let resolution = spec.resolution.unwrap_or(Resolution::None);
        let (endpoints, resolve) = match entry_port.filter(|_| subset.is_none()) {
            Some(entry_port) if resolution == Resolution::Static => (
                self.mesh.service_entry_endpoints(key, spec, entry_port),
                None,
            ),
            Some(entry_port) => (
                Vec::new(),
                Resolve::of(spec, resolution, entry_port, load_balancer),
            ),
            None => (Vec::new(), None),
        };
        Some(Found {
            key: key.clone(),
            protocol: entry_port.map_or(Protocol::Tcp, |p| Protocol::of(&entry_service_port(p))),
            endpoints,
            resolve,
            through: None,
        })
    }

    /// The ready endpoints of `service` at `port`, only those of the pods
    /// the subset's labels select; none for a subset no rule defines.
    fn endpoints(
        &self,
        service: &Service,
        port: &ServicePort,
        rule: Option<&DestinationRuleSpec>,
        subset: Option<&str>,
    ) -> Vec<SocketAddr> {
        let labels = match subset {
            None => None,
            Some(name) => match rule.and_then(|r| r.subsets.iter().find(|s| s.name == name)) {
                Some(subset) => Some(&subset.labels),
                None => return Vec::new(),
            },
        };
        service
            .endpoints
            .iter()
            .filter(|endpoint| endpoint.ready)
            .filter(|endpoint| {
                labels.is_none_or(|wanted| {
                    self.mesh
                        .workload_by_ip(endpoint.ip)
                        .is_some_and(|(_, workload)| {
                            wanted
                                .iter()
                                .all(|(key, value)| workload.labels.get(key) == Some(value))
                        })
                })
            })
            .map(|endpoint| SocketAddr::new(endpoint.ip, port.target_port))
            .collect()
    }
}

/// A ServiceEntry's port as a Service port: its protocol, as Istio reads
/// it, is the port's `appProtocol`.
fn entry_service_port(port: &networking::ServicePort) -> ServicePort {
    let number = u16::try_from(port.number).unwrap_or_default();
    ServicePort {
        name: Some(port.name.clone()),
        port: number,
        target_port: port
            .target_port
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(number),
        protocol: "TCP".to_string(),
        app_protocol: port.protocol.as_ref().map(|p| p.to_ascii_lowercase()),
    }
}

/// `outbound|PORT|SUBSET|HOST`, as Envoy's clusters are named.
fn cluster_name(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound|{port}|{}|{host}", subset.unwrap_or_default())
}

/// Whose traffic routes are compiled for: the mesh's own (a waypoint's),
/// or what arrives at one Gateway (an ingress gateway's).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Audience<'a> {
    Mesh,
    Gateway(&'a Key),
}

impl Audience<'_> {
    /// Whether a VirtualService in `namespace` with these `gateways` is
    /// for this audience: none written means the mesh alone.
    pub(crate) fn takes(self, gateways: &[String], namespace: &str) -> bool {
        match self {
            Self::Mesh => gateways.is_empty() || self.named(gateways, namespace),
            Self::Gateway(_) => self.named(gateways, namespace),
        }
    }

    /// Whether a match with these `gateways` holds for this audience: none
    /// written means those of its VirtualService.
    fn admits(self, gateways: &[String], namespace: &str) -> bool {
        gateways.is_empty() || self.named(gateways, namespace)
    }

    /// Whether `gateways` (written in `namespace`) names this audience: a
    /// Gateway as `NAMESPACE/NAME`, or by `NAME` alone in its own namespace.
    fn named(self, gateways: &[String], namespace: &str) -> bool {
        gateways.iter().any(|written| match self {
            Self::Mesh => written == MESH_GATEWAY,
            Self::Gateway(key) => match written.split_once('/') {
                Some((ns, name)) => ns == key.namespace && name == key.name,
                None => namespace == key.namespace && *written == key.name,
            },
        })
    }
}

/// The Service a fully qualified host names: `NAME.NAMESPACE.svc.cluster.local`.
fn service_key(host: &str) -> Option<Key> {
    let rest = host.strip_suffix(SERVICE_DOMAIN)?.strip_suffix('.')?;
    let (name, namespace) = rest.split_once('.')?;
    (!namespace.contains('.')).then(|| Key::new(namespace, name))
}

/// What the waypoint says of a field Istio accepts and leaves out.
pub const LEFT_OUT: &str = "not applied, as Istio does not apply it";

/// The fields of a VirtualService the waypoint leaves out as Istio does,
/// with why, by path (`spec.http[0].fault.delay.exponentialDelay`): the
/// rest of the VirtualService applies, and each is reported
/// (`routes.problems`, `ambit analyze`) rather than passed over in silence.
pub fn left_out_fields(spec: &VirtualServiceSpec) -> Vec<(String, &'static str)> {
    let mut fields = Vec::new();
    for (i, route) in spec.http.iter().enumerate() {
        if let Some(Ok((_, left_out))) = route.fault.as_ref().map(Fault::from_spec) {
            fields.extend(
                left_out
                    .into_iter()
                    .map(|f| (format!("spec.http[{i}].{f}"), LEFT_OUT)),
            );
        }
    }
    fields
}

/// Why the waypoint has nothing to act on in a locality setting.
const NO_LOCALITIES: &str =
    "not applied: Ambit has no localities (topology labels) to balance or fail over by";
/// What a DestinationRule field the waypoint does not apply comes to.
const NOT_APPLIED: &str = "not applied by the waypoint; the rest of the DestinationRule is";

/// The fields of a DestinationRule the waypoint does not act on, with why,
/// by path: reported by `ambit analyze` rather than accepted in silence.
pub fn left_out_destination_fields(spec: &DestinationRuleSpec) -> Vec<(String, &'static str)> {
    let mut fields = Vec::new();
    let mut policy = |at: String, policy: &TrafficPolicy| {
        let ports = policy.port_level_settings.iter().enumerate();
        // ISTIO_MUTUAL is what the waypoint does anyway (HBONE in mutual
        // TLS with the endpoint's identity), SIMPLE and MUTUAL it starts
        // (from files); DISABLE and a Secret's credentials it does not
        // apply.
        let other_tls = |tls: Option<&ClientTlsSettings>| {
            tls.is_some_and(|tls| {
                tls.mode == Some(TlsMode::Disable) || tls.credential_name.is_some()
            })
        };
        let levels = std::iter::once((
            at.clone(),
            policy.load_balancer.as_ref(),
            other_tls(policy.tls.as_ref()),
        ))
        .chain(ports.map(|(p, port)| {
            let at = format!("{at}.portLevelSettings[{p}]");
            (
                at,
                port.load_balancer.as_ref(),
                other_tls(port.tls.as_ref()),
            )
        }));
        for (at, balancer, tls) in levels {
            if tls {
                fields.push((format!("{at}.tls"), NOT_APPLIED));
            }
            let Some(balancer) = balancer else { continue };
            let set = [
                (
                    "localityLbSetting",
                    balancer.locality_lb_setting.is_some(),
                    NO_LOCALITIES,
                ),
                (
                    "zoneAwareLbSetting",
                    balancer.zone_aware_lb_setting.is_some(),
                    NO_LOCALITIES,
                ),
                ("warmup", balancer.warmup.is_some(), NOT_APPLIED),
                (
                    "warmupDurationSecs",
                    balancer.warmup_duration_secs.is_some(),
                    NOT_APPLIED,
                ),
                (
                    "backendUtilization",
                    balancer.backend_utilization.is_some(),
                    NOT_APPLIED,
                ),
            ];
            fields.extend(
                set.into_iter()
                    .filter(|(_, set, _)| *set)
                    .map(|(field, _, why)| (format!("{at}.loadBalancer.{field}"), why)),
            );
        }
        for (field, set) in [
            ("tunnel", policy.tunnel.is_some()),
            ("proxyProtocol", policy.proxy_protocol.is_some()),
        ] {
            if set {
                fields.push((format!("{at}.{field}"), NOT_APPLIED));
            }
        }
    };
    if let Some(top) = &spec.traffic_policy {
        policy("spec.trafficPolicy".to_string(), top);
    }
    for (s, subset) in spec.subsets.iter().enumerate() {
        if let Some(own) = &subset.traffic_policy {
            policy(format!("spec.subsets[{s}].trafficPolicy"), own);
        }
    }
    fields
}

/// A VirtualService's routes for `audience`, or why it cannot be used.
/// Delegated routes stand for their delegate's, merged as Istio merges them.
pub(crate) fn routes<'a>(
    mesh: &'a Mesh,
    key: &'a Key,
    spec: &'a VirtualServiceSpec,
    audience: Audience<'_>,
) -> Result<Routes<'a>, String> {
    let mut notes: Vec<String> = Vec::new();
    let mut expanded: Vec<(String, &'a str, networking::HttpRoute)> = Vec::new();
    for (i, route) in spec.http.iter().enumerate() {
        let at = format!("spec.http[{i}]");
        let Some(delegate) = &route.delegate else {
            expanded.push((at, &key.namespace, route.clone()));
            continue;
        };
        let delegate_key = Key::new(
            delegate.namespace.as_deref().unwrap_or(&key.namespace),
            &delegate.name,
        );
        let Some((delegate_key, config)) = mesh.delegate(&delegate_key, &key.namespace) else {
            notes.push(format!(
                "{at}.delegate: no VirtualService {delegate_key} without hosts exported to {}; \
                 the route is left out, as Istio leaves it out",
                key.namespace
            ));
            continue;
        };
        let problem =
            |what: String| format!("{at}.delegate: VirtualService {delegate_key}: {what}");
        if let Some(nested) = config.spec.http.iter().position(|r| r.delegate.is_some()) {
            return Err(problem(format!(
                "spec.http[{nested}].delegate: a delegate cannot delegate further"
            )));
        }
        for (d, merged) in delegate::merge_routes(route, &config.spec.http)
            .into_iter()
            .enumerate()
        {
            expanded.push((
                format!("{at} (delegated, route {d})"),
                &delegate_key.namespace,
                merged,
            ));
        }
    }
    let mut http = Vec::new();
    for (at, namespace, route) in expanded {
        let mut matches = Vec::new();
        for (m, matched) in route.matches.iter().enumerate() {
            if !audience.admits(&matched.gateways, &key.namespace) {
                continue;
            }
            matches.push(request_match(matched).map_err(|e| format!("{at}.match[{m}]: {e}"))?);
        }
        // Every alternative was for others.
        if !route.matches.is_empty() && matches.is_empty() {
            continue;
        }
        let (actions, left_out) = Actions::of(&route, &at)?;
        notes.extend(left_out);
        let mut destination_headers = Vec::new();
        for (d, destination) in route.route.iter().enumerate() {
            let headers = destination.headers.as_ref();
            let at = format!("{at}.route[{d}]");
            destination_headers.push((
                header_edits(headers.and_then(|h| h.request.as_ref()), &at, "request")?,
                header_edits(headers.and_then(|h| h.response.as_ref()), &at, "response")?,
            ));
        }
        http.push(MeshHttpRoute {
            name: route.name.clone(),
            matches,
            namespace,
            destinations: weights(route.route.iter().map(|r| (r.weight, &r.destination))),
            destination_headers,
            mirrors: mirrors(&route),
            actions,
        });
    }
    let mut tls = Vec::new();
    for route in &spec.tls {
        let destinations = weights(route.route.iter().map(|r| (r.weight, &r.destination)));
        let admitted = route
            .matches
            .iter()
            .filter(|m| audience.admits(&m.gateways, &key.namespace));
        for matched in admitted {
            tls.push(TlsMatch {
                sni_hosts: matched.sni_hosts.clone(),
                port: matched.port.and_then(|p| u16::try_from(p).ok()),
                destinations: destinations.clone(),
            });
        }
    }
    let mut tcp = Vec::new();
    for route in &spec.tcp {
        let destinations = weights(route.route.iter().map(|r| (r.weight, &r.destination)));
        if route.matches.is_empty() {
            tcp.push((None, destinations));
            continue;
        }
        let admitted = route
            .matches
            .iter()
            .filter(|m| audience.admits(&m.gateways, &key.namespace));
        for matched in admitted {
            let port = matched.port.and_then(|p| u16::try_from(p).ok());
            tcp.push((port, destinations.clone()));
        }
    }
    Ok(Routes {
        key,
        http,
        tls,
        tcp,
        notes,
    })
}

/// The `headers.request` or `headers.response` (`which`) of the route or
/// destination written at `at`; none: no edits.
fn header_edits(
    ops: Option<&HeaderOperations>,
    at: &str,
    which: &str,
) -> Result<HeaderEdits, String> {
    ops.map(|ops| HeaderEdits::from_spec(ops, &format!("{at}.headers.{which}")))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// A route's `mirror` (at `mirrorPercentage`, else the deprecated
/// `mirrorPercent`, else all requests) or `mirrors` (each at its own
/// `percentage`, else all).
fn mirrors(route: &networking::HttpRoute) -> Vec<(f64, Destination)> {
    let all = 100.0;
    match &route.mirror {
        Some(mirror) => {
            let percent = route
                .mirror_percentage
                .map(|p| p.value)
                .or(route.mirror_percent.map(f64::from))
                .unwrap_or(all);
            vec![(percent, mirror.clone())]
        }
        None => route
            .mirrors
            .iter()
            .map(|m| (m.percentage.map_or(all, |p| p.value), m.destination.clone()))
            .collect(),
    }
}

/// Weights as Istio reads them: a lone destination takes everything; when
/// none is weighted they share equally.
fn weights<'a>(destinations: impl Iterator<Item = (Option<i32>, &'a Destination)>) -> Weighted {
    let destinations: Vec<_> = destinations.collect();
    let unweighted = destinations.iter().all(|(weight, _)| weight.is_none());
    destinations
        .into_iter()
        .map(|(weight, destination)| {
            let weight = match weight {
                _ if unweighted => 1,
                Some(weight) => u32::try_from(weight).unwrap_or(0),
                None => 0,
            };
            (weight, destination.clone())
        })
        .collect()
}

fn request_match(matched: &HttpMatchRequest) -> Result<RequestMatch, regex::Error> {
    let compile = |m: &Option<ambit_config::api::types::StringMatch>| {
        m.as_ref().map(Matcher::compile).transpose()
    };
    let headers = |map: &BTreeMap<String, ambit_config::api::types::StringMatch>| {
        map.iter()
            .filter_map(|(name, m)| {
                // A name HTTP cannot carry matches no request.
                let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()?;
                Some(Matcher::compile(m).map(|m| (name, m)))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(RequestMatch {
        name: matched.name.clone(),
        uri: compile(&matched.uri)?,
        ignore_uri_case: matched.ignore_uri_case,
        scheme: compile(&matched.scheme)?,
        method: compile(&matched.method)?,
        authority: compile(&matched.authority)?,
        headers: headers(&matched.headers)?,
        without_headers: headers(&matched.without_headers)?,
        query_params: matched
            .query_params
            .iter()
            .map(|(name, m)| Matcher::compile(m).map(|m| (name.clone(), m)))
            .collect::<Result<_, _>>()?,
        port: matched.port.and_then(|p| u16::try_from(p).ok()),
        source_labels: matched.source_labels.clone(),
        source_namespace: matched.source_namespace.clone(),
    })
}

/// The traffic policy for one port of a subset, merged as Istio merges
/// it: the rule's top level, then its settings for the port, then the
/// subset's top level, then the subset's settings for the port. A setting
/// given replaces the one before it whole, and a port's settings replace
/// all of them: unset there means Istio's default, not inherited.
#[derive(Debug, Default, Clone, Copy)]
struct PortPolicy<'r> {
    load_balancer: Option<&'r LoadBalancerSettings>,
    connection_pool: Option<&'r ConnectionPoolSettings>,
    outlier_detection: Option<&'r OutlierDetection>,
    tls: Option<&'r ClientTlsSettings>,
    /// Set for the whole rule or a subset, never per port.
    retry_budget: Option<&'r RetryBudget>,
}

impl Resolve {
    /// How a ServiceEntry of `resolution` finds the endpoints of `port` by
    /// DNS; none for a resolution that does not.
    fn of(
        spec: &networking::ServiceEntrySpec,
        resolution: Resolution,
        port: &networking::ServicePort,
        load_balancer: Option<&LoadBalancerSettings>,
    ) -> Option<Self> {
        let names = match resolution {
            Resolution::Dns | Resolution::DnsRoundRobin => {
                let listed = ambit_config::model::dns_targets(spec, port);
                Names::Listed(
                    listed
                        .into_iter()
                        .map(|(name, port)| (name.to_string(), port))
                        .collect(),
                )
            }
            Resolution::DynamicDns => Names::OfRequest {
                hosts: spec.hosts.clone(),
                port: u16::try_from(port.target_port.unwrap_or(port.number)).ok()?,
            },
            Resolution::None | Resolution::Static => return None,
        };
        Some(Self {
            names,
            every_address: resolution == Resolution::Dns,
            load_balancer: load_balancer.cloned(),
        })
    }
}

impl<'r> PortPolicy<'r> {
    fn of(rule: Option<&'r DestinationRuleSpec>, subset: Option<&str>, port: u16) -> Self {
        let Some(rule) = rule else {
            return Self::default();
        };
        let subset_policy = subset
            .and_then(|name| rule.subsets.iter().find(|s| s.name == name))
            .and_then(|s| s.traffic_policy.as_deref());
        [rule.traffic_policy.as_deref(), subset_policy]
            .into_iter()
            .flatten()
            .fold(Self::default(), |merged, policy| merged.then(policy, port))
    }

    fn then(self, policy: &'r TrafficPolicy, port: u16) -> Self {
        let for_port = policy.port_level_settings.iter().find(|settings| {
            settings
                .port
                .as_ref()
                .is_some_and(|p| p.number == u32::from(port))
        });
        match for_port {
            Some(settings) => Self {
                load_balancer: settings.load_balancer.as_ref(),
                connection_pool: settings.connection_pool.as_ref(),
                outlier_detection: settings.outlier_detection.as_ref(),
                tls: settings.tls.as_ref(),
                retry_budget: policy.retry_budget.as_ref().or(self.retry_budget),
            },
            None => Self {
                load_balancer: policy.load_balancer.as_ref().or(self.load_balancer),
                connection_pool: policy.connection_pool.as_ref().or(self.connection_pool),
                outlier_detection: policy.outlier_detection.as_ref().or(self.outlier_detection),
                tls: policy.tls.as_ref().or(self.tls),
                retry_budget: policy.retry_budget.as_ref().or(self.retry_budget),
            },
        }
    }

    /// How the waypoint speaks to endpoints of a port read as `protocol`.
    /// HTTP/2 ports stay HTTP/2; an HTTP/1.1 port is upgraded to HTTP/2
    /// when `h2UpgradePolicy` says UPGRADE (the mesh default, which Istio
    /// reads from its mesh config, is not to); `useClientProtocol` passes
    /// on whichever the caller spoke, and then the upgrade policy is moot.
    fn upstream(&self, protocol: Protocol) -> Upstream {
        let http = self.connection_pool.and_then(|pool| pool.http.as_ref());
        match (protocol, http) {
            (Protocol::Tcp, _) => Upstream::Tcp,
            (_, Some(http)) if http.use_client_protocol == Some(true) => Upstream::AsClient,
            (Protocol::Http2, _) => Upstream::Http2,
            (Protocol::Http, Some(http))
                if http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) =>
            {
                Upstream::Http2
            }
            (Protocol::Http, _) => Upstream::Http1,
        }
    }
}

impl LoadBalancer {
    fn from_settings(settings: Option<&LoadBalancerSettings>, endpoints: &[SocketAddr]) -> Self {
        let hashed = settings
            .and_then(|s| s.consistent_hash.as_ref())
            .and_then(|hash| ConsistentHash::new(hash, endpoints));
        if let Some(hashed) = hashed {
            return Self::ConsistentHash(Arc::new(hashed));
        }
        match settings.and_then(|s| s.simple) {
            Some(SimpleLb::RoundRobin) => Self::RoundRobin,
            Some(SimpleLb::Random) => Self::Random,
            Some(SimpleLb::Passthrough) => Self::Passthrough,
            // Istio's default, and what LEAST_CONN was renamed to.
            Some(SimpleLb::LeastRequest | SimpleLb::LeastConn | SimpleLb::Unspecified) | None => {
                Self::LeastRequest
            }
        }
    }
}

mod delegate;
pub mod gateway;

#[cfg(test)]
mod tests;
