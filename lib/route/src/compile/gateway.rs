//! An ingress gateway's tables: the servers of the Gateways whose selector
//! its pod's labels match, by port, each with the virtual hosts that the
//! VirtualServices bound to its Gateway give its hosts (HTTP, terminated
//! TLS), or their `tls` routes by server name (PASSTHROUGH). As Istio
//! builds a gateway's listeners and routes, VirtualServices for one host
//! at a gateway are merged, oldest first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ambit_config::api::networking::{Server, ServerTlsMode, TlsProtocol};
use ambit_config::document::qualify_host;
use ambit_config::hosts::{covers, rank};
use ambit_config::model::{Key, Labels, Mesh, ServicePort};
use serde::Serialize;

use super::{routes, Audience, Compiler, HttpRoute, PortTable, Protocol, Routes, WeightedBackend};

/// Everything an ingress gateway listens for and routes by.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTables {
    /// By port number.
    pub listeners: BTreeMap<u16, Listener>,
    /// What could not be compiled, by object: left out.
    pub problems: BTreeMap<String, String>,
}

/// The servers on one port: plaintext HTTP, TLS chosen by server name, or
/// TCP carried whole.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub port: u16,
    pub protocol: ListenerProtocol,
    pub servers: Vec<Arc<ServerTable>>,
}

/// What a port's connections open with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ListenerProtocol {
    /// Plaintext HTTP.
    Http,
    /// A TLS handshake, ended or passed through.
    Tls,
    /// Anything: bytes carried to the first server's TCP route.
    Tcp,
}

impl Listener {
    /// The server a TLS connection naming `sni` is for: the one whose
    /// hosts name it most specifically; without a name, the first server
    /// that takes any.
    pub fn server(&self, sni: Option<&str>) -> Option<&Arc<ServerTable>> {
        best(self.servers.iter(), |server| {
            server
                .hosts
                .iter()
                .filter_map(|pattern| match sni {
                    Some(name) => rank(pattern, name),
                    None => (pattern == "*").then_some(0),
                })
                .max()
        })
    }

    /// The virtual host a plaintext request for `host` takes, among all
    /// the servers of the port (Istio merges them into one route table).
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        best(
            self.servers.iter().flat_map(|s| s.virtual_hosts.iter()),
            |virtual_host| rank(&virtual_host.domain, host),
        )
    }
}

/// One server of a Gateway.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerTable {
    pub gateway: Key,
    /// Its `name`, else its port's.
    pub name: String,
    /// The host names it serves (namespace part dropped).
    pub hosts: Vec<String>,
    pub mode: ServerMode,
    /// For HTTP, plaintext or terminated: by host name.
    pub virtual_hosts: Vec<VirtualHost>,
    /// For PASSTHROUGH: by server name, the first that matches decides.
    pub tls_routes: Vec<TlsRoute>,
    /// For TCP: the destinations of the first `tcp` route for its port.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp_route: Vec<WeightedBackend>,
}

impl ServerTable {
    /// The virtual host a request for `host` takes on this server.
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        best(self.virtual_hosts.iter(), |v| rank(&v.domain, host))
    }

    /// Where a passed-through connection naming `sni` goes.
    pub fn tls_route(&self, sni: Option<&str>) -> Option<&TlsRoute> {
        self.tls_routes.iter().find(|route| {
            route.sni_hosts.is_empty()
                || sni.is_some_and(|name| route.sni_hosts.iter().any(|p| rank(p, name).is_some()))
        })
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ServerMode {
    /// Plaintext HTTP; `https_redirect` answers every request with a
    /// redirect to HTTPS instead (`tls.httpsRedirect`).
    Http { https_redirect: bool },
    /// TLS ended at the gateway, HTTP inside.
    Terminate(TlsTermination),
    /// TLS passed on whole to where the server name routes it.
    Passthrough,
    /// Bytes carried whole (`protocol: TCP`, or another that is neither
    /// HTTP nor TLS) to the server's TCP route.
    Tcp,
}

impl ServerMode {
    /// What the server's connections open with.
    fn listener_protocol(&self) -> ListenerProtocol {
        match self {
            Self::Http { .. } => ListenerProtocol::Http,
            Self::Terminate(_) | Self::Passthrough => ListenerProtocol::Tls,
            Self::Tcp => ListenerProtocol::Tcp,
        }
    }
}

/// What a server asks of its clients' certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ClientCertificates {
    /// SIMPLE: none asked for.
    Unasked,
    /// MUTUAL: one the CA bundle signs, or no connection.
    Required,
    /// OPTIONAL_MUTUAL: one the CA bundle signs if the client offers one.
    Optional,
}

