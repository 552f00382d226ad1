//! Where a proxy's mesh comes from, and how its data path reads it. A
//! source (a directory of manifests, or the Kubernetes API) applies changes
//! to the shared model (`ambit_config::model::Mesh`) and publishes a
//! snapshot; readers take the current snapshot without holding a lock
//! across I/O, and whoever must act on a change subscribes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_config::model::Mesh;
use anyhow::{bail, Context};
use serde::Serialize;
use tokio::task::JoinHandle;

pub mod directory;
pub mod kubernetes;
pub mod secrets;
pub mod view;

/// The flags that choose the source, the same for every Ambit proxy.
#[derive(clap::Args, Debug, Clone)]
pub struct SourceArgs {
    /// Standalone mode: a directory of Kubernetes manifests (Namespaces,
    /// Pods, Services, EndpointSlices, Istio's kinds), watched for changes.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub config_dir: Option<PathBuf>,

    /// Kubernetes mode with this kubeconfig; without it and without
    /// --config-dir, the in-cluster service account is used.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

/// Where the mesh configuration comes from.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// A directory of manifests (standalone mode).
    Directory(PathBuf),
    /// The Kubernetes API, through a kubeconfig or, without one, the
    /// in-cluster service account.
    Kubernetes { kubeconfig: Option<PathBuf> },
    /// The Kubernetes API as the node agent's mesh view at `address`
    /// passes it on ([`view`]): a waypoint's or gateway's, which then
    /// needs no RBAC for the mesh. What the proxy reads of its own (a
    /// gateway's Secrets) it reads from the API server `kubeconfig` names,
    /// or the in-cluster one.
    AgentView {
        address: std::net::SocketAddr,
        kubeconfig: Option<PathBuf>,
    },
}

impl Source {
    /// The source the flags name; in a Kubernetes pod with neither flag,
    /// the in-cluster API server.
    pub fn from_args(args: SourceArgs) -> anyhow::Result<Self> {
        if let Some(dir) = args.config_dir {
            return Ok(Self::Directory(dir));
        }
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        if args.kubeconfig.is_none() && !in_cluster {
            bail!(
                "no configuration source: give --config-dir DIR (standalone) or --kubeconfig FILE, \
                 or run in a Kubernetes pod (KUBERNETES_SERVICE_HOST is not set)"
            );
        }
        Ok(Self::Kubernetes {
            kubeconfig: args.kubeconfig,
        })
    }
}

/// The current snapshot, replaced whole after every batch of changes.
#[derive(Debug)]
pub struct MeshHandle {
    current: tokio::sync::watch::Sender<Arc<Mesh>>,
    /// Snapshots published since the process started.
    version: std::sync::atomic::AtomicU64,
    /// When the last one was, in milliseconds since the Unix epoch.
    changed_at: std::sync::atomic::AtomicU64,
}

impl Default for MeshHandle {
    fn default() -> Self {
        Self {
            current: tokio::sync::watch::Sender::new(Arc::default()),
            version: Default::default(),
            changed_at: Default::default(),
        }
    }
}

impl MeshHandle {
    pub fn snapshot(&self) -> Arc<Mesh> {
        self.current.borrow().clone()
    }

    /// Publishes `mesh` (a clone: the model's maps are shared, not copied).
    pub fn publish(&self, mesh: &Mesh) {
        use std::sync::atomic::Ordering::Relaxed;
        tracing::debug!(objects = ?mesh.counts(), "mesh updated");
        self.current.send_replace(Arc::new(mesh.clone()));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        self.changed_at.store(now, Relaxed);
        self.version.fetch_add(1, Relaxed);
    }

    /// How many snapshots were published, and when the last one was (in
    /// seconds since the Unix epoch): what operators watch to see a proxy
    /// follow the configuration.
    pub fn version(&self) -> (u64, f64) {
        use std::sync::atomic::Ordering::Relaxed;
        let at = self.changed_at.load(Relaxed) as f64 / 1000.0;
        (self.version.load(Relaxed), at)
    }

    /// Wakes on each published change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Mesh>> {
        self.current.subscribe()
    }
}

/// How long the first full list from the API server may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads the whole mesh from `source` into `handle`, then returns the task
/// that keeps it current.
pub async fn start(source: &Source, handle: Arc<MeshHandle>) -> anyhow::Result<JoinHandle<()>> {
    match source {
        Source::Directory(dir) => {
            let events = directory::Events::watching(dir, "the config directory");
            let mut directory = directory::Directory::new(dir.clone());
            let mut model = Mesh::default();
            directory.load(&mut model)?;
            handle.publish(&model);
            Ok(tokio::spawn(directory::watch(
                directory,
                events,
                model,
                move |model| handle.publish(model),
            )))
        }
        Source::Kubernetes { kubeconfig } => {
            let client = kubernetes::connect(kubeconfig.as_deref()).await?;
            start_with_client(client, handle).await
        }
        Source::AgentView { address, .. } => {
            let client = kubernetes::connect_view(*address).await?;
            start_with_client(client, handle).await
        }
    }
}

/// Like [`start`] from the Kubernetes API, with a client the caller
/// already holds (and uses for other resources).
pub async fn start_with_client(
    client: kube::Client,
    handle: Arc<MeshHandle>,
) -> anyhow::Result<JoinHandle<()>> {
    let (synced, initial) = tokio::sync::oneshot::channel();
    let follower = handle.clone();
    let task = tokio::spawn(kubernetes::watch(
        client,
        Mesh::default(),
        move |model| follower.publish(model),
        synced,
    ));
    let initial = tokio::time::timeout(SYNC_TIMEOUT, initial)
        .await
        .with_context(|| {
            format!(
                "the first list from the Kubernetes API server did not finish within {}s",
                SYNC_TIMEOUT.as_secs()
            )
        })?
        .context("the Kubernetes watch ended before its first list")??;
    handle.publish(&initial);
    Ok(task)
}

/// A source kept current on a thread of its own, so that reading and
/// compiling the configuration (seconds for a large cluster's first list)
/// never holds up the threads that carry traffic. Dropping it stops the
/// source.
pub struct SourceThread {
    runtime: Option<tokio::runtime::Runtime>,
    task: JoinHandle<()>,
}

impl SourceThread {
    /// Reads the whole mesh from `source` into `handle` on the new thread,
    /// then keeps it current there.
    pub async fn start(source: &Source, handle: Arc<MeshHandle>) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ambit-mesh-source")
            .enable_all()
            .build()
            .context("starting the mesh source's thread")?;
        let source = source.clone();
        let started = runtime
            .spawn(async move { start(&source, handle).await })
            .await
            .map_err(anyhow::Error::from)
            .and_then(|started| started);
        let task = match started {
            Ok(task) => task,
            Err(error) => {
                // Dropping a runtime would block, which an async caller may not.
                runtime.shutdown_background();
                return Err(error);
            }
        };
        Ok(Self {
            runtime: Some(runtime),
            task,
        })
    }
}

impl Drop for SourceThread {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
