//! TLS the waypoint starts toward a destination's endpoints, as its
//! DestinationRule asks (`tls` SIMPLE or MUTUAL): the client configs, made
//! once per setting from its files (read again when the setting changes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ambit_route::compile::Origination;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

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
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
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
