//! The Kubernetes source: one kube-rs watcher per kind the model reads.
//! Objects are read by the same code as manifests (`ambit_config::document`),
//! so both sources build the same model. A watcher's relist (after a 410 or
//! a restart) replaces that kind's objects in place: unchanged objects keep
//! their index entries.
//!
//! Pods of every node are watched: routing and policy need peers' IPs,
//! labels and service accounts. The model keeps only those fields (see
//! `ambit_config::api::core::PodBody`), so other pods cost little beyond
//! what the API server sends.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use ambit_config::document::{
    field_selector, parse_object, plural, rejections, ObjectRef, Problem, Resource, Severity, KINDS,
};
use ambit_config::model::Mesh;
use anyhow::Context;
use futures_util::{FutureExt, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;

/// How long the agent waits for the API server at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for the API server named by `kubeconfig`, or for the cluster
/// the agent runs in; fails, naming the server, when it does not answer.
pub async fn connect(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster().context("reading the in-cluster service account")?,
    };
    connect_with(config).await
}

/// A client for the node agent's mesh view at `address` (plain HTTP on
/// the pod's loopback, no credentials: the agent's are used upstream).
pub async fn connect_view(address: std::net::SocketAddr) -> anyhow::Result<kube::Client> {
    let url = format!("http://{address}")
        .parse()
        .context("the mesh view's address")?;
    connect_with(kube::Config::new(url)).await.context(
        "the node agent's mesh view (is this pod labelled for it, its service account in \
             the agent's --mesh-view-for, and the agent running?)",
    )
}

async fn connect_with(config: kube::Config) -> anyhow::Result<kube::Client> {
    let url = config.cluster_url.clone();
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    match tokio::time::timeout(CONNECT_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(version)) => {
            tracing::info!(%url, version = %version.git_version, "connected to the Kubernetes API server");
            Ok(client)
        }
        Ok(Err(error)) => Err(error)
            .with_context(|| format!("the Kubernetes API server at {url} is not reachable")),
        Err(_) => anyhow::bail!(
            "the Kubernetes API server at {url} did not answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

/// Whether the DaemonSet `namespace/name` is gone or being deleted, as at
/// an uninstall (at an upgrade it stays): what an agent asks as it stops.
pub async fn daemonset_removed(
    kubeconfig: Option<&Path>,
    namespace: &str,
    name: &str,
) -> anyhow::Result<bool> {
    let client = connect(kubeconfig).await?;
    let resource = ApiResource {
        group: "apps".into(),
        version: "v1".into(),
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        plural: "daemonsets".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client, namespace, &resource);
    match api.get_opt(name).await {
        Ok(Some(daemonset)) => Ok(daemonset.metadata.deletion_timestamp.is_some()),
        Ok(None) => Ok(true),
        Err(error) => {
            Err(error).with_context(|| format!("reading the DaemonSet {namespace}/{name}"))
        }
    }
}

/// The versions each API group is served at (discovery's `/apis`); none
/// known when discovery fails, then every kind is asked for at its first.
async fn served_versions(client: &kube::Client) -> BTreeMap<String, Vec<String>> {
    match client.list_api_groups().await {
        Ok(groups) => groups
            .groups
            .into_iter()
            .map(|group| {
                let versions = group.versions.into_iter().map(|v| v.version).collect();
                (group.name, versions)
            })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "API discovery failed: every kind is watched at its newest version");
            BTreeMap::new()
        }
    }
}

/// The version a kind of `group` is watched at: the first of `versions`
/// (Ambit's preference, newest first) the API server serves, so that an
/// Istio whose CRDs predate `v1` (1.21 and older) is read all the same; the
/// first when the group is not served (yet) at any.
fn chosen_version<'v>(
    served: &BTreeMap<String, Vec<String>>,
    group: &str,
    versions: &'v [&'v str],
) -> &'v str {
    let served = served.get(group);
    versions
        .iter()
        .find(|version| served.is_some_and(|s| s.iter().any(|v| v == *version)))
        .unwrap_or(&versions[0])
}

