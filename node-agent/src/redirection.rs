//! `ambient.istio.io/redirection: enabled` on the pods the agent captures,
//! as Istio's CNI agent marks them: Istio's ztunnel, waypoints and gateways
//! then reach them over HBONE rather than in plaintext the agent would
//! refuse (or, under PERMISSIVE, carry unauthenticated). Taken off when a
//! pod is released. Kubernetes mode only: standalone there is no pod
//! object to mark.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_cni::protocol::PodRef;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::Notify;

/// Istio's annotation for a pod whose traffic its node's proxy captures.
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
/// How long a failed patch waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The marks still to be made: a pod and whether it is captured (the last
/// word for a pod wins).
#[derive(Default)]
pub struct Redirection {
    pending: Mutex<BTreeMap<PodRef, bool>>,
    wake: Notify,
}

impl Redirection {
    /// Asks for `pod` to be marked captured or not.
    pub fn mark(&self, pod: &PodRef, captured: bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.insert(pod.clone(), captured);
        self.wake.notify_one();
    }

    fn take(&self) -> BTreeMap<PodRef, bool> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Makes the marks asked for, as long as the agent runs.
pub async fn annotate(redirection: Arc<Redirection>, client: kube::Client) {
    loop {
        let pending = redirection.take();
        if pending.is_empty() {
            redirection.wake.notified().await;
            continue;
        }
        let mut failed = false;
        for (pod, captured) in pending {
            let api: Api<k8s_openapi::api::core::v1::Pod> =
                Api::namespaced(client.clone(), &pod.namespace);
            let value = captured.then_some("enabled");
            let patch = serde_json::json!({
                "metadata": { "annotations": { REDIRECTION_ANNOTATION: value } }
            });
            match api
                .patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::debug!(%pod, captured, "redirection annotation set"),
                // Gone: nothing left to mark.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    tracing::warn!(%pod, %error, "marking the pod's redirection failed; retrying");
                    let mut pending = redirection
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    pending.entry(pod).or_insert(captured);
                    failed = true;
                }
            }
        }
        if failed {
            tokio::time::sleep(RETRY).await;
        }
    }
}
