//! A Kubernetes API server for tests, faithful to what kube-rs's watcher
//! relies on: list (with label and field selectors and paging with
//! `continue`) and watch (from a resource version, compact JSON-lines
//! events, bookmarks, timeouts, an in-stream 410 Expired once history is
//! compacted), create, update, merge patch and delete, and Status objects
//! for 404, 409, 403 and 410.
//!
//! It serves Namespaces, Pods, Services, Secrets, ConfigMaps,
//! EndpointSlices and Istio's kinds, and TokenReview for the service
//! account tokens a test registers, in process (as a tower `Service`, for `kube::Client::new`) or
//! over HTTP on a listener of the caller's choosing, with a generated
//! kubeconfig, so the real binaries can run against it. Fault hooks drop watch streams,
//! force 410s and delay responses.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use serde_json::Value;
use tokio::sync::broadcast;

mod api;
mod resources;
mod selector;
mod store;

pub use resources::{ResourceType, RESOURCE_TYPES};
pub use selector::Selector;
use store::Store;
pub use store::{Change, EventType, Refusal};

/// Response bodies: whole for most requests, a stream for watches.
pub type Body = BoxBody<Bytes, Infallible>;

/// How many changes are kept for watches to resume from.
const DEFAULT_HISTORY: usize = 10_000;
/// How often an idle watch that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_millis(500);

pub struct FakeApiServer {
    store: Mutex<Store>,
    changes: broadcast::Sender<Arc<Change>>,
    faults: Faults,
    /// When set, requests must carry `Authorization: Bearer <token>`.
    token: Option<String>,
    /// Service account tokens TokenReview knows, with who they speak for.
    service_account_tokens: Mutex<BTreeMap<String, ServiceAccountToken>>,
    /// Every request's method, path and query, in order (an audit log).
    requests: Mutex<Vec<String>>,
}

/// A projected service account token, bound to a pod on a node.
#[derive(Debug, Clone)]
pub struct ServiceAccountToken {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    pub node: String,
    pub audiences: Vec<String>,
}

#[derive(Default)]
struct Faults {
    delay: Mutex<Duration>,
    /// Bumped to end every open watch stream.
    drop_watches: tokio::sync::watch::Sender<u64>,
    forbidden: Mutex<BTreeSet<&'static str>>,
    /// Resource types served as if their CRD were not installed.
    uninstalled: Mutex<BTreeSet<&'static str>>,
    /// Resource types served at these versions only, as an older Istio's
    /// CRDs serve them.
    only_versions: Mutex<BTreeMap<&'static str, Vec<&'static str>>>,
}

/// One of the sets of resource types a fault applies to.
fn types<'a>(
    set: &'a Mutex<BTreeSet<&'static str>>,
) -> std::sync::MutexGuard<'a, BTreeSet<&'static str>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new(None)
    }
}

impl FakeApiServer {
    /// A server with no objects; with a `token`, unauthenticated requests
    /// get 401.
    pub fn new(token: Option<String>) -> Self {
        Self {
            store: Mutex::new(Store::new(DEFAULT_HISTORY)),
            changes: broadcast::channel(65_536).0,
            faults: Faults::default(),
            token,
            service_account_tokens: Mutex::default(),
            requests: Mutex::default(),
        }
    }

    /// Every request so far, as `METHOD PATH?QUERY`: what a client read.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates an object (as `kubectl create` would).
    pub fn create(&self, object: Value) -> Result<Value, Refusal> {
        self.commit(|store| store.create(object))
    }

    /// Replaces an object (as `kubectl replace` would).
    pub fn update(&self, object: Value) -> Result<Value, Refusal> {
        self.commit(|store| store.update(object))
    }

    /// Creates or replaces an object, whatever its current version.
    pub fn apply(&self, mut object: Value) -> Result<Value, Refusal> {
        if let Some(metadata) = object["metadata"].as_object_mut() {
            metadata.remove("resourceVersion");
        }
        match self.create(object.clone()) {
            Err(refusal) if refusal.code == 409 => self.update(object),
            result => result,
        }
    }

    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, Refusal> {
        let resource = RESOURCE_TYPES
            .iter()
            .find(|t| t.kind == kind)
            .ok_or_else(|| Refusal::new(400, "BadRequest", format!("unknown kind {kind}")))?;
        self.commit(|store| store.delete(resource, namespace, name))
    }

