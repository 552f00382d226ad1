//! The TLS a gateway's SIMPLE and MUTUAL servers end: certificate, key and
//! CA bundle read from files (a server's `serverCertificate`,
//! `privateKey`, `caCertificates`) or from the Secret `credentialName`
//! names: from the API server (watched one by one, in the gateway's
//! namespace), or standalone from a directory laid out as Kubernetes
//! mounts a Secret. What was read is kept with what tells it from a
//! rotated one (a file's fingerprint, a Secret's resource version) and
//! read again when that changes, so a rotated certificate serves the next
//! handshake, without a restart.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ambit_config::api::networking::TlsProtocol;
use ambit_mesh_source::secrets::SecretWatches;
use ambit_route::compile::gateway::{ClientCertificates, Credential, ServerMode, TlsTermination};
use ambit_route::GatewayTables;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The keys of a Secret, as Istio reads a gateway's credential: those of
/// a `kubernetes.io/tls` Secret, else those of a generic one.
const CERTIFICATE_KEYS: [&str; 2] = ["tls.crt", "cert"];
const KEY_KEYS: [&str; 2] = ["tls.key", "key"];
const CA_KEYS: [&str; 2] = ["ca.crt", "cacert"];
/// Istio's name for a Secret holding a MUTUAL server's CA bundle apart.
const CA_SECRET_SUFFIX: &str = "-cacert";

/// Where the Secrets that Gateways name are read from.
pub enum Secrets {
    /// None: only servers with files serve.
    None,
    /// `DIR/NAME/KEY`, as Kubernetes mounts a Secret.
    Directory(PathBuf),
    /// The API server.
    Kubernetes(SecretWatches),
}

/// Server configs by the TLS settings they were built for.
pub struct Credentials {
    secrets: Secrets,
    built: Mutex<HashMap<TlsTermination, Built>>,
}

/// A config and what it was built from, as that was then.
struct Built {
    read: Vec<Read>,
    config: Arc<ServerConfig>,
}

/// One input of a config, as it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Read {
    /// A file and its fingerprint: a rotation writes a new file (or swaps
    /// the link to one, as Kubernetes updates a mounted Secret).
    File(PathBuf, Option<(SystemTime, u64, u64)>),
    /// A Secret from the API server and its resource version (none: it
    /// did not exist).
    Secret(String, Option<String>),
}

/// A certificate chain, key and CA bundle, in PEM, with where they were
/// found (for messages).
struct Material {
    chain: (String, Vec<u8>),
    key: (String, Vec<u8>),
    ca: Option<(String, Vec<u8>)>,
}

fn fingerprint(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}

fn read_file(path: &Path, read: &mut Vec<Read>) -> Result<(String, Vec<u8>), String> {
    let shown = path.display().to_string();
    read.push(Read::File(path.to_path_buf(), fingerprint(path)));
    let bytes = std::fs::read(path).map_err(|e| format!("{shown}: {e}"))?;
    Ok((shown, bytes))
}

impl Credentials {
    pub fn new(secrets: Secrets) -> Self {
        Self {
            secrets,
            built: Mutex::default(),
        }
    }

    /// Watches the Secrets `tables` name, and only those (in Kubernetes).
    pub fn follow(&self, tables: &GatewayTables) {
        let Secrets::Kubernetes(watches) = &self.secrets else {
            return;
        };
        let mut names = BTreeSet::new();
        let servers = tables.listeners.values().flat_map(|l| l.servers.iter());
        for server in servers {
            let ServerMode::Terminate(tls) = &server.mode else {
                continue;
            };
            if let Credential::Secret { name, ca_name } = &tls.credential {
                names.insert(name.clone());
                names.extend(ca_name.clone());
                if tls.clients.checked() && ca_name.is_none() {
                    names.insert(format!("{name}{CA_SECRET_SUFFIX}"));
                }
            }
        }
        watches.follow(&names);
    }

