//! Wiring of the proxy's parts, started from `main`: one runner, with the
//! waypoint's front (HBONE from the agents) or the ingress gateway's
//! (listeners from Gateway servers) on the same pipeline.

use std::future::Future;
use std::sync::Arc;

use ambit_admin::{listen, AdminEndpoints, ConfigDump, Readiness, StopSignal};
use ambit_config::model::Mesh;
use ambit_identity::Identity;
use ambit_mesh_source::secrets::SecretWatches;
use ambit_mesh_source::{MeshHandle, Source, SourceThread};
use ambit_mesh_tls::hbone::MeshTls;
use ambit_route::{GatewayTables, RouteTables};
use ambit_telemetry::http::HttpMetrics;
use ambit_telemetry::trace::SpanKind;
use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::front::gateway::{self, Gateway};
use crate::front::hbone::{self, Shared};
use crate::front::{Credentials, Secrets};
use crate::http::authz::Authz;
use crate::http::spans::{Tracer, TracingConfig};
use crate::http::upstream::Upstream;
use crate::tables::{Compiled, Current, Tables};
use crate::Config;
use crate::Mode;

/// Runs the proxy until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let stop = StopSignal::install()?;
    tracing::info!(?config, "starting ambit-waypoint");
    let mesh = Arc::new(MeshHandle::default());
    // On a thread of its own: re-reading a large mesh must not stall traffic.
    let source = SourceThread::start(&config.source, mesh.clone())
        .await
        .context("reading the mesh configuration")?;
    let serving = match config.mode {
        Mode::Waypoint => {
            let waypoint = config.waypoint();
            let dumped = waypoint.0.clone();
            let front = Front {
                compile: move |mesh: &Mesh| ambit_route::compile(mesh, &waypoint),
                dump: move |current: &Current<RouteTables>| {
                    serde_json::json!({
                        "waypoint": dumped,
                        "services": &current.tables.bindings,
                        "routes": &current.tables,
                        "mesh": &current.mesh,
                    })
                },
                start: serve_hbone,
            };
            Serving::start(&config, &mesh, front).await?
        }
        Mode::Gateway => {
            let pod = config.pod.clone().context("gateway mode has a pod")?;
            let dumped = config.waypoint.clone();
            let front = Front {
                compile: move |mesh: &Mesh| {
                    let labels = mesh.workloads.get(&pod).map(|w| &w.labels);
                    let labels = labels.cloned().unwrap_or_default();
                    ambit_route::compile_gateway(mesh, &pod.namespace, &labels)
                },
                dump: move |current: &Current<GatewayTables>| {
                    serde_json::json!({
                        "gateway": dumped,
                        "routes": &current.tables,
                        "mesh": &current.mesh,
                    })
                },
                start: serve_gateway,
            };
            Serving::start(&config, &mesh, front).await?
        }
    };
    stop.received().await;
    serving.stop().await;
    drop(source);
    tracing::info!("stopped");
    ambit_admin::flush_access_log();
    Ok(())
}

/// What tells the two modes apart: the tables they compile, how their
/// config dump shows them, and the front that serves traffic by them.
struct Front<C, D, S> {
    compile: C,
    dump: D,
    start: S,
}

/// What a front serves with once the proxy holds an identity.
struct Parts<T> {
    tables: Arc<Tables<T>>,
    mesh_tls: Arc<MeshTls>,
    identity: Identity,
    upstream: Arc<Upstream>,
    metrics: Arc<HttpMetrics>,
    tracer: Option<Arc<Tracer>>,
    authz: Arc<Authz>,
    readiness: Readiness,
}

/// A running proxy.
struct Serving {
    readiness: Readiness,
    tasks: Vec<JoinHandle<()>>,
    admin: AdminEndpoints,
}

