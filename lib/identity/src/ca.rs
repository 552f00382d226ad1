//! The certificate authority's signing: a root (generated, or loaded from
//! where it is kept) that certifies workload keys as SPIFFE identities of
//! its trust domain. Who may ask for which identity is decided by the
//! caller (`ambit-ca`), before [`CertificateAuthority::issue`].

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::spiffe::Identity;

/// Istio's default workload certificate lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a generated root is valid.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start a little in the past, for peers whose clocks lag.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate authority: {0}")]
    Signing(#[from] rcgen::Error),
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("the CA of trust domain {ours} cannot certify {identity}")]
    ForeignTrustDomain { ours: String, identity: Identity },
}

pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    trust_domain: String,
}

impl CertificateAuthority {
    /// A new self-signed root for `trust_domain` (P-256, ten years).
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, trust_domain);
        name.push(DnType::CommonName, "Ambit root CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = at(now - CLOCK_SKEW);
        params.not_after = at(now + ROOT_LIFETIME);
        let root_pem = params.self_signed(&key)?.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            root_pem,
            trust_domain: trust_domain.into(),
        })
    }

    /// The root kept from before (a Kubernetes Secret, or files).
    pub fn from_pem(root_pem: &str, key_pem: &str, trust_domain: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(root_pem.as_bytes())
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        let root: rustls_pki_types::CertificateDer = der;
        let (_, parsed) = x509_parser::parse_x509_certificate(&root)
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        if !crate::certificate::is_for_key(&parsed, &key) {
            return Err(CaError::KeyMismatch);
        }
        Ok(Self {
            issuer: Issuer::from_ca_cert_pem(root_pem, key)?,
            root_pem: root_pem.into(),
            trust_domain: trust_domain.into(),
        })
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root's key, to keep it where it is kept; never sent to a proxy.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Certifies the key of `csr_pem` as `identity` for `ttl`, from now.
    /// Only the request's key (whose possession its signature proves) is
    /// used: names and usages are the CA's decision.
    pub fn issue(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<String, CaError> {
        let now = SystemTime::now();
        self.issue_valid_between(csr_pem, identity, now - CLOCK_SKEW, now + ttl)
    }

    /// [`CertificateAuthority::issue`] for an explicit validity period.
    pub fn issue_valid_between(
        &self,
        csr_pem: &str,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<String, CaError> {
        if identity.trust_domain != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                ours: self.trust_domain.clone(),
                identity: identity.clone(),
            });
        }
        let request = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(not_before);
        params.not_after = at(not_after);
        let leaf = params.signed_by(&request.public_key, &self.issuer)?;
        Ok(leaf.pem())
    }
}

fn at(time: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(time)
}
