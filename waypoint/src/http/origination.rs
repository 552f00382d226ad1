//! TLS the waypoint starts toward a destination's endpoints, as its
//! DestinationRule asks (`tls` SIMPLE or MUTUAL, the server's certificate
//! checked for the server name, `subjectAltNames`, or not at all): the
//! client configs, made once per setting from its files (read again when
//! the setting changes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ambit_route::compile::{Origination, ServerCheck};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::upstream::Stream;

/// The system's roots, where Debian, Ubuntu and distroless images keep
/// them: what a server's certificate chains to when the rule names no CA.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A setting and the ALPN protocol offered.
type Offer = (Origination, Option<&'static [u8]>);

/// Client configs by setting and ALPN protocol.
#[derive(Default)]
pub struct Originations(Mutex<HashMap<Offer, Arc<ClientConfig>>>);

impl Originations {
    /// `stream` in TLS as `tls` asks, offering `alpn`.
    pub async fn start(
        &self,
        tls: &Origination,
        alpn: Option<&'static [u8]>,
        stream: Box<dyn Stream>,
    ) -> std::io::Result<Box<dyn Stream>> {
        let config = self.config(tls, alpn).map_err(std::io::Error::other)?;
        let name = ServerName::try_from(tls.sni.clone()).map_err(std::io::Error::other)?;
        let connected = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await?;
        Ok(Box::new(connected))
    }

    fn config(
        &self,
        tls: &Origination,
        alpn: Option<&'static [u8]>,
    ) -> Result<Arc<ClientConfig>, String> {
        let mut made = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = made.get(&(tls.clone(), alpn)) {
            return Ok(config.clone());
        }
        let config = Arc::new(client_config(tls, alpn)?);
        made.insert((tls.clone(), alpn), config.clone());
        Ok(config)
    }
}

fn client_config(tls: &Origination, alpn: Option<&[u8]>) -> Result<ClientConfig, String> {
    let ca = tls.ca_certificates.as_deref().unwrap_or(SYSTEM_ROOTS);
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca}: {e}"))? {
        roots
            .add(cert.map_err(|e| format!("{ca}: {e}"))?)
            .map_err(|e| format!("{ca}: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.check {
        ServerCheck::ServerName => builder.with_root_certificates(roots),
        check => {
            let names = match check {
                ServerCheck::OneOf(names) => {
                    let chained =
                        WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone());
                    let chained = chained.build().map_err(|e| format!("{ca}: {e}"))?;
                    Some((chained, names.clone()))
                }
                _ => None,
            };
            let verifier = Checked {
                names,
                algorithms: provider.signature_verification_algorithms,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        }
    };
    let mut config = match &tls.client {
        Some((chain, key)) => {
            let chain = CertificateDer::pem_file_iter(chain)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{chain}: {e}"))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.map(|p| vec![p.to_vec()]).unwrap_or_default();
    Ok(config)
}

/// A server's certificate checked as a DestinationRule's `subjectAltNames`
/// ask (chained to the roots and naming one of them, whatever name was
/// asked for), or not at all (`insecureSkipVerify`, `names` none). The
/// handshake's signatures are checked either way.
#[derive(Debug)]
struct Checked {
    /// The roots' verifier and the names one of which must be named.
    names: Option<(Arc<WebPkiServerVerifier>, Vec<String>)>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _asked: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some((chained, names)) = &self.names else {
            return Ok(ServerCertVerified::assertion());
        };
        let mut refused = rustls::Error::General("subjectAltNames is empty".into());
        for name in names {
            let Ok(name) = ServerName::try_from(name.as_str()) else {
                continue;
            };
            match chained.verify_server_cert(end_entity, intermediates, &name, ocsp, now) {
                Ok(verified) => return Ok(verified),
                Err(error) => refused = error,
            }
        }
        Err(refused)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
