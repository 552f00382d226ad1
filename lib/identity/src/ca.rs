//! The certificate authority's signing: a root (generated, or loaded from
//! where it is kept) that certifies workload keys as SPIFFE identities of
//! its trust domain. Who may ask for which identity is decided by the
//! caller (`ambit-ca`), before [`CertificateAuthority::issue`].
//!
//! The root is kept in Istio's plug-in CA files, so a mesh that moves from
//! Istio keeps its trust root and its agents can talk to ztunnels: the
//! signing certificate and key (`ca-cert.pem`, `ca-key.pem`, the key in the
//! PKCS #1 or SEC1 form Istio and OpenSSL write), and when it is an
//! intermediate, the root (`root-cert.pem`) and the chain up to it
//! (`cert-chain.pem`), which goes out with every leaf.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::certificate::certificate_request;
use crate::spiffe::Identity;
use crate::tls::TrustBundle;

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
    #[error("the CA key is not a PKCS #8, PKCS #1 (RSA) or SEC1 (EC) private key in PEM")]
    UnreadableKey,
    #[error("a certificate chain is given without the root it leads to")]
    ChainWithoutRoot,
    #[error("the certificates this CA would issue are not trusted by its root: {0}")]
    Untrusted(String),
    #[error("the CA of trust domain {ours} cannot certify {identity}")]
    ForeignTrustDomain { ours: String, identity: Identity },
    #[error("the certificate signing request is not a PKCS #10 request in PEM: {0}")]
    UnreadableRequest(rcgen::Error),
    #[error("the certificate signing request names no SPIFFE identity (a spiffe:// URI SAN): {0}")]
    NoIdentityRequested(String),
}

/// The SPIFFE identity a certificate signing request names in its URI SAN:
/// what a proxy for one workload (Istio's sidecar, a dedicated ztunnel)
/// asks for, where a node proxy names it in the request's metadata.
pub fn identity_requested(csr_pem: &str) -> Result<Identity, CaError> {
    let request =
        CertificateSigningRequestParams::from_pem(csr_pem).map_err(CaError::UnreadableRequest)?;
    let uris: Vec<&str> = request
        .params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            SanType::URI(uri) => Some(uri.as_str()),
            _ => None,
        })
        .collect();
    match uris[..] {
        [uri] => uri
            .parse()
            .map_err(|error| CaError::NoIdentityRequested(format!("{uri}: {error}"))),
        [] => Err(CaError::NoIdentityRequested("it has no URI SAN".into())),
        _ => Err(CaError::NoIdentityRequested(format!(
            "it names {} URIs, where one identity is certified",
            uris.len()
        ))),
    }
}

/// The CA's files, by their names in Istio's `cacerts` Secret.
#[derive(Debug, Clone, Copy)]
pub struct CaFiles<'a> {
    /// `ca-cert.pem`: the certificate the CA signs with.
    pub cert: &'a str,
    /// `ca-key.pem`: its key.
    pub key: &'a str,
    /// `root-cert.pem`: the root peers trust, when `cert` is not that root
    /// (absent or empty otherwise).
    pub root: Option<&'a str>,
    /// `cert-chain.pem`: `cert` and what links it to `root`. Without it,
    /// `cert` alone is taken to be issued by `root`.
    pub chain: Option<&'a str>,
}

pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// The root(s) peers trust.
    root_pem: String,
    /// Sent after each leaf: empty when the CA signs with the root itself.
    chain_pem: String,
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
            chain_pem: String::new(),
            trust_domain: trust_domain.into(),
        })
    }

    /// A root kept from before, which signs itself.
    pub fn from_pem(root_pem: &str, key_pem: &str, trust_domain: &str) -> Result<Self, CaError> {
        Self::from_files(
            CaFiles {
                cert: root_pem,
                key: key_pem,
                root: None,
                chain: None,
            },
            trust_domain,
        )
    }

    /// The CA kept in Istio's plug-in CA files (a Kubernetes Secret, or a
    /// directory). Refused unless a leaf it issues verifies against the root.
    pub fn from_files<'a>(files: CaFiles<'a>, trust_domain: &str) -> Result<Self, CaError> {
        let key = signing_key(files.key)?;
        let cert = CertificateDer::from_pem_slice(files.cert.as_bytes())
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        if !crate::certificate::is_for_key(&parsed, &key) {
            return Err(CaError::KeyMismatch);
        }
        // Istio's own `istio-ca-secret` holds these keys empty.
        let given = |pem: Option<&'a str>| pem.filter(|pem| !pem.trim().is_empty());
        let (root_pem, chain_pem) = match (given(files.root), given(files.chain)) {
            (None, None) => (files.cert, ""),
            (None, Some(_)) => return Err(CaError::ChainWithoutRoot),
            (Some(root), chain) => (root, chain.unwrap_or(files.cert)),
        };
        let ca = Self {
            issuer: Issuer::from_ca_cert_pem(files.cert, key)?,
            root_pem: root_pem.into(),
            chain_pem: chain_pem.into(),
            trust_domain: trust_domain.into(),
        };
        ca.check_trusted()?;
        Ok(ca)
    }

    /// Issues a throwaway leaf and checks it as a peer would, so that a
    /// wrong root, a broken chain or an expired CA certificate stops the CA
    /// at start rather than failing every handshake later.
    fn check_trusted(&self) -> Result<(), CaError> {
        let untrusted = |error: &dyn std::fmt::Display| CaError::Untrusted(error.to_string());
        let probe = Identity::new(&self.trust_domain, "ambit-ca", "self-check");
        let (_, csr) = certificate_request(&probe).map_err(|error| untrusted(&error))?;
        let chain = self.issue(&csr, &probe, Duration::from_secs(60))?;
        let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| untrusted(&error))?;
        TrustBundle::from_pem(&self.trust_domain, &self.root_pem)
            .map_err(|error| untrusted(&error))?
            .verify_chain(&chain)
            .map_err(|error| untrusted(&error))?;
        Ok(())
    }

    /// The root(s) peers trust (`root-cert.pem`).
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
        self.sign(csr_pem, identity, &[], (not_before, not_after))
    }

    /// [`CertificateAuthority::issue`] naming DNS names beside the
    /// identity: for a server that clients verify by host name as well as
    /// by identity (the CA itself, which Istio's proxies dial by the
    /// name of its Service).
    pub fn issue_with_dns_names(
        &self,
        csr_pem: &str,
        identity: &Identity,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<String, CaError> {
        let now = SystemTime::now();
        self.sign(csr_pem, identity, dns_names, (now - CLOCK_SKEW, now + ttl))
    }

    fn sign(
        &self,
        csr_pem: &str,
        identity: &Identity,
        dns_names: &[String],
        (not_before, not_after): (SystemTime, SystemTime),
    ) -> Result<String, CaError> {
        if identity.trust_domain != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                ours: self.trust_domain.clone(),
                identity: identity.clone(),
            });
        }
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(CaError::UnreadableRequest)?;
        let mut params = CertificateParams::default();
        // The identity first: peers know a certificate by its first URI.
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into()?));
        }
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
        Ok(leaf.pem() + &self.chain_pem)
    }
}

/// The CA's key from PKCS #8, or from the PKCS #1 (RSA) and SEC1 (EC) forms
/// Istio and OpenSSL write, which are rewrapped as PKCS #8 for the signer.
fn signing_key(pem: &str) -> Result<KeyPair, CaError> {
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| CaError::UnreadableKey)?;
    let candidates = match &key {
        PrivateKeyDer::Pkcs8(key) => vec![key.secret_pkcs8_der().to_vec()],
        PrivateKeyDer::Pkcs1(key) => vec![pkcs8(RSA_ALGORITHM, key.secret_pkcs1_der())],
        // SEC1 may leave the curve out: try each one the signer knows.
        PrivateKeyDer::Sec1(key) => [EC_P256_ALGORITHM, EC_P384_ALGORITHM]
            .iter()
            .map(|algorithm| pkcs8(algorithm, key.secret_sec1_der()))
            .collect(),
        _ => vec![],
    };
    candidates
        .into_iter()
        .find_map(|der| KeyPair::try_from(der).ok())
        .ok_or(CaError::UnreadableKey)
}

/// DER AlgorithmIdentifier contents: rsaEncryption with NULL parameters.
const RSA_ALGORITHM: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// id-ecPublicKey on prime256v1.
const EC_P256_ALGORITHM: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
    0x03, 0x01, 0x07,
];
/// id-ecPublicKey on secp384r1.
const EC_P384_ALGORITHM: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22,
];

/// PKCS #8 PrivateKeyInfo (RFC 5208): version 0, the algorithm, the key.
fn pkcs8(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let version = [0x02, 0x01, 0x00];
    let body = [&version[..], &der(0x30, algorithm), &der(0x04, key)].concat();
    der(0x30, &body)
}

/// One DER element: tag, definite length, contents.
fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let length = contents.len().to_be_bytes();
    let significant = &length[length.iter().take_while(|&&byte| byte == 0).count()..];
    let mut out = vec![tag];
    match contents.len() {
        short @ 0..=0x7f => out.push(short as u8),
        _ => {
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(significant);
        }
    }
    out.extend_from_slice(contents);
    out
}

fn at(time: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(time)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test
    use super::*;

    fn request_naming(sans: &[&str]) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|uri| SanType::URI((*uri).try_into().unwrap()))
            .collect();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn a_signing_request_asks_for_the_one_identity_its_uri_names() {
        let cart = Identity::new("cluster.local", "shop", "cart");
        let (_, pem) = certificate_request(&cart).unwrap();
        assert_eq!(identity_requested(&pem).unwrap(), cart);
        for (sans, reason) in [
            (&[][..], "it has no URI SAN"),
            (
                &[
                    "spiffe://cluster.local/ns/shop/sa/cart",
                    "spiffe://cluster.local/ns/shop/sa/pay",
                ][..],
                "it names 2 URIs",
            ),
            (&["https://example.com/"][..], "https://example.com/"),
        ] {
            let error = identity_requested(&request_naming(sans)).unwrap_err();
            assert!(
                matches!(&error, CaError::NoIdentityRequested(why) if why.contains(reason)),
                "{sans:?}: {error}"
            );
        }
        assert!(matches!(
            identity_requested("not a request"),
            Err(CaError::UnreadableRequest(_))
        ));
    }
}
