//! Wiring of the agent's parts, started from `main`.

use std::sync::{Arc, Mutex};

use ambit_admin::{AdminEndpoints, ConfigDump, Readiness, StopSignal};
use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio_util::task::TaskTracker;

use crate::capture::Capture;
use crate::cni_install::{self, CniInstall};
use crate::config::Uninstall;
use crate::enrollment::Enrollment;
use crate::mesh_view::MeshView;
use crate::metrics::Metrics;
use crate::proxy::admission::PolicySettings;
use crate::proxy::ProxyInputs;
use crate::redirection::{self, Redirection};
use crate::{cni_server, Config};
use ambit_mesh_source::{MeshHandle, Source, SourceThread};

/// Runs the agent until SIGTERM or SIGINT, then drains.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let stop = StopSignal::install()?;
    tracing::info!(?config, "starting ambit-node-agent");
    raise_open_files_limit();

    let mesh = Arc::new(MeshHandle::default());
    let source = SourceThread::start(&config.source, mesh.clone())
        .await
        .context("reading the mesh configuration")?;
    let (capture, maps) = Capture::attach(
        &config.bpf_object,
        &config.capture_cgroup,
        &config.bpf_pin_dir,
        config.kernel_relay,
    )
    .context("starting traffic capture")?;
    tracing::info!(
        cgroup = %config.capture_cgroup.display(),
        kernel_relay = config.kernel_relay,
        "traffic capture attached"
    );

    let mut registry = Registry::default();
    let mesh_tls = match &config.ca {
        Some(ca) => Some(ca.start()?),
        None => {
            tracing::warn!("no --ca-addr: this agent holds no workload identities; traffic between agents is not encrypted");
            None
        }
    };
    let readiness = Readiness::default();
    let inputs = Arc::new(ProxyInputs {
        maps,
        mesh: mesh.clone(),
        metrics: Metrics::register(&mut registry, config.tcp_reporting),
        connections: TaskTracker::new(),
        mesh_tls,
        policy: PolicySettings {
            root_namespace: config.root_namespace.clone(),
            node_ips: crate::netns::addresses().context("reading the node's addresses")?,
        },
        readiness: readiness.clone(),
        turns: Default::default(),
        resolver: ambit_dns::Resolver::new(config.dns_server),
    });
    tokio::spawn({
        let inputs = inputs.clone();
        async move {
            if let Err(error) = inputs.maps.relay.dispatch_handovers().await {
                // Bulk connections would never be taken back: better to stop.
                tracing::error!(%error, "reading the in-kernel relay's handovers failed");
                std::process::abort();
            }
        }
    });
    let plugin_dir = config.cni_socket.parent().unwrap_or(&config.state_dir);
    let mut enrollment = Enrollment::new(capture, inputs.clone(), (&config.state_dir, plugin_dir));
    // In Kubernetes, captured pods are marked for Istio's proxies, and
    // waypoints and gateways are served the mesh view.
    if let Source::Kubernetes { kubeconfig } = &config.source {
        let client = ambit_mesh_source::kubernetes::connect(kubeconfig.as_deref()).await?;
        let redirection = Arc::new(Redirection::default());
        tokio::spawn(redirection::annotate(redirection.clone(), client.clone()));
        enrollment = enrollment
            .with_redirection(redirection)
            .with_mesh_view(MeshView::new(
                client,
                config.mesh_view_for.clone(),
                &mut registry,
            ));
    }
    let enrollment = Arc::new(Mutex::new(enrollment));
    lock(&enrollment)
        .restore()
        .context("restoring known pods")?;

    let cni = cni_server::bind(&config.cni_socket)
        .with_context(|| format!("binding the CNI socket {}", config.cni_socket.display()))?;
    let cni_task = tokio::spawn(cni_server::serve(cni, enrollment.clone()));
    // The plugin and its entry on the node, once the socket answers.
    let cni_install = match config.cni_install.clone() {
        Some(install) => {
            install.install_plugin()?;
            let install = Arc::new(install);
            Some((install.clone(), tokio::spawn(cni_install::keep(install))))
        }
        None => None,
    };
    let reconcile_task = {
        let (mut changes, enrollment) = (mesh.subscribe(), enrollment.clone());
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let enrollment = enrollment.clone();
                let _ = tokio::task::spawn_blocking(move || lock(&enrollment).reconcile()).await;
            }
        })
    };

    tokio::spawn(watchdog(readiness.clone(), enrollment.clone()));
    ambit_admin::health::ProcessHealth::register(
        &mut registry,
        "ambit-node-agent",
        env!("CARGO_PKG_VERSION"),
    );
    if inputs.mesh_tls.is_some() {
        registry.register_collector(Box::new(CertificateExpiry(inputs.clone())));
    }
    let followed = mesh.clone();
    ambit_admin::health::ConfigVersion::register(&mut registry, move || followed.version());
    let registry = Arc::new(registry);
    let config_dump: ConfigDump = {
        let (mesh, enrollment, inputs) = (mesh.clone(), enrollment.clone(), inputs.clone());
        Arc::new(move || {
            serde_json::json!({
                "mesh": *mesh.snapshot(),
                "pods": lock(&enrollment).describe(),
                "certificates": inputs.mesh_tls.as_ref().map(|m| m.certificates().describe()),
            })
        })
    };
    let admin = AdminEndpoints::start(
        config.admin.clone(),
        readiness.clone(),
        registry,
        config_dump,
    )
    .await?;
    readiness.set_ready(true);
    tracing::info!(enrolled = lock(&enrollment).enrolled_count(), "ready");

    stop.received().await;
    readiness.set_ready(false);
    // Probes now go to the agent that takes over (it binds the same ports).
    admin.stop().await;
    cni_task.abort();
    drop(source);
    reconcile_task.abort();
    lock(&enrollment).stop_accepting();
    inputs.connections.close();
    let open = inputs.connections.len();
    tracing::info!(open, "draining connections");
    if tokio::time::timeout(config.drain_timeout, inputs.connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = inputs.connections.len(),
            "drain deadline passed; closing the rest"
        );
    }
    if let Some((install, keeping)) = cni_install {
        keeping.abort();
        uninstall_if_asked(&config, &install).await;
    }
    drop(enrollment);
    // Capture stays (pinned): until the next agent takes it over, the
    // enrolled pods' new connections fail rather than bypass the mesh.
    tracing::info!("stopped; capture stays in place for the next agent");
    Ok(())
}

