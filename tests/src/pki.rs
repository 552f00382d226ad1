//! Certificates for names outside the mesh, as a company's own CA issues
//! them for its public hosts and its clients: what a gateway's HTTPS
//! servers present and what their clients trust and present. Written as
//! PEM files, in the layout Kubernetes mounts a Secret in.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

pub struct TestPki {
    issuer: Issuer<'static, KeyPair>,
    ca_file: PathBuf,
}

/// An issued certificate's files.
#[derive(Clone, Debug)]
pub struct Issued {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    /// A new CA named `name`, its certificate written to `dir/ca.crt`.
    pub fn new(name: &str, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, params.self_signed(&key)?.pem())?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            ca_file,
        })
    }

    /// The CA's certificate, which clients (or a MUTUAL server) trust.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A server certificate for `names`, written as `dir/tls.crt` and
    /// `dir/tls.key`, with this CA's certificate as `dir/ca.crt`: a
    /// Secret as Istio's gateway reads one.
    pub fn server(&self, names: &[&str], dir: &Path) -> anyhow::Result<Issued> {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, dir)
    }

    /// A client certificate for `names`, written likewise.
    pub fn client(&self, names: &[&str], dir: &Path) -> anyhow::Result<Issued> {
        self.issue(names, ExtendedKeyUsagePurpose::ClientAuth, dir)
    }

    fn issue(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        dir: &Path,
    ) -> anyhow::Result<Issued> {
        std::fs::create_dir_all(dir)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params.extended_key_usages = vec![usage];
        let certificate = params.signed_by(&key, &self.issuer)?;
        let issued = Issued {
            certificate: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        // Written beside and renamed, as a rotation must be: a reader
        // never sees half a file.
        for (path, pem) in [
            (&issued.certificate, certificate.pem()),
            (&issued.key, key.serialize_pem()),
            (&dir.join("ca.crt"), std::fs::read_to_string(&self.ca_file)?),
        ] {
            let temporary = path.with_extension("tmp");
            std::fs::write(&temporary, pem)?;
            std::fs::rename(&temporary, path)?;
        }
        Ok(issued)
    }
}
