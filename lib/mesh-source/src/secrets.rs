//! The Secrets a gateway's servers name (`credentialName`), read from the
//! API server one by one: a watch per Secret, by a field selector on its
//! name, in the gateway's own namespace. The gateway reads no other
//! Secret, and no other part of Ambit reads Secrets through this crate.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::task::JoinHandle;

/// A Secret's data as last seen, with its resource version (which tells a
/// rotated Secret from the one read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretData {
    pub version: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

/// What a watch has seen of its Secret: nothing yet, or whether it exists.
type Seen = Arc<Mutex<Option<Option<SecretData>>>>;

pub struct SecretWatches {
    client: kube::Client,
    namespace: String,
    watched: Mutex<HashMap<String, (JoinHandle<()>, Seen)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl SecretWatches {
    /// Watches in `namespace`, none until [`SecretWatches::follow`].
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            client,
            namespace: namespace.to_string(),
            watched: Mutex::default(),
        }
    }

    /// Watches exactly the Secrets `names`: new names start a watch, the
    /// names gone stop theirs (must be called on a Tokio runtime).
    pub fn follow(&self, names: &BTreeSet<String>) {
        let mut watched = lock(&self.watched);
        watched.retain(|name, (task, _)| {
            let kept = names.contains(name);
            if !kept {
                task.abort();
            }
            kept
        });
        for name in names {
            if watched.contains_key(name) {
                continue;
            }
            let seen = Seen::default();
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
            let task = tokio::spawn(watch(api, name.clone(), seen.clone()));
            watched.insert(name.clone(), (task, seen));
        }
    }

    /// The Secret `name` as last seen; `Err` when it is not watched or its
    /// first list has not come yet, `Ok(None)` when it does not exist.
    pub fn get(&self, name: &str) -> Result<Option<SecretData>, String> {
        let watched = lock(&self.watched);
        let (_, seen) = watched
            .get(name)
            .ok_or_else(|| format!("the Secret {}/{name} is not watched", self.namespace))?;
        let seen = lock(seen).clone();
        seen.ok_or_else(|| format!("the Secret {}/{name} is not read yet", self.namespace))
    }
}

impl Drop for SecretWatches {
    fn drop(&mut self) {
        for (task, _) in lock(&self.watched).values() {
            task.abort();
        }
    }
}

/// Keeps `seen` current with the Secret `name`.
async fn watch(api: Api<Secret>, name: String, seen: Seen) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    // What a relist found, published when it is done.
    let mut listed = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listed = None,
            Ok(Event::InitApply(secret)) => listed = Some(data_of(&secret)),
            Ok(Event::InitDone) => *lock(&seen) = Some(listed.take()),
            Ok(Event::Apply(secret)) => *lock(&seen) = Some(Some(data_of(&secret))),
            Ok(Event::Delete(_)) => *lock(&seen) = Some(None),
            Err(error) => {
                tracing::warn!(secret = %name, %error, "watching a Secret failed; retrying")
            }
        }
    }
}

fn data_of(secret: &Secret) -> SecretData {
    SecretData {
        version: secret.metadata.resource_version.clone().unwrap_or_default(),
        data: secret
            .data
            .iter()
            .flatten()
            .map(|(key, value)| (key.clone(), value.0.clone()))
            .collect(),
    }
}