impl ClientCertificates {
    /// Whether certificates are checked, against a CA bundle.
    pub fn checked(self) -> bool {
        self != Self::Unasked
    }
}

/// How a server ends TLS (`tls` of mode SIMPLE, MUTUAL or OPTIONAL_MUTUAL).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsTermination {
    /// Whether clients present a certificate the CA bundle signs.
    pub clients: ClientCertificates,
    pub credential: Credential,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_version: Option<TlsProtocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_version: Option<TlsProtocol>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    /// For MUTUAL: the names a client certificate must carry one of.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// Where a server's certificate, key and (for MUTUAL) CA bundle are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Credential {
    /// Files the gateway reads (`serverCertificate`, `privateKey`,
    /// `caCertificates`).
    Files {
        certificate: String,
        private_key: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        ca_certificates: Option<String>,
    },
    /// A Secret in the gateway's namespace (`credentialName`), with the CA
    /// bundle in its `ca.crt` or in the Secret `caCertCredentialName`.
    Secret {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        ca_name: Option<String>,
    },
}

/// A host name of a server and the routes for it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualHost {
    pub domain: String,
    /// The VirtualServices whose routes these are, in order.
    pub virtual_services: Vec<Key>,
    pub table: Arc<PortTable>,
}

/// An alternative of a `tls` route: the server names it takes (none:
/// all) and where their connections go.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    pub sni_hosts: Vec<String>,
    pub destinations: Vec<WeightedBackend>,
}

/// The tables of the gateway whose pod, in `namespace`, has `labels`.
pub fn compile_gateway(mesh: &Mesh, namespace: &str, labels: &Labels) -> GatewayTables {
    let mut tables = GatewayTables::default();
    let mut compiler = Compiler {
        mesh,
        namespace,
        backends: HashMap::new(),
        ingress: true,
    };
    // The VirtualServices, oldest first, as Istio merges them at gateways.
    let mut virtual_services: Vec<_> = mesh.virtual_services.iter().collect();
    virtual_services.sort_by_key(|(key, config)| {
        let created = config.created.as_deref();
        (created.is_none(), created, &key.name, &key.namespace)
    });
    let selected = mesh.gateways.iter().filter(|(_, gateway)| {
        let selector = &gateway.spec.selector;
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    });
    for (gateway, config) in selected {
        let audience = Audience::Gateway(gateway);
        let bound: Vec<Routes<'_>> = virtual_services
            .iter()
            .filter(|(key, vs)| audience.takes(&vs.spec.gateways, &key.namespace))
            .filter_map(|(key, vs)| match routes(mesh, key, &vs.spec, audience) {
                Ok(routes) => {
                    if !routes.notes.is_empty() {
                        tables
                            .problems
                            .insert(format!("VirtualService {key}"), routes.notes.join("; "));
                    }
                    Some(routes)
                }
                Err(problem) => {
                    tables
                        .problems
                        .insert(format!("VirtualService {key}"), problem);
                    None
                }
            })
            .collect();
        for (i, server) in config.spec.servers.iter().enumerate() {
            let at = format!("Gateway {gateway}");
            let compiled = compiler.server(gateway, server, &bound);
            let table = match compiled {
                Ok(table) => table,
                Err(problem) => {
                    report(
                        &mut tables.problems,
                        at,
                        format!("spec.servers[{i}]: {problem}"),
                    );
                    continue;
                }
            };
            let Ok(port) = u16::try_from(server.port.number) else {
                continue;
            };
            let protocol = table.mode.listener_protocol();
            let listener = tables.listeners.entry(port).or_insert_with(|| Listener {
                port,
                protocol,
                servers: Vec::new(),
            });
            // A TCP port carries its first server's route: nothing tells
            // one server's connections from another's.
            if listener.protocol != protocol
                || protocol == ListenerProtocol::Tcp && !listener.servers.is_empty()
            {
                let problem = format!(
                    "spec.servers[{i}]: port {port} is already served as {:?} by another server; \
                     this server is left out",
                    listener.protocol
                );
                report(&mut tables.problems, at, problem);
                continue;
            }
            listener.servers.push(Arc::new(table));
        }
    }
    tables
}

