//! A workload's key and certificate. The key is made where it is used and
//! never leaves: the CA sees only a signing request.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::extensions::GeneralName;

use crate::spiffe::Identity;

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("making the key or request: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("no certificate in the PEM text")]
    NoCertificate,
    #[error("unreadable certificate: {0}")]
    Unreadable(String),
    #[error("the certificate names no workload identity (a spiffe:// URI SAN)")]
    NoIdentity,
    #[error("the certificate is for another key than the one offered")]
    KeyMismatch,
    #[error("the certificate is for {found}, not {wanted}")]
    WrongIdentity { found: String, wanted: String },
}

/// A new P-256 key and a PEM request to certify it as `identity`.
pub fn certificate_request(identity: &Identity) -> Result<(KeyPair, String), CertificateError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    let pem = params.serialize_request(&key)?.pem()?;
    Ok((key, pem))
}

/// A workload's certificate chain (leaf first) with its key, ready for TLS.
#[derive(Debug)]
pub struct WorkloadCertificate {
    pub identity: Identity,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl WorkloadCertificate {
    /// The chain the CA returned for `key`, which must name `identity`.
    pub fn new(
        identity: &Identity,
        key: &KeyPair,
        chain_pem: &str,
    ) -> Result<Self, CertificateError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| CertificateError::Unreadable(error.to_string()))?;
        let leaf = chain.first().ok_or(CertificateError::NoCertificate)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|error| CertificateError::Unreadable(error.to_string()))?;
        if !is_for_key(&parsed, key) {
            return Err(CertificateError::KeyMismatch);
        }
        let found = identity_of(leaf)?;
        if found != *identity {
            return Err(CertificateError::WrongIdentity {
                found: found.to_string(),
                wanted: identity.to_string(),
            });
        }
        let time = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0).unsigned_abs())
        };
        Ok(Self {
            identity: found,
            not_before: time(parsed.validity().not_before),
            not_after: time(parsed.validity().not_after),
            chain,
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }

    /// Half way through its life, when renewal should start.
    pub fn half_life(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }

    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    pub(crate) fn certified_key(
        &self,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<Arc<rustls::sign::CertifiedKey>, rustls::Error> {
        rustls::sign::CertifiedKey::from_der(self.chain(), self.key(), provider).map(Arc::new)
    }
}

/// Whether `cert` certifies `key`.
pub(crate) fn is_for_key(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    key: &KeyPair,
) -> bool {
    use rcgen::PublicKeyData;
    cert.public_key().raw == key.subject_public_key_info().as_slice()
}

/// The workload identity a certificate is for: its first `spiffe://` URI
/// SAN, as ztunnel takes it.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, CertificateError> {
    let identities = identities_of(cert)?;
    identities
        .into_iter()
        .next()
        .ok_or(CertificateError::NoIdentity)
}

/// Every workload identity a certificate names (its `spiffe://` URI SANs,
/// in order): a server is accepted as any of them, as ztunnel does. One
/// that does not read as an identity makes the certificate unusable.
pub fn identities_of(cert: &CertificateDer<'_>) -> Result<Vec<Identity>, CertificateError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|error| CertificateError::Unreadable(error.to_string()))?;
    let names = parsed
        .subject_alternative_name()
        .map_err(|error| CertificateError::Unreadable(error.to_string()))?
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        })
        .map(|uri| uri.parse().map_err(|_| CertificateError::NoIdentity))
        .collect()
}
