//! Mutual TLS between Ambit's proxies, as HBONE needs it: TLS 1.3 only,
//! ALPN `h2`, a certificate required on both sides, chains checked against
//! the trust bundle, and peers known by their SPIFFE ID. The client also
//! checks that the server is the identity it expected for the destination.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::TrustAnchor;
use webpki::{EndEntityCert, KeyUsage};

use crate::certificate::{identities_of, identity_of, WorkloadCertificate};
use crate::spiffe::Identity;

/// HBONE, and the CA's gRPC, are HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the trust bundle: {0}")]
    Bundle(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The roots a proxy trusts, all for one trust domain. During a root
/// rotation it holds the old and the new root.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: String,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    pub fn from_pem(trust_domain: &str, pem: &str) -> Result<Self, TlsError> {
        let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsError::Bundle(error.to_string()))?;
        if roots.is_empty() {
            return Err(TlsError::Bundle("no certificate in it".into()));
        }
        let anchors = roots
            .iter()
            .map(|root| {
                webpki::anchor_from_trusted_cert(root)
                    .map(|anchor| anchor.to_owned())
                    .map_err(|error| TlsError::Bundle(error.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            trust_domain: trust_domain.into(),
            anchors,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Checks a chain (leaf first) as a handshake checks a peer's, now:
    /// anchored in this bundle, in its trust domain. The identity it names.
    pub(crate) fn verify_chain(
        &self,
        chain: &[CertificateDer<'_>],
    ) -> Result<Identity, rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        SpiffeVerifier::new(self, None, provider()).verify(
            leaf,
            intermediates,
            UnixTime::now(),
            KeyUsage::client_auth(),
        )
    }
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let policy = std::env::var(COMPLIANCE_POLICY).unwrap_or_default();
            Arc::new(compliant_provider(&policy))
        })
        .clone()
}

/// The environment variable Istio's proxies read their compliance policy
/// from (`pqc`, `fips-140-2`; unset: neither).
pub const COMPLIANCE_POLICY: &str = "COMPLIANCE_POLICY";

/// Whether `COMPLIANCE_POLICY`, if set, names a policy this build knows:
/// a proxy checks it at start rather than meet a typo at its first
/// handshake.
pub fn check_compliance_policy() -> Result<(), String> {
    known_policy(&std::env::var(COMPLIANCE_POLICY).unwrap_or_default())
}

fn known_policy(policy: &str) -> Result<(), String> {
    match policy {
        "" | "pqc" | "fips-140-2" => Ok(()),
        other => Err(format!(
            "{COMPLIANCE_POLICY}={other:?}: not a policy (pqc, fips-140-2, or unset)"
        )),
    }
}

/// AWS-LC's primitives (rustls' default, as Istio's), with the key
/// exchanges `policy` allows, as Istio's proxies take it: `pqc` only
/// X25519MLKEM768 (a post-quantum hybrid); `fips-140-2` only the NIST
/// curves P-256 and P-384; otherwise X25519MLKEM768 first, then X25519,
/// P-256 and P-384, so a peer of either kind agrees.
///
/// AES-GCM only (FIPS-approved, as ztunnel offers), AES-128 first as
/// BoringSSL (Envoy, Istio's sidecars) and Go prefer it: four fewer rounds
/// per block, about a quarter less of the agents' cipher time on bulk
/// transfer. Under `pqc`, AES-256 first, as quantum-resistant suites ask.
pub fn compliant_provider(policy: &str) -> CryptoProvider {
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    let kx_groups = match policy {
        "pqc" => vec![kx_group::X25519MLKEM768],
        "fips-140-2" => vec![kx_group::SECP256R1, kx_group::SECP384R1],
        _ => vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
            kx_group::SECP384R1,
        ],
    };
    use rustls::crypto::aws_lc_rs::cipher_suite as suite;
    let cipher_suites = match policy {
        "pqc" => vec![
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_AES_128_GCM_SHA256,
        ],
        _ => vec![
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS13_AES_256_GCM_SHA384,
        ],
    };
    CryptoProvider {
        kx_groups,
        cipher_suites,
        ..default_provider()
    }
}

