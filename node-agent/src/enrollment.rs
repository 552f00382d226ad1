//! Which pods the agent captures. Pods arrive from the CNI plugin; the mesh
//! configuration says which of them are in the mesh; enrollment keeps
//! capture and listeners in step with both, and remembers the pods across
//! agent restarts.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ambit_cni::policy::{self, EnrollmentPolicy};
use ambit_cni::protocol::{PodRef, PodSandbox, Request, Response};

use crate::capture::{Capture, CaptureError, PodCapture};
use crate::mesh_view::{MeshView, ViewServer};
use crate::netns::{self, Netns, NetnsError};
use crate::proxy::{self, PodContext, PodListeners, PodProxy, ProxyInputs, OUTBOUND_LISTENER};
use crate::redirection::Redirection;
use ambit_config::model::{Key, Mesh, DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL};

const STATE_FILE: &str = "pods.json";

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "pod {0} has no address: no IPv4 address in the CNI result, no IPv6 address in its \
         network namespace"
    )]
    NoAddress(PodRef),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("preparing routing in the pod's namespace: {0}")]
    Routing(std::io::Error),
    #[error("opening the agent's listeners in the pod's namespace: {0}")]
    Listeners(std::io::Error),
    #[error("reading the addresses of the pod's namespace: {0}")]
    Addresses(std::io::Error),
    #[error(transparent)]
    Capture(#[from] CaptureError),
}

/// A known pod as the config dump shows it.
#[derive(serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(flatten)]
    pub pod: PodRef,
    pub ips: Vec<Ipv4Addr>,
    pub netns: String,
    pub enrolled: bool,
    /// Served the mesh view (a waypoint's or gateway's pod).
    pub mesh_view: bool,
}

/// A pod the agent knows, enrolled or not.
struct KnownPod {
    sandbox: PodSandbox,
    enrolled: Option<Enrolled>,
    /// For a waypoint's or gateway's pod: the mesh view served to it.
    view: Option<ViewServer>,
}

struct Enrolled {
    capture: PodCapture,
    /// Stops the pod's accept loops when dropped.
    proxy: PodProxy,
}

/// How long a released pod's listeners stay open after its capture is
/// gone: a connection steered to them just before may still wait in their
/// queue, and closing them would reset it. Nothing new reaches them.
const RELEASE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Enrollment {
    capture: Capture,
    inputs: Arc<ProxyInputs>,
    pods: BTreeMap<PodRef, KnownPod>,
    state_file: PathBuf,
    /// Beside the CNI socket: the record of enrollment the plugin judges
    /// pods by while the agent is unreachable, and the pods it started then.
    plugin_dir: PathBuf,
    /// The record as last written.
    recorded: Option<EnrollmentPolicy>,
    /// In Kubernetes: marks on the pods captured, for Istio's proxies.
    redirection: Option<Arc<Redirection>>,
    /// In Kubernetes: the mesh view, for the pods labelled for it.
    mesh_view: Option<Arc<MeshView>>,
}

impl Enrollment {
    pub fn new(
        capture: Capture,
        inputs: Arc<ProxyInputs>,
        (state_dir, plugin_dir): (&Path, &Path),
    ) -> Self {
        Self {
            capture,
            inputs,
            pods: BTreeMap::new(),
            state_file: state_dir.join(STATE_FILE),
            plugin_dir: plugin_dir.to_path_buf(),
            recorded: None,
            redirection: None,
            mesh_view: None,
        }
    }

    /// Marks the pods it captures (and releases) through `redirection`.
    pub fn with_redirection(mut self, redirection: Arc<Redirection>) -> Self {
        self.redirection = Some(redirection);
        self
    }

    /// Serves the mesh view to the pods it allows (`view::serves`).
    pub fn with_mesh_view(mut self, mesh_view: Arc<MeshView>) -> Self {
        self.mesh_view = Some(mesh_view);
        self
    }

