//! Where the CA's root lives: in Kubernetes a Secret, standalone a
//! directory, both with Istio's plug-in CA names (`ca-cert.pem`,
//! `ca-key.pem`, and for an intermediate `root-cert.pem` and
//! `cert-chain.pem`), so Istio's `cacerts` or `istio-ca-secret` can be used
//! as it is. A root is created on first start when there is none. The key
//! file is readable by its owner only.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ambit_identity::ca::CaFiles;
use ambit_identity::CertificateAuthority;
use anyhow::Context;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

pub const CERT_FILE: &str = "ca-cert.pem";
pub const KEY_FILE: &str = "ca-key.pem";
/// Present when `ca-cert.pem` is an intermediate.
pub const ROOT_FILE: &str = "root-cert.pem";
pub const CHAIN_FILE: &str = "cert-chain.pem";

/// The root kept in `dir`, or a new one written there when there is none.
pub fn load_or_create(dir: &Path, trust_domain: &str) -> anyhow::Result<CertificateAuthority> {
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    match (cert.exists(), key.exists()) {
        (true, true) => {
            let read = |name: &str| {
                let path = dir.join(name);
                match std::fs::read_to_string(&path) {
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    read => read
                        .map(Some)
                        .with_context(|| format!("reading {}", path.display())),
                }
            };
            let ca = load(trust_domain, read)
                .with_context(|| format!("loading the CA root from {}", dir.display()))?;
            tracing::info!(dir = %dir.display(), "CA root loaded");
            Ok(ca)
        }
        (false, false) => {
            let ca = CertificateAuthority::generate(trust_domain)?;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            write(&key, &ca.key_pem(), 0o600)?;
            write(&cert, ca.root_pem(), 0o644)?;
            tracing::info!(dir = %dir.display(), "CA root created");
            Ok(ca)
        }
        _ => anyhow::bail!(
            "{} holds only one of {CERT_FILE} and {KEY_FILE}: restore the other, or remove both for a new root",
            dir.display()
        ),
    }
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The root kept in the Secret `namespace/name`, or a new one stored there
/// when there is none. Two CAs starting at once agree: the one whose
/// create loses (409) loads the winner's.
pub async fn load_or_create_in_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
) -> anyhow::Result<CertificateAuthority> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let at = format!("the Secret {namespace}/{name}");
    if let Some(secret) = secrets
        .get_opt(name)
        .await
        .with_context(|| format!("reading {at}"))?
    {
        tracing::info!(secret = %format!("{namespace}/{name}"), "CA root loaded");
        return from_secret(&secret, trust_domain)
            .with_context(|| format!("loading the CA root from {at}"));
    }
    let ca = CertificateAuthority::generate(trust_domain)?;
    let data = [
        (CERT_FILE, ca.root_pem().to_string()),
        (KEY_FILE, ca.key_pem()),
    ]
    .into_iter()
    .map(|(key, pem)| (key.to_string(), ByteString(pem.into_bytes())))
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Secret::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "CA root created");
            Ok(ca)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = secrets
                .get(name)
                .await
                .with_context(|| format!("reading {at}"))?;
            from_secret(&secret, trust_domain)
                .with_context(|| format!("loading the CA root from {at}"))
        }
        Err(error) => Err(error).with_context(|| format!("creating {at}")),
    }
}

fn from_secret(secret: &Secret, trust_domain: &str) -> anyhow::Result<CertificateAuthority> {
    load(trust_domain, |key| {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .map(|bytes| {
                String::from_utf8(bytes.0.clone()).with_context(|| format!("{key} is not PEM text"))
            })
            .transpose()
    })
}

/// The CA from its files, each read by name (`None`: there is no such file).
fn load(
    trust_domain: &str,
    read: impl Fn(&str) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<CertificateAuthority> {
    let required = |name: &str| read(name)?.with_context(|| format!("there is no {name}"));
    let (cert, key) = (required(CERT_FILE)?, required(KEY_FILE)?);
    let (root, chain) = (read(ROOT_FILE)?, read(CHAIN_FILE)?);
    let files = CaFiles {
        cert: &cert,
        key: &key,
        root: root.as_deref(),
        chain: chain.as_deref(),
    };
    Ok(CertificateAuthority::from_files(files, trust_domain)?)
}

/// The ConfigMap (in every namespace of the mesh) where proxies find the
/// root certificate to check the CA and each other with; the key stays in
/// the Secret. Istio's `istio-ca-root-cert`, under Ambit's name.
pub const ROOT_CERT_CONFIG_MAP: &str = "ambit-ca-root-cert";
/// Its key, as in Istio.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";

/// Namespaces that hold no workload of the mesh: the root is not published
/// there.
const UNMESHED_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];
/// How long a namespace whose publication failed waits to be tried again.
const PUBLISH_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Publishes the root certificate in every namespace of the mesh, as it
/// appears, as istiod publishes `istio-ca-root-cert`: a waypoint or gateway
/// pod mounts it from its own namespace to check the CA by.
pub async fn publish_everywhere(
    client: kube::Client,
    root_pem: String,
    mesh: std::sync::Arc<ambit_mesh_source::MeshHandle>,
) {
    let mut changes = mesh.subscribe();
    let mut published = std::collections::BTreeSet::new();
    loop {
        let namespaces: Vec<String> = mesh.snapshot().namespaces.keys().cloned().collect();
        let mut failed = false;
        for namespace in namespaces {
            if published.contains(&namespace) || UNMESHED_NAMESPACES.contains(&namespace.as_str()) {
                continue;
            }
            match publish_root_cert(&client, &namespace, &root_pem).await {
                Ok(()) => {
                    published.insert(namespace);
                }
                Err(error) => {
                    tracing::warn!(%namespace, error = format!("{error:#}"), "publishing the root certificate failed");
                    failed = true;
                }
            }
        }
        let changed = changes.changed();
        if failed {
            let _ = tokio::time::timeout(PUBLISH_RETRY, changed).await;
        } else if changed.await.is_err() {
            return;
        }
    }
}

/// Publishes the root certificate (public) in [`ROOT_CERT_CONFIG_MAP`].
pub async fn publish_root_cert(
    client: &kube::Client,
    namespace: &str,
    root_pem: &str,
) -> anyhow::Result<()> {
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let data =
        std::collections::BTreeMap::from([(ROOT_CERT_KEY.to_string(), root_pem.to_string())]);
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CERT_CONFIG_MAP.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        data: Some(data.clone()),
        ..ConfigMap::default()
    };
    let at = format!("the ConfigMap {namespace}/{ROOT_CERT_CONFIG_MAP}");
    match config_maps
        .create(&PostParams::default(), &config_map)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let patch = Patch::Merge(serde_json::json!({ "data": data }));
            config_maps
                .patch(ROOT_CERT_CONFIG_MAP, &PatchParams::default(), &patch)
                .await
                .map(drop)
                .with_context(|| format!("updating {at}"))
        }
        Err(error) => Err(error).with_context(|| format!("creating {at}")),
    }
}
