//! Where the CA's root lives in standalone mode: a directory with Istio's
//! plug-in CA file names (`ca-cert.pem`, `ca-key.pem`), created on first
//! start. The key file is readable by its owner only.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ambit_identity::CertificateAuthority;
use anyhow::Context;

pub const CERT_FILE: &str = "ca-cert.pem";
pub const KEY_FILE: &str = "ca-key.pem";

/// The root kept in `dir`, or a new one written there when there is none.
pub fn load_or_create(dir: &Path, trust_domain: &str) -> anyhow::Result<CertificateAuthority> {
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    match (cert.exists(), key.exists()) {
        (true, true) => {
            let read = |path: &Path| {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
            };
            let ca = CertificateAuthority::from_pem(&read(&cert)?, &read(&key)?, trust_domain)
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