/// Takes the CNI plugin and its entry out of the node when the agent is
/// being uninstalled, not restarted or upgraded. When that cannot be told
/// (the API server does not answer), they stay: a node whose pods cannot
/// start is repaired by the next agent; one whose pods skip the mesh is not.
async fn uninstall_if_asked(config: &Config, install: &CniInstall) {
    let uninstall = match &config.cni_uninstall {
        Uninstall::Never => false,
        Uninstall::Always => true,
        Uninstall::IfDaemonsetRemoved { namespace, name } => {
            let kubeconfig = match &config.source {
                Source::Kubernetes { kubeconfig } => kubeconfig.as_deref(),
                Source::Directory(_) | Source::AgentView { .. } => None,
            };
            match ambit_mesh_source::kubernetes::daemonset_removed(kubeconfig, namespace, name)
                .await
            {
                Ok(removed) => removed,
                Err(error) => {
                    tracing::warn!(%error, "cannot tell an uninstall from an upgrade: the CNI plugin stays");
                    false
                }
            }
        }
    };
    if uninstall {
        match install.uninstall() {
            Ok(()) => tracing::info!("CNI plugin and entry removed: the node is out of the mesh"),
            Err(error) => tracing::error!(%error, "removing the CNI plugin and entry"),
        }
    }
}

/// When each workload certificate the agent holds expires, at each scrape:
/// a renewal that stopped shows as an expiry coming near.
struct CertificateExpiry(Arc<ProxyInputs>);

impl std::fmt::Debug for CertificateExpiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertificateExpiry")
    }
}

impl prometheus_client::collector::Collector for CertificateExpiry {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let Some(mesh_tls) = &self.0.mesh_tls else {
            return Ok(());
        };
        let held = mesh_tls.certificates().describe();
        let mut family = encoder.encode_descriptor(
            "ambit_certificate_expiration_timestamp_seconds",
            "When each workload certificate the agent holds expires, in seconds since the Unix epoch",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for certificate in held {
            let labels = vec![("identity", certificate.identity.as_str())];
            let gauge =
                prometheus_client::metrics::gauge::ConstGauge::new(certificate.not_after as i64);
            gauge.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Every proxied connection holds four descriptors (two sockets, two pipes
/// once it carries bulk data): take all the descriptors the system allows.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open files limit"),
            Err(error) => tracing::warn!(%error, "could not raise the open files limit"),
        },
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not read the open files limit"),
    }
}

/// Beats the liveness heartbeat while the runtime, the blocking pool and
/// enrollment all make progress: a wedged agent (a pod's namespace that
/// never opens, a lock never released) then fails its liveness probe and
/// is restarted, rather than hold up every pod of the node.
async fn watchdog(readiness: Readiness, enrollment: Arc<Mutex<Enrollment>>) {
    let mut ticks = tokio::time::interval(ambit_admin::LIVENESS_WINDOW / 5);
    loop {
        ticks.tick().await;
        let enrollment = enrollment.clone();
        if tokio::task::spawn_blocking(move || drop(lock(&enrollment)))
            .await
            .is_ok()
        {
            readiness.beat();
        }
    }
}

fn lock(enrollment: &Mutex<Enrollment>) -> std::sync::MutexGuard<'_, Enrollment> {
    enrollment
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