    /// Every object of `kind`, as stored.
    pub fn objects(&self, kind: &str) -> Vec<Value> {
        let store = self.store();
        RESOURCE_TYPES
            .iter()
            .filter(|t| t.kind == kind)
            .flat_map(|t| store.list(t, None).cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Applies a change under the store's lock and tells the watches, so
    /// they see changes in revision order.
    fn commit(
        &self,
        change: impl FnOnce(&mut Store) -> Result<Arc<Change>, Refusal>,
    ) -> Result<Value, Refusal> {
        let mut store = self.store();
        let change = change(&mut store)?;
        let _ = self.changes.send(change.clone());
        Ok(change.object.clone())
    }

    /// Fault: ends every open watch stream (clients resume from their last
    /// resource version).
    pub fn drop_watches(&self) {
        self.faults.drop_watches.send_modify(|n| *n += 1);
    }

    /// Fault: forgets all history and ends every open watch, so each
    /// watcher's resume gets 410 Expired and must list again.
    pub fn expire_watches(&self) {
        self.store().compact();
        self.drop_watches();
    }

    /// Fault: delays every response by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        *self.faults.delay.lock().unwrap_or_else(|p| p.into_inner()) = delay;
    }

    /// Fault: answers 403 Forbidden for a resource type (by plural, `pods`).
    pub fn forbid(&self, plural: &'static str) {
        types(&self.faults.forbidden).insert(plural);
    }

    /// Fault: answers 404 for a resource type (by plural), as a cluster
    /// without its CRD does, until [`FakeApiServer::install`].
    pub fn uninstall(&self, plural: &'static str) {
        types(&self.faults.uninstalled).insert(plural);
    }

    /// Makes TokenReview vouch for `token` as `holder`'s, as the API server
    /// does for the projected tokens it issued.
    pub fn add_service_account_token(&self, token: &str, holder: ServiceAccountToken) {
        self.service_account_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_string(), holder);
    }

    /// The answer to a TokenReview of `token` for `audiences`, as the API
    /// server's `status`: the user with its pod and node binding, or not
    /// authenticated.
    fn review(&self, token: &str, audiences: &[String]) -> Value {
        let tokens = self
            .service_account_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let holder = tokens.get(token).filter(|holder| {
            audiences.is_empty() || audiences.iter().any(|a| holder.audiences.contains(a))
        });
        match holder {
            Some(holder) => serde_json::json!({
                "authenticated": true,
                "audiences": audiences,
                "user": {
                    "username": format!("system:serviceaccount:{}:{}", holder.namespace, holder.service_account),
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", holder.namespace), "system:authenticated"],
                    "extra": {
                        "authentication.kubernetes.io/pod-name": [holder.pod],
                        "authentication.kubernetes.io/node-name": [holder.node],
                    },
                },
            }),
            None => serde_json::json!({ "authenticated": false, "error": "invalid bearer token" }),
        }
    }

    /// Fault: serves a resource type (by plural) at `versions` only, as
    /// Istio's CRDs before 1.22 serve no `v1` of PeerAuthentication.
    pub fn serve_only(&self, plural: &'static str, versions: &[&'static str]) {
        self.faults
            .only_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(plural, versions.to_vec());
    }

    /// Whether `resource` is served at `version` now (its CRD installed).
    fn serves(&self, resource: &ResourceType, version: &str) -> bool {
        let only = self
            .faults
            .only_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        !types(&self.faults.uninstalled).contains(resource.plural)
            && resource.versions.contains(&version)
            && only
                .get(resource.plural)
                .is_none_or(|versions| versions.contains(&version))
    }

    /// Discovery's `/apis`: every group and the versions it serves now.
    fn api_groups(&self) -> serde_json::Value {
        let mut groups: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for resource in RESOURCE_TYPES.iter().filter(|t| !t.group.is_empty()) {
            for version in resource.versions {
                if self.serves(resource, version) {
                    let versions = groups.entry(resource.group).or_default();
                    if !versions.contains(version) {
                        versions.push(version);
                    }
                }
            }
        }
        let groups: Vec<serde_json::Value> = groups
            .into_iter()
            .map(|(group, versions)| {
                let versions: Vec<serde_json::Value> = versions
                    .iter()
                    .map(|v| serde_json::json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                    .collect();
                serde_json::json!({
                    "name": group,
                    "preferredVersion": versions[0].clone(),
                    "versions": versions,
                })
            })
            .collect();
        serde_json::json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// Serves a resource type again after [`FakeApiServer::uninstall`].
    pub fn install(&self, plural: &'static str) {
        types(&self.faults.uninstalled).remove(plural);
    }

    /// A kubeconfig for a client of this server at `url` (`http://ip:port`).
    pub fn kubeconfig(&self, url: &str) -> String {
        let user = match &self.token {
            Some(token) => format!("{{token: {token}}}"),
            None => "{}".into(),
        };
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: fake, cluster: {{server: \"{url}\"}}}}]\n\
             users: [{{name: fake, user: {user}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: default}}}}]\n\
             current-context: fake\n"
        )
    }

    /// Serves HTTP/1.1 on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let server = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.call_http(request).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(error) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!(%error, "fake API server connection ended");
                }
            });
        }
    }

    /// The in-process client side: a tower `Service` for `kube::Client::new`.
    pub fn service(self: &Arc<Self>) -> InProcess {
        InProcess(self.clone())
    }

    async fn call_http<B: http_body::Body>(
        &self,
        request: http::Request<B>,
    ) -> http::Response<Body> {
        use http_body_util::BodyExt;
        let (parts, body) = request.into_parts();
        match body.collect().await {
            Ok(body) => {
                self.handle(http::Request::from_parts(parts, body.to_bytes()))
                    .await
            }
            Err(_) => api::status_response(&Refusal::new(400, "BadRequest", "unreadable body")),
        }
    }
}

/// The server as a tower `Service`, for an in-process `kube::Client`.
#[derive(Clone)]
pub struct InProcess(Arc<FakeApiServer>);

impl<B> tower_service::Service<http::Request<B>> for InProcess
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { Ok(server.call_http(request).await) })
    }
}