/// The server side of HBONE: requires and verifies the client's certificate.
pub fn server_config(
    certificate: &WorkloadCertificate,
    bundle: &TrustBundle,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let verifier = SpiffeVerifier::new(bundle, None, provider.clone());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(certificate.chain(), certificate.key())?;
    let mut config = verified_fully(config, ALPN_H2);
    // HBONE's records are sealed and opened by `ambit-mesh-tls` once rustls
    // has made the handshake and handed it the secrets.
    config.enable_secret_extraction = true;
    Ok(config)
}

/// A server whose callers have no certificate yet: the CA's.
pub fn server_config_for_anonymous_clients(
    certificate: &WorkloadCertificate,
) -> Result<ServerConfig, TlsError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certificate.chain(), certificate.key())?;
    // The CA speaks gRPC: HTTP/2.
    Ok(verified_fully(config, ALPN_H2))
}

/// Every connection is verified in full: no resumed sessions.
fn verified_fully(mut config: ServerConfig, alpn: &[u8]) -> ServerConfig {
    config.alpn_protocols = vec![alpn.to_vec()];
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config
}

/// The client side of HBONE to a server that must be `server`.
pub fn client_config(
    certificate: &WorkloadCertificate,
    bundle: &TrustBundle,
    server: &Identity,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let key = certificate.certified_key(&provider)?;
    let config = client_builder(bundle, server, provider)?
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    let mut config = resuming_nothing(config, ALPN_H2);
    // As the server's: the records are `ambit-mesh-tls`'s.
    config.enable_secret_extraction = true;
    Ok(config)
}

/// A client with no certificate of its own, to a server that must be
/// `server`: a proxy asking the CA for its first certificates.
pub fn client_config_without_certificate(
    bundle: &TrustBundle,
    server: &Identity,
) -> Result<ClientConfig, TlsError> {
    let config = client_builder(bundle, server, provider())?.with_no_client_auth();
    Ok(resuming_nothing(config, ALPN_H2))
}

fn client_builder(
    bundle: &TrustBundle,
    server: &Identity,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, TlsError> {
    let verifier = SpiffeVerifier::new(bundle, Some(server.clone()), provider.clone());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier)))
}

fn resuming_nothing(mut config: ClientConfig, alpn: &[u8]) -> ClientConfig {
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config
}

/// The identity the peer proved in a finished handshake.
pub fn peer_identity(connection: &rustls::CommonState) -> Option<Identity> {
    identity_of(connection.peer_certificates()?.first()?).ok()
}

/// Checks a peer's chain against the bundle and its SPIFFE ID against the
/// trust domain (and, for a server, against the identity expected).
#[derive(Debug)]
struct SpiffeVerifier {
    trust_domain: String,
    anchors: Vec<TrustAnchor<'static>>,
    expected: Option<Identity>,
    provider: Arc<CryptoProvider>,
}

impl SpiffeVerifier {
    fn new(
        bundle: &TrustBundle,
        expected: Option<Identity>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            trust_domain: bundle.trust_domain.clone(),
            anchors: bundle.anchors.clone(),
            expected,
            provider,
        }
    }

    /// The chain, then the identity that counts: the one expected of a
    /// server among those its certificate names, else the first.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<Identity, rustls::Error> {
        let cert = EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;
        let identities = identities_of(end_entity).map_err(|error| refused(error.to_string()))?;
        let first = identities
            .first()
            .ok_or_else(|| refused("no identity".into()))?;
        let identity = match &self.expected {
            Some(expected) if identities.contains(expected) => expected,
            Some(expected) => {
                return Err(refused(format!(
                    "the server is {first}, not the expected {expected}"
                )))
            }
            None => first,
        };
        if identity.trust_domain != self.trust_domain {
            return Err(refused(format!(
                "the peer {identity} is not in the trust domain {}",
                self.trust_domain
            )));
        }
        Ok(identity.clone())
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, KeyUsage::server_auth())?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, KeyUsage::client_auth())?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ServerCertVerifier::supported_verify_schemes(self)
    }
}