impl<'a> Compiler<'a> {
    /// One server of `gateway`, routed by the VirtualServices `bound` to it.
    fn server(
        &mut self,
        gateway: &Key,
        server: &Server,
        bound: &[Routes<'a>],
    ) -> Result<ServerTable, String> {
        let protocol = server
            .port
            .protocol
            .as_deref()
            .unwrap_or("HTTP")
            .to_ascii_uppercase();
        let tls = server.tls.as_ref();
        let mode = match (protocol.as_str(), tls.and_then(|t| t.mode)) {
            ("HTTP" | "HTTP2" | "GRPC", _) => ServerMode::Http {
                https_redirect: tls.and_then(|t| t.https_redirect).unwrap_or(false),
            },
            ("HTTPS" | "TLS", Some(ServerTlsMode::Passthrough)) => ServerMode::Passthrough,
            (
                "HTTPS",
                Some(ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual),
            ) => ServerMode::Terminate(termination(server)?),
            (_, Some(mode)) => {
                let mode = match mode {
                    ServerTlsMode::Passthrough => "PASSTHROUGH",
                    ServerTlsMode::Simple => "SIMPLE",
                    ServerTlsMode::Mutual => "MUTUAL",
                    ServerTlsMode::AutoPassthrough => "AUTO_PASSTHROUGH",
                    ServerTlsMode::IstioMutual => "ISTIO_MUTUAL",
                    ServerTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
                };
                return Err(format!(
                    "port protocol {protocol} with tls.mode {mode} is not served by Ambit's gateway"
                ));
            }
            ("HTTPS" | "TLS", None) => {
                return Err(format!("port protocol {protocol} needs tls.mode"))
            }
            (_, None) => ServerMode::Tcp,
        };
        // Host patterns with the namespaces they admit VirtualServices from.
        let hosts: Vec<(&str, &str)> = server
            .hosts
            .iter()
            .map(|host| match host.split_once('/') {
                Some((".", dns)) => (gateway.namespace.as_str(), dns),
                Some((namespace, dns)) => (namespace, dns),
                None => ("*", host.as_str()),
            })
            .collect();
        let mut table = ServerTable {
            gateway: gateway.clone(),
            name: server.name.clone().unwrap_or(server.port.name.clone()),
            hosts: hosts.iter().map(|(_, dns)| dns.to_string()).collect(),
            mode,
            virtual_hosts: Vec::new(),
            tls_routes: Vec::new(),
            tcp_route: Vec::new(),
        };
        let port = u16::try_from(server.port.number).map_err(|_| "port.number above 65535")?;
        let arrived = ServicePort {
            name: Some(server.port.name.clone()),
            port,
            target_port: port,
            protocol: "TCP".to_string(),
            app_protocol: Some("http".to_string()),
        };
        // Per domain, in order: the VirtualServices that route it.
        let mut domains: BTreeMap<String, Vec<&Routes<'a>>> = BTreeMap::new();
        for routes in bound {
            let vs_namespace = routes.key.namespace.as_str();
            let vs = &self.mesh.virtual_services[routes.key];
            for host in &vs.spec.hosts {
                let host = qualify_host(host, vs_namespace);
                let domain = hosts
                    .iter()
                    .filter(|(namespace, _)| *namespace == "*" || *namespace == vs_namespace)
                    .find_map(|(_, dns)| intersect(dns, &host));
                if let Some(domain) = domain {
                    let listed = domains.entry(domain).or_default();
                    if !listed.iter().any(|r| r.key == routes.key) {
                        listed.push(routes);
                    }
                }
            }
        }
        if let ServerMode::Tcp = table.mode {
            let first = domains.values().flatten().find_map(|routes| {
                let route = routes.tcp.iter().find(|(p, _)| p.is_none_or(|p| p == port));
                Some((routes, route?))
            });
            if let Some((routes, (_, destinations))) = first {
                table.tcp_route = self.weighted(&routes.key.namespace, "", &arrived, destinations);
            }
            return Ok(table);
        }
        if let ServerMode::Passthrough = table.mode {
            for routes in domains.values().flatten() {
                for tls in routes
                    .tls
                    .iter()
                    .filter(|t| t.port.is_none_or(|p| p == port))
                {
                    let destinations =
                        self.weighted(&routes.key.namespace, "", &arrived, &tls.destinations);
                    table.tls_routes.push(TlsRoute {
                        sni_hosts: tls.sni_hosts.clone(),
                        destinations,
                    });
                }
            }
            return Ok(table);
        }
        for (domain, routed_by) in domains {
            let mut http: Vec<HttpRoute> = Vec::new();
            for routes in &routed_by {
                http.extend(self.http_routes(routes, &domain, &arrived));
            }
            let table_for_host = PortTable {
                service: Key::new("", ""),
                host: domain.clone(),
                virtual_service: routed_by.first().map(|r| r.key.clone()),
                port,
                protocol: Protocol::Http,
                http,
                tcp: Vec::new(),
            };
            table.virtual_hosts.push(VirtualHost {
                domain,
                virtual_services: routed_by.iter().map(|r| r.key.clone()).collect(),
                table: Arc::new(table_for_host),
            });
        }
        Ok(table)
    }
}

/// Adds `problem` to what is reported of `object`.
fn report(problems: &mut BTreeMap<String, String>, object: String, problem: String) {
    problems
        .entry(object)
        .and_modify(|reported| {
            reported.push_str("; ");
            reported.push_str(&problem);
        })
        .or_insert(problem);
}

/// The TLS a SIMPLE, MUTUAL or OPTIONAL_MUTUAL server ends.
fn termination(server: &Server) -> Result<TlsTermination, String> {
    let Some(tls) = server.tls.as_ref() else {
        return Err("HTTPS needs tls".to_string());
    };
    let clients = match tls.mode {
        Some(ServerTlsMode::Mutual) => ClientCertificates::Required,
        Some(ServerTlsMode::OptionalMutual) => ClientCertificates::Optional,
        _ => ClientCertificates::Unasked,
    };
    let credential = match (
        &tls.credential_name,
        &tls.server_certificate,
        &tls.private_key,
    ) {
        (Some(name), _, _) => Credential::Secret {
            name: name.clone(),
            ca_name: tls.ca_cert_credential_name.clone(),
        },
        (None, Some(certificate), Some(private_key)) => Credential::Files {
            certificate: certificate.clone(),
            private_key: private_key.clone(),
            ca_certificates: tls.ca_certificates.clone(),
        },
        _ => {
            return Err("tls needs credentialName, or serverCertificate and privateKey".to_string())
        }
    };
    if clients.checked() {
        let has_ca = match &credential {
            // A Secret may hold its CA bundle in ca.crt: known once read.
            Credential::Secret { .. } => true,
            Credential::Files {
                ca_certificates, ..
            } => ca_certificates.is_some(),
        };
        if !has_ca {
            return Err(
                "tls.mode MUTUAL and OPTIONAL_MUTUAL need caCertificates to verify clients by"
                    .to_string(),
            );
        }
    }
    Ok(TlsTermination {
        clients,
        credential,
        min_version: tls.min_protocol_version,
        max_version: tls.max_protocol_version,
        cipher_suites: tls.cipher_suites.clone(),
        subject_alt_names: tls.subject_alt_names.clone(),
    })
}

/// The names both `a` and `b` take, when one takes all the other does:
/// the narrower of the two (`*` and `*.example.com` give `*.example.com`).
fn intersect(a: &str, b: &str) -> Option<String> {
    if covers(a, b) {
        Some(b.to_string())
    } else if covers(b, a) {
        Some(a.to_string())
    } else {
        None
    }
}

/// The item `score` ranks highest (the first among equals).
fn best<'i, T>(
    items: impl Iterator<Item = &'i T>,
    score: impl Fn(&T) -> Option<usize>,
) -> Option<&'i T> {
    let mut chosen: Option<(&T, usize)> = None;
    for item in items {
        if let Some(s) = score(item) {
            if chosen.is_none_or(|(_, best)| s > best) {
                chosen = Some((item, s));
            }
        }
    }
    chosen.map(|(item, _)| item)
}

#[cfg(test)]
mod tests;