    /// Tells the certificate keeper which identities the enrolled pods run as.
    fn want_identities(&self) {
        let Some(mesh_tls) = &self.inputs.mesh_tls else {
            return;
        };
        let certificates = mesh_tls.certificates();
        let snapshot = self.inputs.mesh.snapshot();
        let wanted = self
            .pods
            .values()
            .filter(|known| known.enrolled.is_some())
            .filter_map(|known| {
                let pod = &known.sandbox.pod;
                certificates.identity_of(&snapshot, &pod.namespace, &pod.name)
            })
            .collect();
        certificates.want(wanted);
    }

    /// Re-learns the pods a previous agent knew (those whose namespace still
    /// exists) and enrolls them as the mesh configuration says.
    pub fn restore(&mut self) -> anyhow::Result<()> {
        let sandboxes: Vec<PodSandbox> = match std::fs::read(&self.state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error.into()),
        };
        // And the pods the plugin started while no agent answered (newer).
        let handed_over = policy::take_handed_over(&self.plugin_dir);
        for sandbox in sandboxes
            .into_iter()
            .chain(handed_over)
            .filter(|sandbox| sandbox.netns.exists())
        {
            self.pods.insert(
                sandbox.pod.clone(),
                KnownPod {
                    sandbox,
                    enrolled: None,
                    view: None,
                },
            );
        }
        tracing::info!(pods = self.pods.len(), "restored known pods");
        self.reconcile();
        self.persist();
        Ok(())
    }

    /// Every known pod and whether it is enrolled, for the config dump.
    pub fn describe(&self) -> Vec<PodStatus> {
        self.pods
            .values()
            .map(|known| PodStatus {
                pod: known.sandbox.pod.clone(),
                ips: known.sandbox.ips.clone(),
                netns: known.sandbox.netns.display().to_string(),
                enrolled: known.enrolled.is_some(),
                mesh_view: known.view.is_some(),
            })
            .collect()
    }

    pub fn enrolled_count(&self) -> usize {
        self.pods
            .values()
            .filter(|pod| pod.enrolled.is_some())
            .count()
    }

    /// Answers the CNI plugin.
    pub fn handle(&mut self, request: Request) -> Response {
        let snapshot = self.inputs.mesh.snapshot();
        match request {
            Request::Add(sandbox) => match self.add(sandbox, &snapshot) {
                Ok(enrolled) => Response::Ok { enrolled },
                Err(error) => Response::Error {
                    message: error.to_string(),
                },
            },
            Request::Del { pod, container_id } => {
                // A late DEL of a sandbox the pod no longer has leaves the
                // current one alone.
                let current = self
                    .pods
                    .get(&pod)
                    .is_some_and(|known| known.sandbox.container_id == container_id);
                if current {
                    self.forget(&pod);
                    self.persist();
                    self.want_identities();
                }
                Response::Ok { enrolled: false }
            }
            Request::Check(sandbox) => {
                let should = snapshot.is_enrolled(&sandbox.pod.namespace, &sandbox.pod.name);
                match self.pods.get(&sandbox.pod) {
                    Some(known) if known.enrolled.is_some() == should => {
                        Response::Ok { enrolled: should }
                    }
                    Some(_) => Response::Error {
                        message: format!(
                            "pod {} should {}be enrolled but is {}",
                            sandbox.pod,
                            if should { "" } else { "not " },
                            if should { "not" } else { "enrolled" }
                        ),
                    },
                    None => Response::Error {
                        message: format!("pod {} is unknown to the node agent", sandbox.pod),
                    },
                }
            }
        }
    }

    /// Takes `sandbox` as its pod's, enrolled if the mesh says so; returns
    /// whether it is. The pod's previous sandbox is let go only once the new
    /// one is in place: a failed ADD leaves an enrolled pod enrolled. (A
    /// pod that could not be enrolled is not kept: the runtime fails the
    /// sandbox and retries with a new one.)
    fn add(&mut self, sandbox: PodSandbox, snapshot: &Mesh) -> Result<bool, EnrollError> {
        let pod = sandbox.pod.clone();
        if let Some(mut known) = self.pods.remove(&pod) {
            if known.sandbox == sandbox {
                // The same ADD again, as a runtime retries one: what the pod
                // holds stays.
                let outcome = self.converge(&mut known, snapshot);
                let enrolled = known.enrolled.is_some();
                self.pods.insert(pod, known);
                return outcome.map(|()| enrolled);
            }
            if known.sandbox.netns == sandbox.netns {
                // Capture of one namespace cannot be held twice.
                self.release(&mut known);
                self.persist();
            } else {
                self.pods.insert(pod.clone(), known);
            }
        }
        let mut known = KnownPod {
            sandbox,
            enrolled: None,
            view: None,
        };
        self.converge(&mut known, snapshot)?;
        let enrolled = known.enrolled.is_some();
        self.forget(&pod);
        self.pods.insert(pod, known);
        self.persist();
        self.want_identities();
        Ok(enrolled)
    }

    /// Brings every known pod in line with the current mesh configuration.
    pub fn reconcile(&mut self) {
        let snapshot = self.inputs.mesh.snapshot();
        let mut pods = std::mem::take(&mut self.pods);
        for known in pods.values_mut() {
            if let Err(error) = self.converge(known, &snapshot) {
                tracing::error!(pod = %known.sandbox.pod, %error, "enrollment failed");
            }
        }
        self.pods = pods;
        self.want_identities();
        self.record(&snapshot);
    }

    /// Writes the record of enrollment for the plugin, when it changed.
    fn record(&mut self, snapshot: &Mesh) {
        let policy = enrollment_policy(snapshot);
        if self.recorded.as_ref() == Some(&policy) {
            return;
        }
        match policy::write_policy(&self.plugin_dir, &policy) {
            Ok(()) => self.recorded = Some(policy),
            Err(error) => {
                tracing::error!(dir = %self.plugin_dir.display(), %error, "writing the record of enrollment for the CNI plugin");
            }
        }
    }

    /// Enrolls or releases one pod as the snapshot says, and serves it the
    /// mesh view or stops as its labels say.
    fn converge(&mut self, known: &mut KnownPod, snapshot: &Mesh) -> Result<(), EnrollError> {
        self.converge_view(known, snapshot);
        let should = snapshot.is_enrolled(&known.sandbox.pod.namespace, &known.sandbox.pod.name);
        match (&known.enrolled, should) {
            (None, true) => {
                known.enrolled = Some(self.enroll(&known.sandbox)?);
                tracing::info!(pod = %known.sandbox.pod, "enrolled");
            }
            (Some(_), false) => {
                self.release(known);
                tracing::info!(pod = %known.sandbox.pod, "released");
            }
            _ => return Ok(()),
        }
        if let Some(redirection) = &self.redirection {
            redirection.mark(&known.sandbox.pod, should);
        }
        Ok(())
    }

    /// A failure to serve the view leaves the pod's proxy without a mesh
    /// (it reports not ready and says why); it is tried again at the next
    /// change.
    fn converge_view(&self, known: &mut KnownPod, snapshot: &Mesh) {
        let Some(mesh_view) = &self.mesh_view else {
            return;
        };
        let pod = &known.sandbox.pod;
        let wanted = mesh_view.serves(snapshot, &Key::new(&pod.namespace, &pod.name));
        match (&known.view, wanted) {
            (None, true) => {
                let served = Netns::open(&known.sandbox.netns)
                    .map_err(std::io::Error::other)
                    .and_then(|netns| mesh_view.serve(pod, &netns));
                match served {
                    Ok(server) => {
                        known.view = Some(server);
                        tracing::info!(%pod, "serving the mesh view");
                    }
                    Err(error) => tracing::error!(%pod, %error, "serving the mesh view"),
                }
            }
            (Some(_), false) => known.view = None,
            _ => {}
        }
    }

    fn enroll(&mut self, sandbox: &PodSandbox) -> Result<Enrolled, EnrollError> {
        let netns = Arc::new(Netns::open(&sandbox.netns)?);
        // One visit to the pod's namespace. The CNI gives IPv4; a pod's
        // IPv6 addresses (dual-stack or IPv6-only) are read from its
        // namespace (set up before the plugin runs).
        let (routing, in_netns) =
            netns.run(|| (netns::prepare_inbound_routing(), netns::addresses()))?;
        routing.map_err(EnrollError::Routing)?;
        let in_netns = in_netns.map_err(EnrollError::Addresses)?;
        let reachable_ipv6 = |ip: &IpAddr| match ip {
            IpAddr::V6(ip) => !ip.is_loopback() && !ip.is_unicast_link_local(),
            IpAddr::V4(_) => false,
        };
        let ips: Vec<IpAddr> = (sandbox.ips.iter().copied().map(IpAddr::from))
            .chain(in_netns.into_iter().filter(reachable_ipv6))
            .collect();
        if ips.is_empty() {
            return Err(EnrollError::NoAddress(sandbox.pod.clone()));
        }
        let listeners = PodListeners::bind(&netns, self.inputs.mesh_tls.is_some())
            .map_err(EnrollError::Listeners)?;
        let capture = self
            .capture
            .enroll(&netns, &ips, OUTBOUND_LISTENER, &listeners.inbound)?;
        let context = Arc::new(PodContext::new(sandbox.pod.clone(), netns));
        Ok(Enrolled {
            capture,
            proxy: proxy::start(context, listeners, self.inputs.clone()),
        })
    }

    fn release(&mut self, known: &mut KnownPod) {
        if let Some(enrolled) = known.enrolled.take() {
            if let Err(error) = self.capture.release(enrolled.capture) {
                tracing::error!(pod = %known.sandbox.pod, %error, "releasing capture");
            }
            enrolled.proxy.close_after(RELEASE_GRACE);
        }
    }

    fn forget(&mut self, pod: &PodRef) {
        if let Some(mut known) = self.pods.remove(pod) {
            self.release(&mut known);
        }
    }

    /// Writes the known pods, atomically, for the next agent.
    fn persist(&self) {
        let sandboxes: Vec<&PodSandbox> = self.pods.values().map(|known| &known.sandbox).collect();
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.state_file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let temporary = self.state_file.with_extension("json.tmp");
            std::fs::write(&temporary, serde_json::to_vec_pretty(&sandboxes)?)?;
            std::fs::rename(&temporary, &self.state_file)
        };
        if let Err(error) = write() {
            tracing::error!(file = %self.state_file.display(), %error, "saving known pods");
        }
    }

    /// For a stopping agent: closes every pod's listeners (queued connections
    /// move to a new agent's) but leaves the maps for the next agent.
    pub fn stop_accepting(&mut self) {
        for known in self.pods.values_mut() {
            known.enrolled = None;
            known.view = None;
        }
    }
}

/// Which pods `mesh` enrolls, as the plugin reads it: the namespaces, and
/// the pods whose own label (or anything else) sets them apart from their
/// namespace.
fn enrollment_policy(mesh: &Mesh) -> EnrollmentPolicy {
    let namespace_enrolled = |namespace: &str| {
        mesh.namespaces
            .get(namespace)
            .and_then(|ns| ns.labels.get(DATAPLANE_MODE_LABEL))
            .is_some_and(|mode| mode == DATAPLANE_MODE_AMBIENT)
    };
    EnrollmentPolicy {
        namespaces: mesh
            .namespaces
            .keys()
            .filter(|namespace| namespace_enrolled(namespace))
            .cloned()
            .collect(),
        pods: mesh
            .workloads
            .keys()
            .filter_map(|key| {
                let enrolled = mesh.is_enrolled(&key.namespace, &key.name);
                (enrolled != namespace_enrolled(&key.namespace))
                    .then(|| (format!("{}/{}", key.namespace, key.name), enrolled))
            })
            .collect(),
    }
}