/// Watches every kind, keeps `mesh` in step, and calls `changed` after
/// each batch of changes. `synced` gets the model once every kind was
/// listed, or the reason it cannot be: the API server refuses to list a
/// kind (403), so policies could be missed.
///
/// A kind the API server does not serve (404: Istio's CRDs are not
/// installed) counts as listed and empty; its watcher keeps trying, and
/// its objects apply once the CRD is installed.
pub async fn watch(
    client: kube::Client,
    mut mesh: Mesh,
    mut changed: impl FnMut(&Mesh),
    synced: tokio::sync::oneshot::Sender<anyhow::Result<Mesh>>,
) {
    let served = served_versions(&client).await;
    let streams = KINDS.iter().map(|(group, kind, versions)| {
        let version = chosen_version(&served, group, versions);
        if version != versions[0] {
            tracing::info!(
                kind,
                version,
                "the API server serves an older version of this kind: watching it"
            );
        }
        let resource = ApiResource {
            group: group.to_string(),
            version: version.to_string(),
            api_version: if group.is_empty() {
                version.to_string()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.to_string(),
            plural: plural(kind),
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let mut config = watcher::Config::default();
        if let Some(selector) = field_selector(kind) {
            config = config.fields(&selector);
        }
        watcher::watcher(api, config)
            .default_backoff()
            .map(move |event| (resource.clone(), event))
            .boxed()
    });
    let mut events = futures_util::stream::select_all(streams);
    let mut relists: BTreeMap<String, Relist> = BTreeMap::new();
    let mut unsynced: BTreeSet<&str> = KINDS.iter().map(|(_, kind, _)| *kind).collect();
    let mut synced = Some(synced);
    let mut absent: BTreeSet<String> = BTreeSet::new();
    while let Some((resource, event)) = events.next().await {
        let mut batch = vec![(resource, event)];
        // Apply everything already waiting before publishing once.
        while let Some(Some(next)) = events.next().now_or_never() {
            batch.push(next);
        }
        for (resource, event) in batch {
            let event = match event {
                Ok(event) => event,
                Err(error) => {
                    let served = format!("{}.{}", resource.plural, resource.group);
                    match list_refused(&error) {
                        Some(404) if absent.insert(resource.kind.clone()) => {
                            tracing::warn!(
                                resource = served.trim_end_matches('.'),
                                "not served by the API server (is its CRD installed?): \
                                 none apply until it is"
                            );
                            mesh.replace(&[&resource.kind], Vec::new(), Vec::new());
                            unsynced.remove(resource.kind.as_str());
                        }
                        Some(404) => tracing::debug!(%error, "still not served"),
                        Some(403) if synced.is_some() => {
                            if let Some(synced) = synced.take() {
                                let _ = synced.send(Err(anyhow::anyhow!(
                                    "the Kubernetes API server refuses to list {} (403 Forbidden): \
                                     give this proxy's service account the ambit-mesh-reader \
                                     ClusterRole (deploy/charts/ambit/templates/mesh-reader.yaml): {error}",
                                    served.trim_end_matches('.')
                                )));
                            }
                            return;
                        }
                        _ => {
                            tracing::warn!(kind = %resource.kind, %error, "watch failed; retrying")
                        }
                    }
                    continue;
                }
            };
            match event {
                Event::Init => {
                    if absent.remove(&resource.kind) {
                        tracing::info!(kind = %resource.kind, "now served by the API server");
                    }
                    relists.insert(resource.kind.clone(), Relist::default());
                }
                Event::InitApply(object) => {
                    let relist = relists.entry(resource.kind.clone()).or_default();
                    match read(&resource, object) {
                        Read::Object(resource) => relist.resources.push(*resource),
                        Read::Rejected(object, problems) => {
                            relist.rejected.push((object, problems))
                        }
                        Read::Skipped => {}
                    }
                }
                Event::InitDone => {
                    let relist = relists.remove(&resource.kind).unwrap_or_default();
                    mesh.replace(&[&resource.kind], relist.resources, relist.rejected);
                    unsynced.remove(resource.kind.as_str());
                }
                Event::Apply(object) => match read(&resource, object) {
                    Read::Object(resource) => mesh.apply(*resource),
                    Read::Rejected(object, problems) => mesh.reject(&object, problems),
                    Read::Skipped => {}
                },
                Event::Delete(object) => {
                    let object = ObjectRef::new(
                        &resource.kind,
                        object.metadata.namespace.as_deref(),
                        &object.metadata.name.unwrap_or_default(),
                    );
                    mesh.delete(&object);
                }
            }
        }
        if unsynced.is_empty() {
            match synced.take() {
                Some(synced) => {
                    let _ = synced.send(Ok(mesh.clone()));
                }
                None => changed(&mesh),
            }
        }
    }
}

/// The HTTP status the API server refused a list with.
fn list_refused(error: &watcher::Error) -> Option<u16> {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    }
}

/// One kind's objects while a (re)list is in progress.
#[derive(Default)]
struct Relist {
    resources: Vec<Resource>,
    rejected: Vec<(ObjectRef, Vec<String>)>,
}

enum Read {
    Object(Box<Resource>),
    Rejected(ObjectRef, Vec<String>),
    Skipped,
}

/// Reads an object as the manifests' reader does; problems are logged.
fn read(resource: &ApiResource, object: DynamicObject) -> Read {
    let mut value = match serde_json::to_value(&object) {
        Ok(value) => value,
        Err(error) => {
            tracing::error!(kind = %resource.kind, %error, "unreadable object");
            return Read::Skipped;
        }
    };
    // List items of built-in kinds come without their type.
    value["apiVersion"] = resource.api_version.clone().into();
    value["kind"] = resource.kind.clone().into();
    match parse_object(value) {
        Ok(Some(resource)) => Read::Object(Box::new(resource)),
        Ok(None) => Read::Skipped,
        Err(problems) => {
            log(&problems);
            match rejections(&problems).pop() {
                Some((object, errors)) => Read::Rejected(object, errors),
                None => Read::Skipped,
            }
        }
    }
}

fn log(problems: &[Problem]) {
    for problem in problems {
        match problem.severity {
            Severity::Error => tracing::error!("{problem}"),
            Severity::Warning => tracing::warn!("{problem}"),
        }
    }
}