    /// The server config for `tls` as its credential is now.
    pub fn server_config(&self, tls: &TlsTermination) -> Result<Arc<ServerConfig>, String> {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kept) = built.get(tls) {
            if kept.read.iter().all(|read| self.unchanged(read)) {
                return Ok(kept.config.clone());
            }
        }
        let mut read = Vec::new();
        let material = self.material(tls, &mut read)?;
        let config = Arc::new(build(tls, &material)?);
        built.insert(
            tls.clone(),
            Built {
                read,
                config: config.clone(),
            },
        );
        Ok(config)
    }

    /// Whether an input is as it was read.
    fn unchanged(&self, read: &Read) -> bool {
        match read {
            Read::File(path, seen) => fingerprint(path) == *seen,
            Read::Secret(name, version) => match &self.secrets {
                Secrets::Kubernetes(watches) => {
                    let now = watches.get(name).ok().flatten().map(|s| s.version);
                    now == *version
                }
                _ => false,
            },
        }
    }

    /// The server's certificate, key and CA bundle, noting in `read` what
    /// they came from.
    fn material(&self, tls: &TlsTermination, read: &mut Vec<Read>) -> Result<Material, String> {
        let (name, ca_name) = match &tls.credential {
            Credential::Files {
                certificate,
                private_key,
                ca_certificates,
            } => {
                return Ok(Material {
                    chain: read_file(Path::new(certificate), read)?,
                    key: read_file(Path::new(private_key), read)?,
                    ca: match ca_certificates {
                        Some(ca) if tls.clients.checked() => Some(read_file(Path::new(ca), read)?),
                        _ => None,
                    },
                });
            }
            Credential::Secret { name, ca_name } => (name, ca_name),
        };
        let chain = self.secret_key(name, &CERTIFICATE_KEYS, read)?;
        let key = self.secret_key(name, &KEY_KEYS, read)?;
        let (Some(chain), Some(key)) = (chain, key) else {
            return Err(format!(
                "the Secret {name} holds no tls.crt and tls.key (nor cert and key)"
            ));
        };
        let ca = if !tls.clients.checked() {
            None
        } else {
            let separate = ca_name
                .clone()
                .unwrap_or_else(|| format!("{name}{CA_SECRET_SUFFIX}"));
            let found = match ca_name {
                Some(_) => None,
                None => self.secret_key(name, &CA_KEYS, read)?,
            };
            match found {
                Some(ca) => Some(ca),
                None => self.secret_key(&separate, &CA_KEYS, read)?,
            }
        };
        Ok(Material { chain, key, ca })
    }

    /// The first of `keys` the Secret `name` holds; none when it holds
    /// none of them (or, in a directory, does not exist).
    fn secret_key(
        &self,
        name: &str,
        keys: &[&str],
        read: &mut Vec<Read>,
    ) -> Result<Option<(String, Vec<u8>)>, String> {
        match &self.secrets {
            Secrets::None => Err(format!(
                "credentialName {name}: this gateway reads no Secrets (--credentials-dir, or a Kubernetes source)"
            )),
            Secrets::Directory(dir) => {
                let Some(path) = keys.iter().map(|key| dir.join(name).join(key)).find(|p| p.exists())
                else {
                    return Ok(None);
                };
                read_file(&path, read).map(Some)
            }
            Secrets::Kubernetes(watches) => {
                let secret = watches.get(name)?;
                read.push(Read::Secret(
                    name.to_string(),
                    secret.as_ref().map(|s| s.version.clone()),
                ));
                let Some(secret) = secret else {
                    return Ok(None);
                };
                Ok(keys.iter().find_map(|key| {
                    let bytes = secret.data.get(*key)?;
                    Some((format!("Secret {name} {key}"), bytes.clone()))
                }))
            }
        }
    }
}

/// A rustls server config as Istio's gateway configures Envoy for `tls`.
fn build(tls: &TlsTermination, material: &Material) -> Result<ServerConfig, String> {
    let (chain_at, chain_pem) = &material.chain;
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{chain_at}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{chain_at}: no certificate"));
    }
    let (key_at, key_pem) = &material.key;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("{key_at}: {e}"))?;
    let provider = Arc::new(provider(&tls.cipher_suites));
    let versions = versions(tls.min_version, tls.max_version)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?;
    let builder = match (&material.ca, tls.clients) {
        (_, ClientCertificates::Unasked) => builder.with_no_client_auth(),
        (Some((ca_at, ca_pem)), clients) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem) {
                let cert = cert.map_err(|e| format!("{ca_at}: {e}"))?;
                roots.add(cert).map_err(|e| format!("{ca_at}: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            let verifier = match clients {
                ClientCertificates::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier = verifier.build().map_err(|e| format!("{ca_at}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, _) => {
            return Err("client certificates asked for without a CA bundle (ca.crt)".to_string())
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{key_at}: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The TLS versions between `min` and `max` that rustls speaks (1.2 and
/// 1.3: a lower minimum still gets 1.2).
fn versions(
    min: Option<TlsProtocol>,
    max: Option<TlsProtocol>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let rank = |v: TlsProtocol| match v {
        TlsProtocol::Auto => None,
        TlsProtocol::V1_0 => Some(0),
        TlsProtocol::V1_1 => Some(1),
        TlsProtocol::V1_2 => Some(2),
        TlsProtocol::V1_3 => Some(3),
    };
    let min = min.and_then(rank).unwrap_or(2);
    let max = max.and_then(rank).unwrap_or(3);
    let versions: Vec<_> = [(2, &rustls::version::TLS12), (3, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(rank, _)| (min..=max).contains(rank))
        .map(|(_, version)| version)
        .collect();
    if versions.is_empty() {
        return Err(
            "maxProtocolVersion below TLSV1_2: Ambit's gateway speaks TLS 1.2 and 1.3".into(),
        );
    }
    Ok(versions)
}

/// The AWS-LC provider with the TLS 1.2 suites `names` lists (Envoy's
/// OpenSSL-style names; TLS 1.3's suites are not configurable, as in
/// Envoy); all of its suites when none is listed.
fn provider(names: &[String]) -> CryptoProvider {
    use rustls::crypto::aws_lc_rs::cipher_suite as suite;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if names.is_empty() {
        return provider;
    }
    let by_name: [(&str, SupportedCipherSuite); 6] = [
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-RSA-AES128-GCM-SHA256",
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-RSA-AES256-GCM-SHA384",
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "ECDHE-RSA-CHACHA20-POLY1305",
            suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ];
    let mut suites: Vec<SupportedCipherSuite> = provider
        .cipher_suites
        .iter()
        .copied()
        .filter(|s| s.version() == &rustls::version::TLS13)
        .collect();
    for name in names {
        match by_name.iter().find(|(known, _)| known == name) {
            Some((_, chosen)) => suites.push(*chosen),
            None => tracing::warn!(
                cipher = %name,
                "cipherSuites: not a suite Ambit's gateway offers (ECDHE with AES-GCM or ChaCha20-Poly1305); left out"
            ),
        }
    }
    provider.cipher_suites = suites;
    provider
}