impl Serving {
    /// Starts compiling tables and serving admin endpoints, then, with
    /// the first tables in force, the front; ready once it listens.
    async fn start<T, C, D, S, F>(
        config: &Config,
        mesh: &Arc<MeshHandle>,
        front: Front<C, D, S>,
    ) -> anyhow::Result<Self>
    where
        T: Compiled,
        C: Fn(&Mesh) -> T + Clone + Send + 'static,
        D: Fn(&Current<T>) -> serde_json::Value + Send + Sync + 'static,
        S: FnOnce(Config, Parts<T>) -> F,
        F: Future<Output = anyhow::Result<JoinHandle<()>>>,
    {
        let tables = Arc::new(Tables::<T>::default());
        let compiling = tokio::spawn(tables.clone().keep_current(mesh.clone(), front.compile));
        let config_dump: ConfigDump = {
            let tables = tables.clone();
            let dump = front.dump;
            // The snapshot the tables in force were compiled from: a
            // change shows here once it routes requests.
            Arc::new(move || {
                tables
                    .current()
                    .map_or(serde_json::Value::Null, |c| dump(&c))
            })
        };
        let readiness = Readiness::default();
        let mut registry = Registry::default();
        ambit_admin::health::ProcessHealth::register(
            &mut registry,
            "ambit-waypoint",
            env!("CARGO_PKG_VERSION"),
        );
        let followed = mesh.clone();
        ambit_admin::health::ConfigVersion::register(&mut registry, move || followed.version());
        let metrics = Arc::new(HttpMetrics::register(&mut registry));
        let admin = AdminEndpoints::start(
            config.admin.clone(),
            readiness.clone(),
            Arc::new(registry),
            config_dump,
        )
        .await?;
        let mut tasks = vec![compiling];
        tables.first_compiled().await;
        // Upstreams are reached over HBONE in mutual TLS: without a CA the
        // proxy serves its admin endpoints and carries nothing.
        match &config.ca {
            Some(ca) => {
                let mesh_tls = Arc::new(ca.start()?);
                let identity = Identity::new(
                    ca.trust_domain.as_str(),
                    &config.waypoint.namespace,
                    &config.service_account,
                );
                mesh_tls.certificates().want([identity.clone()].into());
                let resolver = ambit_dns::Resolver::new(config.dns_server);
                let upstream =
                    Arc::new(Upstream::new(mesh_tls.clone(), identity.clone(), resolver));
                let authz = Arc::new(Authz {
                    mesh: tables.clone(),
                    waypoint: config.waypoint.clone(),
                    root_namespace: config.root_namespace.clone(),
                });
                let tracer = match &config.tracing {
                    Some(tracing) => {
                        let (tracer, exporter) = start_tracer(config, tracing, &ca.trust_domain)?;
                        tasks.push(exporter);
                        Some(tracer)
                    }
                    None => None,
                };
                let parts = Parts {
                    tables: tables.clone(),
                    mesh_tls,
                    identity,
                    upstream,
                    metrics,
                    tracer,
                    authz,
                    readiness: readiness.clone(),
                };
                tasks.push((front.start)(config.clone(), parts).await?);
            }
            None => tracing::warn!("no CA (--ca-addr): the proxy carries no traffic"),
        }
        readiness.set_ready(true);
        tracing::info!(mode = ?config.mode, name = %config.waypoint, "ready");
        Ok(Self {
            readiness,
            tasks,
            admin,
        })
    }

    async fn stop(self) {
        self.readiness.set_ready(false);
        for task in self.tasks {
            task.abort();
        }
        self.admin.stop().await;
    }
}

/// Spans of the proxy's requests, named as Istio names a proxy's: its
/// service `NAME.NAMESPACE`; a waypoint's spans are the server's side
/// (Envoy's inbound), a gateway's the client's (Istio's gateways trace as
/// outbound).
fn start_tracer(
    config: &Config,
    tracing: &TracingConfig,
    trust_domain: &str,
) -> anyhow::Result<(Arc<Tracer>, JoinHandle<()>)> {
    let kind = match config.mode {
        Mode::Waypoint => SpanKind::Server,
        Mode::Gateway => SpanKind::Client,
    };
    let proxy = &config.waypoint;
    let resource = vec![
        (
            "service.name",
            format!("{}.{}", proxy.name, proxy.namespace),
        ),
        ("istio.canonical_service", proxy.name.clone()),
        ("istio.namespace", proxy.namespace.clone()),
        ("istio.mesh_id", trust_domain.to_string()),
        ("component", "proxy".to_string()),
    ];
    Tracer::start(tracing, kind, resource)
}

/// The waypoint's front: HBONE from the agents.
async fn serve_hbone(config: Config, parts: Parts<RouteTables>) -> anyhow::Result<JoinHandle<()>> {
    let listener = listen::tcp_listener(config.hbone, listen::BACKLOG, false)
        .and_then(tokio::net::TcpListener::from_std)
        .with_context(|| format!("binding HBONE on {}", config.hbone))?;
    let shared = Arc::new(Shared {
        mesh_tls: parts.mesh_tls,
        identity: parts.identity,
        tables: parts.tables,
        upstream: parts.upstream,
        metrics: parts.metrics,
        tracer: parts.tracer,
        authz: parts.authz,
    });
    Ok(tokio::spawn(hbone::serve(
        listener,
        shared,
        parts.readiness,
    )))
}

/// The ingress gateway's front: the ports of its Gateways' servers, the
/// first of them open before it returns.
async fn serve_gateway(
    config: Config,
    parts: Parts<GatewayTables>,
) -> anyhow::Result<JoinHandle<()>> {
    // Secrets from the directory given, else from the API server (also
    // when the mesh comes through the agent's view), watched in the
    // gateway's own namespace.
    let secrets = match (config.credentials_dir, &config.source) {
        (Some(dir), _) => Secrets::Directory(dir),
        (None, Source::Directory(_)) => Secrets::None,
        (None, Source::Kubernetes { kubeconfig } | Source::AgentView { kubeconfig, .. }) => {
            let client = ambit_mesh_source::kubernetes::connect(kubeconfig.as_deref()).await?;
            Secrets::Kubernetes(SecretWatches::new(client, &config.waypoint.namespace))
        }
    };
    let gateway = Arc::new(Gateway {
        tables: parts.tables,
        upstream: parts.upstream,
        metrics: parts.metrics,
        tracer: parts.tracer,
        authz: parts.authz,
        credentials: Credentials::new(secrets),
        pod: config.pod.context("gateway mode has a pod")?,
        bind: ambit_admin::listen::EVERY_ADDRESS,
    });
    let listeners = gateway::Listeners::open(&gateway).await;
    Ok(tokio::spawn(listeners.keep_open(gateway)))
}
