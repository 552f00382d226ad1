//! HBONE as a test client speaks it: one CONNECT stream from a pod's
//! namespace, in mutual TLS with a certificate of the test's choosing.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ambit_hbone::client::Connection;
use ambit_identity::{tls, Identity, TrustBundle, WorkloadCertificate};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Pod;

/// One HBONE stream to `target` from `from`'s namespace, in mutual TLS as
/// `certificate` (none: no client certificate at all); whether the echo
/// came back.
pub fn tunnel_from(
    from: &Pod,
    certificate: Option<&WorkloadCertificate>,
    bundle: &TrustBundle,
    server: &Identity,
    target: SocketAddr,
) -> anyhow::Result<bool> {
    let config = match certificate {
        Some(certificate) => tls::client_config(certificate, bundle, server)?,
        None => tls::client_config_without_certificate(bundle, server)?,
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let source = IpAddr::V4(from.ip);
    from.place().in_netns(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let attempt = async {
                let hbone = SocketAddr::new(target.ip(), ambit_hbone::HBONE_PORT);
                let tcp = tokio::net::TcpStream::connect(hbone).await?;
                let name = ServerName::IpAddress(hbone.ip().into());
                let tls = connector.connect(name, tcp).await?;
                let connection = Connection::handshake(tls).await?;
                let mut stream = connection.open(target, source).await?;
                stream.write_all(b"ping").await?;
                stream.shutdown().await?;
                let mut back = Vec::new();
                stream.read_to_end(&mut back).await?;
                anyhow::Ok(back == b"ping")
            };
            let within = tokio::time::timeout(Duration::from_secs(5), attempt).await;
            anyhow::Ok(matches!(within, Ok(Ok(true))))
        })
    })?
}
