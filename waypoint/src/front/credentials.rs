//! The TLS a gateway's SIMPLE and MUTUAL servers end: certificate, key and
//! CA bundle read from files (a server's `serverCertificate`,
//! `privateKey`, `caCertificates`) or from a Secret `credentialName`
//! names, which standalone is a directory laid out as Kubernetes mounts a
//! Secret. What was read is kept with the files' fingerprints and read
//! again when they change, so a rotated certificate serves the next
//! handshake, without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ambit_config::api::networking::TlsProtocol;
use ambit_route::compile::gateway::{Credential, TlsTermination};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The keys of a Secret, as Istio reads a gateway's credential.
const SECRET_CERTIFICATE: &str = "tls.crt";
const SECRET_KEY: &str = "tls.key";
const SECRET_CA: &str = "ca.crt";

/// Server configs by the TLS settings they were built for.
pub struct Credentials {
    /// Where Secrets are found, standalone.
    dir: Option<PathBuf>,
    built: Mutex<HashMap<TlsTermination, Built>>,
}

/// A config and the files it was built from, as they were then.
struct Built {
    files: Vec<(PathBuf, Fingerprint)>,
    config: Arc<ServerConfig>,
}

/// What tells a changed file from the one read: a rotation writes a new
/// file (or swaps the link to one, as Kubernetes updates a mounted Secret).
type Fingerprint = Option<(SystemTime, u64, u64)>;

fn fingerprint(path: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}

impl Credentials {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            built: Mutex::default(),
        }
    }

    /// The server config for `tls` as its files are now.
    pub fn server_config(&self, tls: &TlsTermination) -> Result<Arc<ServerConfig>, String> {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kept) = built.get(tls) {
            if kept
                .files
                .iter()
                .all(|(path, seen)| fingerprint(path) == *seen)
            {
                return Ok(kept.config.clone());
            }
        }
        let files = self.files(tls)?;
        let fingerprints = files.paths().map(|p| (p.clone(), fingerprint(p))).collect();
        let config = Arc::new(build(tls, &files)?);
        built.insert(
            tls.clone(),
            Built {
                files: fingerprints,
                config: config.clone(),
            },
        );
        Ok(config)
    }

    /// Where the server's certificate, key and CA bundle are.
    fn files(&self, tls: &TlsTermination) -> Result<Files, String> {
        match &tls.credential {
            Credential::Files {
                certificate,
                private_key,
                ca_certificates,
            } => Ok(Files {
                certificate: certificate.into(),
                key: private_key.into(),
                ca: ca_certificates.as_ref().map(PathBuf::from),
            }),
            Credential::Secret { name, ca_name } => {
                let Some(dir) = &self.dir else {
                    return Err(format!(
                        "credentialName {name}: no Secrets to read it from (--credentials-dir)"
                    ));
                };
                let secret = dir.join(name);
                let ca = match ca_name {
                    Some(ca_name) => Some(dir.join(ca_name).join(SECRET_CA)),
                    None => {
                        let ca = secret.join(SECRET_CA);
                        (tls.mutual || ca.exists()).then_some(ca)
                    }
                };
                Ok(Files {
                    certificate: secret.join(SECRET_CERTIFICATE),
                    key: secret.join(SECRET_KEY),
                    ca,
                })
            }
        }
    }
}

struct Files {
    certificate: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
}

impl Files {
    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.certificate, &self.key].into_iter().chain(&self.ca)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A rustls server config as Istio's gateway configures Envoy for `tls`.
fn build(tls: &TlsTermination, files: &Files) -> Result<ServerConfig, String> {
    let chain = CertificateDer::pem_slice_iter(&read(&files.certificate)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", files.certificate.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", files.certificate.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let provider = Arc::new(provider(&tls.cipher_suites));
    let versions = versions(tls.min_version, tls.max_version)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?;
    let builder = match (&files.ca, tls.mutual) {
        (Some(ca), true) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read(ca)?) {
                let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, true) => return Err("MUTUAL without a CA bundle (ca.crt)".to_string()),
        (_, false) => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
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

/// The ring provider with the TLS 1.2 suites `names` lists (Envoy's
/// OpenSSL-style names; TLS 1.3's suites are not configurable, as in
/// Envoy); all of its suites when none is listed.
fn provider(names: &[String]) -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite as suite;
    let mut provider = rustls::crypto::ring::default_provider();
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