/// Why a peer's otherwise valid certificate is refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

fn refused(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(Refused(reason)),
    )))
}

fn pki_error(error: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as E;
    let kind = match error {
        webpki::Error::CertExpired { .. } => E::Expired,
        webpki::Error::CertNotValidYet { .. } => E::NotValidYet,
        webpki::Error::UnknownIssuer => E::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => E::BadSignature,
        other => E::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(kind)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test
    use super::*;
    use crate::{certificate_request, CertificateAuthority};
    use rustls::{CipherSuite, NamedGroup};

    /// A client that takes any server's certificate: only the key
    /// exchange is under test.
    #[derive(Debug)]
    struct AnyServer(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.0.signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.0.signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    fn workload() -> (WorkloadCertificate, TrustBundle) {
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let identity = Identity::new("cluster.local", "shop", "cart");
        let (key, csr) = certificate_request(&identity).unwrap();
        let pem = ca
            .issue(&csr, &identity, std::time::Duration::from_secs(3600))
            .unwrap();
        let certificate = WorkloadCertificate::new(&identity, &key, &pem).unwrap();
        let bundle = TrustBundle::from_pem("cluster.local", ca.root_pem()).unwrap();
        (certificate, bundle)
    }

    /// A client under Istio's compliance `policy`, presenting `certificate`.
    fn client_under(policy: &str, certificate: &WorkloadCertificate) -> ClientConfig {
        let provider = Arc::new(compliant_provider(policy));
        ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_client_auth_cert(certificate.chain(), certificate.key())
            .unwrap()
    }

    /// The group the two agreed on, or each side's error.
    async fn handshake(
        client: ClientConfig,
        server: ServerConfig,
    ) -> Result<(NamedGroup, CipherSuite), (String, String)> {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let (client, server) = tokio::join!(
            tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, near),
            tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(far)
        );
        match (client, server) {
            (Ok(client), Ok(_)) => {
                let session = client.get_ref().1;
                Ok((
                    session.negotiated_key_exchange_group().unwrap().name(),
                    session.negotiated_cipher_suite().unwrap().suite(),
                ))
            }
            (client, server) => Err((
                client.err().map(|e| e.to_string()).unwrap_or_default(),
                server.err().map(|e| e.to_string()).unwrap_or_default(),
            )),
        }
    }

    #[tokio::test]
    async fn peers_under_istios_compliance_policies_agree_with_ambits_default() {
        let (certificate, bundle) = workload();
        // As ztunnel with COMPLIANCE_POLICY=pqc, with FIPS, and as Ambit.
        let (aes_128, aes_256) = (
            CipherSuite::TLS13_AES_128_GCM_SHA256,
            CipherSuite::TLS13_AES_256_GCM_SHA384,
        );
        for (policy, agreed) in [
            ("pqc", (NamedGroup::X25519MLKEM768, aes_256)),
            ("fips-140-2", (NamedGroup::secp256r1, aes_128)),
            ("", (NamedGroup::X25519MLKEM768, aes_128)),
        ] {
            let server = server_config(&certificate, &bundle).unwrap();
            let got = handshake(client_under(policy, &certificate), server).await;
            assert_eq!(got, Ok(agreed), "{policy:?}");
        }
        // A post-quantum-only peer and a FIPS-only one have nothing in common.
        let fips = ServerConfig::builder_with_provider(Arc::new(compliant_provider("fips-140-2")))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certificate.chain(), certificate.key())
            .unwrap();
        let (_, server) = handshake(client_under("pqc", &certificate), fips)
            .await
            .unwrap_err();
        assert!(server.contains("NoKxGroupsInCommon"), "{server}");
    }

    #[test]
    fn an_unknown_policy_is_named() {
        for known in ["", "pqc", "fips-140-2"] {
            assert_eq!(known_policy(known), Ok(()));
        }
        let error = known_policy("PQC").unwrap_err();
        assert!(
            error.contains("COMPLIANCE_POLICY=\"PQC\": not a policy"),
            "{error}"
        );
    }
}
